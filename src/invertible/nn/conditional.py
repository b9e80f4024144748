"""Conditional bijections ``x -> F(x; c)``: invertible in ``x`` for every context ``c`` (conditional flows).

* :class:`ConditionalBijection`: the protocol, :class:`~invertible.nn.base.Bijection` with a context argument:
  ``forward_and_logdet(x, c) -> (y, log|det J_x F(x; c)| (B,))``, ``inverse(y, c)``. ``given(c)`` fixes the
  context and returns a plain :class:`Bijection` (:class:`Conditioned`), so every contract test of a bijection
  runs on it unchanged.
* :class:`ConditionalResidualBlock`: ``y = x + g(x, c)`` with ``Lip_x(g(., c)) < 1`` for every ``c`` (e.g.
  :class:`~invertible.models.blocks.ConditionalLipschitzMLP`); Theorem 4.1 applies per context, the inverse is
  the fixed point of ``x = y - g(x, c)`` per sample (Algorithm 1, Lemma 4.5).
* :class:`ConditionalSequential`: a composition; plain bijections (ActNorm) in it ignore the context.

Shapes: ``x (B, d)``, ``c (B, d_c)`` (one context per sample).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from invertible.checks import values_validated
from invertible.inverse import AbstractSolver, FixedPoint, InverseResult
from invertible.lipschitz import frozen_spectral_norm, lipschitz_constant
from invertible.logdet import AbstractLogDet, ForwardJacobianLogDet
from invertible.nn.base import Bijection, check_input, validated_input
from invertible.nn.traits import Capabilities

__all__ = ["ConditionalBijection", "ConditionalResidualBlock", "ConditionalSequential", "Conditioned"]


def check_context(x: torch.Tensor, c: torch.Tensor, name: str) -> None:
    """A floating ``(B, d_c)`` context with the batch, dtype and device of ``x``, finite (the finiteness test is
    skipped inside :func:`~invertible.nn.base.validated_input`, as for inputs)."""
    if not isinstance(c, torch.Tensor):
        raise ValueError(f"{name}: the context must be a torch.Tensor, got {type(c).__name__}")
    if c.dim() != 2 or c.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: the context must have shape (B, d_c) with B = {x.shape[0]} (the batch of the "
                         f"input), got {tuple(c.shape)}")
    if not torch.is_floating_point(c) or c.dtype != x.dtype or c.device != x.device:
        raise ValueError(f"{name}: the context ({c.dtype}, {c.device}) must match the input ({x.dtype}, {x.device})")
    if not values_validated() and not torch.isfinite(c).all():
        raise ValueError(f"{name}: the context contains NaN or inf")


class ConditionalBijection(nn.Module):
    """A map ``x -> F(x; c)``, invertible in ``x`` for every context ``c``, with per-sample ``log|det J_x F|``.

    Subclasses implement :meth:`forward_and_logdet` and :meth:`inverse`. Direction is a method, never a flag."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.forward_and_logdet(x, c)[0]

    def forward_and_logdet(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse_and_logdet(self, y: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = F^{-1}(y; c)`` and ``log|det J_{F^{-1}}(y; c)| = -log|det J_x F(x; c)|``."""
        x = self.inverse(y, c)
        return x, -self.forward_and_logdet(x, c)[1]

    def given(self, context: torch.Tensor) -> Conditioned:
        """The bijection ``x -> F(x; c)`` for a fixed context: ``(d_c,)`` (every sample) or ``(B, d_c)``."""
        return Conditioned(self, context)


class Conditioned(Bijection):
    """``x -> F(x; c)`` with ``c`` fixed: a :class:`Bijection`. The context is a buffer (it round-trips with the
    ``state_dict``); one of shape ``(d_c,)`` is used for every sample, ``(B, d_c)`` needs batches of ``B``.

    Capabilities (Table 5.2 rows) are those of a conditional residual flow given ``c``: free-form ``g``, analytic
    forward, fixed-point inverse, not volume preserving, bi-Lipschitz (Lemma 4.6 per context); the log-det is
    exact but costs a ``d x d`` Jacobian (not a scalable exact likelihood)."""

    CAPABILITIES = Capabilities(free_form=True, analytic_forward=True, analytic_inverse=False,
                                volume_preserving=False, exact_logdet=False, unbiased_logdet=None, bi_lipschitz=True)

    def __init__(self, bijection: ConditionalBijection, context: torch.Tensor):
        super().__init__()
        if not isinstance(context, torch.Tensor) or context.dim() not in (1, 2):
            raise ValueError(f"Conditioned: the context must be a tensor (d_c,) or (B, d_c), got "
                             f"{getattr(context, 'shape', type(context).__name__)}")
        self.bijection = bijection
        self.register_buffer("context", context.detach().clone())

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        c = self.context.to(device=x.device, dtype=x.dtype)
        return c.expand(x.shape[0], -1) if c.dim() == 1 else c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bijection(x, self._context(x))

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bijection.forward_and_logdet(x, self._context(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.bijection.inverse(y, self._context(y))


class ConditionalResidualBlock(ConditionalBijection):
    """``y = x + g(x, c)`` with ``Lip_x(g(., c)) < 1`` for every ``c`` (Theorem 4.1 per context).

    Args:
        g: ``g(x, c) -> (B, d)``; with ``forward_and_jacobian(x, c)`` (the exact ``J_x g``) and ``x_path()`` (the
            chain of operators and activations that bounds ``Lip_x(g)``, eq. 4.6), e.g.
            :class:`~invertible.models.blocks.ConditionalLipschitzMLP`.
        logdet: an exact estimator (default :class:`~invertible.ForwardJacobianLogDet`) uses g's exact Jacobian
            ``log|det(I + J_x g)|``; a stochastic one (power series, Russian roulette) is applied to
            ``x -> g(x, c)`` with ``c`` held per sample (they act sample-wise). :func:`invertible.override_estimators`
            swaps it like any block's.
        inverse: solver of ``x = y - g(x, c)`` (default :class:`~invertible.FixedPoint`, Algorithm 1).

    ``inverse`` certifies ``L = Lip_x(g)`` on the current weights (exact operator norms of the x-path; the bound
    holds for every ``c``), refuses ``L >= 1`` and records the solver's :class:`~invertible.InverseResult` in
    ``last_inverse``. The solver iterates on ``u = (x, c)`` with ``G(u) = (g(x, c), 0)``, so that the samples it
    drops as converged take their contexts along; from ``u_0 = (y, c)`` the context part never moves, every
    step and residual is that of ``x`` alone, and Lemma 4.5 holds on the slice ``{c fixed}`` with ``L = Lip_x(g)``
    (the round-off term counts ``||c||`` too: a slightly larger, still valid bound). With gradients enabled it
    is differentiable (``rsample``): one Newton step
    ``x <- x* - (I + J_x g(x*, c))^{-1} (x* + g(x*, c) - y)`` from the solver's detached ``x*`` has, at the fixed
    point, the implicit-function gradient ``dx = (I + J_x g)^{-1} (dy - d_theta,c g)``.
    """

    def __init__(self, g: nn.Module, logdet: AbstractLogDet | None = None, inverse: AbstractSolver | None = None):
        super().__init__()
        self.g = g
        self.logdet = logdet if logdet is not None else ForwardJacobianLogDet()
        self.solver = inverse if inverse is not None else FixedPoint()
        self.last_inverse: InverseResult | None = None

    def _check(self, x: torch.Tensor, c: torch.Tensor, name: str) -> None:
        check_input(x, name)
        d = getattr(self.g, "dims", [x.shape[-1]])[0]
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"{name}: expected inputs of shape (B, {d}), got {tuple(x.shape)}")
        check_context(x, c, name)

    def _exact(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx, jac = self.g.forward_and_jacobian(x, c)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        return gx, torch.linalg.slogdet(eye + jac)[1]

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self._check(x, c, "ConditionalResidualBlock")
        return x + self.g(x, c)

    def forward_and_logdet(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, c, "ConditionalResidualBlock")
        if self.logdet.exact:
            gx, ld = self._exact(x, c)
        else:
            gx, ld = self.logdet(lambda t: self.g(t, c), x)
        return x + gx, ld

    def lipschitz_bound(self) -> float:
        """Certified ``Lip_x(g(., c)) <= prod ||W_k||_2 prod Lip(phi)`` on the current weights, for every ``c``."""
        return lipschitz_constant(self.g.x_path())

    def inverse(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self._check(y, c, "ConditionalResidualBlock.inverse")
        lip = self.lipschitz_bound()
        if not lip < 1:
            raise ValueError(f"ConditionalResidualBlock.inverse: Lip_x(g) is certified only up to {lip:.4g} (not < 1) "
                             "on the current weights, so the fixed-point inverse need not exist (Theorem 4.1)")
        d = y.shape[1]

        def augmented(u: torch.Tensor) -> torch.Tensor:  # G(x, c) = (g(x, c), 0): the solver may drop samples
            return torch.cat([self.g(u[:, :d], u[:, d:]), torch.zeros_like(u[:, d:])], 1)

        result = self.solver(augmented, torch.cat([y.detach(), c.detach()], 1), lipschitz=lip)
        x = result.x[:, :d]
        self.last_inverse = dataclasses.replace(result, x=x)
        needs_grad = torch.is_grad_enabled() and (
            y.requires_grad or c.requires_grad or any(p.requires_grad for p in self.g.parameters()))
        if not needs_grad:
            return x
        with frozen_spectral_norm():  # the operator the solver inverted
            gx, jac = self.g.forward_and_jacobian(x, c)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        a = (eye + jac.detach()).transpose(1, 2)  # I + J_x g with rows = outputs
        residual = x + gx - y
        return x - torch.linalg.solve(a, residual.unsqueeze(-1)).squeeze(-1)

    def extra_repr(self) -> str:
        return f"logdet={self.logdet!r}, inverse={self.solver!r}"


class ConditionalSequential(ConditionalBijection):
    """``F(.; c) = f_T(.; c) o ... o f_1(.; c)``; log-dets add. Plain :class:`Bijection` layers ignore ``c``."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        for m in layers:
            if not isinstance(m, ConditionalBijection | Bijection):
                raise ValueError(f"ConditionalSequential takes bijections, got {type(m).__name__}")
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def forward_and_logdet(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, "ConditionalSequential")
        check_context(x, c, "ConditionalSequential")
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        with validated_input():
            for m in self.layers:
                x, ld = m.forward_and_logdet(x, c) if isinstance(m, ConditionalBijection) else m.forward_and_logdet(x)
                total = total + ld
        return x, total

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_input(x, "ConditionalSequential")
        check_context(x, c, "ConditionalSequential")
        with validated_input():
            for m in self.layers:
                x = m(x, c) if isinstance(m, ConditionalBijection) else m(x)
        return x

    def inverse(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_input(y, "ConditionalSequential.inverse")
        check_context(y, c, "ConditionalSequential.inverse")
        with validated_input():
            for m in reversed(self.layers):
                y = m.inverse(y, c) if isinstance(m, ConditionalBijection) else m.inverse(y)
        return y

    def lipschitz_bounds(self) -> list[float]:
        """``Lip_x(g_t)`` certified per conditional residual block (for every context)."""
        return [m.lipschitz_bound() for m in self.layers if isinstance(m, ConditionalResidualBlock)]

