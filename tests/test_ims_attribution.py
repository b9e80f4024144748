"""Attribution to the measured intensities (ims/attribution.py): the closed form for a linear model through TIC,
the TIC confound it removes, ensemble averaging, isotope-pattern scores, the core bootstrap, the sec7.5 claim
helpers, and `ims explain --attribution measured` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from invertible.experiments.sec7_5 import isotope_gain, recovery
from invertible.ims.attribution import (
    bootstrap_class_maps,
    class_maps,
    contrast_references,
    ensemble_attributions,
    ensemble_map,
    explain_measured,
    measured_attributions,
    pattern_scores,
)
from invertible.ims.explain import explain, isotope_marks, sensitivity_maps


def _linear(weight: np.ndarray) -> nn.Linear:
    model = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(weight))
        model.bias.zero_()
    return model


def test_linear_model_attribution_is_the_tic_projected_centred_weight_times_r_minus_reference():
    """F(r) = v . (r / T(r)), v = (W_c - mean_k W_k) / sd, T = mean_j r_j:
    dF/dr_j = (v_j - v.r / (d T)) / T, and a_sj = dF/dr_j (r_sj - ref_j)."""
    rng = np.random.default_rng(0)
    n, d, k = 9, 6, 3
    R = rng.uniform(0.5, 2.0, (n, d))
    tic = R.mean(1)
    X = R / tic[:, None]
    W, sd = rng.normal(size=(k, d)), rng.uniform(0.5, 2.0, d)
    y = np.arange(n) % k
    ref = rng.uniform(0.5, 2.0, d)
    a = measured_attributions(_linear(W), X, tic, y, scale=sd, reference=ref)
    V = (W - W.mean(0)) / sd
    for s in range(n):
        v = V[y[s]]
        grad = (v - v @ R[s] / (d * tic[s])) / tic[s]
        np.testing.assert_allclose(a[s], grad * (R[s] - ref), rtol=1e-10, atol=1e-12)
    # the default reference is the mean measured spectrum; the class maps are the class means
    a0 = measured_attributions(_linear(W), X, tic, y, scale=sd)
    np.testing.assert_allclose(a0, measured_attributions(_linear(W), X, tic, y, scale=sd, reference=R.mean(0)))
    np.testing.assert_allclose(class_maps(a0, y, k)[1], a0[y == 1].mean(0))
    with pytest.raises(ValueError, match="tic must be positive"):
        measured_attributions(_linear(W), X, -tic, y, scale=sd)
    with pytest.raises(ValueError, match="scale must have one entry per bin"):
        measured_attributions(_linear(W), X, tic, y, scale=sd[:-1])
    with pytest.raises(ValueError, match="target classes must lie in"):
        measured_attributions(_linear(W), X, tic, y + 1, scale=sd)


def test_the_tic_confound_shows_in_the_gradient_and_not_in_the_measured_attribution():
    """Class 1 raises bin 0 (the planted peptide); the measured background (bins 1..) is the same in every
    spectrum. After TIC normalisation the background of class 1 is lower, and a model that reads only the
    background separates the classes. Its input-gradient map points at the background; the attribution to the
    measured intensities is exactly zero there (r - r_ref = 0) and nonzero only at bin 0."""
    d = 8
    y = np.array([0, 1] * 6)
    R = np.ones((len(y), d))
    R[:, 0] = np.where(y == 1, 8.0, 1.0) * np.linspace(0.9, 1.1, len(y))
    tic = R.mean(1)
    X = R / tic[:, None]
    assert X[y == 1, 1:].mean() < X[y == 0, 1:].mean()  # the normalisation's artefact
    W = np.zeros((2, d))
    W[1, 1:], W[0, 1:] = -1.0, 1.0  # reads the background only
    model = _linear(W)
    grad, _ = sensitivity_maps(model, X, y, 2)
    assert np.all(np.abs(grad[:, 1:]) > 0.5)
    att = class_maps(measured_attributions(model, X, tic, y, scale=np.ones(d)), y, 2)
    np.testing.assert_allclose(att[:, 1:], 0.0, atol=1e-12)
    assert np.all(att[:, 0] > 0)  # bin 0 is evidence for each class's own label: positive for both


def test_ensemble_map_gives_each_member_one_vote():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(3, 2, 10))
    scaled = S * np.array([1.0, 100.0, 0.01])[:, None, None]  # a member's overall scale does not matter
    np.testing.assert_allclose(ensemble_map(scaled), ensemble_map(S))
    np.testing.assert_allclose(ensemble_map(S[:1]), S[0] / np.sqrt(np.mean(S[0] ** 2)))
    with pytest.raises(ValueError, match="all-zero map"):
        ensemble_map(np.concatenate([S, np.zeros((1, 2, 10))]))
    # per-spectrum ensemble attributions average to the ensemble of the member maps
    d, y = 5, np.array([0, 1, 0, 1, 1])
    R = rng.uniform(0.5, 2, (5, d))
    models = [_linear(rng.normal(size=(2, d))) for _ in range(3)]
    A, members = ensemble_attributions(models, R / R.mean(1, keepdims=True), R.mean(1), y, 2, scale=np.ones(d))
    np.testing.assert_allclose(class_maps(A, y, 2), ensemble_map(members), atol=1e-12)


def test_pattern_score_of_a_planted_pattern_beats_every_other_position_and_a_misspaced_template():
    mz = np.linspace(800, 860, 2401)  # 0.025 Da bins
    iso, ab = isotope_marks(830.0)
    S = np.zeros((1, len(mz)))
    for m, a in zip(iso, ab, strict=True):
        S[0] += a * np.exp(-0.5 * ((mz - m) / 0.1) ** 2)
    S[0] += 0.01 * np.random.default_rng(2).normal(size=len(mz))
    P = pattern_scores(mz, S)[0]
    at = np.argmin(np.abs(mz - 830.0))
    assert np.argmax(P) in range(at - 2, at + 3)
    far = np.abs(mz - 830.0) > 0.5
    assert P[at] > np.max(P[far])  # the monoisotopic anchor beats every position off the pattern's start
    w = ab / ab.sum()
    assert P[at] == pytest.approx(float(w @ ab), rel=0.05)  # sum_i w_i S(m_i) with S(m_i) = a_i
    misplaced = pattern_scores(mz, S, spacing=1.5 * 1.00336)[0]
    assert misplaced[at] < P[at] - 0.5 * float(w[1:] @ ab[1:])
    # isotope gain: a map following the pattern gains the isotopes' share; a single spike gains ~0
    gain = isotope_gain(mz, S[None], np.array([830.0]))[0, 0]
    assert gain == pytest.approx(float(w[1:] @ ab[1:]) / float(w @ ab), abs=0.05)
    spike = np.exp(-0.5 * ((mz - 830.0) / 0.1) ** 2)[None]
    assert abs(isotope_gain(mz, spike[None], np.array([830.0]))[0, 0]) < 0.01
    with pytest.raises(ValueError, match="spacing must be positive"):
        pattern_scores(mz, S, spacing=0.0)


def test_core_bootstrap_resamples_whole_cores_within_each_class():
    A = np.arange(8.0)[:, None] * np.ones((1, 3))
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    core = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    boot = bootstrap_class_maps(A, y, core, 2, n_boot=300, rng=np.random.default_rng(0))
    assert boot.shape == (300, 2, 3)
    # class 0: cores {0,1} with means 0.5 and 2.5 -> every resample mean is one of 0.5, 1.5, 2.5
    assert set(np.round(boot[:, 0, 0], 6)) <= {0.5, 1.5, 2.5}
    # class 1: core 2 has rows 4,5,6, core 3 row 7: resamples are weighted by spectra -> 5.0, 5.5 or 7.0
    assert set(np.round(boot[:, 1, 0], 6)) <= {5.0, 5.5, 7.0}
    assert abs(boot[:, 0, 0].mean() - 1.5) < 0.15


def test_recovery_counts_hits_on_planted_peaks():
    mz = np.linspace(800, 840, 801)
    planted = np.array([810.0, 811.0])
    maps = np.zeros((2, len(mz)))
    for m, a in ((810.0, 5.0), (820.0, 4.0), (811.0, 3.0), (830.0, 2.0), (835.0, 1.0)):
        maps[0, np.argmin(np.abs(mz - m))] = a
    maps[1] = maps[0]
    maps[1, np.argmin(np.abs(mz - 820.0))] = 6.0  # the largest peak is off
    top1, prec = recovery(mz, maps, planted, 0.2)
    assert top1.tolist() == [True, False] and prec.tolist() == [0.4, 0.4]


def test_explain_measured_is_the_ensemble_measured_attribution():
    rng = np.random.default_rng(3)
    mz = np.linspace(800, 820, 200)
    R = rng.uniform(0.5, 2.0, (10, 200))
    y = np.arange(10) % 2
    models = [_linear(rng.normal(size=(2, 200))) for _ in range(2)]
    tic, X = R.mean(1), R / R.mean(1, keepdims=True)
    smap = explain_measured(models, X, tic, y, mz, ["a", "b"], scale=np.ones(200), resolving_power=None, top=3,
                            steps=1)
    others = contrast_references(R, y, 2)  # explain's default reference: the other class's mean spectrum
    np.testing.assert_allclose(others[0], R[y == 1].mean(0))
    A, members = ensemble_attributions(models, X, tic, y, 2, scale=np.ones(200), reference=others)
    np.testing.assert_allclose(smap.maps, ensemble_map(members), atol=1e-12)
    # a per-class reference is used row by row: the same as attributing each class against its own row
    a1 = measured_attributions(models[0], X, tic, y, scale=np.ones(200), reference=others)
    for c in range(2):
        ac = measured_attributions(models[0], X[y == c], tic[y == c], y[y == c], scale=np.ones(200),
                                   reference=others[c])
        np.testing.assert_allclose(a1[y == c], ac, atol=1e-12)
    with pytest.raises(ValueError, match="only class present"):
        contrast_references(R, np.zeros(10, int), 1)
    assert smap.method == "measured" and smap.members == 2 and len(smap.peaks[0]) == 3
    with pytest.raises(ValueError, match="on the m/z axis"):
        explain_measured(models, X, tic, y, mz[:-1], scale=np.ones(200))
    # explain() averages an ensemble of gradient maps the same way
    grads = np.stack([sensitivity_maps(m, X, y, 2)[0] for m in models])
    np.testing.assert_allclose(explain(models, X, y, mz, resolving_power=None).maps, ensemble_map(grads))


def test_integrated_gradients_are_complete_through_tic():
    """steps > 1: sum_j a_sj = F(r_s) - F(r_ref) up to the midpoint rule's error (Sundararajan et al. 2017)."""
    torch.manual_seed(0)
    d = 12
    model = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    rng = np.random.default_rng(4)
    R = rng.uniform(0.5, 2.0, (6, d))
    y = np.arange(6) % 2
    tic, X, sd = R.mean(1), R / R.mean(1, keepdims=True), rng.uniform(0.5, 2.0, d)
    ref = R.mean(0)

    def F(r):
        with torch.no_grad():
            z = model(torch.as_tensor(r / r.mean(1, keepdims=True) / sd)).numpy()
        return (z - z.mean(1, keepdims=True))[np.arange(len(r)), y]

    a = measured_attributions(model, X, tic, y, scale=sd, reference=ref, steps=64)
    np.testing.assert_allclose(a.sum(1), F(R) - F(np.tile(ref, (6, 1))), rtol=1e-3, atol=1e-5)
    one = measured_attributions(model, X, tic, y, scale=sd, reference=ref, steps=1)
    assert np.abs(one.sum(1) - (F(R) - F(np.tile(ref, (6, 1))))).max() > 1e-3  # gradient x input is not complete
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        measured_attributions(model, X, tic, y, scale=sd, steps=0)


def test_isotope_pair_needs_two_same_sign_planted_peaks_one_spacing_apart():
    from invertible.experiments.sec7_5 import isotope_pair
    from invertible.ims.explain import Peak

    planted = np.array([810.0, 811.003, 815.0])

    def peaks(*mv):
        return [Peak(0, m, v, (m,), 1) for m, v in mv]

    assert isotope_pair(peaks((810.0, 2.0), (811.0, 1.0)), planted, 0.2) == "810.00 / 811.00"
    assert isotope_pair(peaks((810.0, 2.0), (811.0, -1.0)), planted, 0.2) is None  # opposite signs
    assert isotope_pair(peaks((810.0, 2.0), (815.0, 1.0)), planted, 0.2) is None  # not one spacing apart
