"""The IMS classifier recipe on the training engine (thesis Table A.2): Adam on cross-entropy + L2,

    L(theta) = CE(f_theta(x_B), y_B) + lambda * sum_W ||W||_F^2,

the sum over the weights of the convolutional, dense and locally connected layers (not biases or BatchNorm),
as a Keras ``kernel_regularizer`` adds it. :class:`RowSource` reads mini-batches from a (memory-mapped) array
in the order of the classic loop: one ``torch.randperm(n, generator)`` per epoch from ONE generator, batches
of ``batch_size`` in permutation order, a batch with fewer than 2 samples skipped (BatchNorm needs two), its
rows read in ascending order (sequential reads of a memmap). :func:`train_ims` returns the mean
training loss per epoch, ``sum_B L_B * |B| / n``, as before.

References: Behrmann, Etmann, Boskamp, Casadonte, Kriegsmann, Maass (2018), Bioinformatics 34(7).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invertible.ims.models import IsotopeNet, ResidualNet
from invertible.io import RunFolder
from invertible.training.distributed import init_distributed
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.objective import Objective
from invertible.training.permuted import PermutedSource

__all__ = ["IMSObjective", "RowSource", "TRAIN_CONFIGS", "IMSConfig", "ims_model_config", "ims_trainer", "l2_weights",
           "train_ims"]


@dataclass(frozen=True)
class IMSConfig:
    """Training setting of Table A.2: Adam with step size ``lr``; ``weight_decay`` is the L2 coefficient
    lambda, added to the loss as ``lambda * sum ||W||^2`` over conv/linear/locally connected weights (not
    biases or BatchNorm), as a Keras ``kernel_regularizer`` does."""

    lr: float = 5e-4
    weight_decay: float = 0.05
    batch_size: int = 256
    epochs: int = 300
    dropout: float = 0.3
    ema_decay: float | None = None  # parameter EMA (None: off, as in Table A.2)


#: Table A.2 per (task, model).
TRAIN_CONFIGS: dict[tuple[str, str], IMSConfig] = {
    ("adsq", "isotopenet"): IMSConfig(weight_decay=0.05, batch_size=256, epochs=300, dropout=0.3),
    ("adsq", "residualnet"): IMSConfig(weight_decay=0.05, batch_size=64, epochs=100, dropout=0.0),
    ("lp", "isotopenet"): IMSConfig(weight_decay=0.01, batch_size=256, epochs=30, dropout=0.3),
    ("lp", "residualnet"): IMSConfig(weight_decay=0.001, batch_size=64, epochs=30, dropout=0.0),
}



def l2_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights the L2 term of Table A.2 penalizes: every trainable ``*weight`` with more than one dimension
    (conv, dense, locally connected; not biases, not BatchNorm scales)."""
    return [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1 and p.requires_grad]


class RowSource(PermutedSource):
    """``(X[rows], y[rows])`` with ``rows`` = the batch's indices in ascending order (module docstring).

    ``X`` (n, d) array-like (a memmap, or any object whose ``X[int array]`` is an (k, d) array), ``y`` (n,)
    int. ``generator``: the one generator whose successive permutations are the epochs (``None``: the global
    one, as ``torch.randperm`` without a generator; then epochs must be drawn in order). Batches returned are
    CPU tensors (float32 as stored, int64 labels); the engine moves them to the model.
    """

    def __init__(self, X: Any, y: np.ndarray, batch_size: int, generator: torch.Generator | None = None):
        if len(X) != len(y) or len(X) == 0:
            raise ValueError(f"X and y must be non-empty and equally long, got {len(X)} and {len(y)}")
        super().__init__(len(X), batch_size, generator=generator if generator is not None else torch.default_generator,
                         min_batch=2)
        self.X, self.y = X, torch.as_tensor(np.asarray(y), dtype=torch.long)

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.sort(idx.numpy())
        return torch.from_numpy(np.ascontiguousarray(self.X[rows])), self.y[rows]


