"""Mass calibration error: the measurement on real TOF spectra and its simulation in the synthetic TMAs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from invertible.ims.calibration_error import (
    FIEDLER2009,
    offset_summary,
    peak_offsets_ppm,
    scaled_positions,
    shift_spectra_ppm,
)
from invertible.ims.synthetic import generate, preset, tof_axis

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maldi" / "fiedler2009_subset.npz"


def _gauss_spectra(mz, centres, ppm, width=0.8):
    """Spectra with Gaussian peaks at ``centres * (1 + ppm_s)`` on a flat background, one row per ppm."""
    out = []
    for e in ppm:
        c = scaled_positions(centres, e)
        out.append(100.0 + (1e4 * np.exp(-0.5 * ((mz[None] - c[:, None]) / width) ** 2)).sum(0))
    return np.asarray(out)


def test_measurement_recovers_planted_offsets():
    mz = tof_axis(1000.0, 20000, 0.002)
    centres = np.linspace(1200, mz[-1] - 200, 12)
    planted = np.array([0.0, 150.0, -200.0, 300.0, -50.0, 100.0])
    off, peak_mz = peak_offsets_ppm(mz, _gauss_spectra(mz, centres, planted), n_peaks=12)
    assert len(peak_mz) == 12
    np.testing.assert_allclose(peak_mz, centres, rtol=2e-3)
    # offsets are relative to the mean spectrum: planted minus their mean, to a few ppm at every peak
    np.testing.assert_allclose(off, (planted - planted.mean())[:, None] + 0 * off, atol=15.0)
    s = offset_summary(off, replicate_pairs=True)
    assert s["spectrum_sd_ppm"] == pytest.approx(planted.std(ddof=1), rel=0.05)
    assert s["within_pair_sd_ppm"] == pytest.approx(np.sqrt(np.mean(np.diff(planted.reshape(3, 2)) ** 2) / 2), rel=0.05)
    assert s["residual_sd_ppm"] < 10.0
    same = offset_summary(peak_offsets_ppm(mz, _gauss_spectra(mz, centres, np.zeros(4)), n_peaks=12)[0])
    assert same["spectrum_sd_ppm"] < 1.0


def test_shift_spectra_moves_features_by_the_stated_ppm():
    mz = tof_axis(800.0, 4000, 0.0016183)
    x = _gauss_spectra(mz, np.array([900.0, 1000.0]), [0.0], width=0.05)
    y = shift_spectra_ppm(mz, np.repeat(x, 2, 0), np.array([0.0, 500.0]))
    np.testing.assert_allclose(y[0], x[0])
    for c in (900.0, 1000.0):  # the peak maximum moved to c (1 + 500 ppm), i.e. by 0.45 / 0.5 Da
        win = np.abs(mz - c) < 1.5
        assert mz[win][np.argmax(y[1][win])] == pytest.approx(c * 1.0005, abs=np.diff(mz).max())
    with pytest.raises(ValueError, match="ppm"):
        shift_spectra_ppm(mz, x, np.zeros(3))


def test_generator_tma_calibration_error_moves_the_peaks():
    cfg = replace(preset("adsq-like", quick=True), mass_shift_sd=0.0, n_tmas=4, cores_per_tma=2, n_spectra=16)
    off = generate(cfg, seed=5)
    on = generate(replace(cfg, tma_ppm_sd=300.0), seed=5)
    assert np.all(off.tma_ppm == 0) and np.all(off.peak_bins(0) == off.peak_bins(3))
    assert np.abs(on.tma_ppm).max() > 100  # four draws of N(0, 300^2)
    width = np.diff(on.mz)
    for t in range(cfg.n_tmas):  # every peptide's top isotope sits ~m * ppm / bin width bins off
        bins = off.peak_bins(0)
        expect = on.peptide_mz * on.tma_ppm[t] * 1e-6 / width[np.minimum(bins, len(width) - 1)]
        np.testing.assert_allclose(on.peak_bins(t) - bins, expect, atol=1.0)
    moved = np.abs(on.peak_bins(int(np.argmax(np.abs(on.tma_ppm)))) - off.peak_bins(0))
    assert moved.min() >= 1  # a calibration error of > 100 ppm moves every peak by at least one bin here


def test_generator_spot_calibration_error_misaligns_spectra_within_a_tma():
    cfg = replace(preset("adsq-like", quick=True), n_tmas=1, cores_per_tma=2, n_spectra=24, mass_shift_sd=0.0,
                  spot_sd=0.0, core_sd=0.0, spot_scale_sd=0.0, baseline_sd=0.0, noise_scale=0.0, effect=0.0)
    still = generate(cfg, seed=1).spectra(np.arange(24))
    jitter = generate(replace(cfg, spot_ppm_sd=200.0), seed=1).spectra(np.arange(24))
    assert np.abs(still - still[0]).max() < 1e-3 * still.max()  # no spot variation left: all spectra alike
    off, _ = peak_offsets_ppm(cfg.mz, jitter, n_peaks=8, baseline_window=201, smooth=1, min_distance=5)
    assert 100 < offset_summary(off)["spectrum_sd_ppm"] < 400
    with pytest.raises(ValueError, match="ppm"):
        replace(cfg, spot_ppm_sd=-1.0)


@pytest.mark.skipif(not REAL.is_file(), reason="needs ../shared/data/maldi/fiedler2009_subset.npz")
def test_measured_calibration_error_of_the_real_spectra():
    d = np.load(REAL)
    off, peak_mz = peak_offsets_ppm(d["mass"][0], d["intensity"])
    s = offset_summary(off, replicate_pairs=True)
    assert s["n_peaks"] == FIEDLER2009["n_peaks"] and peak_mz.min() > 1000
    for k in ("spectrum_sd_ppm", "between_pair_sd_ppm", "within_pair_sd_ppm", "residual_sd_ppm"):
        assert s[k] == pytest.approx(FIEDLER2009[k], abs=1.0), k
