"""Inverse solvers never report a wrong answer as converged: non-finite iterates (case 1), float32 round-off in
the Lemma 4.5 bound and the bound criterion (case 2), every Anderson iteration counts (case 3), argument checks."""

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import invertible as inv
from helpers import mlp_g, warm_up

SOLVERS = {"fixed_point": inv.FixedPoint, "anderson": inv.Anderson}


def _inf_g(t):
    return t * math.inf  # the first evaluation is already non-finite


def _expanding_g(t):
    return 3.0 * t  # Lip(g) = 3: the plain iteration overflows to inf and then nan after ~650 steps


@pytest.mark.parametrize("rtol", [0.0, 1e-3])
@pytest.mark.parametrize("solver", SOLVERS)
def test_non_finite_iterates_are_failures_not_convergence(solver, rtol):
    y = torch.ones(2, 3)
    cases = [_inf_g] + ([_expanding_g] if solver == "fixed_point" else [])
    for g in cases:
        res = SOLVERS[solver](atol=1e-6, rtol=rtol, max_iter=1000, on_failure="ignore")(g, y)
        assert not res.converged.any()
        with pytest.raises(inv.InverseNotConverged):
            SOLVERS[solver](atol=1e-6, rtol=rtol, max_iter=1000, on_failure="raise")(g, y)
        with pytest.warns(inv.NotConvergedWarning):
            SOLVERS[solver](atol=1e-6, rtol=rtol, max_iter=1000)(g, y)


def test_only_the_non_finite_sample_fails():
    def g(t):  # sample 0 contracts, sample 1 blows up
        return torch.cat([0.5 * torch.tanh(t[:1]), t[1:] * math.inf])

    for solver in SOLVERS.values():
        res = solver(atol=1e-8, max_iter=200, on_failure="ignore")(g, torch.ones(2, 3))
        assert res.converged.tolist() == [True, False]
        assert math.isfinite(float(res.residual[0])) and float(res.residual[0]) < 1e-6


def _float32_problem(seed, dim=2, hidden=8, coeff=0.5):
    torch.manual_seed(seed)
    block = inv.ResidualBlock(mlp_g(dim, hidden, coeff, atol=1e-12, rtol=1e-12))
    x = torch.randn(16, dim) * 3
    warm_up(block, x, 3)
    L = block.certify()
    b32 = copy.deepcopy(block).float()
    y = b32(x.float())
    b64 = copy.deepcopy(b32).double()  # the float32 model's exact preimage, from float64 arithmetic
    x_star = inv.FixedPoint(atol=1e-14, max_iter=3000, on_failure="ignore")(b64.g, y.double()).x
    return b32.g, y, x_star, L


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", range(4))
def test_float32_error_bound_covers_round_off(solver, seed):
    g, y, x_star, L = _float32_problem(seed)
    res = SOLVERS[solver](atol=1e-30, max_iter=200, on_failure="ignore")(g, y, lipschitz=L)
    err = (res.x.double() - x_star).norm(dim=1)
    assert (res.error_bound > 0).all()
    assert (err <= res.error_bound.double()).all(), (err.max(), res.error_bound.min())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), coeff=st.floats(0.3, 0.97), dim=st.sampled_from([2, 4, 8]))
def test_lemma_4_5_bound_holds_in_float32_property(seed, coeff, dim):
    g, y, x_star, L = _float32_problem(seed, dim, 4 * dim, coeff)
    for k in (1, 5, 60):
        res = inv.FixedPoint(atol=1e-30, max_iter=k, on_failure="ignore")(g, y, lipschitz=L)
        err = (res.x.double() - x_star).norm(dim=1)
        assert (err <= res.error_bound.double()).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_bound_criterion_never_reports_a_bound_above_the_tolerance(solver):
    g, y, x_star, L = _float32_problem(0)
    loose = SOLVERS[solver](atol=1e-4, max_iter=200, criterion="bound")(g, y, lipschitz=L)
    assert loose.all_converged and (loose.error_bound <= 1e-4).all()
    assert ((loose.x.double() - x_star).norm(dim=1) <= 1e-4).all()
    # below float32 round-off no iterate can be certified: not converged, although the step reaches 0
    with pytest.warns(inv.NotConvergedWarning):
        tight = SOLVERS[solver](atol=1e-9, max_iter=200, criterion="bound")(g, y, lipschitz=L)
    assert not tight.converged.any() and (tight.error_bound > 1e-9).all()
    # the default step criterion is the stop test of Algorithm 1, documented as such
    step = SOLVERS[solver](atol=1e-9, max_iter=200, on_failure="ignore")(g, y, lipschitz=L)
    assert step.criterion == "step" and loose.criterion == "bound"
    with pytest.raises(ValueError, match="Lipschitz"):
        SOLVERS[solver](criterion="bound")(g, y)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_every_anderson_iteration_counts(k):
    g, y, x_star, L = _float32_problem(1, 4, 16, 0.9)
    g64 = copy.deepcopy(g).double()
    y = y.double()
    an = inv.Anderson(atol=1e-300, max_iter=k, on_failure="ignore")(g64, y)
    fp = inv.FixedPoint(atol=1e-300, max_iter=k, on_failure="ignore")(g64, y)
    assert (an.iterations == k).all()
    if k <= 2:  # the first two steps are plain fixed-point steps
        assert torch.allclose(an.x, fp.x, rtol=0, atol=1e-14)
    if k > 1:
        prev = inv.Anderson(atol=1e-300, max_iter=k - 1, on_failure="ignore")(g64, y)
        assert not torch.equal(prev.x, an.x)
        assert (an.x - x_star).norm() < (prev.x - x_star).norm()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: inv.FixedPoint(atol=math.nan), "atol=nan"),
        (lambda: inv.FixedPoint(atol=-1e-6), "atol=-1e-06"),
        (lambda: inv.FixedPoint(atol=math.inf), "atol=inf"),
        (lambda: inv.FixedPoint(rtol=math.nan), "rtol=nan"),
        (lambda: inv.Anderson(rtol=-1.0), "rtol=-1.0"),
        (lambda: inv.FixedPoint(max_iter=0), "max_iter.*0"),
        (lambda: inv.FixedPoint(max_iter=2.5), "max_iter.*2.5"),
        (lambda: inv.Anderson(max_iter=-3), "max_iter.*-3"),
        (lambda: inv.Anderson(beta=math.nan), "beta.*nan"),
        (lambda: inv.Anderson(beta=0.0), "beta.*0.0"),
        (lambda: inv.Anderson(beta=1.5), "beta.*1.5"),
        (lambda: inv.Anderson(memory=0), "memory.*0"),
        (lambda: inv.Anderson(memory=2.5), "memory.*2.5"),
        (lambda: inv.Anderson(ridge=-1.0), "ridge.*-1.0"),
        (lambda: inv.Anderson(ridge=math.nan), "ridge.*nan"),
        (lambda: inv.FixedPoint(criterion="exact"), "criterion.*exact"),
    ],
)
def test_solver_constructor_rejects_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_valid_solver_arguments_still_accepted():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inv.FixedPoint(atol=0.0, rtol=1e-6, max_iter=1)
        inv.Anderson(atol=1e-6, rtol=0.0, max_iter=1, memory=1, beta=0.5, ridge=0.0)
