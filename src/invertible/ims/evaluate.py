"""TMA-level cross-validation and the Fig. 7.5 comparison (thesis section 7.4).

* Folds: the TMAs (one measurement each) are shuffled and dealt into 4 folds; a TMA is never in both the
  training and the test set ("randomized 4-fold cross-validation on TMA level").
* Balanced accuracy ``balAcc = (1/C) sum_c TP_c / P_c`` (for two classes ``(TP/P + TN/N) / 2``), per spot and
  per core, where a core's prediction is the majority vote of its spots' predictions.
* Neural networks are trained ``repeats`` times with identical settings (different seeds); the table shows
  the median over runs and the interquartile range. A run's accuracy pools the out-of-fold predictions of
  all 4 folds. ROC/LDA is deterministic: the table shows its worst and best ``K`` in 5..100.
* The box plot (Fig. 7.5 right) is drawn by :func:`invertible.ims.plots.fig7_5_boxplot`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from invertible.ims.baseline import DEFAULT_KS, roc_lda_predict
from invertible.ims.models import IsotopeNet, ResidualNet, predict_proba
from invertible.ims.preprocess import StdScaler
from invertible.ims.training import IMSConfig, train_ims

__all__ = [
    "CVRun",
    "IMSDataset",
    "MethodResult",
    "balanced_accuracy",
    "core_vote",
    "cross_validate_net",
    "cross_validate_roc_lda",
    "fig7_5_table",
    "load_dataset",
    "method_metrics",
    "summarize",
    "tma_folds",
]

Progress = Callable[[Iterable, str, int], Iterable]


@dataclass
class IMSDataset:
    """Preprocessed spectra ready for classification: ``X`` (n, d) float32 (may be a memmap), ``y`` (n,) int
    class index into ``classes``, ``tma`` and ``core`` (n,) group ids, ``mz`` (d,)."""

    X: np.ndarray
    y: np.ndarray
    tma: np.ndarray
    core: np.ndarray
    mz: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.X)
        if not (len(self.y) == len(self.tma) == len(self.core) == n):
            raise ValueError("X, y, tma and core must have the same length")
        if self.X.shape[1] != len(self.mz):
            raise ValueError(f"X has {self.X.shape[1]} bins but mz has {len(self.mz)}")


def load_dataset(
    imzml: str | os.PathLike,
    annotations: str | os.PathLike,
    *,
    mz_range: tuple[float, float] | None = None,
    baseline_window: int | None = None,
    cache: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> IMSDataset:
    """imzML + annotation CSV -> :class:`IMSDataset`: read (streamed into ``cache`` if given), keep annotated
    spots, crop, optional baseline removal, TIC normalisation (into ``cache/preprocessed.npy`` if given)."""
    from invertible.ims.annotations import align_annotations, read_annotations
    from invertible.ims.imzml import read_imzml
    from invertible.ims.preprocess import crop, remove_baseline, tic_normalize

    ann = read_annotations(annotations)
    data = read_imzml(imzml, mz_range=mz_range, cache=Path(cache) / "raw" if cache else None, progress=progress)
    rows = align_annotations(data.coordinates, ann)
    order = np.argsort(rows, kind="stable")  # read the memmap in file order
    rows, sel = rows[order], order
    mz, spectra = data.mz, data.spectra
    if mz_range is not None:
        mz, spectra = crop(mz, spectra, *mz_range)
    if cache:
        out = np.lib.format.open_memmap(Path(cache) / "preprocessed.npy", mode="w+", dtype=np.float32,
                                        shape=(len(rows), len(mz)))
    else:
        out = np.empty((len(rows), len(mz)), np.float32)
    for s in range(0, len(rows), 1024):
        chunk = np.asarray(spectra[rows[s:s + 1024]], np.float32)
        if baseline_window:
            chunk = remove_baseline(chunk, baseline_window)
        out[s:s + 1024] = tic_normalize(chunk)
    classes = sorted(set(ann.label.tolist()))
    y = np.searchsorted(np.asarray(classes), ann.label[sel])
    _, tma = np.unique(ann.tma[sel], return_inverse=True)
    _, core = np.unique(ann.core[sel], return_inverse=True)
    return IMSDataset(X=out, y=y.astype(np.int64), tma=tma, core=core, mz=np.asarray(mz), classes=classes)


# ------------------------------------------------------------------------------------------------ metrics


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of the recall ``TP_c / P_c``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty and of equal shape, got {y_true.shape}, "
                         f"{y_pred.shape}")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def core_vote(core: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
              proba: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-core true label and majority-vote prediction of its spots: ``(true (m,), pred (m,))`` over the
    ``m`` cores present. Ties go to the class with the larger mean probability (if ``proba`` is given), else
    the smaller class index. A core whose spots carry different true labels is a ValueError."""
    core, y_true, y_pred = np.asarray(core), np.asarray(y_true), np.asarray(y_pred)
    n_classes = int(max(y_true.max(), y_pred.max())) + 1
    ids, inv = np.unique(core, return_inverse=True)
    votes = np.zeros((len(ids), n_classes))
    np.add.at(votes, (inv, y_pred), 1.0)
    if proba is not None:
        mean_p = np.zeros((len(ids), proba.shape[1]))
        np.add.at(mean_p, inv, proba)
        votes = votes + 1e-6 * mean_p[:, :n_classes] / np.bincount(inv)[:, None]
    truth = np.zeros(len(ids), np.int64)
    for i in range(len(ids)):
        labels = np.unique(y_true[inv == i])
        if len(labels) != 1:
            raise ValueError(f"core {ids[i]!r} has spots with different labels {labels.tolist()}")
        truth[i] = labels[0]
    return truth, votes.argmax(1)


