"""Small objectives for the reproductions' short trainings, run by the one engine like every recipe.

* :class:`FunctionObjective`: the loss is a given function of ``(model, batch)`` (e.g. Fig. 3.1's batch of
  independent restarts, whose parameters are plain tensors in an ``nn.ParameterDict``).
* :class:`DequantizedNLLObjective`: maximum likelihood of a :class:`~invertible.distributions.Flow` on
  uniformly dequantized 8-bit data (Section 5.3, Lemma 5.10): ``x~ = (255 x + u) / 256`` with
  ``u ~ U[0, 1)^D`` drawn from a given generator, loss ``-(1/(B D)) sum_i log p(x~_i)`` (nats per dimension).

Both keep the latest batch loss as a device tensor in ``last_loss`` (read it after training; no host sync).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from invertible.distributions import Flow
from invertible.training.objective import Batch, Objective

__all__ = ["DequantizedNLLObjective", "FunctionObjective"]


class FunctionObjective(Objective):
    """``loss_fn(model, batch) -> scalar loss``, logged as ``loss_name`` with no other metrics."""

    def __init__(self, loss_fn: Callable[[nn.Module, Batch], torch.Tensor], loss_name: str = "loss"):
        self.loss_fn, self.loss_name = loss_fn, loss_name
        self.last_loss: torch.Tensor | None = None

    def loss(self, model, batch, trainer):
        loss = self.loss_fn(model, batch)
        self.last_loss = loss.detach()
        return loss, {}


class DequantizedNLLObjective(Objective):
    """``-mean log p((255 x + u) / 256) / D`` for ``x (B, ...)`` in ``[0, 1]`` (multiples of 1/255) with
    ``u ~ U[0, 1)`` from ``generator`` (drawn on its device in ``x``'s dtype), ``D`` the dimensions of one
    sample; ``flow`` is the density whose bijection the engine's model is. Logged as ``nll_per_dim``."""

    loss_name = "nll_per_dim"

    def __init__(self, flow: Flow, generator: torch.Generator | None = None):
        self.flow, self.generator = flow, generator
        self.last_loss: torch.Tensor | None = None

    def loss(self, model, batch, trainer):
        x = batch
        u = torch.rand(x.shape, generator=self.generator, dtype=x.dtype)
        xb = (x * 255 + u.to(x.device)) / 256
        loss = -self.flow.log_prob(xb).mean() / xb[0].numel()
        self.last_loss = loss.detach()
        return loss, {}