class IMSObjective(Objective):
    """Cross-entropy + ``weight_decay * sum ||W||^2`` (Table A.2); logs ``loss`` and ``ce``.

    ``totals`` holds, per epoch, ``sum_B L_B * |B|`` (float64 on the device, read once at the end), so that
    :meth:`epoch_losses` gives the classic per-epoch mean ``sum_B L_B |B| / n`` (skipped batches count in
    ``n``, not in the sum).
    """

    def __init__(self, model: nn.Module, weight_decay: float, n: int):
        self.weight_decay, self.n = float(weight_decay), int(n)
        self.decay = l2_weights(model)
        self.totals: list[torch.Tensor] = []

    def on_epoch_start(self, model, epoch, trainer) -> None:
        self.totals.append(torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device))

    def loss(self, model, batch, trainer):
        xb, yb = batch
        ce = F.cross_entropy(model(xb), yb)
        loss = ce
        if self.weight_decay:
            loss = loss + self.weight_decay * sum((w * w).sum() for w in self.decay)
        self.totals[-1] = self.totals[-1] + loss.detach().double() * len(yb)
        return loss, {"ce": ce.detach()}

    def epoch_losses(self) -> list[float]:
        return [float(t) / self.n for t in self.totals]


def ims_model_config(model: nn.Module) -> dict[str, Any]:
    """What rebuilds an :class:`~invertible.ims.models.IsotopeNet` or
    :class:`~invertible.ims.models.ResidualNet` (its ``kind`` and constructor arguments), read off the
    modules; ``{"kind": <class name>}`` for any other model."""

    if isinstance(model, IsotopeNet):
        layers = list(model.features)
        return {"kind": "isotopenet", "n_bins": model.n_bins, "n_classes": model.fc.out_features,
                "dropout": model.dropout.p, "channels": [m.conv2.out_channels for m in layers],
                "strides": [m.conv2.stride[0] for m in layers], "kernel_size": layers[0].conv1.kernel_size[0]}
    if isinstance(model, ResidualNet):
        layers = list(model.features)
        return {"kind": "residualnet", "n_classes": model.fc.out_features,
                "layers": [[m.conv2.out_channels, m.conv2.stride[0]] for m in layers],
                "kernel_size": layers[0].conv1.kernel_size[0]}
    return {"kind": type(model).__name__.lower()}


def ims_trainer(
    model: nn.Module,
    X: Any,
    y: np.ndarray,
    config: IMSConfig,
    *,
    generator: torch.Generator | None = None,
    out: str | Path | RunFolder | None = None,
    meta: Mapping[str, Any] | None = None,
    show_progress: bool = False,
) -> Trainer:
    """The engine set up for Table A.2: :class:`RowSource`, :class:`IMSObjective`, ``torch.optim.Adam(lr)``,
    ``config.epochs`` epochs, one log record per epoch; ``out``: a run folder for ``metrics.jsonl``, the
    checkpoint and ``config.json`` (``{"recipe": "ims", "model", "train", "n_train", "dtype", **meta}``)."""
    source = RowSource(X, y, config.batch_size, generator)
    spe = source.steps_per_epoch(init_distributed(next(model.parameters()).device).world_size)
    p = next(model.parameters())
    model_cfg = ims_model_config(model)
    cfg = {"recipe": "ims", "model": model_cfg, "train": asdict(config), "n_train": len(y),
           "dtype": str(p.dtype).replace("torch.", ""), **dict(meta or {})}
    folder = out if isinstance(out, RunFolder) or out is None else RunFolder(out)
    loop = LoopConfig(steps=config.epochs * spe, log_every=spe, ema_decay=config.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return Trainer(model, IMSObjective(model, config.weight_decay, len(y)), optimizer, source, loop, folder,
                   kind=model_cfg["kind"], config=cfg, show_progress=show_progress, desc="ims")


def train_ims(model: nn.Module, X: Any, y: np.ndarray, config: IMSConfig, *,
              generator: torch.Generator | None = None, device: torch.device | str | None = None,
              out: str | Path | RunFolder | None = None, meta: Mapping[str, Any] | None = None,
              show_progress: bool = False) -> list[float]:
    """Train ``model`` with Adam on cross-entropy + L2 (Table A.2) with :func:`ims_trainer`. ``X`` (n, d) float
    array (may be a memmap; batches are copied as they are drawn), ``y`` (n,) int in ``[0, n_classes)``; the
    epochs are successive ``torch.randperm(n, generator)`` (``None``: the global generator). Device: the model's
    (``device`` moves it first). ``out``: a run folder for ``metrics.jsonl`` and the checkpoint (default: none).
    Returns the mean training loss per epoch (module docstring)."""
    if len(X) != len(y) or len(X) == 0:
        raise ValueError(f"X and y must be non-empty and equally long, got {len(X)} and {len(y)}")
    if device is not None:
        model.to(device)
    model.train()
    if config.epochs < 1:
        return []
    trainer = ims_trainer(model, X, y, config, generator=generator, out=out, meta=meta, show_progress=show_progress)
    model.train()
    trainer.fit(overwrite=True)
    return trainer.objective.epoch_losses()  # type: ignore[attr-defined]
