"""Averagine isotope patterns, bins per pattern, receptive field and stride (section 7.3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from invertible.ims.isotopes import (
    ISOTOPENET_CONVS,
    averagine_formula,
    isotope_pattern,
    pattern_bins,
    receptive_field,
    suggest_stride,
)

MONO = {"C": 12.0, "H": 1.007825, "N": 14.003074, "O": 15.994915, "S": 31.972071}
AVG = {"C": 12.0107, "H": 1.00794, "N": 14.0067, "O": 15.9994, "S": 32.065}


@pytest.mark.parametrize("mass", [500.0, 1500.0, 4000.0])
def test_averagine_formula_is_integer_and_has_the_mass(mass):
    f = averagine_formula(mass)
    assert all(isinstance(v, int) and v > 0 for v in f.values())
    assert sum(AVG[e] * n for e, n in f.items()) == pytest.approx(mass, abs=1.0)
    assert f["C"] == round(mass / 111.1254 * 4.9384)
    with pytest.raises(ValueError):
        averagine_formula(50.0)


def test_isotope_pattern_threshold_and_growth():
    mz1, ab1 = isotope_pattern(1000.0)
    mz5, ab5 = isotope_pattern(5000.0)
    for mz, ab in ((mz1, ab1), (mz5, ab5)):
        assert ab.sum() == pytest.approx(1.0)
        assert ab.min() >= 0.005 * 0.99
        np.testing.assert_allclose(np.diff(mz), 1.003, atol=0.01)  # isotopes ~1 Da apart
    assert len(mz5) > len(mz1)  # more isotopes above the threshold at higher mass
    assert np.argmax(ab1) == 0 and np.argmax(ab5) > 0  # monoisotopic peak no longer dominant at 5 kDa
    mono = sum(MONO[e] * n for e, n in averagine_formula(1000.0).items()) + 1.007276
    assert mz1[0] == pytest.approx(mono, abs=1e-3)
    assert len(isotope_pattern(5000.0, t_iso=0.05)[0]) < len(mz5)


def test_pattern_bins_on_an_equidistant_axis():
    axis = np.arange(500.0, 6000.0, 0.1)
    mass = 2000.0
    peaks, ab = isotope_pattern(mass - 1.007276)
    R = 3000.0
    sigma_hi = peaks[-1] / R / 2.3548
    # the profile exceeds t_iso*max from about the first to the last peak, plus ~3 sigma tails
    expected = (peaks[-1] - peaks[0] + 2 * 3.0 * sigma_hi) / 0.1
    got = pattern_bins(axis, [mass], resolving_power=R)[0]
    assert abs(got - expected) < 0.25 * expected
    # coarser bins -> fewer bins per pattern
    assert pattern_bins(np.arange(500.0, 6000.0, 0.2), [mass], resolving_power=R)[0] < got
    with pytest.raises(ValueError):
        pattern_bins(axis[::-1], [mass])


def test_receptive_field():
    assert receptive_field([(3, 1)]) == 3
    assert receptive_field([(3, 1), (3, 1)]) == 5
    assert receptive_field([(3, 2), (3, 1)]) == 7  # second kernel steps over the strided grid
    assert receptive_field(ISOTOPENET_CONVS) == 49
    with pytest.raises(ValueError):
        receptive_field([(0, 1)])


def test_stride_from_mean_bin_width():
    s = suggest_stride(np.arange(1000.0, 2000.0, 0.163))
    assert s.mean_bin_width == pytest.approx(0.163)
    assert s.bins_per_spacing == pytest.approx(6.135, abs=1e-3)
    assert (s.stride, s.conservative_stride) == (6, 5)


def test_tof_peak_model_keeps_the_peak_width_constant_in_bins():
    """reference_mz: FWHM ~ sqrt(m) (constant flight-time spread), so on a TOF axis (bin ~ sqrt(m)) the part of
    a pattern's bin count beyond its isotope span stays constant over mass; with a constant R it grows ~ sqrt(m)."""
    from invertible.ims.isotopes import envelope_span
    from invertible.ims.synthetic import tof_axis

    mz = tof_axis(800.0, 27371, 0.00161313)
    masses = np.array([1000.0, 2500.0, 5000.0])
    width = np.interp(masses, mz[1:], np.diff(mz))
    span_bins = envelope_span(masses) / width
    tof = pattern_bins(mz, masses, resolving_power=3000.0, reference_mz=800.0) - span_bins
    const = pattern_bins(mz, masses, resolving_power=3000.0) - span_bins
    assert np.ptp(tof) < 2.5, tof
    assert const[-1] - const[0] > 4, const
    with pytest.raises(ValueError, match="reference_mz"):
        pattern_bins(mz, masses, reference_mz=0.0)


def test_carbon_pattern_is_the_13c_binomial_and_narrower_than_all_elements():
    """The thesis's model: P(k) = C(n_C, k) p^k (1 - p)^(n_C - k), p = 0.0107, peaks 1.003355 Da apart; BRAIN's
    fine structure of all elements (N, O, S, H isotopes too) has at least as many isotopes above t_iso."""
    from math import comb

    from invertible.ims.isotopes import C13_ABUNDANCE, C13_SHIFT, averagine_formula, carbon_isotope_pattern

    for mass in (900.0, 2500.0, 5000.0):
        mz, ab = carbon_isotope_pattern(mass, t_iso=0.0)
        n_c = averagine_formula(mass)["C"]
        p = [comb(n_c, k) * C13_ABUNDANCE**k * (1 - C13_ABUNDANCE) ** (n_c - k) for k in range(4)]
        np.testing.assert_allclose(ab[:4], p, rtol=1e-9)
        np.testing.assert_allclose(np.diff(mz[:4]), C13_SHIFT, rtol=1e-12)
        assert len(carbon_isotope_pattern(mass)[0]) <= len(isotope_pattern(mass)[0])
    with pytest.raises(ValueError, match="t_iso"):
        carbon_isotope_pattern(1000.0, t_iso=1.5)


def test_fixed_gaussian_filter_widens_patterns_by_its_width_in_bins():
    """At t_iso = 0.3 a 900 Da peptide keeps only its monoisotopic carbon peak (P(0) = 0.65, P(1) = 0.28), so
    its pattern is one Gaussian of the fixed FWHM w, above t_iso of its maximum over 2 w sqrt(ln(1/t) / (4 ln 2))
    Da: on an axis of 0.01 Da that many bins (+-2), whatever the mass's resolving power would say."""
    axis = np.arange(500.0, 3000.0, 0.01)
    t = 0.3
    for w in (0.1, 0.3, 0.6):
        got = pattern_bins(axis, [900.0], peak_fwhm=w, isotopes="carbon", t_iso=t, resolving_power=50.0)[0]
        assert abs(got - 2 * w * np.sqrt(np.log(1 / t) / (4 * np.log(2))) / 0.01) <= 2
    with pytest.raises(ValueError, match="peak_fwhm"):
        pattern_bins(axis, [1500.0], peak_fwhm=0.0)
    with pytest.raises(ValueError, match="isotopes"):
        pattern_bins(axis, [1500.0], isotopes="nitrogen")