def tma_folds(tma: np.ndarray, n_folds: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Randomized fold assignment on TMA level: a list of ``n_folds`` boolean test masks (n,). The TMAs are
    shuffled and dealt round-robin, so no TMA is split and fold sizes differ by at most one TMA."""
    tma = np.asarray(tma)
    ids = np.unique(tma)
    if len(ids) < n_folds:
        raise ValueError(f"{n_folds}-fold TMA-level cross-validation needs >= {n_folds} TMAs, got {len(ids)}")
    perm = np.random.default_rng(seed).permutation(ids)
    return [np.isin(tma, perm[f::n_folds]) for f in range(n_folds)]


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Median, quartiles and interquartile range of ``values``."""
    v = np.asarray(list(values), np.float64)
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "iqr": float(q75 - q25), "q25": float(q25), "q75": float(q75),
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


# ------------------------------------------------------------------------------------ cross-validation


@dataclass
class CVRun:
    """One full cross-validation run: pooled out-of-fold spot/core balanced accuracies and per-fold ones;
    for networks ``history[f]`` is fold ``f``'s mean training loss per epoch."""

    spot: float
    core: float
    fold_spot: list[float]
    fold_core: list[float]
    pred: np.ndarray
    history: list[list[float]] = field(default_factory=list)


@dataclass
class MethodResult:
    """All runs of one method (for ROC/LDA: one run per K, keyed in ``runs`` order by ``labels``)."""

    name: str
    runs: list[CVRun]
    labels: list[str] = field(default_factory=list)


def _score(ds: IMSDataset, folds: list[np.ndarray], pred: np.ndarray, proba: np.ndarray | None) -> CVRun:
    fs, fc = [], []
    for test in folds:
        fs.append(balanced_accuracy(ds.y[test], pred[test]))
        t, p = core_vote(ds.core[test], ds.y[test], pred[test], None if proba is None else proba[test])
        fc.append(balanced_accuracy(t, p))
    t, p = core_vote(ds.core, ds.y, pred, proba)
    return CVRun(spot=balanced_accuracy(ds.y, pred), core=balanced_accuracy(t, p), fold_spot=fs, fold_core=fc,
                 pred=pred)


class _Rows:
    """Lazy view ``X[rows] / scale`` (no copy of the training set; batches are materialised on access)."""

    def __init__(self, X: np.ndarray, rows: np.ndarray, scale: np.ndarray):
        self.X, self.rows, self.scale = X, np.asarray(rows), scale
        self.shape = (len(self.rows), X.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        return np.asarray(self.X[self.rows[idx]], np.float32) / self.scale


def _fit_scaler(X: np.ndarray, rows: np.ndarray) -> StdScaler:
    sc = StdScaler()
    return sc.fit(_Rows(X, rows, np.float32(1.0)))


def cross_validate_net(
    ds: IMSDataset,
    folds: list[np.ndarray],
    model: str,
    config: IMSConfig,
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: Progress | None = None,
) -> CVRun:
    """One cross-validation run of ``model`` ("isotopenet" or "residualnet"): per fold, fit the m/z scaler
    on the training TMAs, train a fresh network (seed ``seed * 100 + fold``), predict the test TMAs."""
    if model not in ("isotopenet", "residualnet"):
        raise ValueError(f"model must be 'isotopenet' or 'residualnet', got {model!r}")
    n_classes = len(ds.classes) or int(ds.y.max()) + 1
    pred = np.zeros(len(ds.y), np.int64)
    proba = np.zeros((len(ds.y), n_classes))
    history = []
    for f, test in enumerate(folds):
        train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
        scaler = _fit_scaler(ds.X, train_rows)
        torch.manual_seed(seed * 100 + f)
        net = (IsotopeNet(ds.X.shape[1], n_classes, dropout=config.dropout) if model == "isotopenet"
               else ResidualNet(n_classes)).to(device)
        gen = torch.Generator().manual_seed(seed * 100 + f)
        history.append(train_ims(net, _Rows(ds.X, train_rows, scaler.scale_), ds.y[train_rows], config,
                                        generator=gen, show_progress=progress is not None))
        p = predict_proba(net, _Rows(ds.X, test_rows, scaler.scale_))
        proba[test_rows] = p
        pred[test_rows] = p.argmax(1)
    run = _score(ds, folds, pred, proba)
    run.history = history
    return run


def cross_validate_roc_lda(ds: IMSDataset, folds: list[np.ndarray],
                           ks: Iterable[int] = DEFAULT_KS) -> MethodResult:
    """ROC/LDA over all ``ks`` on the same folds: one :class:`CVRun` per K."""
    ks = list(ks)
    preds = {k: np.zeros(len(ds.y), np.int64) for k in ks}
    for test in folds:
        tr, te = np.flatnonzero(~test), np.flatnonzero(test)
        out = roc_lda_predict(np.asarray(ds.X[tr]), ds.y[tr], np.asarray(ds.X[te]), ks)
        for k in ks:
            preds[k][te] = out[k]
    return MethodResult("ROC/LDA", [_score(ds, folds, preds[k], None) for k in ks], [f"K={k}" for k in ks])


# ----------------------------------------------------------------------------------------- metrics & table


def method_metrics(result: MethodResult) -> dict:
    """Metrics of one method: for networks median/IQR over runs; for ROC/LDA worst and best K."""
    spot = [r.spot for r in result.runs]
    core = [r.core for r in result.runs]
    if result.name == "ROC/LDA":
        best, worst = int(np.argmax(spot)), int(np.argmin(spot))
        return {
            "balanced_accuracy_spot": {"worst": spot[worst], "best": spot[best], **summarize(spot)},
            "balanced_accuracy_core": {"worst": float(min(core)), "best": float(max(core)), **summarize(core)},
            "best_k": result.labels[best], "worst_k": result.labels[worst],
        }
    return {"balanced_accuracy_spot": summarize(spot), "balanced_accuracy_core": summarize(core)}


def fig7_5_table(results: dict[str, MethodResult], task: str = "synthetic") -> str:
    """Markdown table in the layout of Fig. 7.5 (left): ROC/LDA worst/best, networks median +- IQR."""
    lines = [f"| Method | {task} Bal. Acc. (Spot) | {task} Bal. Acc. (Core) |", "|---|---|---|"]
    for name, res in results.items():
        m = method_metrics(res)
        s, c = m["balanced_accuracy_spot"], m["balanced_accuracy_core"]
        if res.name == "ROC/LDA":
            lines.append(f"| {name} (worst / best K) | {s['worst']:.3f} / {s['best']:.3f} | "
                         f"{c['worst']:.3f} / {c['best']:.3f} |")
        else:
            lines.append(f"| {name} | {s['median']:.3f} ± {s['iqr']:.3f} | {c['median']:.3f} ± {c['iqr']:.3f} |")
    return "\n".join(lines)
