"""The hybrid recipe: one flow trained for ``log p(x)`` and ``log p(y | x)`` together (Nalisnick et al. 2019;
Residual Flows section 5), on the engine.

Per batch of dequantized images ``x`` (Lemma 5.10) and labels ``y`` the loss is

    L = -( log p(x) / D + lambda log p(y | x) ),    D = dim(x),

the negative log-likelihood in nats per dimension (the scale Residual Flows normalize by; ``lambda = 1`` here is
their ``log p(x) / D + log p(y | x)``) plus ``lambda`` times the cross-entropy of the linear head on the latent
(:class:`~invertible.models.hybrid.HybridFlowModel`). ``lambda = 0`` is pure density estimation (the head gets no
gradient and stays at chance); growing ``lambda`` trades bits/dim for accuracy. The log-determinant is the
flow's training estimator (unbiased Russian roulette with the Neumann gradient by default); validation reports
the honest bits/dim (:func:`~invertible.training.evaluate.evaluate_nll`: unbiased estimate, its standard error)
and the test accuracy of the head on bin centres ``(x + 1/2) / 256`` (deterministic).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from invertible.data.dequantize import dequantize
from invertible.io import RunFolder
from invertible.models.hybrid import HybridFlowModel
from invertible.training.density import model_config_dict
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.evaluate import evaluate_nll
from invertible.training.objective import Objective
from invertible.training.optim import make_optimizer, warmup_constant
from invertible.training.sources import DataSource, ShuffledSource, step_generator

__all__ = ["HybridConfig", "HybridObjective", "LabeledImageSource", "hybrid_accuracy", "hybrid_trainer"]


@dataclass
class HybridConfig:
    """Settings of the hybrid recipe (JSON-able; stored under ``"train"``). ``lam``: the weight ``lambda`` of
    ``log p(y | x)``; the rest as in :class:`~invertible.training.density.DensityConfig`."""

    lam: float = 1.0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    warmup_steps: int = 0
    grad_clip: float | None = None
    ema_decay: float | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    eval_every: int | None = None
    eval_samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam (the weight of log p(y|x)) must be a finite number >= 0, got {self.lam}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, {self.batch_size}, {self.lr}"
            )
        if self.optimizer not in ("adam", "adamax"):
            raise ValueError(f"optimizer must be 'adam' or 'adamax', got {self.optimizer!r}")
        if self.eval_samples < 1:
            raise ValueError(f"eval_samples must be >= 1, got {self.eval_samples}")

    def loop(self) -> LoopConfig:
        return LoopConfig(steps=self.steps, log_every=self.log_every, eval_every=self.eval_every,
                          checkpoint_every=self.checkpoint_every, grad_clip=self.grad_clip, ema_decay=self.ema_decay)


class LabeledImageSource(DataSource):
    """``(dequantized images (B, C, H, W), labels (B,))``: seeded shuffled epochs over uint8 images ``x`` and
    int64 labels ``y`` (:class:`~invertible.training.sources.ShuffledSource`), each batch dequantized with noise
    drawn from ``step_generator(seed, step, rank, stream=2)`` - a pure function of the step, on the CPU."""

    discrete = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        if x.dtype != torch.uint8:
            raise ValueError(f"LabeledImageSource expects uint8 images, got {x.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"need one label per image, got images {tuple(x.shape)} and labels {tuple(y.shape)}")
        self.batch_size, self.seed, self.dtype = int(batch_size), int(seed), dtype
        self._rows = ShuffledSource((x, y.long()), batch_size, torch.Generator().manual_seed(int(seed)))

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return self._rows.steps_per_epoch(world_size)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._rows.batch(step, rank, world_size)
        return dequantize(x, step_generator(self.seed, step, rank, stream=2), dtype=self.dtype), y


@torch.no_grad()
def hybrid_accuracy(model: HybridFlowModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Accuracy (in ``[0, 1]``) of the head on uint8 images ``x`` at their bin centres ``(x + 1/2) / 256``."""
    p = next(model.parameters())
    was = model.training
    model.eval()
    correct = 0
    try:
        for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
            xc = (xb.to(device=p.device, dtype=p.dtype) + 0.5) / 256
            correct += int((model.logits(xc).argmax(1).cpu() == yb.long()).sum())
    finally:
        model.train(was)
    return correct / max(1, len(y))


