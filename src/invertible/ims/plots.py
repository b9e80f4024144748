"""Figures of chapter 7: the Fig. 7.5 box plot of per-fold balanced accuracy (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np

from invertible.ims.evaluate import MethodResult

__all__ = ["fig7_5_boxplot"]


def fig7_5_boxplot(results: dict[str, MethodResult], title: str = "", ax=None):
    """Box plot of per-fold spot-level balanced accuracy (Fig. 7.5 right): every fold of every run of a
    network; for ROC/LDA the folds of its best ``K``. Draws into ``ax`` (a new 5.5x4 in figure when ``None``)
    and returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, names = [], []
    for name, res in results.items():
        if res.name == "ROC/LDA":
            best = int(np.argmax([r.spot for r in res.runs]))
            data.append(res.runs[best].fold_spot)
            names.append(f"{name}\n({res.labels[best]})")
        else:
            data.append([v for r in res.runs for v in r.fold_spot])
            names.append(name)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4))
    ax.boxplot(data, medianprops={"color": "red"})
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("balanced accuracy (spot), per fold")
    ax.set_title(title or "4-fold TMA-level cross-validation")
    ax.grid(axis="y", alpha=0.3)
    return ax.figure
