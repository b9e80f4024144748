"""Preimages of ReLU layers by linear programming (thesis Section 3.3, Definition 3.1, Theorem 3.3).

For a layer ``y = ReLU(A x + b)`` with ``A`` of shape ``(m, n)`` the preimage of ``y`` is the polyhedron

    A|_{y>0} x + b|_{y>0}  = y|_{y>0}      (eq. 3.1)
    A|_{y=0} x + b|_{y=0} <= 0             (eq. 3.2)

Write ``O`` (``k x n``) for an orthonormal basis of the null space ``N(A|_{y>0})``, ``x_p`` for the
minimum-norm solution of (3.1) (that is ``P_{N^perp} x`` for any preimage point ``x``) and

    Abar = A|_{y=0} O^T   (m0 x k),       bbar = b|_{y=0} + A|_{y=0} x_p   (m0,).

Every preimage point is ``x_p + O^T z`` with ``z`` in ``P = {z in R^k : Abar z + bbar <= 0}``. Theorem 3.3:
the preimage is a singleton if ``k = 0`` or if some rows ``I`` of ``(Abar, bbar)`` are omnidirectional for a
point ``p`` (all their hyperplanes pass through ``p`` and ``Abar|_I`` is omnidirectional); it is a compact
polytope iff ``Abar`` is omnidirectional; otherwise it is unbounded.

Numerical decisions (all documented on :func:`preimage_class`) use one tolerance ``tol`` measured in input
units after normalizing rows to unit length; HiGHS runs with feasibility tolerances ``tol / 100``.

References: Behrmann, Dittmer, Fernsel, Maass, "Invariance and inverse stability under ReLU" (2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linprog

PreimageKind = Literal["singleton", "compact", "unbounded"]

__all__ = [
    "LayerPreimages",
    "PreimageInfo",
    "PreimageKind",
    "is_omnidirectional",
    "layer_preimages",
    "omnidirectional_margin",
    "preimage_class",
    "preimage_classes",
    "preimage_info",
]

DEFAULT_TOL = 1e-7


def _as_array(a, name: str, ndim: int) -> np.ndarray:
    """Convert a numpy array / tensor / sequence to a finite float64 array with ``ndim`` dimensions."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(a).__name__}") from exc
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _highs_options(tol: float) -> dict:
    ftol = float(min(max(tol / 100.0, 1e-10), 1e-7))
    return {"primal_feasibility_tolerance": ftol, "dual_feasibility_tolerance": ftol}


def omnidirectional_margin(A, *, tol: float = DEFAULT_TOL) -> float:
    """How robustly ``A`` is omnidirectional: a number in ``[0, 1]``, positive iff it is (Definition 3.1).

    ``A`` (``m x n``) is omnidirectional iff every open halfspace ``{v : <x, v> > 0}``, ``x != 0``, holds a
    row of ``A``. With unit rows ``u_i`` this holds iff (a) the rows span ``R^n`` and (b) some strictly
    positive ``lambda`` has ``sum_i lambda_i u_i = 0`` (Stiemke's alternative: otherwise a ``d != 0`` has
    ``<u_i, d> <= 0`` for all ``i``). Equivalently ``0`` lies in the interior of the convex hull of the rows.

    Returns ``m * max{t : U^T lambda = 0, sum(lambda) = 1, lambda_i >= t}`` (the Stiemke LP, HiGHS), which
    is 1 for perfectly balanced rows, or 0 when (a) fails: ``sigma_min(U) <= tol * sigma_max(U)``. Zero rows
    (norm below ``tol`` times the largest) are dropped; they lie in no open halfspace.
    """
    A = _as_array(A, "A", 2)
    m, n = A.shape
    if n == 0:
        return 1.0  # R^0 has no non-zero direction: vacuously omnidirectional
    norms = np.linalg.norm(A, axis=1)
    if m == 0 or norms.max() == 0:
        return 0.0
    keep = norms > tol * norms.max()
    U = A[keep] / norms[keep, None]
    m = U.shape[0]
    if m < n:
        return 0.0
    s = np.linalg.svd(U, compute_uv=False)
    if s[n - 1] <= tol * s[0]:
        return 0.0
    if n == 1:  # exact: rows of both signs; margin of the balancing weights
        npos, nneg = int((U[:, 0] > 0).sum()), int((U[:, 0] < 0).sum())
        return 0.0 if npos == 0 or nneg == 0 else m / (2.0 * max(npos, nneg))
    # variables: lambda (m), t ; maximize t
    c = np.zeros(m + 1)
    c[-1] = -1.0
    A_eq = np.zeros((n + 1, m + 1))
    A_eq[:n, :m] = U.T
    A_eq[n, :m] = 1.0
    b_eq = np.zeros(n + 1)
    b_eq[n] = 1.0
    A_ub = np.hstack([-np.eye(m), np.ones((m, 1))])  # t - lambda_i <= 0
    b_ub = np.zeros(m)
    bounds = [(0, None)] * m + [(None, 1.0)]
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs",
                  options=_highs_options(tol))
    if res.status == 2:  # infeasible: no lambda >= 0 balances the rows
        return 0.0
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the omnidirectionality LP: {res.message}")
    return float(max(0.0, -res.fun) * m)


