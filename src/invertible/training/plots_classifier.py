"""Training curves of a classifier run (matplotlib, Agg): train cross-entropy and test error per epoch."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["plot_training_curves"]


def plot_training_curves(records: list[dict[str, Any]]):
    """Two panels from ``metrics.jsonl`` records: the train loss (mean cross-entropy over the epoch, nats) and
    the test error (%) after each epoch, against the epoch (1-based). Returns the ``Figure``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    steps_per_epoch = (train[0]["step"] // (train[0]["epoch"] + 1)) if train else 1
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9, 3.4))
    loss = [r["loss"] if isinstance(r.get("loss"), int | float) else math.nan for r in train]  # NaN: null
    ax_loss.plot([r["epoch"] + 1 for r in train], loss, "o-")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train cross-entropy (nats)")
    ax_err.plot([r["step"] / max(steps_per_epoch, 1) for r in val], [r["test_error"] for r in val], "o-",
                color="tab:red")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("test error (%)")
    for ax in (ax_loss, ax_err):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
