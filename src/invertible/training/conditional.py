"""The conditional density recipe: ``min_theta E_{(x, c)}[-log p_theta(x | c)]`` on the engine.

The model is a :class:`~invertible.distributions.ConditionalFlowModel` (``model(c)`` is ``p(. | c)``); batches
are pairs ``(x, c)`` from a :class:`~invertible.training.sources.DataSource` (e.g. a
:class:`~invertible.training.sources.SamplerSource` over :func:`invertible.data.conditional2d.sample_conditional`).
Settings are those of the density recipe (:class:`~invertible.training.density.DensityConfig`). Validation
reports the honest conditional NLL (:func:`evaluate_conditional_nll`: the exact log-determinant up to 64
dimensions, unbiased Russian roulette above, as for every reported likelihood).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invertible.distributions import ConditionalFlowModel
from invertible.io import RunFolder
from invertible.logdet import estimator_sites, evaluation_estimator, override_estimators
from invertible.training.density import DensityConfig, model_config_dict
from invertible.training.engine import Trainer
from invertible.training.objective import Objective
from invertible.training.optim import make_optimizer, warmup_constant
from invertible.training.sources import DataSource

__all__ = ["ConditionalDensityObjective", "conditional_density_trainer", "evaluate_conditional_nll"]


@torch.no_grad()
def evaluate_conditional_nll(model: ConditionalFlowModel, x: torch.Tensor, c: torch.Tensor, *,
                             batch_size: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``mean_i -log p(x_i | c_i)`` with its standard error ``std / sqrt(n)`` (nats), in eval mode, with the
    evaluation estimator (:func:`invertible.logdet.evaluation_estimator`; exact for ``dim <= 64``).

    Returns ``{"nll", "se", "n", "estimator", "exact"}``."""
    if x.dim() != 2 or c.dim() != 2 or x.shape[0] != c.shape[0] or x.shape[0] < 1:
        raise ValueError(f"evaluate_conditional_nll needs x (N, {model.dim}) and c (N, {model.context_dim}) "
                         f"with N >= 1, got {tuple(x.shape)} and {tuple(c.shape)}")
    p = next(model.parameters())
    est = evaluation_estimator(model.dim, 1, generator=torch.Generator(device=p.device).manual_seed(int(seed)))
    was = model.training
    model.eval()
    try:
        with override_estimators(model, est):
            nll = torch.cat([-model.log_prob(xb.to(p.device, p.dtype), cb.to(p.device, p.dtype))
                             for xb, cb in zip(x.split(batch_size), c.split(batch_size), strict=True)]).double()
    finally:
        model.train(was)
    n = nll.numel()
    se = float(nll.std() / math.sqrt(n)) if n > 1 else math.nan
    return {"nll": float(nll.mean()), "se": se, "n": n, "estimator": repr(est),
            "exact": est.exact or not estimator_sites(model)}


class ConditionalDensityObjective(Objective):
    """``-mean log p(x | c)`` over a batch ``(x, c)``; ActNorm and the power iterations are initialized from the
    first batch; validation is the honest conditional NLL of ``val = (x, c)`` (at most ``eval_samples``)."""

    loss_name = "nll"

    def __init__(self, val: tuple[torch.Tensor, torch.Tensor] | None = None, eval_samples: int = 2000,
                 seed: int = 0):
        self.val, self.eval_samples, self.seed = val, int(eval_samples), int(seed)

    @staticmethod
    def _pair(batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise ValueError("the conditional density recipe needs batches (x, c) from its data source")
        return batch[0], batch[1]

    def loss(self, model, batch, trainer):
        x, c = self._pair(batch)
        return -model(c).log_prob(x).mean(), {}

    def initialize(self, model, batch) -> None:
        model.initialize(*self._pair(batch))

    def validate(self, model) -> dict[str, Any] | None:
        if self.val is None:
            return None
        x, c = self.val
        return evaluate_conditional_nll(model, x[: self.eval_samples], c[: self.eval_samples],
                                        seed=self.seed + 12345)


def conditional_density_trainer(
    model: nn.Module,
    source: DataSource,
    cfg: DensityConfig,
    out: str | Path | RunFolder | None = None,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> Trainer:
    """The engine set up for the conditional density recipe; the run's ``config.json`` is
    ``{"recipe": "conditional_density", "model", "train", "dtype", **meta}`` (``load_run`` rebuilds the model)."""
    if not isinstance(model, ConditionalFlowModel):
        raise ValueError(f"the conditional density recipe trains a ConditionalFlowModel, got {type(model).__name__}")
    if source.batch_size != cfg.batch_size:
        raise ValueError(f"the source's batch size {source.batch_size} differs from batch_size={cfg.batch_size}")
    run = out if isinstance(out, RunFolder) or out is None else RunFolder(out)
    p = next(model.parameters())
    config = {"recipe": "conditional_density", "model": model_config_dict(model), "train": asdict(cfg),
              "dtype": str(p.dtype).replace("torch.", ""), **(meta or {})}
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    return Trainer(model, ConditionalDensityObjective(val, cfg.eval_samples, cfg.seed), optimizer, source,
                   cfg.loop(), run, schedule=warmup_constant(cfg.lr, cfg.warmup_steps), kind=config["model"]["kind"],
                   config=config, resume_may_change=("train.steps", "loop.steps"), show_progress=show_progress)
