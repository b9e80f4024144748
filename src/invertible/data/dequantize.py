"""Uniform dequantization of discrete data and the bits/dim conversion (thesis Section 5.3, Lemma 5.10)."""

from __future__ import annotations

import math

import torch

__all__ = ["dequantize", "nats_to_bits_per_dim"]


def dequantize(
    x: torch.Tensor, generator: torch.Generator | None = None, n_bins: int = 256, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``y = (x + u) / n_bins`` with ``u ~ U[0, 1)^d``: integer data in ``{0..n_bins-1}`` -> ``[0, 1)``.

    By Lemma 5.10, ``E[log p(y)] - d log n_bins <= E[log P(x)]``: a continuous model of ``y`` bounds the discrete
    likelihood. ``x`` is uint8 (or integer-valued) of any shape ``(B, ...)``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"dequantize expects a tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8 and (torch.is_floating_point(x) and (x != x.round()).any()):
        raise ValueError("dequantize expects integer-valued data (e.g. uint8 images)")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n_bins):
        raise ValueError(f"dequantize expects values in [0, {n_bins - 1}], got [{int(x.min())}, {int(x.max())}]")
    u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    return (x.to(dtype) + u) / n_bins


def nats_to_bits_per_dim(nll_nats: float | torch.Tensor, dim: int, n_bins: int = 256):
    """Bits/dim of the discrete data from the NLL (nats) of its dequantized version ``y = (x + u) / n_bins``:
    ``(nll + d log n_bins) / (d log 2)`` (Section 5.3: base 2, the ``log2(256)`` of the rescaling, per dim)."""
    return (nll_nats + dim * math.log(n_bins)) / (dim * math.log(2))
