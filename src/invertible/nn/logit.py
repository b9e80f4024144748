"""The logit pre-transform of image flows (Dinh et al. 2017)."""

from __future__ import annotations

import math

import torch

from invertible.nn.base import Bijection, check_input
from invertible.nn.traits import Capabilities

__all__ = ["LogitTransform"]


class LogitTransform(Bijection):
    """The logit pre-transform for data in ``[0, 1]``: ``y = logit(a + (1 - 2a) x)`` (Dinh et al. 2017),
    ``log|det J| = sum_i [log(1 - 2a) - log s_i - log(1 - s_i)]`` with ``s = a + (1 - 2a) x``. Any shape
    ``(B, ...)``; log-det shape ``(B,)``. Inverse: ``x = (sigmoid(y) - a) / (1 - 2a)``.

    References: Dinh et al. (2017) "Density estimation using Real NVP".
    """

    CAPABILITIES = Capabilities(free_form=None, analytic_forward=True, analytic_inverse=True,
                                volume_preserving=False, exact_logdet=True, bi_lipschitz=False)

    def __init__(self, alpha: float = 1e-5):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, "LogitTransform (data in [0, 1], e.g. dequantized pixels)", bounds=(0.0, 1.0))
        s = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(s) - torch.log1p(-s)
        ld = (math.log1p(-2 * self.alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return y, ld

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "LogitTransform.inverse")
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
