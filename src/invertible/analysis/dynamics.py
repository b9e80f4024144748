"""Continuous dynamics of a residual network and where it stops being bijective (Fig. 4.1, Section 4.5).

A ResNet ``x_{t+1} = x_t + g_t(x_t)`` is an Euler discretization of an ODE; linear interpolation in time gives
continuous paths ``x(t + s) = x_t + s g_t(x_t)``, ``s in [0, 1]`` (thesis Section 4.5, "Relationship of i-ResNets to
Neural ODEs"). Two failures of bijectivity along these paths are measured exactly, not on a time grid:

* **Folds (crossing paths).** The interpolated map ``x_t -> x_t + s g_t(x_t)`` has Jacobian ``I + s J_{g_t}``,
  whose determinant ``prod_i (1 + s lambda_i)`` vanishes for some ``s in (0, 1]`` iff ``J_{g_t}(x_t)`` has a real
  eigenvalue ``lambda <= -1``. There the dynamics folds the plane: neighbouring paths merge and then cross.
  With ``Lip(g_t) = L < 1`` every ``|lambda| <= L < 1``, so an i-ResNet never folds (Theorem 4.1).
* **Collapsing pairs.** Two paths whose distance drops below ``eps`` times their initial distance at the same
  time. On each segment ``x_i(t+s) - x_j(t+s) = a + s b`` is linear in ``s``, so its minimum norm is exact. By
  Lemma 4.6 an i-ResNet keeps ``||x_i(t) - x_j(t)|| >= prod_{u<t} (1 - L_u) ||x_i(0) - x_j(0)||``
  (:func:`bi_lipschitz_floor`), so with ``eps`` below that floor it has none.

Shapes: ``trajectories`` returns ``(T + 1, N, d)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from invertible.logdet_exact import exact_jacobian

__all__ = ["PathEvents", "bi_lipschitz_floor", "collapsing_pairs", "fold_points", "min_pair_distance_ratio",
           "path_events", "residual_branch", "trajectories"]


def residual_branch(block: nn.Module) -> nn.Module:
    """The residual function ``g`` of a block ``x + g(x)`` (its ``g`` attribute); ``ValueError`` otherwise."""
    g = getattr(block, "g", None)
    if not isinstance(g, nn.Module):
        raise ValueError(f"expected a residual block with a residual function .g, got {type(block).__name__}")
    return g


@torch.no_grad()
def trajectories(blocks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """States ``x_0 = x, x_{t+1} = block_t(x_t)``: shape ``(T + 1, N, d)`` for ``x`` of shape ``(N, d)``."""
    if x.dim() != 2:
        raise ValueError(f"trajectories: expected points of shape (N, d), got {tuple(x.shape)}")
    states = [x]
    for block in blocks:
        states.append(block(states[-1]))
    return torch.stack(states)


def fold_points(blocks: Sequence[nn.Module], traj: torch.Tensor) -> torch.Tensor:
    """Boolean ``(T, N)``: whether the interpolated dynamics of block ``t`` folds on path ``n``, i.e.
    ``J_{g_t}(x_t^n)`` has a real eigenvalue ``<= -1`` (module docstring)."""
    if traj.shape[0] != len(blocks) + 1:
        raise ValueError(f"fold_points: {len(blocks)} blocks need {len(blocks) + 1} states, got {traj.shape[0]}")
    out = []
    for t, block in enumerate(blocks):
        with torch.no_grad():
            jac = exact_jacobian(residual_branch(block), traj[t])  # (N, d, d), rows = output dims
        eig = torch.linalg.eigvals(jac)
        tol = 1e-9 * (1 + eig.abs())
        real = eig.imag.abs() <= tol
        out.append((real & (eig.real <= -1)).any(-1))
    return torch.stack(out)


def min_pair_distance_ratio(traj: torch.Tensor) -> torch.Tensor:
    """``(N, N)``: ``min_t ||x_i(t) - x_j(t)|| / ||x_i(0) - x_j(0)||`` over the piecewise-linear paths (exact per
    segment); the diagonal (and pairs that start at the same point) is ``inf``."""
    T1, n, _ = traj.shape
    diff = traj[:, :, None, :] - traj[:, None, :, :]  # (T+1, N, N, d)
    a, b = diff[:-1], diff[1:] - diff[:-1]
    bb = (b * b).sum(-1)
    s = torch.where(bb > 0, (-(a * b).sum(-1) / bb.clamp_min(1e-300)).clamp(0, 1), torch.zeros_like(bb))
    seg_min = (a + s[..., None] * b).norm(dim=-1).amin(0) if T1 > 1 else diff[0].norm(dim=-1)
    start = diff[0].norm(dim=-1)
    ratio = seg_min / start
    ratio[start == 0] = math.inf
    return ratio


def collapsing_pairs(traj: torch.Tensor, eps: float) -> torch.Tensor:
    """Index pairs ``(K, 2)``, ``i < j``, of paths whose distance falls below ``eps`` times the initial one."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    ratio = min_pair_distance_ratio(traj)
    return torch.nonzero(torch.triu(ratio < eps, diagonal=1))


def bi_lipschitz_floor(lipschitz: Sequence[float]) -> float:
    """``prod_t (1 - L_t)``: by Lemma 4.6 (applied to every interpolated block ``x + s g_t``, ``Lip(s g_t) <= L_t``)
    the smallest possible ratio of path distances; 0 if some ``L_t >= 1`` (no guarantee)."""
    return math.prod(max(0.0, 1.0 - float(L)) for L in lipschitz)


@dataclass(frozen=True)
class PathEvents:
    """Where paths fold or collapse: ``folds (T, N)`` booleans, ``pairs (K, 2)`` collapsing pairs at ``eps``,
    ``min_ratio``: the smallest pair-distance ratio seen."""

    folds: torch.Tensor
    pairs: torch.Tensor
    min_ratio: float
    eps: float

    @property
    def n_fold_paths(self) -> int:
        return int(self.folds.any(0).sum())

    @property
    def n_collapsing_pairs(self) -> int:
        return int(self.pairs.shape[0])


def path_events(blocks: Sequence[nn.Module], x: torch.Tensor, eps: float) -> tuple[torch.Tensor, PathEvents]:
    """Trajectories of ``x (N, d)`` through ``blocks`` and their folds and collapsing pairs."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    traj = trajectories(blocks, x)
    ratio = min_pair_distance_ratio(traj)
    pairs = torch.nonzero(torch.triu(ratio < eps, diagonal=1))
    return traj, PathEvents(fold_points(blocks, traj), pairs, float(ratio.min()), float(eps))
