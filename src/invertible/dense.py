"""The i-DenseNet dense layer ``h(x) = [eta_1 x, eta_2 f(x)]``: a learnable weighted concatenation with a
certified Lipschitz bound (Perugachi-Diaz et al. 2021).

For ``f`` with ``Lip(f) <= K`` (a spectrally normalized Linear/Conv followed by :class:`~invertible.CLipSwish`),
concatenating along dim 1 gives

    ||h(x) - h(y)||^2 = eta_1^2 ||x - y||^2 + eta_2^2 ||f(x) - f(y)||^2 <= (eta_1^2 + eta_2^2 K^2) ||x - y||^2,

so ``Lip(h) <= sqrt(eta_1^2 + eta_2^2 K^2)``; the bound is attained for linear ``f`` (the Jacobian ``[eta_1 I;
eta_2 J_f]`` has ``||.||_2^2 = eta_1^2 + eta_2^2 ||J_f||_2^2``). The weights are learnable and normalized,
``eta_i = softplus(a_i) / sqrt(softplus(a_1)^2 + softplus(a_2)^2)``, so ``eta_1^2 + eta_2^2 = 1`` and
``Lip(h) <= sqrt(1 - eta_2^2 (1 - K^2)) <= max(1, K)``: with ``K <= 1`` a dense layer is 1-Lipschitz whatever the
weights learn, and a residual function ``g = W o h_L o ... o h_1`` has ``Lip(g) <= ||W||_2 prod_l Lip(h_l) <=
||W||_2 < 1`` (eq. 4.6), i.e. an invertible block (Theorem 4.1).

Leaf module: imports only torch. The certificates (:func:`invertible.lipschitz.lipschitz_constant`,
:meth:`invertible.ResidualBlock.lipschitz_estimate`, :mod:`invertible.models.certify`) bound ``f`` recursively and
combine the result with :meth:`DenseLayer.lipschitz_from`.

References: Perugachi-Diaz, Tomczak, Bhulai (2021) "Invertible DenseNets with Concatenated LipSwish"; Huang et
al. (2017) "Densely Connected Convolutional Networks".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseLayer"]


class DenseLayer(nn.Module):
    """``h(x) = [eta_1 x, eta_2 f(x)]`` concatenated along dim 1 (module docstring): ``(B, C, ...) -> (B, C + C_f,
    ...)`` where ``f`` maps ``(B, C, ...)`` to ``(B, C_f, ...)`` with the same trailing shape.

    Args:
        f: the new features, e.g. ``Sequential(spectral_norm(Linear(C, k)), CLipSwish())`` (``C_f = 2k``).
        eta: the initial ``(eta_1, eta_2)``, positive; normalized to unit length (default: equal weights).
    """

    def __init__(self, f: nn.Module, eta: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if len(eta) != 2 or not all(math.isfinite(float(e)) and float(e) > 0 for e in eta):
            raise ValueError(f"DenseLayer: eta must be two finite numbers > 0, got {eta!r}")
        self.f = f
        # inverse softplus of the initial weights (their scale is irrelevant after normalization)
        raw = torch.tensor([float(e) for e in eta], dtype=torch.float64)
        self.raw_eta = nn.Parameter(torch.log(torch.expm1(raw)).to(torch.get_default_dtype()))

    def eta(self) -> torch.Tensor:
        """``(eta_1, eta_2)`` with ``eta_1^2 + eta_2^2 = 1``, shape ``(2,)``."""
        w = F.softplus(self.raw_eta)
        return w / w.norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fx = self.f(x)
        if fx.shape[0] != x.shape[0] or fx.shape[2:] != x.shape[2:]:
            raise ValueError(f"DenseLayer: f maps {tuple(x.shape)} to {tuple(fx.shape)}; the concatenation along "
                             "dim 1 needs the same batch and trailing shape")
        eta = self.eta().to(x.dtype)
        return torch.cat([eta[0] * x, eta[1] * fx], 1)

    def lipschitz_from(self, inner: float) -> float:
        """``sqrt(eta_1^2 + eta_2^2 K^2)``: the bound on ``Lip(h)`` given a bound ``K = inner`` on ``Lip(f)``."""
        e1, e2 = (float(v) for v in self.eta().detach().double())
        return math.sqrt(e1 * e1 + e2 * e2 * float(inner) ** 2)

    def extra_repr(self) -> str:
        e1, e2 = (float(v) for v in self.eta().detach())
        return f"eta=({e1:.3g}, {e2:.3g})"
