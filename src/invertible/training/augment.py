"""Seeded image augmentation for classifier training (Appendix A.1: random shifts, horizontal flips)."""

from __future__ import annotations

import torch

__all__ = ["random_shift", "random_flip"]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate every image of ``x`` (shape ``(B, C, H, W)``) by its own integer offset in
    ``[-max_shift, max_shift]^2``, filling uncovered pixels with zeros (pad and crop).

    Offsets are drawn on the CPU from ``generator`` so that a seeded run is reproducible on any device.
    """
    if x.dim() != 4:
        raise ValueError(f"random_shift expects (B, C, H, W), got {tuple(x.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = int(max_shift)
    offsets = torch.randint(0, 2 * s + 1, (2, b), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    rows = torch.arange(h, device=x.device)[None, :] + offsets[0][:, None]  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] + offsets[1][:, None]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``x`` (``(B, C, H, W)``) horizontally with probability 1/2."""
    if x.dim() != 4:
        raise ValueError(f"random_flip expects (B, C, H, W), got {tuple(x.shape)}")
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
