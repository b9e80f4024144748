"""The density recipe: maximum likelihood ``min_theta E_x[-log p_theta(x)]`` (eq. 5.1, 5.4) on the engine.

Adam or Adamax with linear warm-up (A.2 uses Adamax, lr 0.003), optional gradient clipping and parameter EMA;
batches from a :class:`~invertible.training.sources.DataSource` (discrete images dequantized per step,
Lemma 5.10). Training may use a gradient surrogate (the Neumann estimator); validation always reports an honest
NLL with its standard error (:func:`~invertible.training.evaluate.evaluate_nll`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invertible.io import RunFolder
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.evaluate import evaluate_nll
from invertible.training.objective import Objective
from invertible.training.optim import make_optimizer, warmup_constant
from invertible.training.sources import DataSource

__all__ = ["DensityConfig", "DensityObjective", "density_trainer", "model_config_dict"]


@dataclass
class DensityConfig:
    """Settings of the density recipe (JSON-able; stored in ``config.json`` and checkpoints under ``"train"``).

    Attributes:
        steps: total optimizer steps. batch_size: per rank. lr: peak learning rate.
        optimizer: ``"adam"`` or ``"adamax"``. warmup_steps: linear warm-up.
        grad_clip: max gradient 2-norm (``None``: off). weight_decay: L2 penalty as in ``torch.optim.Adam``.
        ema_decay: parameter EMA (``None``: off).
        log_every, checkpoint_every: in steps (checkpoints also at every epoch end and at the end).
        eval_every: validation every this many steps (``None``: at epoch ends). eval_samples: cap on the
            validation set used during training. seed: data order, probes, dequantization.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    warmup_steps: int = 0
    grad_clip: float | None = None
    weight_decay: float = 0.0
    ema_decay: float | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    eval_every: int | None = None
    eval_samples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, {self.batch_size}, {self.lr}"
            )
        if self.optimizer not in ("adam", "adamax"):
            raise ValueError(f"optimizer must be 'adam' or 'adamax', got {self.optimizer!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.eval_samples < 1:
            raise ValueError(f"eval_samples must be >= 1, got {self.eval_samples}")

    def loop(self) -> LoopConfig:
        return LoopConfig(steps=self.steps, log_every=self.log_every, eval_every=self.eval_every,
                          checkpoint_every=self.checkpoint_every, grad_clip=self.grad_clip, ema_decay=self.ema_decay)


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    """The model's JSON config including its ``kind`` (the registry's typed config, serialized)."""
    from invertible.models.registry import config_to_dict

    return {"kind": model.kind, **config_to_dict(model.config)}


class DensityObjective(Objective):
    """``-mean log p(x)`` of a density model whose ``forward(x)`` is ``log p(x)`` of shape ``(B,)``; ActNorm and
    the power iterations are initialized from the first batch; validation is the honest NLL of ``val_data``
    (at most ``eval_samples`` of it) with probes and dequantization seeded by ``seed + 12345``."""

    loss_name = "nll"

    def __init__(self, val_data: torch.Tensor | None = None, eval_samples: int = 2000, seed: int = 0):
        self.val_data, self.eval_samples, self.seed = val_data, int(eval_samples), int(seed)

    def loss(self, model, batch, trainer):
        return -model(batch).mean(), {}

    def initialize(self, model, batch) -> None:
        model.initialize(batch)

    def validate(self, model) -> dict[str, Any] | None:
        if self.val_data is None:
            return None
        return evaluate_nll(model, self.val_data[: self.eval_samples], seed=self.seed + 12345)


def density_trainer(
    model: nn.Module,
    source: DataSource,
    cfg: DensityConfig,
    out: str | Path | RunFolder | None = None,
    *,
    val_data: torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
    show_progress: bool = True,
    tensorboard: bool = False,
) -> Trainer:
    """The engine set up for the density recipe. ``meta``: more of the run's config (e.g. the data spec under
    ``"data"``); the run's ``config.json`` is ``{"recipe": "density", "model", "train", "dtype", **meta}``."""
    if source.batch_size != cfg.batch_size:
        raise ValueError(f"the source's batch size {source.batch_size} differs from batch_size={cfg.batch_size}")
    run = out if isinstance(out, RunFolder) or out is None else RunFolder(out, tensorboard=tensorboard)
    p = next(model.parameters())
    config = {"recipe": "density", "model": model_config_dict(model), "train": asdict(cfg),
              "dtype": str(p.dtype).replace("torch.", ""), **(meta or {})}
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    return Trainer(model, DensityObjective(val_data, cfg.eval_samples, cfg.seed), optimizer, source, cfg.loop(), run,
                   schedule=warmup_constant(cfg.lr, cfg.warmup_steps), kind=config["model"].get("kind"),
                   config=config, resume_may_change=("train.steps", "loop.steps"), show_progress=show_progress)
