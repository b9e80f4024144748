"""1-Lipschitz activations for contractive residual blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LipSwish"]


class LipSwish(nn.Module):
    """``LipSwish(x) = x * sigmoid(beta x) / 1.1`` with learnable ``beta = softplus(b) > 0``.

    ``sup_x |d/dx x sigmoid(beta x)| <= 1.0998`` for every beta > 0, so dividing by 1.1 makes it
    1-Lipschitz; unlike ReLU it is smooth, so its Jacobian is continuous (Corollary 4.4, Theorem 5.9).

    References: Chen et al. (2019) "Residual Flows for Invertible Generative Modeling".
    """

    lipschitz = 1.0

    def __init__(self, beta: float = 1.0):
        super().__init__()
        b = torch.log(torch.expm1(torch.tensor(float(beta))))  # inverse softplus
        self.raw_beta = nn.Parameter(b)

    @property
    def beta(self) -> torch.Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * self.beta.to(x.dtype)) / 1.1

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):.3g}"
