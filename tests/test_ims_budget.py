"""Budget adoption of the IMS reproductions (fig7.3, fig7.5, sec7.5) and the envelope class signal of the generator.

The settings tests build a :class:`RunContext` at scale 16 and only call the modules' ``settings`` functions:
no experiment runs here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from invertible.experiments import fig7_3, fig7_5, sec7_5
from invertible.experiments.registry import RunContext
from invertible.ims.synthetic import generate, preset


@pytest.mark.parametrize("module", [fig7_3, fig7_5, sec7_5])
def test_settings_are_the_quick_ones_at_scale_1_and_grow_at_scale_16(tmp_path, module):
    quick = module.settings(RunContext(out=tmp_path, quick=True))
    big_ctx = RunContext(out=tmp_path, quick=True, scale=16.0)
    big = module.settings(big_ctx)
    full = module.settings(RunContext(out=tmp_path, quick=False))
    assert quick.keys() == big.keys() == full.keys()
    # run time grows at most like the scale: data and steps multiply, the two networks' epochs add (fig7.5)
    powers = {k: s.power for k, s in big_ctx.settings.items()}
    steps = max((p for k, p in powers.items() if "epochs" in k), default=0.0)
    assert sum(p for k, p in powers.items() if "epochs" not in k) + steps <= 1.0 + 1e-12, powers
    grown = [k for k in quick if big[k] > quick[k]]
    assert grown, (quick, big)
    for k in quick:
        assert quick[k] <= big[k] <= full[k], (k, quick[k], big[k], full[k])
        power = big_ctx.settings[k].power
        assert big[k] == min(full[k], round(quick[k] * 16.0 ** power)), k


def test_fig7_5_quick_settings():
    ctx = RunContext(out=None, quick=True)  # type: ignore[arg-type]
    assert fig7_5.settings(ctx) == {"n_spectra": 384, "n_bins": 1024, "isotopenet_epochs": 25,
                                    "residualnet_epochs": 1}


def test_envelope_signal_moves_the_modified_share_not_the_total():
    """signal="envelope": the class shifts logit(share of the +0.984 Da form) by +-effect/2 and leaves the
    peptide's total abundance alone. Two noise-free data sets from one seed, effect 0 and effect 2, share every
    other draw, so per spectrum the native peak (bin of M) scales by (1 - f_2) / (1 - f_0) with the class's
    sign, while the sum over the whole envelope (native + modified) stays put."""
    base = replace(preset("adsq-like", quick=True), n_spectra=240, cores_per_tma=10, n_tmas=3, signal="envelope",
                   noise_scale=0.0, baseline_level=0.0, peptides_per_kda=10.0)
    d0, d2 = generate(replace(base, effect=0.0), seed=1), generate(replace(base, effect=2.0), seed=1)
    X0, X2 = (d.spectra(np.arange(len(d))).astype(np.float64) for d in (d0, d2))
    one, zero = d2.label == 1, d2.label == 0
    for j, m_bin in enumerate(d2.peak_bins()[d2.discriminative]):
        native = np.log(X2[:, m_bin] / X0[:, m_bin])
        lo, hi = np.searchsorted(d2.mz, [d2.mz[m_bin] - 1.0, d2.mz[m_bin] + 6.0])
        total = np.log(X2[:, lo:hi].sum(1) / X0[:, lo:hi].sum(1))
        shift = native[one].mean() - native[zero].mean()
        planted = d2._logit_beta[1, j] - d2._logit_beta[0, j]  # +-effect: more modified share in class 1 if > 0
        assert abs(planted) == pytest.approx(2.0)
        # without patient and spot variation: log(1 - sigmoid(l0 + 1)) - log(1 - sigmoid(l0 - 1)) = -0.63 at f0 = 0.3
        assert np.sign(shift) == -np.sign(planted) and 0.35 < abs(shift) < 0.9, (j, shift, planted)
        # the envelope's sum moves by a few % at most (native and modified profiles are each scaled to a maximum
        # of 1, so their sums differ slightly), and its class difference is a small part of the native peak's
        assert np.abs(total).max() < 0.1, (j, np.abs(total).max())
        assert abs(total[one].mean() - total[zero].mean()) < 0.2 * abs(shift)
    with pytest.raises(ValueError, match="signal"):
        preset("adsq-like", signal="shape")


def test_default_presets_draw_the_same_data_as_before_the_envelope_option():
    """The abundance signal (default) consumes the random stream as before the envelope option was added: the
    numbers below were computed with the generator of commit 2a0100b."""
    a = generate(preset("adsq-like", quick=True, n_spectra=64, cores_per_tma=4), seed=5)
    X = a.spectra(np.arange(8)).astype(np.float64)
    assert X.sum() == pytest.approx(33167066.767700195, rel=1e-9)
    assert X[3, 500] == pytest.approx(4005.166748046875, rel=1e-9)
    assert a._logit_beta.shape == (2, len(a.discriminative)) and not a._logit_beta.any()


def test_spot_shift_moves_peaks_by_the_drawn_mass_error():
    cfg = replace(preset("adsq-like", quick=True), n_spectra=64, cores_per_tma=4, n_tmas=2, noise_scale=0.0,
                  baseline_level=0.0, spot_sd=0.0, spot_scale_sd=0.0, spot_shift_sd=0.3)
    d = generate(cfg, seed=2)
    X = d.spectra(np.arange(16))
    tops = [np.argmax(x) for x in X[d.tma[:16] == 0]]
    assert np.ptp(d.mz[tops]) > 0.1  # without the spot error all spectra of a TMA peak on the same bin
