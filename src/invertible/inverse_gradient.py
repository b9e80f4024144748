"""Gradients of the fixed-point inverse ``x = F^{-1}(y)`` of a residual block ``F(x) = x + g(x)``.

The solvers of :mod:`invertible.inverse` run without gradients. How the solution enters the autograd graph is
the *gradient mode*, chosen with :func:`inverse_gradient` (``Flow.rsample(..., gradient=...)`` sets it):

* ``"implicit"`` (default): the implicit function theorem. Differentiating ``x + g(x; theta) = y`` at the
  solution gives ``(I + J_g(x)) dx = dy - (d g / d theta) d theta``; for an upstream gradient ``u = dL/dx`` the
  backward pass needs ``a = (I + J_g(x))^{-T} u``, the fixed point of the *adjoint* iteration

      a[k+1] = u - J_g(x)^T a[k],   a[0] = u,

  a contraction with factor ``||J_g(x)^T||_2 <= Lip(g) < 1`` - the same reason the forward iteration (Algorithm 1)
  converges, and the same a-priori rate (Lemma 4.5). Then ``dL/dy = a`` and ``dL/dtheta = -a^T dg/dtheta``. The
  graph keeps only ``x`` (and g's parameters): memory does not grow with the number of forward iterations; the
  backward pass re-evaluates ``g(x)`` once and applies its vector-Jacobian product once per adjoint iteration.
* ``"unrolled"``: the iteration ``x[k+1] = y - g(x[k])`` from ``x[0] = y``, rerun with gradients for as many
  steps as the solver used (the maximum over the batch); autograd stores every step, so memory grows linearly
  with the iterations. For :class:`~invertible.FixedPoint` it is the differentiated solver; for
  :class:`~invertible.Anderson` it is plain fixed-point steps of the same count.
* ``"detached"``: the block's solution is a constant (no gradient reaches the block's ``y`` or ``theta``; the
  analytic inverses of other layers stay differentiable) - the behaviour before this module existed.

Both gradient modes evaluate g under :func:`~invertible.lipschitz.frozen_spectral_norm`, so the operator is the one
the solver inverted as long as the power-iteration vectors are not advanced between the forward and the backward
pass (a training forward in between advances them; see :class:`invertible.training.variational.ReverseKLObjective`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from invertible.inverse import InverseNotConverged
from invertible.lipschitz import frozen_spectral_norm

__all__ = [
    "GRADIENT_MODES",
    "AdjointNotConverged",
    "ImplicitAdjoint",
    "current_gradient",
    "implicit_inverse",
    "inverse_gradient",
    "unrolled_inverse",
]

GRADIENT_MODES: tuple[str, ...] = ("implicit", "unrolled", "detached")


class AdjointNotConverged(InverseNotConverged):
    """The adjoint iteration ``a = u - J_g^T a`` of the implicit gradient missed its tolerance within
    ``max_iter`` (or turned non-finite)."""


@dataclass(frozen=True)
class ImplicitAdjoint:
    """Stop rule of the adjoint iteration: per sample ``||a[k+1] - a[k]|| <= atol + rtol ||a[k+1]||``.

    By Lemma 4.5 the error of ``a[k+1]`` is then at most ``L / (1 - L)`` times that tolerance (``L = Lip(g)``).

    Attributes:
        atol: absolute tolerance, finite ``>= 0``. rtol: relative tolerance; ``None`` means ``100 * eps`` of the
            working dtype (about ``2e-14`` in float64, ``1e-5`` in float32). max_iter: cap on the iterations, ``>= 1``.
    """

    atol: float = 0.0
    rtol: float | None = None
    max_iter: int = 1000

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            v = getattr(self, name)
            if v is None and name == "rtol":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"ImplicitAdjoint: {name} must be a finite number >= 0, got {name}={v!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"ImplicitAdjoint: max_iter must be an integer >= 1, got max_iter={self.max_iter!r}")
        if self.atol == 0 and self.rtol == 0:
            raise ValueError("ImplicitAdjoint: atol and rtol cannot both be 0 (nothing would ever converge)")

    def rtol_for(self, dtype: torch.dtype) -> float:
        return 100 * torch.finfo(dtype).eps if self.rtol is None else float(self.rtol)


_MODE: ContextVar[tuple[str, ImplicitAdjoint]] = ContextVar(
    "invertible_inverse_gradient", default=("implicit", ImplicitAdjoint())
)


@contextmanager
def inverse_gradient(mode: str = "implicit", adjoint: ImplicitAdjoint | None = None) -> Iterator[None]:
    """Within this context residual-block inverses attach their solution to the graph by ``mode``
    (``"implicit"``, ``"unrolled"`` or ``"detached"``; module docstring); ``adjoint`` sets the implicit mode's
    stop rule."""
    if mode not in GRADIENT_MODES:
        raise ValueError(f"gradient must be one of {', '.join(map(repr, GRADIENT_MODES))}, got {mode!r}")
    if adjoint is not None and not isinstance(adjoint, ImplicitAdjoint):
        raise ValueError(f"adjoint must be an ImplicitAdjoint, got {type(adjoint).__name__}")
    token = _MODE.set((mode, adjoint if adjoint is not None else ImplicitAdjoint()))
    try:
        yield
    finally:
        _MODE.reset(token)


def current_gradient() -> tuple[str, ImplicitAdjoint]:
    """The gradient mode and adjoint stop rule in effect (``("implicit", ImplicitAdjoint())`` by default)."""
    return _MODE.get()


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def solve_adjoint(
    vjp: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor, adjoint: ImplicitAdjoint
) -> tuple[torch.Tensor, int]:
    """Iterate ``a[k+1] = u - vjp(a[k])`` from ``a[0] = u`` (``vjp(a) = J_g^T a`` per sample, shapes of ``u``)
    until every sample passes the stop rule; returns ``(a, iterations)``. Raises :class:`AdjointNotConverged`."""
    a = u
    atol, rtol = adjoint.atol, adjoint.rtol_for(u.dtype)
    step = torch.full((u.shape[0],), math.inf, dtype=u.dtype, device=u.device)
    for k in range(1, adjoint.max_iter + 1):
        new = u - vjp(a)
        step = _norm(new - a)
        a = new
        ok = torch.isfinite(step) & (step <= atol + rtol * _norm(a))
        if bool(ok.all()):
            return a, k
        if not bool(torch.isfinite(step).all()):
            break
    bad = int((~(torch.isfinite(step) & (step <= atol + rtol * _norm(a)))).sum())
    raise AdjointNotConverged(
        f"implicit inverse gradient: the adjoint iteration a = u - J_g(x)^T a did not converge for {bad} of "
        f"{u.shape[0]} samples within max_iter={adjoint.max_iter} (last step {float(step.max()):.3g}, tolerance "
        f"atol={atol:g} + rtol={rtol:g} * ||a||). It contracts with factor Lip(g) < 1: is the block contractive? "
        "Raise ImplicitAdjoint(max_iter=...), loosen its tolerance, or use gradient='unrolled'."
    )


class _ImplicitInverse(torch.autograd.Function):
    """``x = F^{-1}(y)`` given the solution ``x_star``; backward by the adjoint fixed point (module docstring).
    Inputs: ``(x_star, y, g, adjoint, *params)``; gradients reach ``y`` and ``params``."""

    @staticmethod
    def forward(ctx, x_star, y, g, adjoint, *params):
        ctx.save_for_backward(x_star)
        ctx.g, ctx.adjoint = g, adjoint
        return x_star.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, u):
        (x_star,) = ctx.saved_tensors
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[4:]) if need]
        inputs = _params_of(ctx.g)  # the order of apply's *params
        with torch.enable_grad(), frozen_spectral_norm():
            x = x_star.detach().requires_grad_(True)
            gx = ctx.g(x)

        def vjp(a):
            return torch.autograd.grad(gx, x, a, retain_graph=True)[0]

        a, _ = solve_adjoint(vjp, u, ctx.adjoint)
        grads: list[torch.Tensor | None] = [None] * len(inputs)
        if wanted:
            got = torch.autograd.grad(gx, [inputs[i] for i in wanted], -a, allow_unused=True)
            for i, gr in zip(wanted, got, strict=True):
                grads[i] = gr
        grad_y = a if ctx.needs_input_grad[1] else None
        return (None, grad_y, None, None, *grads)


def _params_of(g: nn.Module | Callable) -> list[torch.Tensor]:
    return list(g.parameters()) if isinstance(g, nn.Module) else []


def implicit_inverse(
    g: nn.Module, y: torch.Tensor, x_star: torch.Tensor, adjoint: ImplicitAdjoint | None = None
) -> torch.Tensor:
    """``x_star`` (the solution of ``x + g(x) = y``, shape of ``y``) as a function of ``y`` and g's parameters,
    differentiated implicitly (module docstring). The graph keeps ``x_star`` only."""
    adjoint = adjoint if adjoint is not None else ImplicitAdjoint()
    return _ImplicitInverse.apply(x_star.detach(), y, g, adjoint, *_params_of(g))


def unrolled_inverse(g: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, n_iter: int) -> torch.Tensor:
    """``n_iter`` fixed-point steps ``x[k+1] = y - g(x[k])`` from ``x[0] = y`` with gradients (Algorithm 1
    differentiated step by step; memory grows with ``n_iter``)."""
    if n_iter < 1:
        raise ValueError(f"unrolled_inverse: n_iter must be >= 1, got {n_iter}")
    x = y
    with frozen_spectral_norm():
        for _ in range(int(n_iter)):
            x = y - g(x)
    return x
