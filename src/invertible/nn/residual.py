"""The i-ResNet block ``F(x) = x + g(x)`` with ``Lip(g) < 1``: forward, log-det, inverse."""

from __future__ import annotations

import math

import torch
from torch import nn

from invertible.activations import activation_lipschitz
from invertible.inverse import AbstractSolver, FixedPoint, InverseResult
from invertible.lipschitz import LINEAR_TYPES, lipschitz_constant, spectral_norm_of
from invertible.logdet import AbstractLogDet, RussianRouletteLogDet
from invertible.nn.base import Bijection, check_input

__all__ = ["ResidualBlock"]

class ResidualBlock(Bijection):
    """Invertible residual block ``y = x + g(x)`` (Theorem 4.1).

    Args:
        g: the residual function, e.g. an ``nn.Sequential`` of spectrally normalized layers and 1-Lipschitz
            activations (eq. 4.5), mapping ``(B, *shape)`` to the same shape, samples independently.
        logdet: estimator of ``log det(I + J_g)``, an :class:`~invertible.AbstractLogDet`:
            :class:`~invertible.ExactLogDet`, :class:`~invertible.ForwardJacobianLogDet`,
            :class:`~invertible.PowerSeriesLogDet` (Algorithm 2) or :class:`~invertible.RussianRouletteLogDet`
            (default, unbiased).
        inverse: solver of ``x = y - g(x)``, an :class:`~invertible.AbstractSolver`:
            :class:`~invertible.FixedPoint` (Algorithm 1, default) or :class:`~invertible.Anderson`.

    ``inverse(y)`` records the solver's :class:`~invertible.InverseResult` in ``last_inverse``; its error bound
    uses the certified ``Lip(g)`` from :meth:`certify` when available, else the spectral-norm estimate.
    Requires ``Lip(g) < 1`` for invertibility and for the series estimators.

    Example:
        >>> import invertible as inv
        >>> g = nn.Sequential(inv.spectral_norm(nn.Linear(2, 16), 0.9), inv.LipSwish(),
        ...                   inv.spectral_norm(nn.Linear(16, 2), 0.9))
        >>> block = inv.ResidualBlock(g, logdet=inv.ExactLogDet())
        >>> x = torch.randn(4, 2)
        >>> y, logdet = block.forward_and_logdet(x)
        >>> torch.allclose(block.inverse(y), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        g: nn.Module,
        logdet: AbstractLogDet | None = None,
        inverse: AbstractSolver | None = None,
    ):
        super().__init__()
        self.g = g
        self.logdet = logdet if logdet is not None else RussianRouletteLogDet()
        self.solver = inverse if inverse is not None else FixedPoint()
        self.last_inverse: InverseResult | None = None
        self.register_buffer("certified_lipschitz", torch.tensor(math.nan, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "ResidualBlock")
        self._stale()
        return x + self.g(x)

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, "ResidualBlock")
        self._stale()
        gx, logdet = self.logdet(self.g, x)
        return x + gx, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "ResidualBlock.inverse")
        lip = self.lipschitz_bound()
        if lip is not None and lip >= 1:
            raise ValueError(
                f"ResidualBlock.inverse: the block is not contractive (Lip(g) <= {lip:.4g} is not < 1); "
                "the fixed-point inverse is not guaranteed to exist. Use spectral_norm with coeff < 1."
            )
        self.last_inverse = self.solver(self.g, y, lipschitz=lip)
        return self.last_inverse.x

    def _stale(self) -> None:
        if self.training and torch.is_grad_enabled() and not math.isnan(float(self.certified_lipschitz)):
            self.certified_lipschitz.fill_(math.nan)  # weights are about to change

    def certify(self, input_shape: tuple[int, ...] | None = None) -> float:
        """Compute and store the certified ``Lip(g)`` (exact layer norms, eq. 4.6); returns it."""
        lip = lipschitz_constant(self.g, input_shape)
        self.certified_lipschitz.fill_(lip)
        return lip

    def lipschitz_estimate(self) -> float | None:
        """``prod_i min(sigma_i, c) * prod Lip(phi)`` from the power-iteration state (not a certificate);
        ``None`` when g contains a linear layer without spectral normalization or an unknown module."""
        est = 1.0
        for m in _leaves(self.g):
            if isinstance(m, LINEAR_TYPES):
                sn = spectral_norm_of(m)
                if sn is None or not sn.initialized:
                    return None
                est *= sn.normalized_norm_estimate()
            else:
                c = activation_lipschitz(m)
                if c is None:
                    return None
                est *= c
        return est

    def lipschitz_bound(self) -> float | None:
        """The certified ``Lip(g)`` if :meth:`certify` ran since the last update, else the estimate."""
        cert = float(self.certified_lipschitz)
        return cert if not math.isnan(cert) else self.lipschitz_estimate()

    def extra_repr(self) -> str:
        return f"logdet={self.logdet!r}, inverse={self.solver!r}"


def _leaves(module: nn.Module):
    children = list(module.children())
    if not children or isinstance(module, LINEAR_TYPES):
        yield module
        return
    for c in children:
        yield from _leaves(c)
