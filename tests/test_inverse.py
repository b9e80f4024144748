"""Inverse solvers: Lemma 4.5 (fixed-point error), Lemma 4.6 (bi-Lipschitz), per-sample stopping, failures."""

import math

import pytest
import torch
from torch import nn

import invertible as inv
from helpers import mlp_g, warm_up


def _block(coeff, seed, solver=None, dim=4):
    torch.manual_seed(seed)
    g = mlp_g(dim, 16, coeff, atol=1e-10, rtol=1e-10)
    block = inv.ResidualBlock(g, inverse=solver or inv.FixedPoint())
    x = torch.randn(8, dim) * 2
    warm_up(block, x, 2)
    return block, x


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("coeff", [0.5, 0.9, 0.97])
def test_lemma_4_5_fixed_point_error_bound(seed, coeff):
    block, x = _block(coeff, seed)
    L = block.certify()
    assert L < 1
    y = block(x)
    with torch.no_grad():
        step1 = (block.g(y)).norm(dim=1)  # ||x[1] - x[0]|| = ||g(y)||
    for k in (1, 3, 10):
        res = inv.FixedPoint(atol=1e-300, max_iter=k, on_failure="ignore")(block.g, y, lipschitz=L)
        err = (res.x - x).norm(dim=1)
        a_priori = L**k / (1 - L) * step1
        assert (err <= a_priori * (1 + 1e-9) + 1e-14).all()
        assert (err <= res.error_bound * (1 + 1e-9) + 1e-14).all()  # the reported bound is a bound
        assert (res.error_bound <= a_priori * (1 + 1e-9) + 1e-14).all()  # and at least as tight as Lemma 4.5
        assert (res.iterations == k).all()


@pytest.mark.parametrize("seed", range(5))
def test_lemma_4_6_bi_lipschitz(seed):
    block, _ = _block(0.9, seed)
    L = block.certify()
    a, b = torch.randn(100, 4) * 3, torch.randn(100, 4) * 3
    fa, fb = block(a), block(b)
    dist = (a - b).norm(dim=1)
    assert ((fa - fb).norm(dim=1) <= (1 + L) * dist * (1 + 1e-12)).all()
    ia, ib = block.inverse(a), block.inverse(b)
    assert ((ia - ib).norm(dim=1) <= dist / (1 - L) * (1 + 1e-6)).all()


def test_stopping_is_per_sample():
    block, x = _block(0.9, 0)
    x = torch.cat([torch.zeros(1, 4), x * 20])
    y = block(x)
    res = inv.FixedPoint(atol=1e-10, max_iter=500)(block.g, y)
    assert res.all_converged
    assert res.iterations.min() < res.iterations.max()
    assert (res.residual <= 1e-9).all()
    assert torch.allclose(res.x, x, atol=1e-8)


@pytest.mark.parametrize("coeff", [0.9, 0.97])
def test_anderson_needs_fewer_iterations(coeff):
    """When the contraction rate is really c (symmetric operator: spectral radius = norm = c) Anderson beats
    plain fixed point by a wide margin; a mild nonlinearity keeps it from being a pure linear solve."""
    torch.manual_seed(1)
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        a = torch.randn(16, 16)
        lin.weight.copy_(a + a.T)
    g = nn.Sequential(inv.spectral_norm(lin, coeff, atol=1e-12, rtol=1e-12), nn.ELU())
    block = inv.ResidualBlock(g)
    x = torch.randn(6, 16)
    warm_up(block, x, 2)
    y = block(x)
    fp = inv.FixedPoint(atol=1e-9, max_iter=3000)(g, y)
    an = inv.Anderson(atol=1e-9, max_iter=3000, memory=5)(g, y)
    assert fp.all_converged and an.all_converged
    assert torch.allclose(an.x, x, atol=1e-7) and torch.allclose(fp.x, x, atol=1e-7)
    assert an.iterations.float().mean() <= 0.5 * fp.iterations.float().mean()


def test_non_convergence_warns_or_raises():
    block, x = _block(0.97, 0)
    y = block(x * 10)
    with pytest.warns(inv.NotConvergedWarning, match="did not reach"):
        res = inv.FixedPoint(atol=1e-12, max_iter=2)(block.g, y)
    assert not res.converged.any()
    with pytest.raises(inv.InverseNotConverged, match="contractive"):
        inv.FixedPoint(atol=1e-12, max_iter=2, on_failure="raise")(block.g, y)


def test_error_bound_is_infinite_without_a_lipschitz_constant():
    block, x = _block(0.9, 0)
    res = inv.FixedPoint()(block.g, block(x))
    assert torch.isinf(res.error_bound).all()
    assert res.lipschitz is None


def test_block_inverse_records_result_with_estimate_or_certificate():
    block, x = _block(0.9, 0)
    y = block(x)
    block.inverse(y)
    est = block.last_inverse.lipschitz
    assert est is not None and 0 < est <= 0.9**2 + 1e-9
    cert = block.certify()
    block.inverse(y)
    assert block.last_inverse.lipschitz == cert
    assert torch.isfinite(block.last_inverse.error_bound).all()


def test_non_contractive_block_refuses_to_invert():
    g = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        g[0].weight.copy_(torch.eye(3) * 3)
    block = inv.ResidualBlock(g)
    assert block.certify() >= 1
    with pytest.raises(ValueError, match="not contractive"):
        block.inverse(torch.randn(2, 3))


def test_solver_argument_validation():
    with pytest.raises(ValueError, match="atol"):
        inv.FixedPoint(atol=0, rtol=0)
    with pytest.raises(ValueError, match="max_iter"):
        inv.Anderson(max_iter=0)
    with pytest.raises(ValueError, match="on_failure"):
        inv.FixedPoint(on_failure="explode")
    with pytest.raises(ValueError, match="NaN"):
        inv.FixedPoint()(lambda t: t, torch.tensor([[math.nan]]))
