"""Log-det estimators: Russian roulette unbiased for every n_exact (case 4), argument checks (case 7), half
precision (case 9), evaluation under no_grad and inference_mode (case 10)."""

import math

import pytest
import torch

import invertible as inv
from helpers import mlp_g, warm_up


def _contractive(dim=3, coeff=0.9, seed=0, hidden=8):
    torch.manual_seed(seed)
    g = mlp_g(dim, hidden, coeff, atol=1e-10, rtol=1e-10)
    x = torch.randn(4, dim)
    warm_up(g, x, 2)
    return g, x


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
@pytest.mark.parametrize("n_exact", [0, 1, 2])
def test_russian_roulette_is_unbiased_for_every_n_exact(n_exact):
    """E[estimate] = log det(I + J_g): the mean of 3,000 seeded draws lies within 4 standard errors."""
    g, x = _contractive(3, 0.95, seed=2)
    exact = inv.ExactLogDet()(g, x)[1]
    est = inv.RussianRouletteLogDet(n_exact=n_exact, p=0.5, neumann_gradient=False,
                                    generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        draws = torch.stack([est(g, x)[1] for _ in range(3000)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    z = (mean - exact) / se
    assert (z.abs() < 4).all(), (n_exact, z)
    assert (se < 0.05).all()  # and the test has power


@pytest.mark.cpu_only
def test_russian_roulette_weights_are_one_over_the_tail_probability():
    est = inv.RussianRouletteLogDet(n_exact=0, p=0.5)
    # N = max(M, 1): term 1 is always computed (weight 1), term k >= 2 iff M >= k (weight 1 / (1 - p)^k)
    assert est.term_weights(3) == [1.0, 4.0, 8.0, 16.0]
    assert inv.RussianRouletteLogDet(n_exact=2, p=0.5).term_weights(3) == [1.0, 1.0, 2.0, 4.0]


@pytest.mark.cpu_only
def test_russian_roulette_gradient_is_unbiased_with_n_exact_0():
    g, x = _contractive(2, 0.9, seed=4)
    g.eval()
    params = [p for p in g.parameters() if p.requires_grad]
    exact = inv.ExactLogDet()(g, x)[1].sum()
    target = torch.cat([t.flatten() for t in torch.autograd.grad(exact, params, materialize_grads=True,
                                                                  allow_unused=True)])
    est = inv.RussianRouletteLogDet(n_exact=0, p=0.5, neumann_gradient=True, generator=torch.Generator().manual_seed(5))
    grads = []
    for _ in range(1500):
        _, ld = est(g, x)
        gr = torch.autograd.grad(ld.sum(), params, allow_unused=True, materialize_grads=True)
        grads.append(torch.cat([t.flatten() for t in gr]))
    grads = torch.stack(grads)
    used = target != 0
    z = (grads.mean(0) - target)[used] / (grads.std(0)[used] / math.sqrt(len(grads)))
    assert z.abs().max() < 5, z.abs().max()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: inv.PowerSeriesLogDet(n_terms=0), "n_terms.*0"),
        (lambda: inv.PowerSeriesLogDet(n_terms=2.5), "n_terms.*2.5"),
        (lambda: inv.PowerSeriesLogDet(n_probes=0), "n_probes.*0"),
        (lambda: inv.RussianRouletteLogDet(n_probes=-1), "n_probes.*-1"),
        (lambda: inv.RussianRouletteLogDet(n_exact=-1), "n_exact.*-1"),
        (lambda: inv.RussianRouletteLogDet(n_exact=1.5), "n_exact.*1.5"),
        (lambda: inv.RussianRouletteLogDet(p=0.0), "p.*0.0"),
        (lambda: inv.RussianRouletteLogDet(p=1.0), "p.*1.0"),
        (lambda: inv.RussianRouletteLogDet(p=math.nan), "p.*nan"),
        (lambda: inv.RussianRouletteLogDet(dist="poisson", lam=math.inf), "lam.*inf"),
        (lambda: inv.RussianRouletteLogDet(dist="poisson", lam=-2.0), "lam.*-2.0"),
        (lambda: inv.RussianRouletteLogDet(max_terms=0), "max_terms.*0"),
        (lambda: inv.RussianRouletteLogDet(n_exact=5, max_terms=3), "max_terms.*3"),
        (lambda: inv.make_estimator("iresnet", n_terms=0), "n_terms.*0"),
    ],
)
def test_estimator_constructor_rejects_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("estimator", [inv.ExactLogDet(), inv.ForwardJacobianLogDet()])
def test_exact_logdet_in_half_precision(dtype, estimator):
    g, x = _contractive(5, 0.9, seed=3, hidden=6)  # d = 5 > 2: the slogdet path, not the closed form
    exact = inv.ExactLogDet()(g, x)[1]
    g_low = g.to(dtype)
    gx, ld = estimator(g_low, x.to(dtype))
    assert ld.dtype == dtype and gx.dtype == dtype and ld.shape == (4,)
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    assert torch.allclose(ld.double(), exact, atol=tol), (ld, exact)


def _series():
    return [
        inv.PowerSeriesLogDet(n_terms=4, generator=torch.Generator().manual_seed(1)),
        inv.PowerSeriesLogDet(n_terms=4, neumann_gradient=True, generator=torch.Generator().manual_seed(1)),
        inv.RussianRouletteLogDet(n_exact=2, generator=torch.Generator().manual_seed(1)),
        inv.RussianRouletteLogDet(n_exact=0, neumann_gradient=False, generator=torch.Generator().manual_seed(1)),
        inv.ExactLogDet(),
        inv.ForwardJacobianLogDet(),
    ]


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
@pytest.mark.parametrize("i", range(6))
@pytest.mark.parametrize("training", [False, True])
def test_estimators_work_under_no_grad_and_inference_mode(i, training):
    g, x = _contractive()
    g.train(training)
    plain = _series()[i](g, x)[1].detach()
    with torch.no_grad():
        no_grad = _series()[i](g, x)[1]
    with torch.inference_mode():
        x_inf = x.clone()  # an inference tensor, as data loaded under inference_mode is
        gx, inference = _series()[i](g, x_inf)
    assert not inference.requires_grad and not gx.requires_grad
    assert torch.allclose(no_grad, plain, rtol=1e-12, atol=1e-12)
    assert torch.allclose(inference, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.cpu_only
def test_flow_log_prob_under_inference_mode():
    torch.manual_seed(0)
    blocks = [inv.ResidualBlock(mlp_g(3, 8, 0.9), logdet=inv.RussianRouletteLogDet(
        generator=torch.Generator().manual_seed(2))) for _ in range(2)]
    flow = inv.Flow(inv.InvertibleSequential(inv.ActNorm(3), *blocks), event_shape=(3,))
    x = torch.randn(16, 3)
    warm_up(flow.bijection, x, 3)
    for b in blocks:
        b.logdet = inv.RussianRouletteLogDet(generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = flow.log_prob(x)
    for b in blocks:
        b.logdet = inv.RussianRouletteLogDet(generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got = flow.log_prob(x)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
