"""ROC/LDA baseline: vectorised Mann-Whitney statistic and feature selection."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, rankdata

from invertible.ims.baseline import ROCLDA, _average_ranks, mann_whitney_auc, roc_lda_predict


def test_average_ranks_equal_scipy_with_ties():
    X = np.random.default_rng(0).integers(0, 4, (40, 25)).astype(float)
    np.testing.assert_array_equal(_average_ranks(X), rankdata(X, axis=0))


def test_auc_equals_mann_whitney_u_per_column():
    g = np.random.default_rng(1)
    X = np.round(g.normal(size=(30, 50)), 1)  # rounding makes ties
    y = (np.arange(30) < 12).astype(int)
    X[y == 1, 7] += 2.0
    auc = mann_whitney_auc(X, y, chunk=16)
    n1, n0 = 12, 18
    ref = [mannwhitneyu(X[y == 1, j], X[y == 0, j]).statistic / (n1 * n0) for j in range(50)]
    np.testing.assert_allclose(auc, ref)
    assert np.argmax(np.abs(auc - 0.5)) == 7


def test_binary_labels_required():
    with pytest.raises(ValueError, match="binary"):
        mann_whitney_auc(np.zeros((6, 3)), np.array([0, 1, 2, 0, 1, 2]))


def test_roc_lda_selects_the_informative_bins():
    g = np.random.default_rng(2)
    X = g.normal(size=(200, 300))
    y = np.arange(200) % 2
    X[y == 1, 40] += 1.5
    X[y == 1, 250] -= 1.5  # discriminative in the other direction
    model = ROCLDA(k=2).fit(X[:150], y[:150])
    assert sorted(model.features_.tolist()) == [40, 250]
    assert (model.predict(X[150:]) == y[150:]).mean() > 0.8
    out = roc_lda_predict(X[:150], y[:150], X[150:], ks=(2, 5, 100))
    assert set(out) == {2, 5, 100} and all(v.shape == (50,) for v in out.values())
    np.testing.assert_array_equal(out[2], model.predict(X[150:]))
