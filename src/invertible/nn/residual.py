"""The i-ResNet block ``F(x) = x + g(x)`` with ``Lip(g) < 1``: forward, log-det, inverse."""

from __future__ import annotations

import math

import torch
from torch import nn

from invertible.activations import activation_lipschitz
from invertible.inverse import AbstractSolver, FixedPoint, InverseResult
from invertible.lipschitz import LINEAR_TYPES, frozen_spectral_norm, lipschitz_constant, spectral_norm_of
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
    uses the certified ``Lip(g)`` from :meth:`certify` while the weights are those it certified, else a fresh
    estimate on the current weights (:meth:`lipschitz_estimate`); ``inverse`` refuses (``ValueError``) a block
    whose constant is ``>= 1``, since Theorem 4.1 and Lemma 4.5 need ``Lip(g) < 1`` (as do the series estimators).

    Inputs are checked at the boundary: a floating ``(B, ...)`` tensor, finite, with the features (``Linear``) or
    channels (``Conv``) of g's first layer, g's dtype and device; g must keep the shape.

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
        self._certified_key: tuple | None = None  # the weights the certificate belongs to (not state)
        self._estimate_cache: tuple[tuple, float | None] | None = None
        self.register_load_state_dict_post_hook(_adopt_loaded_certificate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "ResidualBlock")
        self._stale()
        return x + self._checked_output(x, self.g(x), "ResidualBlock")

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "ResidualBlock")
        self._stale()
        gx, logdet = self.logdet(self.g, x)
        return x + self._checked_output(x, gx, "ResidualBlock"), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "ResidualBlock.inverse")
        lip = self.lipschitz_bound()
        if lip is not None and lip >= 1:
            raise ValueError(
                f"ResidualBlock.inverse: the block with g = {_describe(self.g)} is not contractive: its Lipschitz "
                f"constant is estimated at {lip:.4g} on the current weights (not < 1), so the fixed-point "
                "inverse is not guaranteed to exist (Theorem 4.1). Were the weights changed without a training "
                "forward? Use spectral_norm with coeff < 1, or invertible.converge_spectral_norms(model)."
            )
        self.last_inverse = self.solver(self.g, y, lipschitz=lip)
        return self.last_inverse.x

    # -- boundary checks (metadata only: no device sync) -------------------------------------------------------
    def _check(self, x: torch.Tensor, name: str) -> None:
        check_input(x, name)
        first = _first_operator(self.g)
        if isinstance(first, nn.Linear):
            if x.shape[-1] != first.in_features:
                raise ValueError(f"{name}: g's first layer takes {first.in_features} features, so the input must "
                                 f"have shape (B, {first.in_features}); got {tuple(x.shape)}")
        elif first is not None:
            dims = len(first.kernel_size)
            if x.dim() != dims + 2 or x.shape[1] != first.in_channels:
                spatial = ", ".join("LHW"[i] if dims == 1 else "HW"[i] for i in range(dims))
                raise ValueError(f"{name}: g's first layer ({_name(first)}) takes inputs of shape "
                                 f"(B, {first.in_channels}, {spatial}); got {tuple(x.shape)}")
        p = next(self.g.parameters(), None)
        if p is not None:
            if x.device != p.device:
                raise ValueError(f"{name}: g lives on {p.device}, the input on {x.device}")
            if x.dtype != p.dtype and not torch.is_autocast_enabled():
                raise ValueError(f"{name}: g has {p.dtype} parameters, the input is {x.dtype}; convert one")

    @staticmethod
    def _checked_output(x: torch.Tensor, gx: torch.Tensor, name: str) -> torch.Tensor:
        if gx.shape != x.shape:
            raise ValueError(f"{name}: g maps {tuple(x.shape)} to {tuple(gx.shape)}; a residual block y = x + g(x) "
                             "needs g to keep the shape")
        return gx

    # -- Lipschitz constant --------------------------------------------------------------------------------------
    def _weights_key(self) -> tuple:
        """Identifies g's current weights and power-iteration vectors (storage and in-place version counters):
        changes on every optimizer step, ``copy_``, ``load_state_dict`` or training forward; costs no device sync.
        ``sigma`` buffers, rewritten by every forward and unused by the frozen map, are left out."""
        tensors = [p for p in self.g.parameters()]
        tensors += [b for n, b in self.g.named_buffers() if not n.endswith("sigma")]
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def _stale(self) -> None:
        # ``_certified_key`` is set exactly while a certificate is stored (certify, load): a host-side test, so a
        # training forward costs no device sync.
        if self.training and torch.is_grad_enabled() and self._certified_key is not None:
            self.certified_lipschitz.fill_(math.nan)  # weights are about to change
            self._certified_key = None

    def certify(self, input_shape: tuple[int, ...] | None = None) -> float:
        """Compute and store the certified ``Lip(g)`` (exact layer norms, eq. 4.6); returns it."""
        lip = lipschitz_constant(self.g, input_shape)
        self.certified_lipschitz.fill_(lip)
        self._certified_key = self._weights_key()
        return lip

    def lipschitz_estimate(self) -> float | None:
        """``prod_i ||A_i||_2 * prod Lip(phi)`` (eq. 4.6) for the operators ``A_i`` that g applies *now*: each
        spectrally normalized weight as the frozen map uses it, its norm by power iteration to convergence
        (rtol 1e-6, warm-started from the layer's vectors). An estimate from below per layer, not a certificate
        (:meth:`certify`), but never stale: recomputed whenever the weights or vectors changed, cached otherwise.
        ``None`` when g contains a linear layer without spectral normalization or an unknown module."""
        key = self._weights_key()
        if self._estimate_cache is not None and self._estimate_cache[0] == key:
            return self._estimate_cache[1]
        est: float | None = 1.0
        for m in _leaves(self.g):
            if isinstance(m, LINEAR_TYPES):
                sn = spectral_norm_of(m)
                if sn is None or not sn.initialized:
                    est = None
                    break
                est *= _current_norm(m, sn)
            else:
                c = activation_lipschitz(m)
                if c is None:
                    est = None
                    break
                est *= c
        self._estimate_cache = (key, est)
        return est

    def lipschitz_bound(self) -> float | None:
        """The certified ``Lip(g)`` if :meth:`certify` ran on the current weights, else the fresh estimate."""
        cert = float(self.certified_lipschitz)
        if not math.isnan(cert) and self._certified_key == self._weights_key():
            return cert
        return self.lipschitz_estimate()

    def extra_repr(self) -> str:
        return f"logdet={self.logdet!r}, inverse={self.solver!r}"


