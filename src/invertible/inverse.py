"""Inverting a residual block y = x + g(x) by solving the fixed-point equation x = y - g(x), per sample.

Algorithm 1 of the thesis iterates ``x[k+1] = y - g(x[k])`` from ``x[0] = y``. With ``L = Lip(g) < 1``,
Lemma 4.5 bounds the error after k iterations,

    ||x - x[k]|| <= L^k / (1 - L) * ||x[1] - x[0]||,

and, a posteriori, Lemma 4.6 (``||F(a) - F(b)|| >= (1 - L) ||a - b||``) gives for any iterate
``||x - x[k]|| <= ||x[k] + g(x[k]) - y|| / (1 - L)``. Both solvers here stop each sample on its own
tolerance (the official code stopped the batch as a whole) and return these bounds per sample.

Round-off. In floating point the iteration is ``x[k+1] = T~(x[k])`` with ``||T~(x) - T(x)|| <= delta``,
``T(x) = y - g(x)``; the same argument as Lemma 4.5 then gives

    ||x - x[k]|| <= (L ||x[k] - x[k-1]|| + delta) / (1 - L),
    ||x - x[k]|| <= (||x[k] + g(x[k]) - y|| + delta) / (1 - L),

so the computed step or residual can be 0 (a fixed point of the *rounded* map) while the error is not. The
bounds use ``delta = eps * (||x[k]|| + ||g(x[k])||)`` with ``eps = torch.finfo(dtype).eps``: a first-order model
of the rounding of ``y - g(x)`` (it assumes g is evaluated to about unit relative round-off; measured errors of
spectrally normalized MLPs are below 0.4 delta in float32), not a rigorous interval bound.

Convergence. ``criterion="step"`` (default) is Algorithm 1's stop test ``||x[k] - x[k-1]|| <= atol + rtol ||x[k]||``
(Anderson: ``||T(x) - x||``); it says the iteration has settled, *not* that the error is below ``atol`` - that is
what ``error_bound`` certifies, and it may exceed ``atol`` by the factor ``L / (1 - L)`` and the round-off floor.
``criterion="bound"`` stops a sample when ``error_bound <= atol + rtol ||x[k]||`` (it needs ``L < 1``), so a
converged sample's bound is below its tolerance; below the round-off floor nothing converges. Either way a
non-finite iterate, step or residual is a failure, never convergence.

References: Behrmann et al. (2019); Walker & Ni (2011) "Anderson acceleration for fixed-point iterations".
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from invertible.checks import check_count, check_estimator_input, check_real
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
            Both include the round-off term ``eps * (||x|| + ||g(x)||) / (1 - L)`` of the working dtype.
        converged: per-sample flag, shape ``(batch,)``: the stop test of ``criterion`` passed with finite values.
        lipschitz: the ``L`` used for the bound (``None`` when unknown).
        criterion: ``"step"`` or ``"bound"``, what ``converged`` means (see the module docstring).
    """

    x: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    error_bound: torch.Tensor
    converged: torch.Tensor
    lipschitz: float | None = None
    criterion: str = "step"

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _round_off(x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """``delta = eps * (||x|| + ||g(x)||)`` per sample: the modelled rounding of one step ``y - g(x)``."""
    return torch.finfo(x.dtype).eps * (_norm(x) + _norm(gx))


class AbstractSolver(abc.ABC):
    """A solver of ``x + g(x) = y`` per sample: ``solver(g, y, lipschitz=None) -> InverseResult`` (Lemma 4.5).

    Subclasses implement ``_solve(g, y, lipschitz) -> InverseResult`` (using ``_tolerance`` and ``_finish``); the
    base validates the tolerances, runs the solve without gradients under frozen spectral norms and reports
    samples that miss the tolerance (``on_failure``: ``"warn"``, ``"raise"`` or ``"ignore"``).
    """

    def __init__(self, atol: float, rtol: float, max_iter: int, on_failure: str, criterion: str = "step"):
        atol, rtol = check_real("atol", atol, 0.0), check_real("rtol", rtol, 0.0)
        if atol == 0 and rtol == 0:
            raise ValueError(f"need atol >= 0, rtol >= 0 and one of them > 0; got atol={atol}, rtol={rtol}")
        max_iter = check_count("max_iter", max_iter)
        if on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_failure must be 'warn', 'raise' or 'ignore', got {on_failure!r}")
        if criterion not in ("step", "bound"):
            raise ValueError(f"criterion must be 'step' or 'bound', got criterion={criterion!r}")
        self.atol, self.rtol, self.max_iter, self.on_failure = atol, rtol, max_iter, on_failure
        self.criterion = criterion

    def _tolerance(self, x: torch.Tensor) -> torch.Tensor:
        return self.atol + self.rtol * _norm(x)

    def _passed(self, step, x, gx, lipschitz) -> torch.Tensor:
        """The stop test for iterate ``x = T(x_prev)`` with ``step = ||x - x_prev||``: finite values, and the step
        (``criterion="step"``) or the Lemma 4.5 bound with round-off (``"bound"``) below ``atol + rtol ||x||``."""
        tol = self._tolerance(x)
        if self.criterion == "bound":
            step = (lipschitz * step + _round_off(x, gx)) / (1 - lipschitz)
        return torch.isfinite(step) & torch.isfinite(tol) & (step <= tol)

    def __call__(
        self, g: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, lipschitz: float | None = None
    ) -> InverseResult:
        """Solve ``x + g(x) = y`` for every sample of ``y`` (shape ``(batch, ...)``)."""
        check_estimator_input(g, y, f"{type(self).__name__}: y")
        if self.criterion == "bound" and (lipschitz is None or not 0 <= lipschitz < 1):
            raise ValueError(
                f"{type(self).__name__}(criterion='bound') needs a Lipschitz constant 0 <= L < 1 of g for the "
                f"Lemma 4.5 bound, got lipschitz={lipschitz}"
            )
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
        """Residual and error bound of the final ``x``; ``step = ||x - x_prev||`` where ``x = T(x_prev)``."""
        with torch.no_grad(), frozen_spectral_norm():
            gx = g(x)
            residual = _norm(x + gx - y)
        bound = torch.full_like(residual, math.inf)
        if lipschitz is not None and lipschitz < 1:
            delta = _round_off(x, gx)  # the rounding of the working dtype (module docstring)
            bound = (residual + delta) / (1 - lipschitz)
            if step is not None:  # Lemma 4.5 in its a-posteriori form: L / (1 - L) * ||x[k] - x[k-1]||
                bound = torch.minimum(bound, (lipschitz * step + delta) / (1 - lipschitz))
        converged = converged & torch.isfinite(residual) & torch.isfinite(_norm(x))
        if self.criterion == "bound":
            converged = converged & (bound <= self._tolerance(x))
        return InverseResult(x, iterations, residual, bound, converged, lipschitz, self.criterion)

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

    Each sample stops when ``||x[k+1] - x[k]||_2 <= atol + rtol * ||x[k+1]||_2`` (``criterion="step"``) or when
    its error bound is below that tolerance (``"bound"``); finished samples, and samples whose iterate turned
    non-finite (failures), are no longer evaluated. ``error_bound`` is Lemma 4.5,
    ``L / (1 - L) ||x[k] - x[k-1]|| <= L^k / (1 - L) ||x[1] - x[0]||``, plus the round-off term.

    Args:
        atol, rtol: finite tolerances ``>= 0``, not both 0. max_iter: evaluations of g, ``>= 1``.
        on_failure: ``"warn"`` (default), ``"raise"`` (:class:`InverseNotConverged`) or ``"ignore"``.
        criterion: ``"step"`` (default) or ``"bound"`` (see the module docstring).
    """

    def __init__(
        self, atol: float = 1e-6, rtol: float = 0.0, max_iter: int = 100, on_failure: str = "warn",
        criterion: str = "step",
    ):
        super().__init__(atol, rtol, max_iter, on_failure, criterion)

    def _solve(self, g, y, lipschitz):
        batch = y.shape[0]
        x = y.clone()
        iterations = torch.zeros(batch, dtype=torch.long, device=y.device)
        step = torch.full((batch,), math.inf, dtype=y.dtype, device=y.device)
        converged = torch.zeros(batch, dtype=torch.bool, device=y.device)
        active = torch.arange(batch, device=y.device)
        for _ in range(self.max_iter):
            xa = x[active]
            gx = g(xa)
            new = y[active] - gx
            d = _norm(new - xa)
            x[active] = new
            step[active] = d
            iterations[active] += 1
            done = self._passed(d, new, gx, lipschitz)
            converged[active[done]] = True
            active = active[~done & torch.isfinite(d)]  # a non-finite iterate stops as a failure
            if active.numel() == 0:
                break
        return self._finish(g, y, x, iterations, step, lipschitz, converged)

    def __repr__(self) -> str:
        extra = ", criterion='bound'" if self.criterion == "bound" else ""
        return f"FixedPoint(atol={self.atol}, rtol={self.rtol}, max_iter={self.max_iter}{extra})"


class Anderson(AbstractSolver):
    """Anderson acceleration (type II, mixing ``beta``) of the fixed-point map ``T(x) = y - g(x)``.

    Keeps the last ``memory`` iterates and solves, per sample, ``min_a ||sum_i a_i (T(x_i) - x_i)||`` subject
    to ``sum_i a_i = 1``; the next iterate is ``sum_i a_i (beta T(x_i) + (1 - beta) x_i)``. The first two
    evaluations are plain steps ``x[1] = T(y)``, ``x[2] = T(x[1])``; every evaluation of g is one iteration, so
    ``max_iter = k`` returns ``T`` of the k-th point. The returned iterate is ``x = T(x')`` of the last point x',
    stopped per sample on ``||T(x') - x'|| <= atol + rtol ||x||`` (``criterion="step"``) or on its error bound
    (``"bound"``); the bound is ``min(residual, L ||x - x'||) / (1 - L)`` plus round-off (Lemmas 4.5, 4.6).
    A sample whose iterate turns non-finite fails and is no longer counted.

    Args:
        atol, rtol, max_iter, on_failure, criterion: as for :class:`FixedPoint`.
        memory: iterates kept, an integer ``>= 1``. beta: mixing in ``(0, 1]``. ridge: relative Tikhonov
            regularization of the least-squares problem, finite ``>= 0``.
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
        criterion: str = "step",
    ):
        super().__init__(atol, rtol, max_iter, on_failure, criterion)
        memory = check_count("memory", memory)
        try:
            b = float(beta)
        except (TypeError, ValueError):
            b = math.nan
        if not 0 < b <= 1:  # also rejects nan
            raise ValueError(f"beta (Anderson mixing) must lie in (0, 1], got beta={beta!r}")
        self.memory, self.beta, self.ridge = memory, b, check_real("ridge", ridge, 0.0)

    def _solve(self, g, y, lipschitz):
        batch = y.shape[0]
        shape = y.shape
        m = self.memory
        flat_y = y.reshape(batch, -1)
        n = flat_y.shape[1]
        X = torch.zeros(batch, m, n, dtype=y.dtype, device=y.device)
        T = torch.zeros_like(X)

        def fmap(x):
            return (flat_y - g(x.reshape(shape)).reshape(batch, -1))

        X[:, 0], T[:, 0] = flat_y, fmap(flat_y)  # evaluation 1: x[1] = T(y)
        iterations = torch.ones(batch, dtype=torch.long, device=y.device)
        x = T[:, 0].clone()
        step = _norm(T[:, 0] - X[:, 0])
        converged = self._passed(step, x, flat_y - x, lipschitz)
        failed = ~torch.isfinite(step)
        k = 1
        while k < self.max_iter and not bool((converged | failed).all()):
            size = min(k, m)
            if k == 1:
                new = T[:, 0]  # evaluation 2 is a plain step too
            else:
                G = (T[:, :size] - X[:, :size]).to(torch.float64)
                H = G @ G.transpose(1, 2)
                # Ridge relative to the residuals' own scale (an absolute one would swamp them near convergence).
                scale = H.diagonal(dim1=1, dim2=2).amax(1).clamp_min(torch.finfo(H.dtype).tiny)
                eye = torch.eye(size, dtype=H.dtype, device=H.device)
                H = H + self.ridge * scale[:, None, None] * eye
                H = torch.where(failed[:, None, None], eye, H)  # failed samples: any solvable system
                ones = torch.ones(batch, size, 1, dtype=H.dtype, device=H.device)
                w = torch.linalg.solve(H, ones)
                alpha = (w / w.sum(1, keepdim=True)).to(y.dtype)  # (batch, size, 1)
                # All residuals exactly 0 (a fixed point of the rounded map) or a failed sample: w overflows;
                # take the plain step from the latest point instead of mixing in nan.
                plain = failed | ~torch.isfinite(alpha).all(1).squeeze(1)
                latest = torch.zeros_like(alpha)
                latest[:, (k - 1) % m] = 1
                alpha = torch.where(plain[:, None, None], latest, alpha)
                new = self.beta * (alpha * T[:, :size]).sum(1) + (1 - self.beta) * (alpha * X[:, :size]).sum(1)
            slot = k % m
            X[:, slot] = new
            T[:, slot] = fmap(new)
            k += 1
            gap = _norm(T[:, slot] - new)
            live = ~(converged | failed)
            iterations[live] += 1
            x = torch.where(live[:, None], T[:, slot], x)
            step = torch.where(live, gap, step)
            converged = converged | (live & self._passed(gap, T[:, slot], flat_y - T[:, slot], lipschitz))
            failed = failed | (live & ~torch.isfinite(gap))
        return self._finish(g, y, x.reshape(shape), iterations, step, lipschitz, converged)

    def __repr__(self) -> str:
        extra = ", criterion='bound'" if self.criterion == "bound" else ""
        return (
            f"Anderson(atol={self.atol}, rtol={self.rtol}, max_iter={self.max_iter}, memory={self.memory}{extra})"
        )
