"""ROC/LDA baseline (thesis section 7.4.1; Boskamp et al. 2017): discriminative m/z values + LDA.

For every m/z bin ``j`` the Mann-Whitney-Wilcoxon statistic of the two classes is computed from ranks,
``U_j = R_j - n_1 (n_1 + 1) / 2`` with ``R_j`` the rank sum of class-1 spectra in column ``j`` (ties get
average ranks), and turned into the area under the ROC curve ``AUC_j = U_j / (n_0 n_1)``. The ``K`` bins with
the largest ``|AUC_j - 1/2|`` (discriminative in either direction) are the features of a linear discriminant
analysis (scikit-learn). The thesis reports the worst and best result over ``K = 5..100``.

The statistic is vectorised over columns (``scipy.stats.rankdata(axis=0)`` in column chunks), not a Python
loop over the ~27k m/z values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mann_whitney_auc", "roc_lda_predict", "ROCLDA", "DEFAULT_KS"]

#: K = 5, 10, ..., 100 as in the thesis (5 to 100 features).
DEFAULT_KS: tuple[int, ...] = tuple(range(5, 101, 5))


def mann_whitney_auc(X: np.ndarray, y: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """AUC of every column of ``X`` (n, d) for the binary labels ``y`` (n,) in {0, 1}: (d,) in [0, 1].

    ``AUC_j = (R_j - n1 (n1 + 1) / 2) / (n0 n1)``, with ``R_j`` the class-1 rank sum (average ranks for
    ties); equals P(x_1 > x_0) + P(x_1 = x_0) / 2 for random spectra of class 1 and class 0.
    """
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) != 2 or not set(classes.tolist()) <= {0, 1}:
        raise ValueError(f"the ROC statistic needs binary labels 0/1, got classes {classes.tolist()}")
    if len(y) != len(X):
        raise ValueError(f"{len(X)} spectra but {len(y)} labels")
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    out = np.empty(X.shape[1])
    for s in range(0, X.shape[1], chunk):
        r = _average_ranks(np.asarray(X[:, s:s + chunk], np.float64))
        out[s:s + chunk] = (r[pos].sum(0) - n1 * (n1 + 1) / 2) / (n0 * n1)
    return out


def _average_ranks(X: np.ndarray) -> np.ndarray:
    """Ranks 1..n of every column of ``X`` (n, d), ties replaced by their average rank (as
    ``scipy.stats.rankdata(method="average", axis=0)``), fully vectorised: sort each column, find the first
    and last sorted position of every run of equal values with running max/min, average them."""
    n, d = X.shape
    order = np.argsort(X, axis=0, kind="stable")
    S = np.take_along_axis(X, order, 0)
    pos = np.broadcast_to(np.arange(n)[:, None], (n, d))
    new = np.ones((n, d), bool)
    new[1:] = S[1:] != S[:-1]
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=0)
    last_flag = np.ones((n, d), bool)
    last_flag[:-1] = new[1:]
    last = np.minimum.accumulate(np.where(last_flag, pos, n - 1)[::-1], axis=0)[::-1]
    ranks = np.empty((n, d))
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, 0)
    return ranks


def roc_lda_predict(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                    ks: Sequence[int] = DEFAULT_KS) -> dict[int, np.ndarray]:
    """Fit ROC feature selection + LDA once per ``K`` (ranking computed once): ``{K: predicted labels}``."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from threadpoolctl import threadpool_limits

    auc = mann_whitney_auc(X_train, y_train)
    order = np.argsort(-np.abs(auc - 0.5), kind="stable")
    kmax = min(max(ks), X_train.shape[1])
    top = np.sort(order[:kmax])
    Xtr = np.asarray(X_train[:, top], np.float64)
    Xte = np.asarray(X_test[:, top], np.float64)
    pos = {j: i for i, j in enumerate(top)}
    out = {}
    with threadpool_limits(1):  # tiny matrices: BLAS threads only contend on a shared machine
        for k in ks:
            cols = [pos[j] for j in order[:min(k, kmax)]]
            lda = LinearDiscriminantAnalysis().fit(Xtr[:, cols], y_train)
            out[int(k)] = lda.predict(Xte[:, cols])
    return out


class ROCLDA:
    """Estimator form of the baseline for one ``K``: ``fit(X, y)``, ``predict(X)``; ``features_`` are the
    selected bin indices, most discriminative first."""

    def __init__(self, k: int = 20):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    def fit(self, X: np.ndarray, y: np.ndarray) -> ROCLDA:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        auc = mann_whitney_auc(X, y)
        self.auc_ = auc
        self.features_ = np.argsort(-np.abs(auc - 0.5), kind="stable")[: self.k]
        self.lda_ = LinearDiscriminantAnalysis().fit(np.asarray(X[:, self.features_], np.float64), y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.lda_.predict(np.asarray(X[:, self.features_], np.float64))
