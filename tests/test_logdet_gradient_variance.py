"""The log-det gradient estimators of issue 13.3: every Russian-roulette setting (probe law, n_exact) is unbiased
for the gradient of the exact log-det, and the efficient one has less variance than the default."""

import math

import pytest
import torch
from torch import nn

import invertible as inv
from helpers import conv_g, warm_up


def _tiny_conv_block(seed=0):
    torch.manual_seed(seed)
    g = conv_g(2, 4, 0.9, atol=1e-10, rtol=1e-10).double()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    warm_up(g, x, 5)
    return g, x, [p for p in g.parameters() if p.requires_grad]


def _flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)
    return torch.cat([t.flatten() for t in grads])


def _gradient_draws(est, g, x, params, n):
    return torch.stack([_flat_grad(est(g, x)[1].sum(), params) for _ in range(n)])


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
@pytest.mark.parametrize("probe, n_exact", [("rademacher", 4), ("rademacher", 1), ("gaussian", 4)])
def test_russian_roulette_gradient_is_unbiased_for_every_probe_and_n_exact(probe, n_exact):
    """Mean over draws of the Neumann-surrogate gradient = the gradient of the exact log-det (autograd Jacobian +
    slogdet), within 5 standard errors on every coordinate; and the check has power (s.e. << |gradient|)."""
    g, x, params = _tiny_conv_block()
    target = _flat_grad(inv.ExactLogDet()(g, x)[1].sum(), params)
    est = inv.make_estimator("resflow", n_exact=n_exact, probe=probe)
    est.generator = torch.Generator().manual_seed(7)
    grads = _gradient_draws(est, g, x, params, 600)
    used = target != 0
    se = grads.std(0)[used] / math.sqrt(len(grads))
    z = (grads.mean(0)[used] - target[used]) / se
    assert z.abs().max() < 5, z.abs().max()
    assert float(se.norm()) < 0.1 * float(target.norm())


@pytest.mark.cpu_only
def test_efficient_setting_has_less_gradient_variance_than_the_default():
    """One truncation N per batch: the default's roulette error at the third Neumann term is common to the whole
    batch (here every sample has the same Jacobian, g linear with ``||A||_2 = 0.7``), while the probe error
    averages out; ``n_exact=4`` with Rademacher probes removes most of the former at the same (zero) bias."""
    torch.manual_seed(0)
    g = nn.Sequential(inv.spectral_norm(nn.Linear(6, 6), 0.7, atol=1e-10, rtol=1e-10)).double()
    x = torch.randn(64, 6, dtype=torch.float64)
    warm_up(g, x, 5)
    params = list(g.parameters())
    default = inv.make_estimator("resflow")
    default.generator = torch.Generator().manual_seed(1)
    efficient = inv.make_estimator("resflow", n_exact=4, probe="rademacher")
    efficient.generator = torch.Generator().manual_seed(2)
    var_default = float(_gradient_draws(default, g, x, params, 300).var(0).sum())
    var_efficient = float(_gradient_draws(efficient, g, x, params, 300).var(0).sum())
    assert var_efficient < 0.7 * var_default, (var_efficient, var_default)


def test_rademacher_hutchinson_variance_is_the_gaussian_one_minus_the_diagonal():
    """``Var(v^T A v) = 2||A_s||_F^2 - 2 sum_i A_ii^2`` for Rademacher v, ``2||A_s||_F^2`` for Gaussian v."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64) + 3 * torch.eye(5, dtype=torch.float64)
    sym = (a + a.T) / 2
    n = 200_000
    rad = (2 * torch.randint(0, 2, (n, 5), generator=gen) - 1).double()
    gau = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    q_rad = ((rad @ a) * rad).sum(1)
    q_gau = ((gau @ a) * gau).sum(1)
    assert abs(float(q_rad.var()) - float(2 * sym.square().sum() - 2 * a.diagonal().square().sum())) < 0.05 * float(
        q_rad.var()
    )
    assert abs(float(q_gau.var()) - float(2 * sym.square().sum())) < 0.05 * float(q_gau.var())
    assert abs(float(q_rad.mean()) - float(a.trace())) < 0.05 and abs(float(q_gau.mean()) - float(a.trace())) < 0.1


def test_make_estimator_probe_option():
    assert inv.make_estimator("resflow").probe == "gaussian"
    assert inv.make_estimator("resflow", n_exact=4, probe="rademacher").probe == "rademacher"
    assert inv.make_estimator("iresnet", probe="rademacher").probe == "rademacher"
    with pytest.raises(ValueError, match="probe.*'sobol'"):
        inv.make_estimator("resflow", probe="sobol")
