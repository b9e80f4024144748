"""Elementwise activations of residual functions: value, derivative and Lipschitz constant, in one table.

A residual function ``g = W_L o phi o ... o phi o W_1`` (eq. 4.5) has ``Lip(g) <= prod_i ||W_i||_2 * prod Lip(phi)``
(eq. 4.6), so every activation used inside a contractive block needs its Lipschitz constant
``Lip(phi) = sup_x |phi'(x)|``; the exact forward-mode log-determinant (:class:`~invertible.ForwardJacobianLogDet`)
needs ``phi'`` itself, since ``J_g = W_L diag(phi'(h_{L-1})) ... diag(phi'(h_1)) W_1``. Both come from the
:data:`ACTIVATIONS` table below, one :class:`Activation` row per module type; nothing else in the library
keeps its own copy.

Leaf module: imports only torch.

Not every row is elementwise: :class:`CLipSwish` maps ``(B, C, ...)`` to ``(B, 2C, ...)``; its Lipschitz constant
composes like any other (eq. 4.6), but it has no elementwise derivative (``value_and_derivative`` is ``None``).

References: Chen et al. (2019) "Residual Flows for Invertible Generative Modeling" (LipSwish); Perugachi-Diaz,
Tomczak, Bhulai (2021) "Invertible DenseNets with Concatenated LipSwish" (CLipSwish).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from invertible.fused import fused

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "CLIPSWISH_LIPSCHITZ",
    "CLipSwish",
    "LipSwish",
    "activation_for",
    "activation_lipschitz",
    "activation_value_and_derivative",
    "clipswish_value_and_derivative",
    "has_derivative",
    "lean_activations",
    "make_activation",
    "width_factor",
]


def _inverse_softplus(beta, name: str) -> torch.Tensor:
    """``b`` with ``softplus(b) = beta`` for a finite ``beta > 0`` (``ValueError`` naming ``name`` otherwise)."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):  # also rejects nan
        raise ValueError(f"{name}: beta must be a finite number > 0, got beta={beta!r}")
    if value <= 20:
        return torch.log(torch.expm1(torch.tensor(value)))
    # the same, without overflowing expm1: softplus^{-1}(b) = b + log(1 - exp(-b))
    return torch.tensor(value) + torch.log(-torch.expm1(torch.tensor(-value)))


class LipSwish(nn.Module):
    """``LipSwish(x) = x * sigmoid(beta x) / 1.1`` with learnable ``beta = softplus(b) > 0``.

    ``sup_x |d/dx x sigmoid(beta x)| <= 1.0998`` for every beta > 0, so dividing by 1.1 makes it
    1-Lipschitz; unlike ReLU it is smooth, so its Jacobian is continuous (Corollary 4.4, Theorem 5.9).
    Derivative: ``s (1 + beta x (1 - s)) / 1.1`` with ``s = sigmoid(beta x)``. Any shape. The initial ``beta``
    must be finite and ``> 0`` (``ValueError`` otherwise).

    References: Chen et al. (2019) "Residual Flows for Invertible Generative Modeling".
    """

    lipschitz = 1.0

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.raw_beta = nn.Parameter(_inverse_softplus(beta, "LipSwish"))

    @property
    def beta(self) -> torch.Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.to(x.dtype)
        if _functorch_active():  # torch.func transforms (vmap, jvp, jacrev): the composite expression
            return x * torch.sigmoid(x * beta) / 1.1
        if not (torch.is_grad_enabled() and (x.requires_grad or beta.requires_grad)):
            return _lipswish_value(x, beta)  # nothing to differentiate (inverse iterations, evaluation)
        return _LipSwishFunction.apply(x, beta)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):.3g}"


#: ``L >= sup_x ||J_{[LipSwish(x), LipSwish(-x)]}||_2``: the certified normalizer of :class:`CLipSwish`.
CLIPSWISH_LIPSCHITZ = 1.004


