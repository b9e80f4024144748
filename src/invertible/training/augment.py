"""Seeded image augmentation for classifier training (Appendix A.1: random shifts, horizontal flips).

:class:`Augmentation` bundles the two with the order of their random draws (shift offsets, then flips) and can
*skip* a batch: make exactly the draws that augmenting it would make, without touching images, so that a data
source can replay a generator's stream up to any batch cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Augmentation", "random_flip", "random_shift"]


def _shift_offsets(b: int, max_shift: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)


def _flip_draws(b: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(b, generator=generator) < 0.5


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
    offsets = _shift_offsets(b, s, generator).to(x.device)
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
    flip = _flip_draws(x.shape[0], generator).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass(frozen=True)
class Augmentation:
    """A.1's augmentation of a batch ``(B, C, H, W)``: :func:`random_shift` by up to ``shift`` pixels, then
    (``flip=True``) :func:`random_flip`, both drawing from one generator in that order."""

    shift: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {self.shift}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_shift(x, self.shift, generator)
        return random_flip(x, generator) if self.flip else x

    def skip(self, batch_size: int, generator: torch.Generator) -> None:
        """Advance ``generator`` exactly as augmenting a batch of ``batch_size`` images would."""
        if self.shift > 0:
            _shift_offsets(batch_size, self.shift, generator)
        if self.flip:
            _flip_draws(batch_size, generator)
