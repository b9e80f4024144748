"""Affine-coupling flow (Real NVP / Glow style) on R^d: the baseline of Fig. 5.2.

A coupling layer splits ``x = (x_a, x_b)`` by a fixed mask and maps

    y_a = x_a,   y_b = x_b * exp(s(x_a)) + t(x_a),   log|det J| = sum_i s_i(x_a),

with ``s = scale * tanh(s_raw / scale)`` bounded for stability; the inverse is analytic. Layers alternate the
mask and are interleaved with ActNorm, as in Glow. Unlike an i-ResNet block (Table 5.2) it is not free-form:
each layer only changes half of the coordinates.

References: Dinh et al. (2017) "Density estimation using Real NVP"; Kingma & Dhariwal (2018) "Glow".
"""

from __future__ import annotations

import torch
from torch import nn

import invertible as inv
from invertible.models.resflow import DensityModel
from invertible.nn.base import Bijection, check_input

__all__ = ["AffineCoupling", "coupling_flow"]


class AffineCoupling(Bijection):
    """``y_b = x_b exp(s(x_a)) + t(x_a)``, ``y_a = x_a`` for a boolean ``mask`` selecting ``a`` (shape ``(d,)``);
    inputs ``(B, d)``, log-det ``sum s`` of shape ``(B,)``. ``s, t`` come from one MLP with ``hidden`` widths."""

    def __init__(self, mask: torch.Tensor, hidden: tuple[int, ...] | list[int] = (128, 128), scale: float = 2.0):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 1 or mask.all() or not mask.any():
            raise ValueError("mask must be a 1-D boolean tensor with both True and False entries")
        self.register_buffer("idx_a", torch.nonzero(mask).flatten())
        self.register_buffer("idx_b", torch.nonzero(~mask).flatten())
        self.dim, self.scale = mask.numel(), float(scale)
        da, db = len(self.idx_a), len(self.idx_b)
        dims = [da, *[int(h) for h in hidden], 2 * db]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i:
                layers.append(nn.SiLU())
            layers.append(nn.Linear(a, b))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)  # starts as the identity
        self.net = nn.Sequential(*layers)

    def _st(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(xa).chunk(2, dim=1)
        return self.scale * torch.tanh(s / self.scale), t

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, "AffineCoupling", n_channels=self.dim)
        xa, xb = x[:, self.idx_a], x[:, self.idx_b]
        s, t = self._st(xa)
        y = torch.empty_like(x)
        y[:, self.idx_a] = xa
        y[:, self.idx_b] = xb * torch.exp(s) + t
        return y, s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "AffineCoupling.inverse", n_channels=self.dim)
        ya, yb = y[:, self.idx_a], y[:, self.idx_b]
        s, t = self._st(ya)
        x = torch.empty_like(y)
        x[:, self.idx_a] = ya
        x[:, self.idx_b] = (yb - t) * torch.exp(-s)
        return x


def coupling_flow(
    dim: int, n_blocks: int = 8, hidden: tuple[int, ...] | list[int] = (128, 128), actnorm: bool = True
) -> DensityModel:
    """``[ActNorm] -> (AffineCoupling(alternating mask) -> [ActNorm]) x n_blocks`` on ``R^dim`` (dim >= 2)."""
    if dim < 2 or n_blocks < 1:
        raise ValueError(f"a coupling flow needs dim >= 2 and n_blocks >= 1, got dim={dim}, n_blocks={n_blocks}")
    config = {"kind": "coupling", "dim": int(dim), "n_blocks": int(n_blocks), "hidden": [int(h) for h in hidden],
              "actnorm": bool(actnorm)}
    layers: list[Bijection] = [inv.ActNorm(dim)] if actnorm else []
    base = torch.arange(dim) % 2 == 0
    for i in range(n_blocks):
        layers.append(AffineCoupling(base if i % 2 == 0 else ~base, hidden))
        if actnorm:
            layers.append(inv.ActNorm(dim))
    return DensityModel(inv.InvertibleSequential(*layers), (dim,), config)
