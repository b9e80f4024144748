"""A residual network on R^d with a linear head: the 2-D models of Fig. 4.1 (standard ResNet vs i-ResNet).

    features: x -> F_T o ... o F_1 (x),   F_t(x) = x + g_t(x),   g_t = W_2 phi(W_1 x + b_1) + b_2,
    logits = head(features(x)),           head: Linear(d, n_classes).

With ``coeff=c`` in (0, 1) every ``W_i`` is spectrally normalized (eq. 4.9), so ``Lip(g_t) <= c^2 < 1``: the
feature map is an i-ResNet, invertible (Theorem 4.1) and bi-Lipschitz (Lemma 4.6). With ``coeff=None`` the same
layers are left unconstrained: a standard ResNet, whose blocks may fold the plane. Inputs ``(B, d)``.

References: Behrmann et al. (2019) "Invertible Residual Networks", Fig. 1.
"""

from __future__ import annotations

import torch
from torch import nn

from invertible.activations import make_activation
from invertible.models.blocks import lipschitz_mlp
from invertible.nn import InvertibleSequential, ResidualBlock

__all__ = ["VectorResidualClassifier", "vector_residual_features"]


def vector_residual_features(
    dim: int = 2, n_blocks: int = 4, hidden: int = 32, coeff: float | None = 0.9, activation: str = "elu",
) -> InvertibleSequential:
    """``n_blocks`` residual blocks on ``R^dim``, each ``g = Linear(dim, hidden) -> phi -> Linear(hidden, dim)``
    (orthogonal initialization); spectrally normalized to ``||W||_2 <= coeff`` unless ``coeff`` is None."""
    if dim < 1 or n_blocks < 1 or hidden < 1:
        raise ValueError(f"need dim, n_blocks, hidden >= 1, got {dim}, {n_blocks}, {hidden}")
    blocks = []
    for _ in range(n_blocks):
        if coeff is None:
            first, last = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
            with torch.no_grad():
                nn.init.orthogonal_(first.weight)
                nn.init.orthogonal_(last.weight)
            g = nn.Sequential(first, make_activation(activation), last)
        else:
            if not 0 < coeff < 1:
                raise ValueError(f"coeff must lie in (0, 1) or be None, got {coeff}")
            g = lipschitz_mlp([dim, hidden, dim], coeff, activation, preact=False)
        blocks.append(ResidualBlock(g))
    return InvertibleSequential(*blocks)


class VectorResidualClassifier(nn.Module):
    """``logits = head(features(x))``: a residual feature map on ``R^d`` and a linear head, ``(B, d) -> (B, K)``."""

    def __init__(self, features: InvertibleSequential, dim: int, n_classes: int = 2):
        super().__init__()
        self.features = features
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
