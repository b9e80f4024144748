"""The i-ResNet block ``F(x) = x + g(x)`` with ``Lip(g) < 1``: forward, log-det, inverse."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from invertible.activations import CLipSwish, activation_lipschitz
from invertible.dense import DenseLayer
from invertible.inverse import AbstractSolver, FixedPoint, InverseResult
from invertible.inverse_gradient import current_gradient, implicit_inverse, unrolled_inverse
from invertible.lipschitz import LINEAR_TYPES, frozen_spectral_norm, lipschitz_constant, spectral_norm_of
from invertible.logdet import AbstractLogDet, RussianRouletteLogDet
from invertible.nn.base import Bijection, check_input, validated_input
from invertible.nn.traits import Capabilities, logdet_rows

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

    ``inverse(y)`` is differentiable in ``y`` and g's parameters when gradients are enabled: implicitly by default
    (the adjoint fixed point, memory independent of the iterations), or unrolled, or not at all, as set by
    :func:`~invertible.inverse_gradient.inverse_gradient`. It records the solver's
    :class:`~invertible.InverseResult` in ``last_inverse``; its error bound uses the certified ``Lip(g)`` from
    :meth:`certify` while the weights are those it certified, else a fresh estimate on the current weights
    (:meth:`lipschitz_estimate`); ``inverse`` refuses (``ValueError``) a block whose constant is ``>= 1``, since
    Theorem 4.1 and Lemma 4.5 need ``Lip(g) < 1`` (as do the series estimators).

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

    # Table 5.2, for a block that is contractive by construction; the log-det rows come from the estimator and
    # an unconstrained block is a standard ResNet block (see :meth:`capabilities`).
    CAPABILITIES = Capabilities(free_form=True, analytic_forward=True, analytic_inverse=False,
                                volume_preserving=False, bi_lipschitz=True)
    logdet_from_estimator: ClassVar[bool] = True

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
        with validated_input():  # x was checked above; the estimator need not test it again
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
        x = self.last_inverse.x
        if not torch.is_grad_enabled():
            return x
        mode, adjoint = current_gradient()
        if mode == "implicit":
            return implicit_inverse(self.g, y, x, adjoint)
        if mode == "unrolled":
            return unrolled_inverse(self.g, y, max(1, int(self.last_inverse.iterations.max())))
        return x

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
        ``None`` when g contains a linear layer without spectral normalization or an unknown module. A dense
        layer (:class:`~invertible.dense.DenseLayer`) contributes ``sqrt(eta_1^2 + eta_2^2 K^2)`` with ``K`` the
        estimate of its ``f``."""
        key = self._weights_key()
        if self._estimate_cache is not None and self._estimate_cache[0] == key:
            return self._estimate_cache[1]
        est = _chain_estimate(self.g)
        self._estimate_cache = (key, est)
        return est

    def lipschitz_bound(self) -> float | None:
        """The certified ``Lip(g)`` if :meth:`certify` ran on the current weights, else the fresh estimate."""
        cert = float(self.certified_lipschitz)
        if not math.isnan(cert) and self._certified_key == self._weights_key():
            return cert
        return self.lipschitz_estimate()

    # -- what the block can do (Table 5.2) -----------------------------------------------------------------------
    def a_priori_lipschitz(self) -> float | None:
        """The bound on ``Lip(g)`` that holds by construction, whatever the weights: ``prod_i c_i prod Lip(phi)``
        over g's layers (eq. 4.6, 4.9), ``c_i`` the spectral-normalization coefficient of layer ``i``; ``None``
        when a linear layer is unconstrained or a module is unknown (then nothing is guaranteed)."""
        bound = 1.0
        for m in _leaves(self.g):
            if isinstance(m, LINEAR_TYPES):
                sn = spectral_norm_of(m)
                if sn is None:
                    return None
                bound *= sn.coeff
            else:
                c = activation_lipschitz(m)
                if c is None:
                    return None
                bound *= c
        return bound

    def bi_lipschitz_bounds(self) -> tuple[float, float] | None:
        """Lemma 4.6: ``(Lip(F), Lip(F^{-1})) <= (1 + L, 1 / (1 - L))`` with ``L`` the block's current bound on
        ``Lip(g)`` (:meth:`lipschitz_bound`, else :meth:`a_priori_lipschitz`); ``None`` without ``L < 1``."""
        lip = self.lipschitz_bound()
        if lip is None:
            lip = self.a_priori_lipschitz()
        if lip is None or lip >= 1:
            return None
        return 1.0 + lip, 1.0 / (1.0 - lip)

    def capabilities(self) -> Capabilities:
        """Free-form, analytic forward, a fixed-point inverse, bi-Lipschitz (Lemma 4.6), with the log-det rows of
        its estimator: exact only for an exact estimator that scales (none does: ``ExactLogDet`` is O(d^3)),
        unbiased for an unbiased stochastic one (Russian roulette), biased for the truncated series. A block
        whose g is not contractive by construction (:meth:`a_priori_lipschitz`) is a standard ResNet block: only
        its forward is described (Table 5.2's ResNet column)."""
        lip = self.a_priori_lipschitz()
        if lip is None or lip >= 1:
            return Capabilities(free_form=True, analytic_forward=True)
        rows = logdet_rows(self.logdet)
        return dataclasses.replace(self.CAPABILITIES, exact_logdet=rows.exact_logdet,
                                   unbiased_logdet=rows.unbiased_logdet)

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


def _chain_estimate(g: nn.Module) -> float | None:
    """The product of eq. 4.6 over g's layers as they are applied now (see ``lipschitz_estimate``)."""
    est = 1.0
    for m in _leaves(g):
        if isinstance(m, LINEAR_TYPES):
            sn = spectral_norm_of(m)
            if sn is None or not sn.initialized:
                return None
            est *= _current_norm(m, sn)
        elif isinstance(m, DenseLayer):
            inner = _chain_estimate(m.f)
            if inner is None:
                return None
            est *= m.lipschitz_from(inner)
        else:
            c = activation_lipschitz(m)
            if c is None:
                return None
            est *= c
    return est


def _first_operator(g: nn.Module) -> nn.Module | None:
    """The first Linear/Conv layer g applies, when that is certain: g an ``nn.Sequential`` (nested ones too) whose
    layers before it are elementwise activations; else ``None`` (a custom module's children need not be in the
    order it applies them)."""
    stack = [g]
    while stack:
        m = stack.pop(0)
        if isinstance(m, nn.Sequential):
            stack = list(m) + stack
        elif isinstance(m, DenseLayer):  # f sees the layer's input first
            stack = [m.f]
        elif isinstance(m, LINEAR_TYPES):
            return m
        elif activation_lipschitz(m) is None or isinstance(m, CLipSwish):  # unknown, or not shape-preserving
            return None
    return None


def _name(m: nn.Module) -> str:
    return type(m).__name__.removeprefix("Parametrized")


def _describe(g: nn.Module) -> str:
    parts = []
    for m in _leaves(g):
        if isinstance(m, DenseLayer):
            parts.append(f"Dense[{_describe(m.f)}]")
        elif isinstance(m, nn.Linear):
            parts.append(f"Linear({m.in_features}->{m.out_features})")
        elif isinstance(m, LINEAR_TYPES):
            parts.append(f"{_name(m)}({m.in_channels}->{m.out_channels})")
        else:
            parts.append(_name(m))
    return f"{_name(g)}({', '.join(parts)})"


def _leaves(module: nn.Module):
    children = list(module.children())
    if not children or isinstance(module, (*LINEAR_TYPES, DenseLayer)):
        yield module
        return
    for c in children:
        yield from _leaves(c)