def is_omnidirectional(A, *, tol: float = DEFAULT_TOL) -> bool:
    """Definition 3.1 (i): every linear open halfspace of ``R^n`` contains a row of ``A`` (``m x n``).

    Decided by the linear program of :func:`omnidirectional_margin` (scipy HiGHS): ``A`` counts as
    omnidirectional iff its unit rows span ``R^n`` with ``sigma_min > tol * sigma_max`` and a balancing
    weight vector exists with ``min_i lambda_i > tol * mean(lambda)``. ``A`` may be a numpy array or tensor.

    Example: ``[[1, 0], [0, 1], [-1, -1]]`` is omnidirectional; ``[[1, 0], [0, 1]]`` is not.
    """
    return omnidirectional_margin(A, tol=tol) > tol


@dataclass(frozen=True)
class PreimageInfo:
    """Result of :func:`preimage_info` for ``y = ReLU(A x + b)``.

    ``kind``: Theorem 3.3 class. ``k``: ``dim N(A|_{y>0})``. ``n_active``: number of ``y_i > 0``.
    ``omnidirectional``: whether ``Abar`` is omnidirectional (bounded preimage).
    ``implicit_rows``: indices (into ``A``) of the inactive rows tight on the whole preimage - the index set
    ``I`` of Theorem 3.3 (ii) when ``kind == "singleton"`` and ``k > 0``.
    ``point``: one preimage point ``x`` (shape ``(n,)``).
    ``inradius``: radius of the largest ball inside the preimage within the affine space
    ``x_p + N(A|_{y>0})`` (0 for a lower-dimensional preimage; ``1`` caps unbounded ones).
    """

    kind: PreimageKind
    k: int
    n_active: int
    omnidirectional: bool
    implicit_rows: tuple[int, ...]
    point: np.ndarray
    inradius: float


