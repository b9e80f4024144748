"""A small convolutional i-ResNet on 8x8 digits, shared by the chapter-4/5 core reproductions (Figs. 4.4, 5.3).

``[InjectivePad] -> [ActNorm, ResidualBlock(3x3-1x1-3x3, ELU)] x n -> Squeeze -> [...] x n`` (the Appendix A.1
layout in miniature); each block is ``x + g(x)`` with :func:`~invertible.models.blocks.residual_function`
(``Lip(g) <= coeff^3``, eq. 4.6). :class:`Classifier` puts a linear head on its globally pooled features.
"""

from __future__ import annotations

import torch
from torch import nn

from invertible.logdet import AbstractLogDet
from invertible.models.blocks import residual_function
from invertible.nn import ActNorm, InjectivePad, InvertibleSequential, ResidualBlock, Squeeze

__all__ = ["Classifier", "conv_iresnet"]


def conv_iresnet(
    coeff: float, blocks_per_stage: int = 2, hidden: int = 32, logdet: AbstractLogDet | None = None, pad: int = 3
) -> InvertibleSequential:
    """Bijection on ``(B, 1, 8, 8)``: pad to ``1 + pad`` channels, two stages of ``blocks_per_stage`` (ActNorm,
    residual block) pairs separated by a squeeze; output ``(B, 4 (1 + pad), 4, 4)``. ``logdet`` is shared by all
    blocks (default: the block's default estimator)."""
    layers: list[nn.Module] = [InjectivePad(pad)] if pad else []
    c = 1 + pad
    for stage in range(2):
        for _ in range(blocks_per_stage):
            layers += [ActNorm(c), ResidualBlock(residual_function(c, hidden, coeff), logdet=logdet)]
        if stage == 0:
            layers.append(Squeeze())
            c *= 4
    return InvertibleSequential(*layers)


class Classifier(nn.Module):
    """i-ResNet feature map followed by a linear head on globally pooled features:
    ``logits = W mean_{h,w} relu(F(x)) + b``, ``(B, 1, 8, 8) -> (B, n_classes)``."""

    def __init__(self, body: InvertibleSequential, channels: int, n_classes: int = 10):
        super().__init__()
        self.body = body
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).relu().mean((2, 3)))
