"""Exponential moving average of model parameters (Polyak averaging), used for evaluation and sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimizer step, for every floating
    parameter of ``model``; buffers are not averaged (they are copied when swapping, so spectral-norm vectors
    and ActNorm flags stay those of the live model).

    Args:
        model: the module whose parameters are tracked (shadows are created at construction).
        decay: in ``[0, 1)``; Residual Flows use 0.999.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model = model
        self.shadow: dict[str, torch.Tensor] = {
            k: p.detach().clone() for k, p in model.named_parameters() if torch.is_floating_point(p)
        }

    @torch.no_grad()
    def update(self) -> None:
        for k, p in self.model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:3]}...")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Within the context the model holds the averaged parameters; the live ones are restored after."""
        params = dict(self.model.named_parameters())
        live = {k: params[k].detach().clone() for k in self.shadow}
        with torch.no_grad():
            for k, v in self.shadow.items():
                params[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in live.items():
                    params[k].copy_(v)
