"""Affine-coupling flow (Real NVP / Glow style) on R^d: the baseline of Fig. 5.2.

A coupling layer (:class:`~invertible.nn.AffineCoupling`) splits ``x = (x_a, x_b)`` by a fixed mask and maps

    y_a = x_a,   y_b = x_b * exp(s(x_a)) + t(x_a),   log|det J| = sum_i s_i(x_a),

with ``s = scale * tanh(s_raw / scale)`` bounded for stability; the inverse is analytic. Layers alternate the
mask and are interleaved with ActNorm, as in Glow. Unlike an i-ResNet block (Table 5.2) it is not free-form:
each layer only changes half of the coordinates.

References: Dinh et al. (2017) "Density estimation using Real NVP"; Kingma & Dhariwal (2018) "Glow".
"""

from __future__ import annotations

import dataclasses

import torch

from invertible.distributions import FlowModel
from invertible.models import registry
from invertible.nn import ActNorm, AffineCoupling, Bijection, InvertibleSequential

__all__ = ["AffineCoupling", "CouplingConfig", "coupling_flow"]


@dataclasses.dataclass(frozen=True)
class CouplingConfig(registry.ModelConfig):
    """Config of :func:`coupling_flow` (kind ``coupling``)."""

    dim: int
    n_blocks: int = 8
    hidden: tuple[int, ...] = (128, 128)
    actnorm: bool = True


def coupling_flow(
    dim: int, n_blocks: int = 8, hidden: tuple[int, ...] | list[int] = (128, 128), actnorm: bool = True
) -> FlowModel:
    """``[ActNorm] -> (AffineCoupling(alternating mask) -> [ActNorm]) x n_blocks`` on ``R^dim`` (dim >= 2)."""
    if dim < 2 or n_blocks < 1:
        raise ValueError(f"a coupling flow needs dim >= 2 and n_blocks >= 1, got dim={dim}, n_blocks={n_blocks}")
    config = CouplingConfig(int(dim), int(n_blocks), tuple(int(h) for h in hidden), bool(actnorm))
    layers: list[Bijection] = [ActNorm(dim)] if actnorm else []
    base = torch.arange(dim) % 2 == 0
    for i in range(n_blocks):
        layers.append(AffineCoupling(base if i % 2 == 0 else ~base, hidden))
        if actnorm:
            layers.append(ActNorm(dim))
    return FlowModel(InvertibleSequential(*layers), (dim,), config, kind="coupling")


@registry.register_model("coupling", CouplingConfig)
def _build(config: CouplingConfig) -> FlowModel:
    return coupling_flow(**config.kwargs())
