"""Preprocessing: crop, TIC, baseline removal, per-m/z std scaling."""

from __future__ import annotations

import numpy as np
import pytest

from invertible.ims.preprocess import StdScaler, crop, estimate_baseline, remove_baseline, tic_normalize


def test_crop():
    mz = np.linspace(100, 200, 101)
    X = np.arange(3 * 101, dtype=np.float32).reshape(3, 101)
    m, x = crop(mz, X, 150, 160)
    np.testing.assert_allclose(m, np.arange(150, 161))
    np.testing.assert_array_equal(x, X[:, 50:61])
    with pytest.raises(ValueError, match="fewer than 2"):
        crop(mz, X, 300, 400)
    with pytest.raises(ValueError, match="lo < hi"):
        crop(mz, X, 160, 150)


def test_tic_normalize():
    X = np.random.default_rng(0).random((5, 40)) * np.arange(1, 6)[:, None]
    out = tic_normalize(X, chunk=2)
    np.testing.assert_allclose(out.mean(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, X / X.mean(1, keepdims=True), rtol=1e-6)
    X[3] = 0
    with pytest.raises(ValueError, match="spectrum 3 has no positive intensity"):
        tic_normalize(X)
    X[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tic_normalize(X)


def test_baseline_removal_keeps_peaks_and_removes_smooth_background():
    t = np.arange(2000.0)
    base = 100 * np.exp(-t / 800)
    peak = 50 * np.exp(-0.5 * ((t - 1000) / 3) ** 2)
    X = (base + peak)[None]
    est = estimate_baseline(X, 101)[0]
    assert np.abs(est - base)[200:1800].max() < 5.0
    out = remove_baseline(X, 101)[0]
    assert out[1000] == pytest.approx(50, abs=5)
    assert np.abs(out[1200:1800]).max() < 3.0


def test_std_scaler_fit_on_training_rows_only():
    g = np.random.default_rng(1)
    train = g.normal(0, [1.0, 2.0, 4.0, 0.0], (500, 4)) + 10
    sc = StdScaler().fit(train, chunk=64)
    np.testing.assert_allclose(sc.scale_[:3], train[:, :3].std(0, ddof=1), rtol=1e-4)
    assert sc.scale_[3] == 1.0  # constant bin is not blown up
    test = np.ones((2, 4))
    np.testing.assert_allclose(sc.transform(test), test / sc.scale_)
    with pytest.raises(ValueError, match="before fit"):
        StdScaler().transform(test)
    with pytest.raises(ValueError, match="expected 4 bins"):
        sc.transform(np.ones((2, 5)))
