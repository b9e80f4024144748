"""Invertible downsampling (space-to-depth)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from invertible.nn.base import Bijection, check_input
from invertible.nn.traits import Capabilities

__all__ = ["Squeeze"]


class Squeeze(Bijection):
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)`` in ``torch.nn.functional.pixel_unshuffle`` order; a permutation,
    so ``log|det J| = 0``. The invertible downsampling of Jacobsen et al. (2018) used between i-ResNet stages."""

    CAPABILITIES = Capabilities(free_form=None, analytic_forward=True, analytic_inverse=True,
                                volume_preserving=True, exact_logdet=True, bi_lipschitz=None)

    factor = 2

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x), x.new_zeros(x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "Squeeze", min_dim=4)
        if x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"Squeeze needs (B, C, H, W) with even H and W, got {tuple(x.shape)}")
        return F.pixel_unshuffle(x, 2)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "Squeeze.inverse", min_dim=4)
        if y.dim() != 4 or y.shape[1] % 4:
            raise ValueError(f"Squeeze.inverse needs (B, 4C, H, W), got {tuple(y.shape)}")
        return F.pixel_shuffle(y, 2)
