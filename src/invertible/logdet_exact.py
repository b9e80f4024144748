"""The log-det estimator interface and the exact estimators of ``log|det(I + J_g(x))|``, per sample.

* :class:`AbstractLogDet`: every estimator is ``estimator(g, x) -> (g(x), logdet)``, ``logdet`` of shape ``(B,)``,
  and says what its *value* is (``kind``: ``"exact"``, ``"unbiased"`` or ``"biased"``).
* :class:`ExactLogDet`: autograd Jacobian (torch.func) + ``slogdet``; O(d^3); any g; small d.
* :class:`ForwardJacobianLogDet`: for an MLP ``g = W_L o phi o ... o phi o W_1`` (eq. 4.5) the Jacobian
  ``J_g = W_L diag(phi'(h_{L-1})) ... W_1`` propagated forward with the activations (derivatives from
  :mod:`invertible.activations`), then ``log|det(I + J_g)|`` (closed form for d <= 2); cost about d forward passes.

The stochastic estimators (eq. 5.6, Algorithm 2, Russian roulette) and the estimator policy are in
:mod:`invertible.logdet`, which re-exports everything here.

References: Behrmann et al. (2019); Chen et al. (2019) "Residual Flows for Invertible Generative Modeling".
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from invertible.activations import (
    CLipSwish,
    LipSwish,
    activation_value_and_derivative,
    clipswish_value_and_derivative,
    has_derivative,
)
from invertible.checks import check_estimator_input
from invertible.dense import DenseLayer
from invertible.fused import keep_distribution_validation
from invertible.lipschitz import frozen_spectral_norm

__all__ = ["AbstractLogDet", "ExactLogDet", "ForwardJacobianLogDet", "exact_jacobian", "KINDS"]

Function = Callable[[torch.Tensor], torch.Tensor]

KINDS: tuple[str, ...] = ("exact", "unbiased", "biased")


class AbstractLogDet(abc.ABC):
    """An estimator of ``log|det(I + J_g(x))|``: ``estimator(g, x) -> (g(x) (B, ...), logdet (B,))``.

    ``kind`` says what the returned *value* is: ``"exact"``, ``"unbiased"`` (its expectation is the log-det) or
    ``"biased"`` (e.g. a truncated series, Theorem 5.8). Only exact and unbiased values may be reported as a
    likelihood (:func:`invertible.logdet.evaluation_estimator`); a gradient surrogate never changes the value.
    """

    kind: ClassVar[str]
    #: whether the value is a random estimate (Hutchinson probes, a random truncation)
    stochastic: ClassVar[bool]
    #: whether the cost scales to high dimension: vector-Jacobian products, no d x d Jacobian or O(d^3) determinant
    scalable: ClassVar[bool]

    @property
    def exact(self) -> bool:
        """Whether the value is the exact log-determinant."""
        return self.kind == "exact"

    @property
    def honest(self) -> bool:
        """Whether the value is exact or unbiased, i.e. may be reported as a log-likelihood."""
        return self.kind in ("exact", "unbiased")

    @abc.abstractmethod
    def __call__(self, g: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g(x), log|det(I + J_g(x))|)`` with the log-det of shape ``(B,)``."""


def _logabsdet(m: torch.Tensor) -> torch.Tensor:
    """``log|det m|`` per batch element; half precision (float16, bfloat16, which ``slogdet`` does not take) is
    computed in float32 and cast back, differentiably."""
    if m.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.slogdet(m.float())[1].to(m.dtype)
    return torch.linalg.slogdet(m)[1]


