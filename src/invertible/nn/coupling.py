"""Additive coupling: the reversible step of RevNet / i-RevNet / fi-RevNet (NICE, Dinh et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from invertible.nn.base import Bijection, check_input

__all__ = ["AdditiveCoupling"]


class AdditiveCoupling(Bijection):
    """Split ``x = (x1, x2)`` along dim 1 (``x1`` the first ``split`` channels/features) and set

        y1 = x1,    y2 = x2 + t(x1),

    returning ``(y2, y1)`` if ``swap`` (the i-RevNet convention, so stacked couplings alternate halves) else
    ``(y1, y2)``. The Jacobian is block-triangular with identity diagonal blocks (times a permutation), so
    ``log|det J| = 0`` exactly, and the inverse is exact: ``x2 = y2 - t(y1)``.

    Args:
        t: any module mapping ``(B, split, *rest)`` to ``(B, C - split, *rest)``; it need not be invertible.
        n_channels: ``C``, the size of dim 1 of the input.
        split: size of ``x1``; default ``C // 2``.
        swap: exchange the halves in the output (default True).

    Inputs of shape ``(B, C)``, ``(B, C, L)`` or ``(B, C, H, W)``; log-dets of shape ``(B,)``.

    References: Dinh et al. (2015) "NICE"; Gomez et al. (2017) "The Reversible Residual Network";
    Jacobsen et al. (2018) "i-RevNet"; Jacobsen, Behrmann et al. (2019) "Excessive Invariance Causes Adversarial
    Vulnerability" (fi-RevNet).

    Example:
        >>> c = AdditiveCoupling(nn.Linear(2, 2), n_channels=4)
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(c.inverse(c(x)), x, atol=1e-6)
        True
    """

    def __init__(self, t: nn.Module, n_channels: int, split: int | None = None, swap: bool = True):
        super().__init__()
        if n_channels < 2:
            raise ValueError(f"AdditiveCoupling needs n_channels >= 2 to split, got {n_channels}")
        split = n_channels // 2 if split is None else int(split)
        if not 0 < split < n_channels:
            raise ValueError(f"split must lie in (0, {n_channels}), got {split}")
        self.t = t
        self.n_channels, self.split, self.swap = int(n_channels), split, bool(swap)

    def _shift(self, x1: torch.Tensor, expected: torch.Size) -> torch.Tensor:
        s = self.t(x1)
        if s.shape != expected:
            raise ValueError(
                f"AdditiveCoupling: t maps {tuple(x1.shape)} to {tuple(s.shape)}, expected {tuple(expected)}"
            )
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "AdditiveCoupling", n_channels=self.n_channels)
        x1, x2 = x[:, : self.split], x[:, self.split :]
        y2 = x2 + self._shift(x1, x2.shape)
        return torch.cat([y2, x1] if self.swap else [x1, y2], dim=1)

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "AdditiveCoupling.inverse", n_channels=self.n_channels)
        n2 = self.n_channels - self.split
        if self.swap:
            y2, y1 = y[:, :n2], y[:, n2:]
        else:
            y1, y2 = y[:, : self.split], y[:, self.split :]
        return torch.cat([y1, y2 - self._shift(y1, y2.shape)], dim=1)

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, split={self.split}, swap={self.swap}"