def _adopt_loaded_certificate(block: ResidualBlock, incompatible) -> None:
    """A certificate loaded with the weights belongs to them (the hook runs after g's tensors are loaded)."""
    block._certified_key = None if math.isnan(float(block.certified_lipschitz)) else block._weights_key()
    block._estimate_cache = None


@torch.no_grad()
def _current_norm(m: nn.Module, sn) -> float:
    """``||A||_2`` of the operator the layer applies in the frozen map (its normalized weight), by power iteration
    from the layer's vectors; the buffers are left untouched."""
    with frozen_spectral_norm():
        weight = m.weight
    u, _, _ = sn._power_steps(weight, sn.u, sn.v, 2, atol=0.0, rtol=1e-6, max_iter=1000)
    return float(sn._op.apply(weight, u).norm() / u.norm())


def _first_operator(g: nn.Module) -> nn.Module | None:
    """The first Linear/Conv layer g applies, when that is certain: g an ``nn.Sequential`` (nested ones too) whose
    layers before it are elementwise activations; else ``None`` (a custom module's children need not be in the
    order it applies them)."""
    stack = [g]
    while stack:
        m = stack.pop(0)
        if isinstance(m, nn.Sequential):
            stack = list(m) + stack
        elif isinstance(m, LINEAR_TYPES):
            return m
        elif activation_lipschitz(m) is None:
            return None
    return None


def _name(m: nn.Module) -> str:
    return type(m).__name__.removeprefix("Parametrized")


def _describe(g: nn.Module) -> str:
    parts = []
    for m in _leaves(g):
        if isinstance(m, nn.Linear):
            parts.append(f"Linear({m.in_features}->{m.out_features})")
        elif isinstance(m, LINEAR_TYPES):
            parts.append(f"{_name(m)}({m.in_channels}->{m.out_channels})")
        else:
            parts.append(_name(m))
    return f"{_name(g)}({', '.join(parts)})"


def _leaves(module: nn.Module):
    children = list(module.children())
    if not children or isinstance(module, LINEAR_TYPES):
        yield module
        return
    for c in children:
        yield from _leaves(c)
