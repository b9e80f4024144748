"""Inverting a residual block y = x + g(x) by solving the fixed-point equation x = y - g(x), per sample.

Algorithm 1 of the thesis iterates ``x[k+1] = y - g(x[k])`` from ``x[0] = y``. With ``L = Lip(g) < 1``,
Lemma 4.5 bounds the error after k iterations,

    ||x - x[k]|| <= L^k / (1 - L) * ||x[1] - x[0]||,

and, a posteriori, Lemma 4.6 (``||F(a) - F(b)|| >= (1 - L) ||a - b||``) gives for any iterate
``||x - x[k]|| <= ||x[k] + g(x[k]) - y|| / (1 - L)``. Both solvers here stop each sample on its own
tolerance (the official code stopped the batch as a whole) and return these bounds per sample.

References: Behrmann et al. (2019); Walker & Ni (2011) "Anderson acceleration for fixed-point iterations".
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from invertible.lipschitz import frozen_spectral_norm

__all__ = ["AbstractSolver", "InverseResult", "FixedPoint", "Anderson", "InverseNotConverged", "NotConvergedWarning"]


class InverseNotConverged(RuntimeError):
    """Raised (``on_failure="raise"``) when some samples miss the tolerance within ``max_iter``."""


class NotConvergedWarning(UserWarning):
    """Warned (``on_failure="warn"``, the default) when some samples miss the tolerance."""


@dataclass
class InverseResult:
    """Outcome of an inversion.

    Attributes:
        x: the solution, shape of ``y``.
        iterations: per-sample number of evaluations of g used, shape ``(batch,)``.
        residual: per-sample ``||x + g(x) - y||_2``, shape ``(batch,)``.
        error_bound: per-sample bound on ``||x - x*||_2`` (Lemma 4.5 for fixed point, the a-posteriori
            residual bound ``residual / (1 - L)`` where tighter or for Anderson); ``inf`` without a certified
            ``L < 1``. Shape ``(batch,)``.
        converged: per-sample flag, shape ``(batch,)``.
        lipschitz: the ``L`` used for the bound (``None`` when unknown).
    """

    x: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    error_bound: torch.Tensor
    converged: torch.Tensor
    lipschitz: float | None = None

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


class AbstractSolver(abc.ABC):
    """A solver of ``x + g(x) = y`` per sample: ``solver(g, y, lipschitz=None) -> InverseResult`` (Lemma 4.5).

    Subclasses implement ``_solve(g, y, lipschitz) -> InverseResult`` (using ``_tolerance`` and ``_finish``); the
    base validates the tolerances, runs the solve without gradients under frozen spectral norms and reports
    samples that miss the tolerance (``on_failure``: ``"warn"``, ``"raise"`` or ``"ignore"``).
    """

    def __init__(self, atol: float, rtol: float, max_iter: int, on_failure: str):
        if atol < 0 or rtol < 0 or (atol == 0 and rtol == 0):
            raise ValueError(f"need atol >= 0, rtol >= 0 and one of them > 0; got atol={atol}, rtol={rtol}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_failure must be 'warn', 'raise' or 'ignore', got {on_failure!r}")
        self.atol, self.rtol, self.max_iter, self.on_failure = float(atol), float(rtol), int(max_iter), on_failure

    def _tolerance(self, x: torch.Tensor) -> torch.Tensor:
        return self.atol + self.rtol * _norm(x)

    def __call__(
        self, g: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, lipschitz: float | None = None
    ) -> InverseResult:
        """Solve ``x + g(x) = y`` for every sample of ``y`` (shape ``(batch, ...)``)."""
        if not torch.isfinite(y).all():
            raise ValueError("inverse: input y contains NaN or inf")
        with torch.no_grad(), frozen_spectral_norm():
            result = self._solve(g, y, lipschitz)
        self._report(result)
        return result

    @abc.abstractmethod
    def _solve(
        self, g: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, lipschitz: float | None
    ) -> InverseResult:
        """The iteration proper, called without gradients under frozen spectral norms."""

    def _finish(self, g, y, x, iterations, step, lipschitz, converged) -> InverseResult:
        with torch.no_grad(), frozen_spectral_norm():
            residual = _norm(x + g(x) - y)
        bound = torch.full_like(residual, math.inf)
        if lipschitz is not None and lipschitz < 1:
            bound = residual / (1 - lipschitz)
            if step is not None:  # Lemma 4.5 in its a-posteriori form: L / (1 - L) * ||x[k] - x[k-1]||
                bound = torch.minimum(bound, lipschitz / (1 - lipschitz) * step)
        return InverseResult(x, iterations, residual, bound, converged, lipschitz)

    def _report(self, r: InverseResult) -> None:
        if r.all_converged or self.on_failure == "ignore":
            return
        n_bad = int((~r.converged).sum())
        msg = (
            f"{type(self).__name__}: {n_bad} of {r.converged.numel()} samples did not reach atol={self.atol}, "
            f"rtol={self.rtol} in {self.max_iter} iterations (max residual {float(r.residual.max()):.3g}). "
            "Is the block contractive (Lip(g) < 1)? Check with invertible.lipschitz_constant(g)."
        )
        if self.on_failure == "raise":
            raise InverseNotConverged(msg)
        warnings.warn(msg, NotConvergedWarning, stacklevel=3)


class FixedPoint(AbstractSolver):
    """Banach fixed-point iteration ``x[k+1] = y - g(x[k])``, ``x[0] = y`` (Algorithm 1).

    Each sample stops when ``||x[k+1] - x[k]||_2 <= atol + rtol * ||x[k+1]||_2``; finished samples are no longer
    evaluated. ``error_bound`` is Lemma 4.5, ``L / (1 - L) ||x[k] - x[k-1]|| <= L^k / (1 - L) ||x[1] - x[0]||``.

    Args:
        on_failure: ``"warn"`` (default), ``"raise"`` (:class:`InverseNotConverged`) or ``"ignore"``.
    """

    def __init__(self, atol: float = 1e-6, rtol: float = 0.0, max_iter: int = 100, on_failure: str = "warn"):
        super().__init__(atol, rtol, max_iter, on_failure)

    def _solve(self, g, y, lipschitz):
        batch = y.shape[0]
        x = y.clone()
        iterations = torch.zeros(batch, dtype=torch.long, device=y.device)
        step = torch.full((batch,), math.inf, dtype=y.dtype, device=y.device)
        active = torch.arange(batch, device=y.device)
        for _ in range(self.max_iter):
            xa = x[active]
            new = y[active] - g(xa)
            d = _norm(new - xa)
            x[active] = new
            step[active] = d
            iterations[active] += 1
            keep = d > self._tolerance(new)
            active = active[keep]
            if active.numel() == 0:
                break
        converged = torch.ones(batch, dtype=torch.bool, device=y.device)
        converged[active] = False
        return self._finish(g, y, x, iterations, step, lipschitz, converged)

    def __repr__(self) -> str:
        return f"FixedPoint(atol={self.atol}, rtol={self.rtol}, max_iter={self.max_iter})"


class Anderson(AbstractSolver):
    """Anderson acceleration (type II, mixing ``beta``) of the fixed-point map ``T(x) = y - g(x)``.

    Keeps the last ``memory`` iterates and solves, per sample, ``min_a ||sum_i a_i (T(x_i) - x_i)||`` subject
    to ``sum_i a_i = 1``; the next iterate is ``sum_i a_i (beta T(x_i) + (1 - beta) x_i)``. Per-sample stopping
    on ``||T(x) - x|| <= atol + rtol ||x||``; the error bound is ``residual / (1 - L)`` (Lemma 4.6).
    """

    def __init__(
        self,
        atol: float = 1e-6,
        rtol: float = 0.0,
        max_iter: int = 100,
        memory: int = 5,
        beta: float = 1.0,
        ridge: float = 1e-10,
        on_failure: str = "warn",
    ):
        super().__init__(atol, rtol, max_iter, on_failure)
        if memory < 1:
            raise ValueError(f"memory must be >= 1, got {memory}")
        self.memory, self.beta, self.ridge = int(memory), float(beta), float(ridge)

    def _solve(self, g, y, lipschitz):
        batch = y.shape[0]
        shape = y.shape
        m = self.memory
        flat_y = y.reshape(batch, -1)
        n = flat_y.shape[1]
        X = torch.zeros(batch, m, n, dtype=y.dtype, device=y.device)
        T = torch.zeros_like(X)

        def fmap(x):
            return (y.reshape(batch, -1) - g(x.reshape(shape)).reshape(batch, -1))

        x0 = flat_y.clone()
        X[:, 0], T[:, 0] = x0, fmap(x0)
        X[:, 1] = T[:, 0]
        T[:, 1] = fmap(X[:, 1])
        iterations = torch.full((batch,), 2, dtype=torch.long, device=y.device)
        x = X[:, 1].clone()
        gap = _norm(T[:, 1] - X[:, 1])
        converged = gap <= self._tolerance(T[:, 1])
        x = torch.where(converged[:, None], T[:, 1], x)
        k = 2
        while k < self.max_iter and not bool(converged.all()):
            size = min(k, m)
            G = (T[:, :size] - X[:, :size]).to(torch.float64)
            H = G @ G.transpose(1, 2)
            # Ridge relative to the residuals' own scale (an absolute one would swamp them near convergence).
            scale = H.diagonal(dim1=1, dim2=2).amax(1).clamp_min(torch.finfo(H.dtype).tiny)
            H = H + self.ridge * scale[:, None, None] * torch.eye(size, dtype=H.dtype, device=H.device)
            ones = torch.ones(batch, size, 1, dtype=H.dtype, device=H.device)
            w = torch.linalg.solve(H, ones)
            alpha = (w / w.sum(1, keepdim=True)).to(y.dtype)  # (batch, size, 1)
            new = self.beta * (alpha * T[:, :size]).sum(1) + (1 - self.beta) * (alpha * X[:, :size]).sum(1)
            slot = k % m
            X[:, slot] = new
            T[:, slot] = fmap(new)
            k += 1
            gap = _norm(T[:, slot] - new)
            live = ~converged
            iterations[live] += 1
            x = torch.where(live[:, None], T[:, slot], x)
            converged = converged | (gap <= self._tolerance(T[:, slot]))
        return self._finish(g, y, x.reshape(shape), iterations, None, lipschitz, converged)

    def __repr__(self) -> str:
        return f"Anderson(atol={self.atol}, rtol={self.rtol}, max_iter={self.max_iter}, memory={self.memory})"
