"""Normalizing flows as ``torch.distributions.Distribution`` (change of variables, eq. 5.4)."""

from __future__ import annotations

import math

import torch
from torch import distributions as D

from invertible.nn.base import Bijection

__all__ = ["Flow", "standard_normal"]


def standard_normal(event_shape: tuple[int, ...], device=None, dtype=None) -> D.Distribution:
    """``N(0, I)`` over ``event_shape`` as an ``Independent`` distribution."""
    loc = torch.zeros(event_shape, device=device, dtype=dtype or torch.get_default_dtype())
    return D.Independent(D.Normal(loc, torch.ones_like(loc)), len(event_shape))


class Flow(D.Distribution):
    """``p_X(x) = p_Z(F(x)) |det J_F(x)|`` (Lemma 5.2, eq. 5.4) for a bijection F from data to latent space.

    ``log_prob`` returns per-sample log-densities (natural log) using ``F.forward_and_logdet``; its honesty is
    that of F's log-det estimators (exact, or unbiased for Russian roulette). ``sample`` draws ``z ~ p_Z`` and
    returns ``F^{-1}(z)``; ``rsample`` differentiates through the inverse solver's iterations.

    Args:
        bijection: the map F (data -> latent), e.g. an :class:`~invertible.InvertibleSequential`.
        base: the latent distribution with the latent event shape; ``None`` with ``event_shape`` gives ``N(0, I)``.
    """

    arg_constraints: dict = {}
    support = D.constraints.real
    has_rsample = True

    def __init__(
        self,
        bijection: Bijection,
        base: D.Distribution | None = None,
        event_shape: tuple[int, ...] | None = None,
    ):
        if base is None:
            if event_shape is None:
                raise ValueError("Flow needs a base distribution or an event_shape for N(0, I)")
            base = standard_normal(tuple(event_shape))
        self.bijection = bijection
        self.base = base
        super().__init__(batch_shape=torch.Size(), event_shape=base.event_shape, validate_args=False)

    def _base_like(self, x: torch.Tensor) -> D.Distribution:
        b = self.base
        if isinstance(b, D.Independent) and isinstance(b.base_dist, D.Normal):
            loc = b.base_dist.loc.to(device=x.device, dtype=x.dtype)
            scale = b.base_dist.scale.to(device=x.device, dtype=x.dtype)
            return D.Independent(D.Normal(loc, scale), b.reinterpreted_batch_ndims)
        return b

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` of shape ``(batch,)``."""
        z, logdet = self.bijection.forward_and_logdet(x)
        if tuple(z.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"Flow.log_prob: the bijection maps x of shape {tuple(x.shape[1:])} to z of shape "
                f"{tuple(z.shape[1:])}, but the base distribution has event shape {tuple(self.event_shape)}"
            )
        return self._base_like(z).log_prob(z) + logdet

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        shape = torch.Size(sample_shape)
        n = math.prod(shape) if len(shape) else 1
        base = self.base
        if isinstance(base, D.Independent) and isinstance(base.base_dist, D.Normal):
            loc, scale = base.base_dist.loc, base.base_dist.scale
            eps = torch.randn((n, *loc.shape), generator=generator, dtype=loc.dtype, device=loc.device)
            z = loc + scale * eps
        else:
            z = base.sample((n,))
        param = next(self.bijection.parameters(), None)
        if param is not None:  # sample where the model lives (the default base is built on the CPU)
            z = z.to(device=param.device, dtype=param.dtype)
        x = self.bijection.inverse(z)
        return x.reshape(*shape, *x.shape[1:]) if len(shape) else x[0]

    def bits_per_dim(
        self, x: torch.Tensor, n_bins: int = 256, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Bits per dimension of quantized data under uniform dequantization (section 5.3, Lemma 5.10).

        ``x`` holds integers in ``{0, ..., n_bins - 1}`` (e.g. uint8 images, shape ``(batch, ...)``); the flow models
        ``y = (x + u) / n_bins`` with ``u ~ U[0, 1)^d``, so ``-log2 P(x) <= -(log p(y) - d log n_bins) / log 2``.
        Returns the per-sample bound of shape ``(batch,)``, divided by ``d``.
        """
        if torch.is_floating_point(x) and ((x < 0).any() or (x > n_bins - 1).any() or (x != x.round()).any()):
            raise ValueError(f"bits_per_dim expects integer data in [0, {n_bins - 1}], e.g. uint8 images")
        dtype = next((p.dtype for p in self.bijection.parameters()), torch.get_default_dtype())
        u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
        y = (x.to(dtype) + u) / n_bins
        d = x[0].numel()
        logp = self.log_prob(y) - d * math.log(n_bins)
        return -logp / (d * math.log(2))
