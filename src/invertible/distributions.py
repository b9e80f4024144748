"""Normalizing flows as ``torch.distributions.Distribution`` (change of variables, eq. 5.4), and their module face.

:class:`Flow` is THE density: ``log p(x) = log p_Z(F(x)) + log|det J_F(x)|``. :class:`FlowModel` is the same
density as an ``nn.Module`` for training (``forward(x) = log p(x)``, wrappable in ``DistributedDataParallel``);
it holds the bijection and delegates ``log_prob`` and ``sample`` to :meth:`FlowModel.distribution`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import distributions as D
from torch import nn

from invertible.nn.base import Bijection, check_like_module

__all__ = ["Flow", "FlowModel", "StandardNormal", "standard_normal"]


class StandardNormal(D.Independent):
    """``N(0, I)`` over an event shape; ``log_prob(z) = -|z|^2 / 2 - (D / 2) log(2 pi)`` summed over the event
    (the closed form, cheaper than the generic Normal), shape ``(B,)`` for ``z`` of shape ``(B, *event_shape)``.

    ``log_prob`` refuses a non-tensor, a non-floating dtype and a wrong event shape; with ``validate_args`` (torch's
    default) also NaN/inf values, as ``torch.distributions.Normal`` does. :class:`Flow` builds its default base with
    ``validate_args=False``: it has checked its input already, and the test costs a device-to-host sync."""

    def __init__(self, event_shape: Sequence[int], device=None, dtype=None, validate_args: bool | None = None):
        shape = tuple(int(s) for s in event_shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"event_shape must hold sizes >= 0, got {shape}")
        try:
            loc = torch.zeros(shape, device=device, dtype=dtype or torch.get_default_dtype())
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"StandardNormal: cannot place N(0, I) on device={device!r}, dtype={dtype!r}: "
                             f"{str(err).splitlines()[0][:200]}") from err
        super().__init__(D.Normal(loc, torch.ones_like(loc), validate_args=False), len(shape),
                         validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        event = tuple(self.event_shape)
        if not isinstance(value, torch.Tensor) or not torch.is_floating_point(value) \
                or tuple(value.shape[value.dim() - len(event):]) != event or value.dim() < len(event):
            got = f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) \
                else type(value).__name__
            raise ValueError(f"StandardNormal.log_prob: expected a floating tensor (..., "
                             f"{', '.join(map(str, event))}), got {got}")
        if self._validate_args and not bool(torch.isfinite(value).all()):
            raise ValueError("StandardNormal.log_prob: value contains NaN or inf")
        n = len(self.event_shape)
        z = value.flatten(-n) if n else value.unsqueeze(-1)
        return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def standard_normal(event_shape: tuple[int, ...], device=None, dtype=None) -> D.Distribution:
    """``N(0, I)`` over ``event_shape`` as an ``Independent`` distribution (:class:`StandardNormal`)."""
    return StandardNormal(event_shape, device=device, dtype=dtype)


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
            base = StandardNormal(tuple(event_shape), validate_args=False)
        self.bijection = bijection
        self.base = base
        super().__init__(batch_shape=torch.Size(), event_shape=base.event_shape, validate_args=False)

    def _base_like(self, x: torch.Tensor) -> D.Distribution:
        b = self.base
        if isinstance(b, StandardNormal):
            return b  # closed form: needs no loc / scale on x's device
        if isinstance(b, D.Independent) and isinstance(b.base_dist, D.Normal):
            loc = b.base_dist.loc.to(device=x.device, dtype=x.dtype)
            scale = b.base_dist.scale.to(device=x.device, dtype=x.dtype)
            return D.Independent(D.Normal(loc, scale), b.reinterpreted_batch_ndims)
        return b

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` of shape ``(batch,)``; a bad input (shape, dtype, NaN) is a ``ValueError`` naming it."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError(f"Flow.log_prob: expected a batch of samples, a tensor (batch, ...), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        try:
            z, logdet = self.bijection.forward_and_logdet(x)
        except ValueError as err:
            if type(err) is not ValueError:
                raise
            raise ValueError(f"Flow.log_prob: x of shape {tuple(x.shape)}: {err}") from err
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
        try:
            shape = torch.Size(sample_shape)
        except TypeError as err:
            raise ValueError(f"sample_shape must be a sequence of integers >= 0, got {sample_shape!r}") from err
        if any(s < 0 for s in shape):
            raise ValueError(f"sample_shape must be a sequence of integers >= 0, got {tuple(shape)}")
        n = math.prod(shape) if len(shape) else 1
        base = self.base
        if isinstance(base, StandardNormal):
            loc = base.base_dist.loc
            z = torch.randn((n, *loc.shape), generator=generator, dtype=loc.dtype, device=loc.device)
        elif isinstance(base, D.Independent) and isinstance(base.base_dist, D.Normal):
            loc, scale = base.base_dist.loc, base.base_dist.scale
            eps = torch.randn((n, *loc.shape), generator=generator, dtype=loc.dtype, device=loc.device)
            z = loc + scale * eps
        else:
            z = base.sample((n,))
        param = next(self.bijection.parameters(), None)
        if param is not None:  # sample where the model lives (the default base is built on the CPU)
            z = z.to(device=param.device, dtype=param.dtype)
        try:
            x = self.bijection.inverse(z)
        except ValueError as err:
            if type(err) is not ValueError:
                raise
            raise ValueError(f"Flow.sample: the bijection cannot invert latents z of shape {tuple(z.shape)} (the "
                             f"base distribution's event shape {tuple(self.event_shape)}): {err}") from err
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


class FlowModel(nn.Module):
    """A normalizing flow as an ``nn.Module``: ``forward(x)`` returns ``log p(x)`` of shape ``(B,)`` (eq. 5.4), so it
    can be wrapped in ``DistributedDataParallel``. The density is :meth:`distribution`, a :class:`Flow` with a
    standard normal base over the flat latent ``(latent_dim,)``; there is no second change-of-variables formula.

    Args:
        bijection: data -> latent map F; it maps ``(B, *event_shape)`` to flat latents ``(B, latent_dim)``.
        event_shape: the data shape of one sample. config: the typed config that rebuilds the model
            (:func:`invertible.models.registry.build_model`); ``kind``: its registry kind.

    Attributes:
        latent_dim (= ``dim``): ``prod(event_shape)``. config_dict: ``{"kind": kind, **config}``, JSON-able (the
        checkpoint schema).
    """

    def __init__(self, bijection: Bijection, event_shape: Sequence[int], config: Any = None, kind: str | None = None):
        super().__init__()
        self.bijection = bijection
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = math.prod(self.event_shape)
        self.config = config
        self.kind = kind

    @property
    def dim(self) -> int:
        return self.latent_dim

    @property
    def config_dict(self) -> dict[str, Any]:
        """The config as stored in checkpoints: ``{"kind": ..., field: value, ...}``, JSON-able (a typed config's
        ``to_dict()``, see :mod:`invertible.models.registry`; a plain mapping is copied)."""
        fields = {} if self.config is None else (
            self.config.to_dict() if hasattr(self.config, "to_dict") else dict(self.config)
        )
        return {"kind": self.kind, **{k: v for k, v in fields.items() if k != "kind"}}

    def distribution(self) -> Flow:
        """The model as a :class:`Flow` with a standard normal base, on the device and dtype of its parameters."""
        p = next(self.parameters())
        return Flow(self.bijection, base=standard_normal((self.latent_dim,), device=p.device, dtype=p.dtype))

    def flow(self) -> Flow:
        """Alias of :meth:`distribution`."""
        return self.distribution()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log N(F(x); 0, I) + log|det J_F(x)|`` per sample (natural log), shape ``(B,)``."""
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.event_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            shape = ", ".join(map(str, self.event_shape))
            raise ValueError(f"expected data of shape (B, {shape}), got {got}")
        check_like_module(x, self, "FlowModel.log_prob")
        if tuple(x.shape[1:]) != self.event_shape:
            shape = ", ".join(map(str, self.event_shape))
            raise ValueError(f"expected data of shape (B, {shape}), got {tuple(x.shape)}")
        return self.distribution().log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``F^{-1}(z)``, ``z ~ N(0, I)`` (fixed-point inverse per block, Algorithm 1), shape
        ``(n, *event_shape)``."""
        try:
            count = operator.index(n)
        except TypeError:
            count = -1
        if isinstance(n, bool) or count < 0:
            raise ValueError(f"sample: n must be an integer >= 0, got {n!r}")
        return self.distribution().sample((count,), generator=generator)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialization (ActNorm, spectral-norm vectors) from one batch, in training mode."""
        was = self.training
        self.train()
        self.log_prob(x)
        self.train(was)