class CLipSwish(nn.Module):
    """Concatenated LipSwish ``CLipSwish(x) = [LipSwish(x), LipSwish(-x)] / L`` along dim 1, ``L = 1.004``
    (Perugachi-Diaz et al. 2021): ``(B, C, ...) -> (B, 2C, ...)``, one learnable ``beta = softplus(b) > 0``.

    Lipschitz constant. The Jacobian stacks ``diag(phi'(x))`` on ``-diag(phi'(-x))`` (``phi`` = LipSwish), so its
    singular values are ``sqrt(phi'(x_i)^2 + phi'(-x_i)^2)``. With ``t = beta x`` and ``s(t) = sigma(t)(1 + t (1 -
    sigma(t)))`` one has ``1.1 phi'(x) = s(t)`` and ``1.1 phi'(-x) = 1 - s(t)`` (the two swish slopes sum to one),
    so ``Lip = sup_t sqrt(s^2 + (1 - s)^2) / 1.1`` for every beta; the sup sits at the extremes of ``s``,
    ``s(2.3994) = 1.09984`` (and ``1 - s`` at ``-2.3994``), giving ``1.003965 < L``: CLipSwish is 1-Lipschitz
    (certified, not estimated; ``tests/test_densenet.py`` recomputes the sup). Unlike LipSwish, whose slope
    vanishes for negative inputs, every singular value of CLipSwish's Jacobian is at least
    ``sqrt(0.5) / (1.1 L) = 0.64`` (at ``x = 0``) and tends to ``1 / (1.1 L) = 0.905`` for ``|x| -> inf``: the
    concatenation uses more of the Lipschitz budget, which is its point.

    References: Perugachi-Diaz, Tomczak, Bhulai (2021) "Invertible DenseNets with Concatenated LipSwish".
    """

    lipschitz = 1.0

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.raw_beta = nn.Parameter(_inverse_softplus(beta, "CLipSwish"))

    @property
    def beta(self) -> torch.Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"CLipSwish concatenates along dim 1 and needs inputs (B, C, ...), got {tuple(x.shape)}")
        b = self.beta.to(x.dtype)
        y = torch.cat([x, -x], 1)
        return y * torch.sigmoid(b * y) / (1.1 * CLIPSWISH_LIPSCHITZ)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):.3g}"


def clipswish_value_and_derivative(m: CLipSwish, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CLipSwish(h), d)`` for ``h`` of shape ``(B, C)``: both ``(B, 2C)``, ``d[:, j] = d CLipSwish(h)_j / d h_{j mod
    C}`` (the Jacobian ``[diag(phi'(h)); -diag(phi'(-h))]`` by its nonzero entries), for forward-mode Jacobians."""
    u = torch.cat([h, -h], 1)
    bu = m.beta.to(h.dtype) * u
    s = torch.sigmoid(bu)
    scale = 1.1 * CLIPSWISH_LIPSCHITZ
    sign = torch.cat([torch.ones_like(h), -torch.ones_like(h)], 1)
    return u * s / scale, sign * s * (1 + bu * (1 - s)) / scale


_LEAN: contextvars.ContextVar[bool] = contextvars.ContextVar("invertible_lean_activations", default=False)


@contextlib.contextmanager
def lean_activations() -> Iterator[None]:
    """Within this context :class:`LipSwish` stores only its input for the backward (and recomputes its
    derivatives there): less memory, a few more elementwise operations per backward."""
    token = _LEAN.set(True)
    try:
        yield
    finally:
        _LEAN.reset(token)


def _functorch_active() -> bool:
    try:
        return bool(torch._C._are_functorch_transforms_active())
    except AttributeError:
        return True  # unknown: the composite expression works everywhere


# -- LipSwish's elementwise kernels (fused by torch.compile at image scale, eager otherwise: invertible.fused) ------
# With s = sigmoid(b x), r = s (1 - s), m = 2 + b x (1 - 2 s):
#   phi = x s / 1.1,  phi_x = (s + b x r) / 1.1,  phi_b = x^2 r / 1.1,
#   phi_xx = b r m / 1.1,  phi_xb = x r m / 1.1,  phi_bb = x^3 r (1 - 2 s) / 1.1.
# The eager bodies work in place on their own temporaries (never on an argument): they run on the largest
# activations of a step, and every temporary counts.


@fused
def _lipswish_value(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``phi(x)``."""
    return torch.sigmoid(x * beta).mul_(x).div_(1.1)


@fused
def _lipswish_value_and_slope(x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi, phi_x)``."""
    bx = x * beta
    s = torch.sigmoid(bx)
    y = (x * s).div_(1.1)
    return y, bx.mul_(1 - s).add_(1).mul_(s).div_(1.1)


@fused
def _lipswish_value_and_slopes(x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(phi, phi_x, phi_b)``."""
    bx = x * beta
    s = torch.sigmoid(bx)
    one_minus = 1 - s
    y = (x * s).div_(1.1)
    dydb = (x * x).mul_(s).mul_(one_minus).div_(1.1)
    return y, bx.mul_(one_minus).add_(1).mul_(s).div_(1.1), dydb