def _validate_layer(A, b, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    A = _as_array(A, "A", 2)
    b = _as_array(b, "b", 1)
    y = _as_array(y, "y", 1)
    m = A.shape[0]
    if b.shape != (m,) or y.shape != (m,):
        raise ValueError(f"expected A (m, n), b (m,), y (m,); got A {A.shape}, b {b.shape}, y {y.shape}")
    if (y < 0).any():
        raise ValueError(f"y = ReLU(Ax + b) cannot be negative; y has {int((y < 0).sum())} negative entries")
    return A, b, y


def _not_producible(why: str) -> ValueError:
    return ValueError(f"no x satisfies ReLU(Ax + b) = y: {why}")


def preimage_info(A, b, y, *, tol: float = DEFAULT_TOL) -> PreimageInfo:
    """Classify the preimage ``{x : ReLU(A x + b) = y}`` following Theorem 3.3; see :class:`PreimageInfo`.

    Shapes: ``A (m, n)``, ``b (m,)``, ``y (m,)`` (numpy arrays or tensors; computed in float64).

    Steps: (1) ``x_p``, the minimum-norm solution of eq. 3.1 and ``O``, a basis of ``N(A|_{y>0})`` from an SVD
    (singular values ``<= tol * sigma_max`` count as zero); eq. 3.1 must hold to ``tol * (1 + |y| + |b|)``.
    (2) ``k = 0``: singleton (case i), provided eq. 3.2 holds at ``x_p``. (3) ``k > 0``: unit-normalize
    the rows of ``(Abar, bbar)`` and solve the Chebyshev LP ``max r : Abar z + r <= -bbar, r <= 1``.
    ``r < -tol`` means ``y`` is not producible (``ValueError``); ``r > tol`` means the preimage has interior
    in ``x_p + N``, so it is no singleton and is compact iff ``Abar`` is omnidirectional (case iii).
    Otherwise the implicit equalities ``I`` (rows tight on all of ``P``, found by LPs maximizing slacks, a
    slack ``> tol`` marks a row as free) give the singleton test of case ii: ``Abar|_I`` omnidirectional
    (its hyperplanes meet in the points of ``P``).

    Raises ``ValueError`` for bad shapes, NaN/inf, negative ``y`` or a ``y`` that no ``x`` produces.
    """
    A, b, y = _validate_layer(A, b, y)
    m, n = A.shape
    pos = y > 0
    A_p, b_p, y_p = A[pos], b[pos], y[pos]
    A_z, b_z = A[~pos], b[~pos]
    zero_rows = np.flatnonzero(~pos)
    scale = 1.0 + max(np.abs(y).max(initial=0.0), np.abs(b).max(initial=0.0))
    if A_p.shape[0] > 0:
        U, S, Vt = np.linalg.svd(A_p, full_matrices=True)
        rank = int((S > tol * S[0]).sum()) if S.size and S[0] > 0 else 0
        rhs = y_p - b_p
        # minimum-norm solution on the numerical row space: x_p = V_r S_r^-1 U_r^T rhs = P_{N^perp} x
        x_p = Vt[:rank].T @ ((U[:, :rank].T @ rhs) / S[:rank])
        residual = float(np.abs(A_p @ x_p - rhs).max())
        if residual > tol * scale * max(1.0, float(np.abs(A_p).max())):
            raise _not_producible(f"the equations of the active rows (eq. 3.1) are inconsistent "
                                  f"(least-squares residual {residual:.3g})")
        O = Vt[rank:]
    else:
        x_p = np.zeros(n)
        O = np.eye(n)
    k = O.shape[0]
    n_active = int(pos.sum())
    Abar = A_z @ O.T
    bbar = A_z @ x_p + b_z
    if k == 0:
        worst = float(bbar.max(initial=-np.inf))
        if worst > tol * scale:
            raise _not_producible(f"the unique solution of eq. 3.1 violates eq. 3.2 by {worst:.3g}")
        return PreimageInfo("singleton", 0, n_active, True, (), x_p, 0.0)
    row_norms = np.linalg.norm(Abar, axis=1)
    a_norms = np.linalg.norm(A_z, axis=1)
    free = row_norms > tol * np.maximum(a_norms, 1e-300)
    const = ~free  # rows constant on x_p + N: must already satisfy eq. 3.2
    if const.any():
        worst = float(bbar[const].max())
        if worst > tol * scale:
            raise _not_producible(f"an inactive row that is fixed by the active rows has value {worst:.3g} > 0")
    Ahat = Abar[free] / row_norms[free, None]
    bhat = bbar[free] / row_norms[free]
    rows = zero_rows[free]
    if Ahat.shape[0] == 0:  # the whole affine space x_p + N is the preimage
        return PreimageInfo("unbounded", k, n_active, False, (), x_p, 1.0)
    z, r = _chebyshev(Ahat, bhat, tol)
    if r < -tol * scale:
        raise _not_producible(f"the inequalities of the inactive rows (eq. 3.2) are infeasible (depth {r:.3g})")
    omni = is_omnidirectional(Ahat, tol=tol)
    point = x_p + O.T @ z
    if r > tol * scale:
        return PreimageInfo("compact" if omni else "unbounded", k, n_active, omni, (), point, float(r))
    implicit = _implicit_equalities(Ahat, bhat - min(r, 0.0), tol * scale)
    kind: PreimageKind
    if implicit.size and is_omnidirectional(Ahat[implicit], tol=tol):
        kind = "singleton"
    else:
        kind = "compact" if omni else "unbounded"
    return PreimageInfo(kind, k, n_active, omni, tuple(int(i) for i in rows[implicit]), point, 0.0)


def _linprog(c, A_ub, b_ub, bounds, tol: float, what: str):
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs", options=_highs_options(tol))
    if res.status not in (0, 2):
        raise RuntimeError(f"HiGHS failed on the {what} LP: {res.message}")
    return res


def _chebyshev(Ahat: np.ndarray, bhat: np.ndarray, tol: float) -> tuple[np.ndarray, float]:
    """``max r`` s.t. ``Ahat z + r <= -bhat``, ``r <= 1`` (unit rows): the depth of the deepest point."""
    m, k = Ahat.shape
    c = np.zeros(k + 1)
    c[-1] = -1.0
    A_ub = np.hstack([Ahat, np.ones((m, 1))])
    res = _linprog(c, A_ub, -bhat, [(None, None)] * k + [(None, 1.0)], tol, "Chebyshev-centre")
    if res.status == 2:  # cannot happen with r free, kept for safety
        return np.zeros(k), -np.inf
    return res.x[:k], float(res.x[-1])


def _implicit_equalities(Ahat: np.ndarray, bhat: np.ndarray, slack_tol: float) -> np.ndarray:
    """Rows of ``Ahat z <= -bhat`` that hold with equality on the whole (non-empty) polyhedron.

    Repeatedly maximize the total slack ``sum_{i in C} s_i`` (``0 <= s_i <= 1``) of the candidate rows ``C``;
    rows reaching a slack above ``slack_tol`` are free and leave ``C``. When no candidate can get slack, the
    candidates are exactly the implicit equalities.
    """
    m, k = Ahat.shape
    cand = np.ones(m, dtype=bool)
    while cand.any():
        idx = np.flatnonzero(cand)
        c = np.zeros(k + idx.size)
        c[k:] = -1.0
        A_ub = np.zeros((m, k + idx.size))
        A_ub[:, :k] = Ahat
        A_ub[idx, k + np.arange(idx.size)] = 1.0
        res = _linprog(c, A_ub, -bhat, [(None, None)] * k + [(0.0, 1.0)] * idx.size, slack_tol,
                       "implicit-equality")
        if res.status == 2:
            break  # numerically empty: treat all candidates as tight
        slack = np.asarray(res.x[k:])
        freed = slack > slack_tol
        if not freed.any():
            break
        cand[idx[freed]] = False
    return np.flatnonzero(cand)


def preimage_class(A, b, y, *, tol: float = DEFAULT_TOL) -> PreimageKind:
    """Theorem 3.3: the preimage of ``y`` under ``x -> ReLU(A x + b)`` is a ``"singleton"``, a
    ``"compact"`` polytope or ``"unbounded"``.

    ``A`` (m, n), ``b`` (m,), ``y`` (m,) as numpy arrays or tensors. See :func:`preimage_info` for the
    algorithm and the meaning of ``tol``. Raises ``ValueError`` if no ``x`` gives ``y``.

    Example::

        >>> A = [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]
        >>> preimage_class(A, [0.0, 0.0, -1.0], [0.0, 0.0, 0.0])   # x in a triangle
        'compact'
    """
    return preimage_info(A, b, y, tol=tol).kind


def preimage_classes(A, b, X, *, tol: float = DEFAULT_TOL) -> list[PreimageKind]:
    """Theorem 3.3 class of ``ReLU(A x + b)`` for every row ``x`` of ``X`` (``(N, n)``), fast on grids.

    If every inactive pre-activation at ``x`` is below ``-tol * scale``, ``x`` is an interior point of the
    preimage, so the class depends only on the activation pattern (``k`` and ``Abar`` are functions of it,
    and the preimage is no singleton for ``k > 0``): such points share one :func:`preimage_info` call per
    pattern. Points on a kink (some pre-activation within the tolerance of 0) are classified one by one.
    """
    A = _as_array(A, "A", 2)
    b = _as_array(b, "b", 1)
    X = _as_array(X, "X", 2)
    if b.shape != (A.shape[0],) or X.shape[1] != A.shape[1]:
        raise ValueError(f"expected A (m, n), b (m,), X (N, n); got A {A.shape}, b {b.shape}, X {X.shape}")
    Z = X @ A.T + b
    Y = np.maximum(Z, 0.0)
    scale = 1.0 + np.maximum(np.abs(Y).max(axis=1, initial=0.0), np.abs(b).max(initial=0.0))
    interior = np.all((Z > 0) | (Z < -tol * scale[:, None]), axis=1)
    out: list[PreimageKind] = [None] * X.shape[0]  # type: ignore[list-item]
    cache: dict[bytes, PreimageKind] = {}
    patterns = Z > 0
    for i in range(X.shape[0]):
        if interior[i]:
            key = np.packbits(patterns[i]).tobytes()
            if key not in cache:
                cache[key] = preimage_info(A, b, Y[i], tol=tol).kind
            out[i] = cache[key]
        else:
            out[i] = preimage_info(A, b, Y[i], tol=tol).kind
    return out


@dataclass(frozen=True)
class LayerPreimages:
    """Theorem 3.3 classes of one ReLU layer ``h_l = ReLU(W_l h_{l-1} + b_l)`` of an MLP for a batch of
    inputs: ``classes[i]`` is the class of the preimage of ``h_l`` *within the layer's input space*
    ``R^{in_features}`` (whether that preimage meets the range of the earlier layers is not checked)."""

    name: str
    layer: int
    in_features: int
    out_features: int
    classes: list[PreimageKind]

    def fractions(self) -> dict[str, float]:
        """Fraction of inputs in each class."""
        n = max(len(self.classes), 1)
        return {kind: self.classes.count(kind) / n for kind in ("singleton", "compact", "unbounded")}


def layer_preimages(model: torch.nn.Module, x, *, tol: float = DEFAULT_TOL) -> list[LayerPreimages]:
    """Preimage class (Theorem 3.3) of every ReLU layer of an MLP at the inputs ``x``.

    ``model``: a chain of ``Linear``/``ReLU`` (and ``Flatten``/``Identity``/``Dropout``) modules, e.g.
    :class:`invertible.models.ReLUMLP`; ``x``: ``(B, *input_shape)`` or one input ``(d,)``. Every ``Linear``
    followed by a ``ReLU`` is a ReLU layer; the final linear read-out is not (its preimage is an affine
    space). Computed in float64 on a copy of the model. Convolutional layers raise ``ValueError``.
    """
    from invertible.analysis.linearization import relu_stages

    stages = relu_stages(model)
    for st in stages:
        if st.kind == "linear" and not isinstance(st.modules[-1], torch.nn.Linear):
            raise ValueError(f"layer_preimages supports MLPs only; stage {st.name} is "
                             f"{type(st.modules[-1]).__name__} (use layer_spectra for CNNs)")
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    h = x.detach().to(torch.float64)
    if h.ndim == 1:
        h = h.unsqueeze(0)
    if not torch.isfinite(h).all():
        raise ValueError("x contains NaN or inf")
    results: list[LayerPreimages] = []
    with torch.no_grad():
        for i, st in enumerate(stages):
            if st.kind == "relu":
                h = torch.relu(h)
                continue
            for m in st.modules[:-1]:
                h = m(h)
            lin = st.modules[-1]
            W = lin.weight.detach().cpu().double()
            bias = lin.bias.detach().cpu().double() if lin.bias is not None else torch.zeros(W.shape[0])
            if h.ndim != 2 or h.shape[1] != W.shape[1]:
                raise ValueError(f"input of {st.name} has shape {tuple(h.shape)}; expected (B, {W.shape[1]})")
            if i + 1 < len(stages) and stages[i + 1].kind == "relu":
                classes = preimage_classes(W, bias, h.cpu(), tol=tol)
                results.append(LayerPreimages(st.name, st.layer, W.shape[1], W.shape[0], classes))
            h = h @ W.T.to(h.device) + bias.to(h.device)
    return results
