"""Log-det estimators: exactness, Theorem 5.8, Lemma 5.5, unbiasedness of Russian roulette and its gradient."""

import math

import pytest
import torch

import invertible as inv
from helpers import autograd_jacobian, conv_g, mlp_g, warm_up


def _contractive(dim=3, coeff=0.9, seed=0):
    torch.manual_seed(seed)
    g = mlp_g(dim, 8, coeff, atol=1e-10, rtol=1e-10)
    x = torch.randn(4, dim)
    warm_up(g, x, 2)
    return g, x


def _exact_series(jac: torch.Tensor, n: int) -> torch.Tensor:
    """PS(J, n) = sum_{k=1}^n (-1)^{k+1} tr(J^k) / k from the exact Jacobian (eq. 5.12)."""
    total = torch.zeros(jac.shape[0])
    power = torch.eye(jac.shape[-1]).expand_as(jac)
    for k in range(1, n + 1):
        power = power @ jac
        total = total + (-1) ** (k + 1) * power.diagonal(dim1=1, dim2=2).sum(-1) / k
    return total


def test_exact_logdet_equals_slogdet_of_identity_plus_jacobian():
    g, x = _contractive()
    gx, ld = inv.ExactLogDet()(g, x)
    jac = autograd_jacobian(g, x)
    assert torch.allclose(gx, g(x))
    assert torch.allclose(ld, torch.linalg.slogdet(torch.eye(3) + jac)[1], atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("coeff", [0.5, 0.9, 0.97])
def test_theorem_5_8_truncation_bound(seed, coeff):
    g, x = _contractive(3, coeff, seed)
    lip = inv.lipschitz_constant(g)
    assert lip < 1
    jac = autograd_jacobian(g, x)
    exact = torch.linalg.slogdet(torch.eye(3) + jac)[1]
    for n in (1, 2, 3, 5, 10):
        err = (_exact_series(jac, n) - exact).abs()
        assert (err <= inv.power_series_truncation_bound(lip, 3, n) + 1e-12).all()
    # the bound is not vacuous: it shrinks geometrically
    assert inv.power_series_truncation_bound(lip, 3, 20) < inv.power_series_truncation_bound(lip, 3, 2) * coeff**10


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_power_series_is_unbiased_for_the_truncated_series(probe):
    """E_v[estimate] = PS(J, n) (Lemma 5.6): the only bias is truncation."""
    g, x = _contractive(3, 0.9, seed=1)
    n, reps = 4, 4000
    est = inv.PowerSeriesLogDet(n_terms=n, probe=probe, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, ld = est(g, x[:1].repeat(reps, 1))
    target = _exact_series(autograd_jacobian(g, x[:1]), n)[0]
    se = ld.std() / math.sqrt(reps)
    assert abs(ld.mean() - target) < 4 * se


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
@pytest.mark.parametrize("dist", ["geometric", "poisson"])
@pytest.mark.parametrize("neumann", [True, False])
def test_russian_roulette_is_unbiased(dist, neumann):
    g, x = _contractive(3, 0.95, seed=2)
    exact = inv.ExactLogDet()(g, x)[1]
    est = inv.RussianRouletteLogDet(
        n_exact=1, p=0.6, dist=dist, lam=1.5, neumann_gradient=neumann, generator=torch.Generator().manual_seed(3)
    )
    draws = torch.stack([est(g, x.repeat(8, 1))[1].view(8, -1).mean(0) for _ in range(1500)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)
    assert (se < 0.05).all()  # and the test has power


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
def test_neumann_gradient_is_unbiased_and_value_is_not_the_surrogate():
    g, x = _contractive(2, 0.9, seed=4)
    g.eval()
    params = [p for p in g.parameters() if p.requires_grad]
    exact = inv.ExactLogDet()(g, x)[1].sum()
    exact_grad = torch.autograd.grad(exact, params, allow_unused=True, materialize_grads=True)
    est = inv.RussianRouletteLogDet(n_exact=2, p=0.5, neumann_gradient=True, generator=torch.Generator().manual_seed(5))
    grads, values = [], []
    for _ in range(1200):
        _, ld = est(g, x)
        grads.append(
            torch.cat(
                [
                    gr.flatten()
                    for gr in torch.autograd.grad(ld.sum(), params, allow_unused=True, materialize_grads=True)
                ]
            )
        )
        values.append(ld.detach().sum())
    grads = torch.stack(grads)
    target = torch.cat([gr.flatten() for gr in exact_grad])
    used = target != 0  # the last bias does not enter the Jacobian
    z = (grads.mean(0) - target)[used] / (grads.std(0)[used] / math.sqrt(len(grads)))
    assert z.abs().max() < 5, z.abs().max()
    assert (grads[:, ~used] == 0).all()
    values = torch.stack(values)
    assert abs(values.mean() - exact) < 4 * values.std() / math.sqrt(len(values))


def test_backprop_power_series_gradient_converges_to_exact():
    g, x = _contractive(2, 0.5, seed=6)
    g.eval()
    params = list(g.parameters())
    exact_grad = torch.autograd.grad(
        inv.ExactLogDet()(g, x)[1].sum(), params, allow_unused=True, materialize_grads=True
    )
    est = inv.PowerSeriesLogDet(n_terms=25, n_probes=1)
    grads = []
    for _ in range(400):
        _, ld = est(g, x.repeat(4, 1))
        grads.append(
            torch.cat(
                [
                    gr.flatten()
                    for gr in torch.autograd.grad(ld.sum() / 4, params, allow_unused=True, materialize_grads=True)
                ]
            )
        )
    grads = torch.stack(grads)
    target = torch.cat([gr.flatten() for gr in exact_grad])
    used = target != 0
    z = (grads.mean(0) - target)[used] / (grads.std(0)[used] / math.sqrt(len(grads)))
    assert z.abs().max() < 5


@pytest.mark.parametrize("estimator", [inv.ExactLogDet(), inv.PowerSeriesLogDet(3), inv.RussianRouletteLogDet()])
def test_estimators_work_under_no_grad(estimator):
    g, x = _contractive()
    with torch.no_grad():
        gx, ld = estimator(g, x)
    assert ld.shape == (4,) and torch.isfinite(ld).all()
    assert not ld.requires_grad and not gx.requires_grad


@pytest.mark.parametrize("seed", range(5))
def test_lemma_5_5_logdet_bounds_for_an_iresnet(seed):
    torch.manual_seed(seed)
    blocks = [inv.ResidualBlock(conv_g(2, 4, 0.8, atol=1e-8, rtol=1e-8), logdet=inv.ExactLogDet()) for _ in range(3)]
    net = inv.InvertibleSequential(*blocks)
    x = torch.randn(5, 2, 3, 3) * 3
    warm_up(net, x, 2)
    lips = [b.certify() for b in blocks]
    lower, upper = inv.logdet_bounds(lips, 18)
    _, ld = net.forward_and_logdet(x)
    assert (ld >= lower).all() and (ld <= upper).all()


def test_bound_functions_reject_non_contractive():
    with pytest.raises(ValueError, match="Lip"):
        inv.power_series_truncation_bound(1.0, 3, 5)
    with pytest.raises(ValueError, match="Lemma 5.5"):
        inv.logdet_bounds([0.5, 1.2], 3)


def test_estimator_argument_validation():
    with pytest.raises(ValueError, match="probe"):
        inv.PowerSeriesLogDet(probe="uniform")
    with pytest.raises(ValueError, match="n_terms"):
        inv.PowerSeriesLogDet(n_terms=0)
    with pytest.raises(ValueError, match="p must"):
        inv.RussianRouletteLogDet(p=1.0)
    with pytest.raises(ValueError, match="dist"):
        inv.RussianRouletteLogDet(dist="binomial")


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
def test_generator_makes_estimates_reproducible():
    g, x = _contractive()
    a = inv.RussianRouletteLogDet(generator=torch.Generator().manual_seed(7))(g, x)[1]
    b = inv.RussianRouletteLogDet(generator=torch.Generator().manual_seed(7))(g, x)[1]
    assert torch.equal(a, b)


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
def test_power_series_neumann_gradient_matches_backprop_through_the_series_in_expectation():
    """Truncated at n terms, d/dtheta PS(J, n) = sum_{k<n} (-1)^k tr(J^k dJ): both estimators are unbiased for it."""
    g, x = _contractive(2, 0.6, seed=8)
    g.eval()
    params = list(g.parameters())
    grads = {}
    for neumann in (False, True):
        est = inv.PowerSeriesLogDet(n_terms=6, neumann_gradient=neumann, generator=torch.Generator().manual_seed(9))
        draws = []
        for _ in range(400):
            _, ld = est(g, x)
            gr = torch.autograd.grad(ld.sum(), params, allow_unused=True, materialize_grads=True)
            draws.append(torch.cat([t.flatten() for t in gr]))
        grads[neumann] = torch.stack(draws)
    diff = grads[True].mean(0) - grads[False].mean(0)
    se = (grads[True].var(0) / 400 + grads[False].var(0) / 400).sqrt()
    used = se > 0
    assert (diff[used].abs() < 5 * se[used]).all()
