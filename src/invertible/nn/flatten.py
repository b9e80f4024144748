"""Flattening as a bijection: a reshape between image and vector stages."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from invertible.nn.base import Bijection, check_input
from invertible.nn.traits import Capabilities

__all__ = ["Flatten"]


class Flatten(Bijection):
    """``(B, *shape) -> (B, prod(shape))`` and back; a reshape, so ``log|det J| = 0``."""

    CAPABILITIES = Capabilities(free_form=None, analytic_forward=True, analytic_inverse=True,
                                volume_preserving=True, exact_logdet=True, bi_lipschitz=None)

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.numel = math.prod(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "Flatten")
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"Flatten: expected (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.numel)

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "Flatten.inverse")
        if y.dim() != 2 or y.shape[1] != self.numel:
            raise ValueError(f"Flatten.inverse: expected (B, {self.numel}), got {tuple(y.shape)}")
        return y.reshape(y.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
