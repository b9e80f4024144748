"""Figures of chapter 7: the Fig. 7.5 box plot of per-fold balanced accuracy (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np

from invertible.ims.evaluate import MethodResult

__all__ = ["fig7_5_boxplot", "sensitivity_figure"]


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


def sensitivity_figure(smap, planted: dict[str, np.ndarray] | None = None, title: str = ""):
    """Section 7.5: one panel per class of the sensitivity map ``S_c(m/z)`` (an
    :class:`~invertible.ims.explain.SensitivityMap`), its peaks numbered by rank with their isotope patterns
    as ticks below the axis, and optionally known m/z (``planted``: label -> positions) shaded. Returns the
    figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(smap.classes)
    fig, axes = plt.subplots(k, 1, figsize=(10, 2.6 * k + 0.4), sharex=True, squeeze=False)
    for c, ax in enumerate(axes[:, 0]):
        s = smap.maps[c]
        ax.plot(smap.mz, s, lw=0.8, color="k")
        ax.axhline(0, color="gray", lw=0.5)
        lim = float(np.abs(s).max()) or 1.0
        for label, positions in (planted or {}).items():
            for i, m in enumerate(np.atleast_1d(positions)):
                ax.axvspan(m - 0.15, m + 0.15, color="tab:green", alpha=0.25, lw=0,
                           label=label if i == 0 else None)
        for r, p in enumerate(smap.peaks[c], 1):
            ax.annotate(str(r), (p.mz, p.value), textcoords="offset points", xytext=(0, 4 if p.value > 0 else -10),
                        ha="center", fontsize=7, color="tab:red")
            ax.plot(p.isotopes, [-1.1 * lim] * len(p.isotopes), "|", color="tab:blue", ms=6)
        ax.set_ylim(-1.25 * lim, 1.25 * lim)
        ax.set_ylabel(f"S({smap.classes[c]})")
        what = (f"d {smap.score} / d x" if getattr(smap, "method", "gradient") == "gradient"
                else "attribution to the measured intensities")
        if getattr(smap, "members", 1) > 1:
            what += f", mean of {smap.members} networks"
        ax.set_title(f"class {smap.classes[c]} ({int(smap.counts[c])} spectra): {what}, "
                     "peaks numbered, isotope patterns as ticks", fontsize=9)
        if planted:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("m/z (Da)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
