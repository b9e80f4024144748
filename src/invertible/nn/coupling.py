"""Coupling layers: additive (the reversible step of RevNet / i-RevNet / fi-RevNet; NICE, Dinh et al. 2015) and
affine (Real NVP / Glow; the baseline of Fig. 5.2). Both change half of the coordinates as a function of the other
half, so the Jacobian is block-triangular and the inverse analytic."""

from __future__ import annotations

import torch
from torch import nn

from invertible.checks import check_count, check_real
from invertible.nn.base import Bijection, check_input, check_like_module
from invertible.nn.traits import Capabilities

__all__ = ["AdditiveCoupling", "AffineCoupling"]


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

    CAPABILITIES = Capabilities(free_form=False, analytic_forward=True, analytic_inverse=True,
                                volume_preserving=True, exact_logdet=True, bi_lipschitz=False)

    def __init__(self, t: nn.Module, n_channels: int, split: int | None = None, swap: bool = True):
        super().__init__()
        n_channels = check_count("n_channels (AdditiveCoupling splits them in two)", n_channels, 2)
        split = n_channels // 2 if split is None else check_count("split", split, 1)
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
        check_like_module(x, self, "AdditiveCoupling")
        x1, x2 = x[:, : self.split], x[:, self.split :]
        y2 = x2 + self._shift(x1, x2.shape)
        return torch.cat([y2, x1] if self.swap else [x1, y2], dim=1)

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "AdditiveCoupling.inverse", n_channels=self.n_channels)
        check_like_module(y, self, "AdditiveCoupling.inverse")
        n2 = self.n_channels - self.split
        if self.swap:
            y2, y1 = y[:, :n2], y[:, n2:]
        else:
            y1, y2 = y[:, : self.split], y[:, self.split :]
        return torch.cat([y1, y2 - self._shift(y1, y2.shape)], dim=1)

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, split={self.split}, swap={self.swap}"


class AffineCoupling(Bijection):
    """``y_b = x_b exp(s(x_a)) + t(x_a)``, ``y_a = x_a`` for a boolean ``mask`` selecting ``a`` (shape ``(d,)``);
    inputs ``(B, d)``, log-det ``sum s`` of shape ``(B,)``. ``s, t`` come from one MLP with ``hidden`` widths
    (SiLU between layers, last layer zero: the coupling starts as the identity), and ``s = scale tanh(s_raw / scale)``
    is bounded for stability. Inverse: ``x_b = (y_b - t(y_a)) exp(-s(y_a))``.

    References: Dinh et al. (2017) "Density estimation using Real NVP"; Kingma & Dhariwal (2018) "Glow".
    """

    CAPABILITIES = Capabilities(free_form=False, analytic_forward=True, analytic_inverse=True,
                                volume_preserving=False, exact_logdet=True, bi_lipschitz=False)

    def __init__(self, mask: torch.Tensor, hidden: tuple[int, ...] | list[int] = (128, 128), scale: float = 2.0):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 1 or mask.all() or not mask.any():
            raise ValueError("mask must be a 1-D boolean tensor with both True and False entries")
        self.register_buffer("idx_a", torch.nonzero(mask).flatten())
        self.register_buffer("idx_b", torch.nonzero(~mask).flatten())
        self.dim, self.scale = mask.numel(), check_real("scale", scale, 0.0, strict=True)
        da, db = len(self.idx_a), len(self.idx_b)
        dims = [da, *[check_count("hidden width", h, 1) for h in hidden], 2 * db]
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
        check_like_module(x, self, "AffineCoupling")
        xa, xb = x[:, self.idx_a], x[:, self.idx_b]
        s, t = self._st(xa)
        y = torch.empty_like(x)
        y[:, self.idx_a] = xa
        y[:, self.idx_b] = xb * torch.exp(s) + t
        return y, s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "AffineCoupling.inverse", n_channels=self.dim)
        check_like_module(y, self, "AffineCoupling.inverse")
        ya, yb = y[:, self.idx_a], y[:, self.idx_b]
        s, t = self._st(ya)
        x = torch.empty_like(y)
        x[:, self.idx_a] = ya
        x[:, self.idx_b] = (yb - t) * torch.exp(-s)
        return x