class HybridObjective(Objective):
    """``-(log p(x) / D + lam log p(y | x))`` (module docstring), logging ``bits_per_dim`` (of the training
    estimator, dequantized), ``ce`` and ``acc``; validation: honest ``bits_per_dim`` with its standard error and
    the head's ``test_acc`` on ``(x_val, y_val)`` (at most ``eval_samples``)."""

    loss_name = "loss"

    def __init__(self, lam: float, x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None,
                 eval_samples: int = 1000, seed: int = 0):
        self.lam, self.seed, self.eval_samples = float(lam), int(seed), int(eval_samples)
        self.x_val, self.y_val = x_val, y_val

    def loss(self, model, batch, trainer):
        x, y = batch
        logp, logits = model.joint(x)
        d = model.latent_dim
        nll_per_dim = -logp.mean() / d
        ce = F.cross_entropy(logits, y)
        loss = nll_per_dim + self.lam * ce if self.lam else nll_per_dim
        bpd = (nll_per_dim.detach() + math.log(256)) / math.log(2)
        acc = (logits.detach().argmax(1) == y).to(torch.float64).mean()
        return loss, {"bits_per_dim": bpd, "ce": ce.detach(), "acc": acc}

    def initialize(self, model, batch) -> None:
        model.initialize(batch[0])

    def validate(self, model) -> dict[str, Any] | None:
        if self.x_val is None or self.y_val is None:
            return None
        x, y = self.x_val[: self.eval_samples], self.y_val[: self.eval_samples]
        res = evaluate_nll(model, x, seed=self.seed + 12345)
        return {"bits_per_dim": res["bits_per_dim"], "bits_per_dim_se": res["bits_per_dim_se"],
                "nll": res["nll"], "test_acc": hybrid_accuracy(model, x, y), "estimator": res["estimator"]}

    def progress_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return {k: means[k] for k in ("loss", "bits_per_dim", "acc") if k in means}


def hybrid_trainer(
    model: HybridFlowModel,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    cfg: HybridConfig,
    out: str | Path | RunFolder | None = None,
    *,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> Trainer:
    """The engine set up for the hybrid recipe on uint8 images ``x_train (N, C, H, W)`` and labels ``y_train
    (N,)``; the run's ``config.json`` is ``{"recipe": "hybrid", "model", "train", "dtype", **meta}``."""
    if not isinstance(model, HybridFlowModel):
        raise ValueError(f"the hybrid recipe trains a HybridFlowModel (kind hybrid_resflow), got "
                         f"{type(model).__name__}")
    if tuple(x_train.shape[1:]) != model.event_shape:
        raise ValueError(f"images of shape {tuple(x_train.shape[1:])} do not fit the model's {model.event_shape}")
    n_classes = model.head.out_features
    if y_train.numel() and (int(y_train.min()) < 0 or int(y_train.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes - 1}] for a head over {n_classes} classes")
    p = next(model.parameters())
    source = LabeledImageSource(x_train, y_train, cfg.batch_size, cfg.seed, dtype=p.dtype)
    run = out if isinstance(out, RunFolder) or out is None else RunFolder(out)
    config = {"recipe": "hybrid", "model": model_config_dict(model), "train": asdict(cfg),
              "dtype": str(p.dtype).replace("torch.", ""), **(meta or {})}
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    objective = HybridObjective(cfg.lam, x_val, y_val, cfg.eval_samples, cfg.seed)
    return Trainer(model, objective, optimizer, source, cfg.loop(), run,
                   schedule=warmup_constant(cfg.lr, cfg.warmup_steps), kind="hybrid_resflow", config=config,
                   resume_may_change=("train.steps", "loop.steps"), show_progress=show_progress)