@fused
def _scale_and_dot(grad: torch.Tensor, dydx: torch.Tensor, dydb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad phi_x, sum grad phi_b)`` from the stored slopes."""
    return grad * dydx, (grad * dydb).sum()


@fused
def _lipswish_vjp(grad: torch.Tensor, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``grad phi_x``, the slope recomputed from ``x``."""
    bx = x * beta
    s = torch.sigmoid(bx)
    return bx.mul_(s * (1 - s)).add_(s).mul_(grad).div_(1.1)


@fused
def _lipswish_vjp_with_beta(grad: torch.Tensor, x: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(grad phi_x, sum grad phi_b)``, the slopes recomputed from ``x``."""
    bx = x * beta
    s = torch.sigmoid(bx)
    r = s * (1 - s)
    gbeta = (x * r).mul_(x).mul_(grad).sum().div(1.1)
    return bx.mul_(r).add_(s).mul_(grad).div_(1.1), gbeta


@fused
def _lipswish_vjp_backward(grad: torch.Tensor, x: torch.Tensor, beta: torch.Tensor,
                           u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The derivative of ``(grad, x, b) -> grad phi_x`` applied to its cotangent ``u``:
    ``(u phi_x, u grad phi_xx, sum u grad phi_xb)``."""
    bx = x * beta
    s = torch.sigmoid(bx)
    r = s * (1 - s)
    d_grad = (bx * r).add_(s).mul_(u).div_(1.1)
    rm = bx.mul_(s.mul_(-2).add_(1)).add_(2).mul_(r).mul_(u).mul_(grad)  # u grad r m
    d_beta = (rm * x).sum().div(1.1)
    return d_grad, rm.mul_(beta / 1.1), d_beta


@fused
def _lipswish_vjp_backward_with_beta(grad: torch.Tensor, x: torch.Tensor, beta: torch.Tensor, u: torch.Tensor,
                                     ub: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The derivative of ``(grad, x, b) -> (grad phi_x, sum grad phi_b)`` applied to its cotangents ``(u, ub)``:
    ``(u phi_x + ub phi_b, u grad phi_xx + ub grad phi_xb, sum u grad phi_xb + ub grad phi_bb)``."""
    bx = x * beta
    s = torch.sigmoid(bx)
    r = s * (1 - s)
    c = ub / 1.1
    xr = r * x
    d_grad = (bx * r).add_(s).mul_(u).div_(1.1).add_((xr * x).mul_(c))
    one_2s = s.mul_(-2).add_(1)
    m = bx.mul_(one_2s).add_(2)
    grad_xrm = (m * xr).mul_(grad)  # grad x r m
    d_beta = (grad_xrm * u).sum().div(1.1) + c * (xr * x).mul_(x).mul_(one_2s).mul_(grad).sum()
    d_x = r.mul_(m).mul_(u).mul_(grad).mul_(beta / 1.1).add_(grad_xrm.mul_(c))
    return d_grad, d_x, d_beta


@fused
def _lipswish_chain_backward(z: torch.Tensor, beta: torch.Tensor, g: torch.Tensor,
                             ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g phi_x + ct phi_xx, sum g phi_b + ct phi_xb)``: the by-hand Neumann backward's step through LipSwish
    (:mod:`invertible.logdet_chain`; ``g`` the flow path's gradient, ``ct`` the surrogate's cotangent x tangent)."""
    bz = z * beta
    s = torch.sigmoid(bz)
    r = s * (1 - s)
    m = (bz * (1 - 2 * s)).add_(2)  # phi_xx = b r m / 1.1, phi_xb = z r m / 1.1
    e = (bz * r).add_(s).mul_(g).add_(ct * beta * r * m).div_(1.1)
    d = ((z * z * r).mul_(g).add_((z * r).mul_(m).mul_(ct))).sum().div(1.1)
    return e, d


@fused
def _elu_value_and_slope(z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ELU(z), ELU'(z))`` (the slope ``alpha e^z`` for ``z <= 0``, as torch's ELU backward)."""
    neg = torch.exp(z.clamp(max=0)) * alpha
    pos = z > 0
    return torch.where(pos, z, neg - alpha), torch.where(pos, torch.ones_like(z), neg)


@fused
def _elu_chain_backward(z: torch.Tensor, alpha: float, g: torch.Tensor,
                        ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g phi_x + ct phi_xx, 0)`` for ELU (``phi_xx = alpha e^z`` for ``z <= 0``, else 0; no parameter)."""
    neg = torch.exp(z.clamp(max=0)) * alpha
    return torch.where(z > 0, g, (g + ct) * neg), z.new_zeros(())


def lipswish_kernels():
    """LipSwish's ``(slope, chain backward)`` kernels for :mod:`invertible.logdet_chain`: ``slope(z, b) -> (phi,
    phi_x)``, ``backward(z, b, g, ct) -> (g phi_x + ct phi_xx, sum g phi_b + ct phi_xb)``."""
    return _lipswish_value_and_slope, _lipswish_chain_backward


def elu_kernels():
    """ELU's ``(slope, chain backward)`` kernels (:func:`lipswish_kernels`; the parameter is ``alpha``)."""
    return _elu_value_and_slope, _elu_chain_backward


class _LipSwishFunction(torch.autograd.Function):
    """``y = x sigmoid(b x) / 1.1`` with the derivatives of :class:`LipSwish` kept from the forward:
    ``dy/dx = s (1 + b x (1 - s)) / 1.1`` and ``dy/db = x^2 s (1 - s) / 1.1`` (``s = sigmoid(b x)``).

    A first-order backward (each vector-Jacobian product of the log-det series) is then one product with the
    stored ``dy/dx`` (and one dot product for ``b``) instead of re-deriving the composite graph every time. A
    backward that builds a graph (``create_graph=True``: the Neumann surrogate, double backward) recomputes
    both derivatives from ``x`` and ``b`` with differentiable operations, so higher derivatives are exact too.
    The elementwise chains are fused kernels (:mod:`invertible.fused`).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        if _LEAN.get():  # store x only; the backward recomputes the derivatives
            ctx.save_for_backward(x, beta, None, None)
            return _lipswish_value(x, beta)
        if ctx.needs_input_grad[1]:
            y, dydx, dydb = _lipswish_value_and_slopes(x, beta)
        else:
            (y, dydx), dydb = _lipswish_value_and_slope(x, beta), None
        ctx.save_for_backward(x, beta, dydx, dydb)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, beta, dydx, dydb = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a product whose own derivatives are known (_LipSwishGrad)
            return _LipSwishGrad.apply(grad, x, beta, ctx.needs_input_grad[1])
        if dydx is None:  # lean forward: recompute
            return _LipSwishGrad.forward(ctx, grad, x, beta, ctx.needs_input_grad[1], save=False)
        if dydb is None:
            return grad * dydx, None
        gx, gbeta = _scale_and_dot(grad, dydx, dydb)
        return gx, gbeta.reshape(beta.shape)


class _LipSwishGrad(torch.autograd.Function):
    """``(grad, x, b) -> (grad phi_x, sum grad phi_b)``, the backward of :class:`_LipSwishFunction` as a function
    that can itself be differentiated (double backward: the Neumann surrogate), storing only ``grad``, ``x`` and
    ``b`` (the derivatives are listed above the kernels)."""

    @staticmethod
    def forward(ctx, grad, x, beta, beta_grad: bool, save: bool = True):
        if save:
            ctx.save_for_backward(grad, x, beta)
            ctx.beta_grad = beta_grad
        if not beta_grad:
            return _lipswish_vjp(grad, x, beta), None
        gx, gbeta = _lipswish_vjp_with_beta(grad, x, beta)
        return gx, gbeta.reshape(beta.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, u, ub):
        grad, x, beta = ctx.saved_tensors
        if ctx.beta_grad and ub is not None:
            d_grad, d_x, d_beta = _lipswish_vjp_backward_with_beta(grad, x, beta, u, ub)
        else:
            d_grad, d_x, d_beta = _lipswish_vjp_backward(grad, x, beta, u)
        return d_grad, d_x, d_beta.reshape(beta.shape), None


ValueAndDerivative = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _lipswish(m: LipSwish, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bh = m.beta.to(h.dtype) * h
    s = torch.sigmoid(bh)
    # d/dh [h sigmoid(b h)] / 1.1 = s (1 + b h (1 - s)) / 1.1
    return h * s / 1.1, s * (1 + bh * (1 - s)) / 1.1


def _elu(m: nn.ELU, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    neg = m.alpha * torch.expm1(h.clamp(max=0))
    return torch.where(h > 0, h, neg), torch.where(h > 0, torch.ones_like(h), neg + m.alpha)


def _leaky_relu(m: nn.LeakyReLU, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    slope = float(m.negative_slope)
    return torch.where(h > 0, h, slope * h), torch.where(h > 0, torch.ones_like(h), torch.full_like(h, slope))


def _tanh(m: nn.Tanh, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.tanh(h)
    return y, 1 - y * y


def _softplus(m: nn.Softplus, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if m.beta != 1:
        raise TypeError(f"no derivative known for Softplus(beta={m.beta}); only beta=1")
    return F.softplus(h), torch.sigmoid(h)


def _relu(m: nn.ReLU, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.relu(h), (h > 0).to(h.dtype)


def _sigmoid(m: nn.Sigmoid, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(h)
    return s, s * (1 - s)


def _identity(m: nn.Identity, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return h, torch.ones_like(h)


@dataclass(frozen=True)
class Activation:
    """One row of the table: the module type, ``phi -> Lip(phi)`` and ``(phi, h) -> (phi(h), phi'(h))``
    (elementwise, same shape as ``h``; ``None`` when the derivative is not provided)."""

    module_type: type
    lipschitz: Callable[[nn.Module], float]
    value_and_derivative: ValueAndDerivative | None


# Order matters only for subclasses (checked first-match with isinstance).
ACTIVATIONS: tuple[Activation, ...] = (
    Activation(LipSwish, lambda m: 1.0, _lipswish),  # sup = 1.0998 / 1.1 < 1
    Activation(CLipSwish, lambda m: 1.0, None),  # sup = 1.003965 / 1.004 < 1; doubles dim 1, not elementwise
    Activation(nn.ELU, lambda m: max(1.0, float(m.alpha)), _elu),
    Activation(nn.LeakyReLU, lambda m: max(1.0, abs(float(m.negative_slope))), _leaky_relu),
    Activation(nn.ReLU, lambda m: 1.0, _relu),
    Activation(nn.Tanh, lambda m: 1.0, _tanh),  # sup at 0
    Activation(nn.Softplus, lambda m: 1.0, _softplus),  # phi' = sigmoid(beta x) < 1
    Activation(nn.Sigmoid, lambda m: 0.25, _sigmoid),  # sup at 0
    Activation(nn.Identity, lambda m: 1.0, _identity),
    Activation(nn.Dropout, lambda m: 1.0, None),  # the identity in eval mode
)


def activation_for(m: nn.Module) -> Activation | None:
    """The table row for module ``m``, or ``None`` if ``m`` is not a known elementwise activation."""
    for row in ACTIVATIONS:
        if isinstance(m, row.module_type):
            return row
    return None


def activation_lipschitz(m: nn.Module) -> float | None:
    """``Lip(phi) = sup_x |phi'(x)|`` for a known activation module, else ``None``."""
    row = activation_for(m)
    return None if row is None else row.lipschitz(m)


def has_derivative(m: nn.Module) -> bool:
    """Whether :func:`activation_value_and_derivative` knows ``phi'`` for this module type."""
    row = activation_for(m)
    return row is not None and row.value_and_derivative is not None


def activation_value_and_derivative(m: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi(h), phi'(h))`` elementwise for the activation module ``m``; ``TypeError`` if unknown."""
    row = activation_for(m)
    if row is None or row.value_and_derivative is None:
        raise TypeError(f"no derivative known for {type(m).__name__}")
    return row.value_and_derivative(m, h)


_BY_NAME: dict[str, type[nn.Module]] = {"lipswish": LipSwish, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def make_activation(name: str, beta: float = 1.0, *, concatenated: bool = False) -> nn.Module:
    """A fresh activation by config name: ``"lipswish"`` (slope ``beta``), ``"elu"``, ``"tanh"``, ``"softplus"``;
    with ``concatenated`` also ``"clipswish"`` (:class:`CLipSwish`, which doubles dim 1: only where the next
    layer expects it, as in the dense blocks of :mod:`invertible.models.blocks`)."""
    if concatenated and name == "clipswish":
        return CLipSwish(beta)
    if name not in _BY_NAME:
        extra = " (clipswish doubles the width: only inside dense blocks)" if name == "clipswish" else ""
        raise ValueError(f"activation must be one of {', '.join(_BY_NAME)}, got {name!r}{extra}")
    return LipSwish(beta) if name == "lipswish" else _BY_NAME[name]()


def width_factor(name: str) -> int:
    """How many output features an activation of config name ``name`` makes per input feature (2 for
    ``"clipswish"``, else 1)."""
    return 2 if name == "clipswish" else 1
