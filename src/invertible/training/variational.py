"""Variational inference with a flow: minimize the reverse KL divergence to an unnormalized target (eq. 5.2-5.3).

For a target known up to its normalizer, ``log p(x) = log p~(x) - log Z``,

    KL(q_theta || p) = E_{z ~ p_Z}[ log q_theta(x) - log p~(x) ] + log Z,   x = F_theta^{-1}(z),

so the loss ``E[log q(x) - log p~(x)]`` (the negative ELBO) needs *reparameterized* samples from the flow
(:meth:`~invertible.distributions.Flow.reparameterize`): its gradient passes through the fixed-point inverses of
the residual blocks, implicitly by default (:mod:`invertible.inverse_gradient`), and through ``log q`` evaluated at
the sample. The step evaluates the flow twice (inverse, then ``log q``), so it advances the power iterations once
(:func:`~invertible.lipschitz.advance_spectral_norms`) and then runs under
:func:`~invertible.lipschitz.frozen_spectral_norm`: both evaluations, and the backward pass, see the same operators.

The engine runs it like every recipe: the data source yields the latents ``z`` (standard normal, a pure function
of the seed and the step), so runs resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from invertible.distributions import FlowModel
from invertible.inverse_gradient import GRADIENT_MODES, ImplicitAdjoint
from invertible.io import RunFolder
from invertible.lipschitz import advance_spectral_norms, frozen_spectral_norm
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.objective import Objective
from invertible.training.sources import SamplerSource

__all__ = ["ReverseKLConfig", "ReverseKLObjective", "reverse_kl_trainer"]

LogDensity = Callable[[torch.Tensor], torch.Tensor]


class ReverseKLObjective(Objective):
    """Loss ``mean_i (log q(x_i) - log p~(x_i))``, ``x_i = F^{-1}(z_i)`` for the batch of latents ``z (B, d)``.

    Args:
        log_target: ``x (B, *event_shape) -> log p~(x) (B,)``, differentiable in ``x`` (any normalizer).
        gradient: how the residual-block inverses are differentiated: ``"implicit"`` (default) or ``"unrolled"``.
        adjoint: the implicit gradient's stop rule.

    Logged metrics: ``entropy`` (``-mean log q``, the model's differential entropy estimate).
    """

    loss_name = "reverse_kl"

    def __init__(self, log_target: LogDensity, gradient: str = "implicit", adjoint: ImplicitAdjoint | None = None):
        if not callable(log_target):
            raise ValueError(f"log_target must be a function x -> log p~(x), got {type(log_target).__name__}")
        if gradient not in GRADIENT_MODES or gradient == "detached":
            raise ValueError(f"gradient must be 'implicit' or 'unrolled' for reverse KL, got {gradient!r}")
        self.log_target, self.gradient, self.adjoint = log_target, gradient, adjoint
        self.last_loss: torch.Tensor | None = None

    def loss(self, model: FlowModel, batch: torch.Tensor, trainer: Trainer):
        flow = model.distribution()
        advance_spectral_norms(model)
        with frozen_spectral_norm():
            x = flow.reparameterize(batch, gradient=self.gradient, adjoint=self.adjoint)
            log_q = flow.log_prob(x)
        log_p = self.log_target(x)
        if log_p.shape != log_q.shape:
            raise ValueError(f"log_target must return one value per sample, shape {tuple(log_q.shape)}; got "
                             f"{tuple(log_p.shape)}")
        loss = (log_q - log_p).mean()
        self.last_loss = loss.detach()
        return loss, {"entropy": -log_q.detach().mean()}

    def initialize(self, model: FlowModel, batch: torch.Tensor) -> None:
        """ActNorm and the power iterations from one batch of latents (so the flow starts near ``p_Z``)."""
        model.initialize(batch)


@dataclass
class ReverseKLConfig:
    """Settings of :func:`reverse_kl_trainer` (JSON-able). ``batch_size``: latents per step; ``seed``: their
    stream; ``checkpoint_every``: steps between checkpoints of a run folder (also at the end);
    ``gradient``: ``"implicit"`` or ``"unrolled"``."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    log_every: int = 50
    checkpoint_every: int | None = None
    grad_clip: float | None = None
    seed: int = 0
    gradient: str = "implicit"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, {self.batch_size}, "
                             f"{self.lr}")
        if self.gradient not in ("implicit", "unrolled"):
            raise ValueError(f"gradient must be 'implicit' or 'unrolled', got {self.gradient!r}")


def reverse_kl_trainer(
    model: FlowModel,
    log_target: LogDensity,
    cfg: ReverseKLConfig,
    out: RunFolder | None = None,
    *,
    adjoint: ImplicitAdjoint | None = None,
    show_progress: bool = False,
) -> Trainer:
    """The engine set up to fit ``model`` (a :class:`~invertible.distributions.FlowModel`) to
    ``exp(log_target)`` by reverse KL with Adam; latents ``z ~ N(0, I)`` of the model's latent shape."""
    if not isinstance(model, FlowModel):
        raise ValueError(f"reverse_kl_trainer fits a FlowModel (its standard normal base), got {type(model).__name__}")
    p = next(model.parameters())
    shape = (model.latent_dim,)
    source = SamplerSource(lambda n, g: torch.randn((n, *shape), generator=g, dtype=torch.float64), cfg.batch_size,
                           seed=cfg.seed, epoch_steps=cfg.steps, dtype=p.dtype)
    objective = ReverseKLObjective(log_target, cfg.gradient, adjoint)
    loop = LoopConfig(steps=cfg.steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                      grad_clip=cfg.grad_clip)
    config: dict[str, Any] = {"recipe": "reverse_kl", "train": asdict(cfg)}
    return Trainer(model, objective, torch.optim.Adam(model.parameters(), lr=cfg.lr), source, loop, out,
                   config=config, show_progress=show_progress, desc="reverse KL")
