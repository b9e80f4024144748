"""Figures of the iCE recipe: the per-epoch terms of eq. 6.13 during training."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["training_curves"]


def training_curves(history: Sequence[dict[str, float]], title: str = ""):
    """Per-epoch means of the semantic cross-entropy ``L_sCE``, the nuisance classifier's cross-entropy
    (``-L_nCE``; ``log C`` is chance) and the per-dimension nuisance NLL ``L_MLEn / d`` (eq. 6.13), and the
    training accuracy. ``history``: :attr:`~invertible.invariance.training.TrainResult.history`. Returns a
    matplotlib figure (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax, acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("ce", "semantic CE  $L_{sCE}$"), ("nuisance_ce", "nuisance classifier CE  $-L_{nCE}$"),
                       ("mle", "nuisance NLL  $L_{MLEn}/d$")):
        ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean over the epoch (nats)")
    ax.set_title(title or "iCE terms (eq. 6.13)")
    ax.legend()
    ax.grid(alpha=0.3)
    acc.plot(epochs, [h["acc"] for h in history], marker="o", color="black")
    acc.set_xlabel("epoch")
    acc.set_ylabel("training accuracy")
    acc.set_ylim(0, 1)
    acc.grid(alpha=0.3)
    for a in (ax, acc):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
