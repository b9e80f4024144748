"""Theorem 3.3 (preimages of ReLU layers) against an independent brute force; Definition 3.1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from invertible.analysis import (
    is_omnidirectional,
    layer_preimages,
    omnidirectional_margin,
    preimage_class,
    preimage_classes,
    preimage_info,
)
from invertible.models.relu_nets import ReLUMLP


# ---------------------------------------------------------------------------------------------------------
# Independent references: no null spaces, no omnidirectionality - only LPs over the feasible set itself.
def brute_force_class(A: np.ndarray, b: np.ndarray, y: np.ndarray, width_tol: float = 1e-6) -> str:
    """Coordinate-wise ranges ``min/max x_j`` over ``{x : A_+ x + b_+ = y_+, A_0 x + b_0 <= 0}``."""
    pos = y > 0
    n = A.shape[1]
    kw = dict(
        A_eq=A[pos] if pos.any() else None,
        b_eq=(y - b)[pos] if pos.any() else None,
        A_ub=A[~pos] if (~pos).any() else None,
        b_ub=-b[~pos] if (~pos).any() else None,
        bounds=[(None, None)] * n,
        method="highs",
    )
    widths = []
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        lo, hi = linprog(e, **kw), linprog(-e, **kw)
        if lo.status == 2 or hi.status == 2:
            return "infeasible"
        if lo.status == 3 or hi.status == 3:
            return "unbounded"
        assert lo.status == 0 and hi.status == 0
        widths.append(-hi.fun - lo.fun)
    return "singleton" if max(widths) <= width_tol else "compact"


def brute_force_omnidirectional(A: np.ndarray) -> bool:
    """Not omnidirectional iff some ``d != 0`` in the box has ``A d <= 0``: try to push each ``+-d_j``."""
    n = A.shape[1]
    for j in range(n):
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            c[j] = -sign
            res = linprog(c, A_ub=A, b_ub=np.zeros(A.shape[0]), bounds=[(-1, 1)] * n, method="highs")
            if -res.fun > 1e-7:
                return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Definition 3.1
@pytest.mark.parametrize(
    "A, expected",
    [
        ([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], True),  # simplex directions
        ([[1.0, 0.0], [0.0, 1.0]], False),  # positive quadrant is row-free in (-1,-1)
        ([[1.0, 0.0], [-1.0, 0.0]], False),  # rank 1: the x2-axis halfspaces are empty
        ([[1.0, 2.0], [3.0, -1.0], [-1.0, -2.0], [-3.0, 1.0]], True),  # [F; -F], F spanning
        ([[1.0, 0.0], [0.0, 1.0], [-1.0, 1e-3]], False),  # all rows in the halfspace x2 > -x1 * 1e-3
        ([[2.0], [-0.5]], True),
        ([[2.0], [3.0]], False),
        ([[0.0, 0.0], [1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], True),  # a zero row does not matter
    ],
)
def test_omnidirectional_examples(A, expected):
    assert is_omnidirectional(np.array(A)) is expected
    assert is_omnidirectional(torch.tensor(A, dtype=torch.float64)) is expected


def test_omnidirectional_matches_brute_force_and_is_scale_and_order_invariant():
    rng = np.random.default_rng(0)
    seen = {True: 0, False: 0}
    for _ in range(60):
        n = int(rng.integers(2, 5))
        m = int(rng.integers(n, 3 * n + 2))
        A = rng.normal(size=(m, n)) + rng.normal(size=n) * rng.uniform(0, 2)  # shift: often one-sided
        omni = is_omnidirectional(A)
        assert omni == brute_force_omnidirectional(A)
        scaled = A[rng.permutation(m)] * rng.uniform(0.1, 10, size=(m, 1))
        assert is_omnidirectional(scaled) == omni
        # Adding rows never destroys omnidirectionality; [A; -A] always spans, so it is omnidirectional.
        assert is_omnidirectional(np.vstack([A, -A]))
        seen[omni] += 1
    assert seen[True] >= 5 and seen[False] >= 5


def test_omnidirectional_margin_range():
    assert omnidirectional_margin([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) == pytest.approx(1.0)
    assert omnidirectional_margin([[1.0, 0.0], [0.0, 1.0]]) == 0.0
    assert 0 < omnidirectional_margin([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]) < 1


# ---------------------------------------------------------------------------------------------------------
# Theorem 3.3: constructed layers of every class, including degenerate (tight) singletons.
SQ = np.sqrt(0.5)
CASES = {
    # k = 0: two active rows determine x (case i)
    "active_full_rank": ([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0, -5.0], [1.0, 2.0, 0.0], "singleton"),
    # tight singleton, no active row: three hyperplanes through the origin, omnidirectional (case ii)
    "tight_simplex": ([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], "singleton"),
    # tight and redundant: [F; -F] through p = (1, -2)
    "tight_redundant": ([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]],
                        [1.0, -3.0, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0], "singleton"),
    # one active row fixes x3; the inactive rows meet in one point of the remaining plane (k = 2)
    "tight_in_nullspace": ([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [-1.0, -1.0, 1.0], [5, 5, 5]],
                           [0.0, -2.0, -2.0, -2.0, -100.0], [2.0, 0.0, 0.0, 0.0, 0.0], "singleton"),
    # tight rows plus slack rows: the tight ones alone decide (I is a strict subset)
    "tight_plus_slack": ([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, 0.0]],
                         [0.0, 0.0, 0.0, -3.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0], "singleton"),
    # full-dimensional triangle (case iii)
    "triangle": ([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0], "compact"),
    # a segment: compact but of zero volume, not a singleton (two tight rows, one free direction)
    "segment": ([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], [0.0, 0.0, 0.0, -1.0],
                [0.0, 0.0, 0.0, 0.0], "compact"),
    # active row + interval in its null space
    "interval_in_nullspace": ([[1.0, 1.0], [SQ, -SQ], [-SQ, SQ]], [0.0, -1.0, -1.0], [3.0, 0.0, 0.0], "compact"),
    # quadrant
    "quadrant": ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [0.0, 0.0], "unbounded"),
    # tight but not omnidirectional: a half-line
    "tight_halfline": ([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], "unbounded"),
    # the only inactive row is fixed by the active row: the whole line through x_p
    "constant_row": ([[1.0, 0.0], [2.0, 0.0]], [0.0, -5.0], [1.0, 0.0], "unbounded"),
    # all units active but fewer than n: affine subspace
    "underdetermined": ([[1.0, 2.0, 3.0]], [0.0], [1.0], "unbounded"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_constructed_layers(name):
    A, b, y, expected = (np.array(v, dtype=np.float64) if i < 3 else v for i, v in enumerate(CASES[name]))
    assert brute_force_class(A, b, y) == expected  # the construction is what we claim
    info = preimage_info(A, b, y)
    assert info.kind == expected
    assert preimage_class(torch.from_numpy(A), torch.from_numpy(b), torch.from_numpy(y)) == expected
    # the returned point is a preimage
    np.testing.assert_allclose(np.maximum(A @ info.point + b, 0), y, atol=1e-9)
    if name.startswith("tight"):
        assert info.k > 0 and len(info.implicit_rows) >= 2 and info.inradius == 0.0


def test_tight_singleton_rows_are_omnidirectional_for_the_point():
    A, b, y, _ = (np.array(v, dtype=np.float64) if i < 3 else v for i, v in enumerate(CASES["tight_plus_slack"]))
    info = preimage_info(A, b, y)
    assert info.implicit_rows == (0, 1, 2)  # exactly the three hyperplanes through the origin
    assert is_omnidirectional(A[list(info.implicit_rows)])


def _random_layer(rng: np.random.Generator):
    n = int(rng.integers(1, 5))
    m = int(rng.integers(1, 9))
    A = rng.normal(size=(m, n))
    x = rng.normal(size=n)
    b = rng.normal(size=m) - rng.uniform(0, 2)  # negative shift: more inactive units
    z = A @ x + b
    y = np.maximum(z, 0.0)
    if rng.uniform() < 0.4:  # make some inactive hyperplanes pass exactly through x (tight rows)
        tight = rng.uniform(size=m) < 0.6
        b[tight] = -(A @ x)[tight]
        y[tight] = 0.0
    return A, b, y


def test_theorem_3_3_matches_brute_force_on_random_layers():
    rng = np.random.default_rng(1)
    counts = {"singleton": 0, "compact": 0, "unbounded": 0}
    tight_singletons = 0
    for _ in range(120):
        A, b, y = _random_layer(rng)
        info = preimage_info(A, b, y)
        assert info.kind == brute_force_class(A, b, y), (A, b, y)
        counts[info.kind] += 1
        tight_singletons += info.kind == "singleton" and info.k > 0
    assert min(counts.values()) >= 10, counts
    assert tight_singletons >= 3


def test_random_tight_singletons_from_omnidirectional_rows():
    """Random omnidirectional rows through a random point p give a singleton; dropping the row that
    balances them (so they fit in a halfspace) gives an unbounded cone."""
    rng = np.random.default_rng(2)
    for _ in range(15):
        n = int(rng.integers(2, 5))
        F = rng.normal(size=(n, n))
        A = np.vstack([F, -F.sum(axis=0, keepdims=True) * rng.uniform(0.5, 2)])  # 0 = positive combination
        p = rng.normal(size=n)
        b = -A @ p
        y = np.zeros(n + 1)
        assert preimage_class(A, b, y) == "singleton" == brute_force_class(A, b, y)
        assert preimage_class(A[:-1], b[:-1], y[:-1]) == "unbounded" == brute_force_class(A[:-1], b[:-1], y[:-1])


# ---------------------------------------------------------------------------------------------------------
# Bad input
@pytest.mark.parametrize(
    "A, b, y, match",
    [
        ([[1.0, 0.0], [2.0, 0.0]], [0.0, 0.0], [1.0, 1.0], "inconsistent"),  # active rows disagree
        ([[1.0], [1.0]], [0.0, 0.0], [1.0, 0.0], "violates"),  # k = 0, inactive row positive
        ([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], "infeasible"),
        ([[1.0, 0.0], [2.0, 0.0]], [0.0, 0.0], [1.0, 0.0], "fixed by the active rows"),
        ([[1.0, 0.0]], [0.0], [-1.0], "negative"),
        ([[1.0, 0.0]], [0.0, 1.0], [0.0], "expected A"),
        ([[1.0, np.nan]], [0.0], [0.0], "NaN"),
        ([1.0, 0.0], [0.0], [0.0], "dimension"),
    ],
)
def test_bad_input_raises(A, b, y, match):
    with pytest.raises(ValueError, match=match):
        preimage_class(np.array(A), np.array(b), np.array(y))


# ---------------------------------------------------------------------------------------------------------
# Batched and per-layer use
def test_preimage_classes_matches_pointwise_including_kinks():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(3, 2))
    b = rng.normal(size=3)
    X = rng.normal(size=(40, 2)) * 2
    # points exactly on two of the hyperplanes (kinks) and on their intersection
    on_line = np.array([[t, -(b[0] + A[0, 0] * t) / A[0, 1]] for t in (-1.0, 0.5)])
    corner = np.linalg.solve(A[:2], -b[:2])[None]
    X = np.vstack([X, on_line, corner])
    got = preimage_classes(A, b, X)
    want = [preimage_class(A, b, np.maximum(A @ x + b, 0)) for x in X]
    assert got == want
    assert len(set(got)) >= 2


def test_layer_preimages_of_an_mlp():
    torch.manual_seed(0)
    net = ReLUMLP([3, 5, 4, 2]).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    layers = layer_preimages(net, x)
    assert [(lp.name, lp.in_features, lp.out_features) for lp in layers] == [("dense1", 3, 5), ("dense2", 5, 4)]
    h1 = torch.relu(net[0](x)).detach()
    for i in range(6):
        A, b = net[0].weight.detach(), net[0].bias.detach()
        assert layers[0].classes[i] == preimage_class(A, b, h1[i])
        A2, b2 = net[2].weight.detach(), net[2].bias.detach()
        assert layers[1].classes[i] == preimage_class(A2, b2, torch.relu(net[2](h1[i])).detach())
    assert sum(layers[0].fractions().values()) == pytest.approx(1.0)
    single = layer_preimages(net, x[0])
    assert single[0].classes == layers[0].classes[:1]


def test_layer_preimages_rejects_convolutions():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="MLPs only"):
        layer_preimages(net, torch.zeros(1, 1, 3, 3))