def exact_jacobian(g: Function, x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobian ``J_g(x_i)`` of shape ``(batch, d, d)`` with torch.func (vmap of jacrev).

    Differentiable w.r.t. the parameters of g. ``g`` must act on samples independently.
    """
    check_estimator_input(g, x, "exact_jacobian: x")
    batch = x.shape[0]
    shape = x.shape[1:]
    if batch == 0:
        d = math.prod(shape)
        return x.new_zeros((0, d, d))

    def single(xi: torch.Tensor) -> torch.Tensor:
        return g(xi.reshape(1, *shape)).reshape(-1)

    with frozen_spectral_norm():
        jac = torch.func.vmap(torch.func.jacrev(single))(x.reshape(batch, math.prod(shape)))
    return jac


class ExactLogDet(AbstractLogDet):
    """``log|det(I + J_g(x))|`` exactly: batched autograd Jacobian + ``torch.linalg.slogdet``. O(d^3); small d.

    Unlike the series estimators this needs no contractivity; it is the reference the others are tested
    against and the honest evaluation for low-dimensional flows. In float16/bfloat16 the Jacobian is taken in
    the input's dtype and the determinant in float32; the log-det is returned in the input's dtype.
    """

    kind = "exact"
    stochastic = False
    scalable = False

    def __call__(self, g: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_estimator_input(g, x, "ExactLogDet: x")
        gx = g(x)
        xin = x if (x.requires_grad and torch.is_grad_enabled()) else x.detach()
        with torch.set_grad_enabled(torch.is_grad_enabled()):
            jac = exact_jacobian(g, xin)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        return gx, _logabsdet(eye + jac)

    def __repr__(self) -> str:
        return "ExactLogDet()"


# -- forward-mode Jacobians of MLPs ------------------------------------------------------------------------------
def _mlp_layers(g: nn.Module) -> list[nn.Module] | None:
    layers = list(g) if isinstance(g, nn.Sequential) else [g]
    for m in layers:
        if isinstance(m, DenseLayer):
            if _mlp_layers(m.f) is None:
                return None
        elif not (isinstance(m, nn.Linear | CLipSwish) or has_derivative(m)):
            return None
    return layers


def _forward_jacobian(layers: list[nn.Module], h: torch.Tensor, jac: torch.Tensor | None):
    """``(g(h), jac @ J_g(h))`` by forward propagation, ``jac[b, i, :] = d h / d x_i`` (``None``: the identity).
    Linear: ``J <- J W^T``; elementwise ``phi``: ``J <- J diag(phi')``; CLipSwish: ``J <- [J, J] diag(d)``
    (:func:`~invertible.activations.clipswish_value_and_derivative`); a dense layer ``[eta_1 h, eta_2 f(h)]``:
    ``J <- [eta_1 J, eta_2 J_f]`` (columns concatenated)."""
    for m in layers:
        if isinstance(m, nn.Linear):
            w = m.weight
            h = F.linear(h, w, m.bias)
            jac = w.t().expand(h.shape[0], w.shape[1], -1) if jac is None else jac @ w.t()
            continue
        if jac is None:
            jac = torch.eye(h.shape[1], dtype=h.dtype, device=h.device).expand(h.shape[0], -1, -1)
        if isinstance(m, DenseLayer):
            fh, fjac = _forward_jacobian(_mlp_layers(m.f), h, jac)
            eta = m.eta().to(h.dtype)
            h, jac = torch.cat([eta[0] * h, eta[1] * fh], 1), torch.cat([eta[0] * jac, eta[1] * fjac], 2)
        elif isinstance(m, CLipSwish):
            h, dphi = clipswish_value_and_derivative(m, h)
            jac = torch.cat([jac, jac], 2) * dphi[:, None, :]
        else:
            h, dphi = activation_value_and_derivative(m, h)
            jac = jac * dphi[:, None, :]
    return h, jac


def _logdet_from_jac(jac: torch.Tensor) -> torch.Tensor:
    """``log|det(I + J)|`` from ``jac[b, i, :] = d g / d x_i`` (closed form for d <= 2)."""
    batch, d = jac.shape[0], jac.shape[1]
    if d == 1:
        return torch.log(torch.abs(1 + jac[:, 0, 0]))
    if d == 2:
        a, b, c, e = jac.reshape(batch, 4).unbind(1)
        return torch.log(torch.abs((1 + a) * (1 + e) - b * c))
    eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
    return _logabsdet(eye + jac)


def _lipswish_mlp_jacobian(
    x: torch.Tensor, kinds: tuple[str, ...], params: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward-Jacobian computation of :class:`ForwardJacobianLogDet` as a pure function of the input and
    the (already normalized) parameters, for MLPs of Linear and LipSwish layers: ``kinds`` names the layers
    (``"linear"`` takes ``weight, bias`` from ``params``, ``"lipswish"`` takes ``beta``). Same maths as the
    eager path; written without modules so that ``torch.compile`` can fuse it."""
    batch, d = x.shape
    h, jac, i = x, None, 0
    for kind in kinds:
        if kind == "linear":
            w, b = params[i], params[i + 1]
            i += 2
            h = F.linear(h, w, b)
            jac = w.t().expand(batch, d, -1) if jac is None else jac @ w.t()
        else:
            bh = params[i].to(h.dtype) * h
            i += 1
            s = torch.sigmoid(bh)
            dphi = s * (1 + bh * (1 - s)) / 1.1
            h = h * s / 1.1
            jac = torch.diag_embed(dphi) if jac is None else jac * dphi[:, None, :]
    return h, _logdet_from_jac(jac)


_COMPILED: dict[str, Any] = {}


def _compiled_kernel():
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_lipswish_mlp_jacobian, dynamic=False)
    return _COMPILED["fn"]


class ForwardJacobianLogDet(AbstractLogDet):
    """Exact ``log|det(I + J_g(x))|`` for an MLP ``g`` (Linear layers, elementwise activations, CLipSwish and
    i-DenseNet dense layers), by propagating the Jacobian forward: ``J <- W J``, ``J <- diag(phi'(h)) J`` and, for a
    dense layer, the stacked ``[eta_1 J; eta_2 J_f]``.

    Cost: about ``d`` forward passes of g for input dimension d (no ``d^3`` beyond the final ``slogdet``,
    closed form for d <= 2); differentiable in the parameters of g. For any other g it falls back to
    :class:`ExactLogDet`. Exact, like ExactLogDet, hence an honest evaluation for small d.

    ``compile=True`` (opt-in, for training): for MLPs of Linear and LipSwish layers, in training mode with
    gradients enabled, run the same computation through ``torch.compile`` (one compiled graph per shape,
    elementwise kernels fused; the first call compiles for seconds). The result is the same exact log-det up to
    floating-point rounding. Elsewhere (evaluation, no grad, other activations) the eager path is used.
    """

    kind = "exact"
    stochastic = False
    scalable = False

    def __init__(self, compile: bool = False) -> None:
        self._fallback = ExactLogDet()
        self.compile = bool(compile)

    def __call__(self, g: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_estimator_input(g, x, "ForwardJacobianLogDet: x")
        layers = _mlp_layers(g)
        if layers is None or x.dim() != 2:
            return self._fallback(g, x)
        if self.compile and g.training and torch.is_grad_enabled():
            kinds, params = [], []
            for m in layers:
                if isinstance(m, nn.Linear):
                    kinds.append("linear")
                    params += [m.weight, m.bias]
                elif isinstance(m, LipSwish):
                    kinds.append("lipswish")
                    params.append(m.beta)
                else:
                    break
            else:
                if kinds and all(p is not None for p in params):
                    try:
                        with keep_distribution_validation():
                            return _compiled_kernel()(x, tuple(kinds), params)
                    except Exception as err:  # no C++ compiler, unsupported platform, ...: stay exact, eagerly
                        warnings.warn(f"ForwardJacobianLogDet: torch.compile failed ({err!r:.200}); using the "
                                      "eager path", RuntimeWarning, stacklevel=2)
                        self.compile = False
        if not any(isinstance(m, nn.Linear | DenseLayer) for m in layers):
            raise ValueError("ForwardJacobianLogDet: g has no Linear layer")
        h, jac = _forward_jacobian(layers, x, None)  # jac[b, i, :] = d h / d x_i  (rows = input directions)
        return h, _logdet_from_jac(jac)

    def __repr__(self) -> str:
        return "ForwardJacobianLogDet(compile=True)" if self.compile else "ForwardJacobianLogDet()"
