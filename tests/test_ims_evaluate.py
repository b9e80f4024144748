"""TMA-level cross-validation, balanced accuracy, core majority vote, end to end on synthetic imzML."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from invertible.ims import evaluate
from invertible.ims.evaluate import (
    balanced_accuracy,
    core_vote,
    cross_validate_net,
    cross_validate_roc_lda,
    fig7_5_table,
    load_dataset,
    method_metrics,
    summarize,
    tma_folds,
)
from invertible.ims.synthetic import generate, preset, write_imzml
from invertible.ims.training import IMSConfig


def test_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1])
    assert balanced_accuracy(y, np.zeros(5, int)) == 0.5  # plain accuracy would say 0.8
    assert balanced_accuracy(y, np.array([0, 0, 1, 1, 1])) == pytest.approx((0.5 + 1) / 2)
    assert balanced_accuracy(np.array([0, 1, 2]), np.array([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        balanced_accuracy(y, y[:3])


def test_core_vote_majority_and_ties():
    core = np.array([0, 0, 0, 1, 1, 2, 2])
    truth = np.array([1, 1, 1, 0, 0, 1, 1])
    pred = np.array([1, 0, 1, 1, 1, 0, 1])
    proba = np.array([[0, 1], [1, 0], [0, 1], [0, 1], [0, 1], [0.9, 0.1], [0.4, 0.6]])
    t, p = core_vote(core, truth, pred, proba)
    np.testing.assert_array_equal(t, [1, 0, 1])
    np.testing.assert_array_equal(p[:2], [1, 1])
    assert p[2] == 0  # tie 1:1 -> mean probability of class 0 is 0.65
    with pytest.raises(ValueError, match="different labels"):
        core_vote(np.array([0, 0]), np.array([0, 1]), np.array([0, 0]))


def test_tma_folds_never_split_a_tma():
    tma = np.repeat(np.arange(8), 5)
    folds = tma_folds(tma, 4, seed=3)
    assert len(folds) == 4
    np.testing.assert_array_equal(np.sum(folds, 0), 1)  # every spot tested exactly once
    for test in folds:
        assert not set(tma[test]) & set(tma[~test])
        assert len(set(tma[test])) == 2
    assert any((a != b).any() for a, b in zip(folds, tma_folds(tma, 4, seed=4), strict=True))
    with pytest.raises(ValueError, match="needs >= 4 TMAs"):
        tma_folds(np.repeat(np.arange(3), 4), 4)


def test_summarize():
    s = summarize([1, 2, 3, 4, 5])
    assert (s["median"], s["iqr"]) == (3.0, 2.0)


@pytest.fixture(scope="module")
def quick_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    cfg = replace(preset("adsq-like", quick=True), effect=1.5)  # a clearly learnable task for the test
    imzml, csv = write_imzml(generate(cfg, seed=0), out)
    return load_dataset(imzml, csv, baseline_window=201, cache=out / "cache")


def test_load_dataset(quick_dataset):
    ds = quick_dataset
    assert ds.X.shape == (192, 1024) and isinstance(ds.X, np.memmap)
    np.testing.assert_allclose(np.asarray(ds.X).mean(1), 1.0, rtol=1e-4)
    assert ds.classes == ["class0", "class1"] and len(np.unique(ds.tma)) == 8 and len(np.unique(ds.core)) == 32


def test_roc_lda_cross_validation_beats_chance(quick_dataset):
    ds = quick_dataset
    res = cross_validate_roc_lda(ds, tma_folds(ds.tma, 4, seed=0), ks=(5, 20, 100))
    m = method_metrics(res)
    assert m["balanced_accuracy_spot"]["best"] > 0.7
    assert m["balanced_accuracy_spot"]["worst"] <= m["balanced_accuracy_spot"]["best"]
    assert "ROC/LDA (worst / best K)" in fig7_5_table({"ROC/LDA": res})


def test_network_cv_fits_scaler_on_training_tmas_only(quick_dataset, monkeypatch):
    ds = quick_dataset
    folds = tma_folds(ds.tma, 4, seed=0)
    seen = []
    real = evaluate._fit_scaler

    def spy(X, rows):
        seen.append(np.asarray(rows))
        return real(X, rows)

    monkeypatch.setattr(evaluate, "_fit_scaler", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = cross_validate_net(ds, folds, "isotopenet", IMSConfig(epochs=1, batch_size=32), seed=0)
    finally:
        torch.set_num_threads(old)
    assert len(seen) == 4
    for rows, test in zip(seen, folds, strict=True):
        np.testing.assert_array_equal(rows, np.flatnonzero(~test))
    assert len(run.fold_spot) == 4 and 0 <= run.spot <= 1 and 0 <= run.core <= 1
    with pytest.raises(ValueError, match="model must be"):
        cross_validate_net(ds, folds, "mlp", IMSConfig(epochs=1))
