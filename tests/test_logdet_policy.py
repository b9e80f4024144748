"""The one estimator policy (invertible.logdet), the estimator and solver ABCs, and FlowModel = Flow's module face."""

import pytest
import torch

import invertible as inv
from helpers import mlp_g
from invertible.logdet import (
    AbstractLogDet,
    evaluation_estimator,
    make_estimator,
    override_estimators,
    set_estimators,
)
from invertible.models.resflow import DensityModel, image_residual_flow, vector_residual_flow
from invertible.training.evaluate import honest_estimator


def test_every_estimator_says_what_its_value_is():
    cases = [(inv.ExactLogDet(), "exact"), (inv.ForwardJacobianLogDet(), "exact"),
             (inv.PowerSeriesLogDet(), "biased"), (inv.RussianRouletteLogDet(), "unbiased")]
    for est, kind in cases:
        assert isinstance(est, AbstractLogDet) and est.kind == kind
        assert est.exact == (kind == "exact") and est.honest == (kind != "biased")
    with pytest.raises(TypeError):
        AbstractLogDet()


def test_make_estimator_modes():
    ps = make_estimator("iresnet", n_terms=7, n_probes=2)
    assert isinstance(ps, inv.PowerSeriesLogDet) and ps.n_terms == 7 and ps.n_probes == 2
    rr = make_estimator("resflow", n_exact=3)
    assert isinstance(rr, inv.RussianRouletteLogDet) and rr.n_exact == 3 and rr.neumann_gradient and rr.p == 0.5
    assert isinstance(make_estimator("exact"), inv.ForwardJacobianLogDet)
    with pytest.raises(ValueError, match="neumann"):
        make_estimator("neumann")


def test_evaluation_estimator_is_exact_for_small_d_and_unbiased_otherwise():
    assert type(evaluation_estimator(2, 1)) is inv.ForwardJacobianLogDet
    assert type(evaluation_estimator(64, 3)) is inv.ExactLogDet
    gen = torch.Generator()
    rr = evaluation_estimator(65, 3, n_exact=5, generator=gen)
    assert isinstance(rr, inv.RussianRouletteLogDet) and rr.honest
    assert rr.n_exact == 5 and not rr.neumann_gradient and rr.generator is gen
    assert type(evaluation_estimator(10, 1, exact_max_dim=4)) is inv.RussianRouletteLogDet
    # the evaluation in training/evaluate.py follows the policy
    assert type(honest_estimator(vector_residual_flow(2, n_blocks=1, hidden=(4,)))) is inv.ForwardJacobianLogDet
    img = image_residual_flow((1, 4, 4), n_scales=1, n_blocks=1, hidden=4)
    assert type(honest_estimator(img)) is inv.ExactLogDet
    assert type(honest_estimator(img, exact_max_dim=8)) is inv.RussianRouletteLogDet


def _two_blocks():
    est = inv.PowerSeriesLogDet(n_terms=3)
    return inv.InvertibleSequential(inv.ResidualBlock(mlp_g(2), logdet=est), inv.ActNorm(2),
                                    inv.ResidualBlock(mlp_g(2), logdet=inv.RussianRouletteLogDet())), est


def test_override_estimators_always_restores():
    seq, est = _two_blocks()
    before = [seq[0].logdet, seq[2].logdet]
    exact = inv.ExactLogDet()
    with override_estimators(seq, exact):
        assert seq[0].logdet is exact and seq[2].logdet is exact
    assert [seq[0].logdet, seq[2].logdet] == before
    with pytest.raises(RuntimeError, match="boom"), override_estimators(seq, exact):
        raise RuntimeError("boom")
    assert [seq[0].logdet, seq[2].logdet] == before
    assert set_estimators(seq, exact) == 2
    assert seq[0].logdet is exact and seq[2].logdet is exact


def test_solvers_share_the_abstract_base():
    assert isinstance(inv.FixedPoint(), inv.AbstractSolver) and isinstance(inv.Anderson(), inv.AbstractSolver)
    with pytest.raises(TypeError):
        inv.AbstractSolver(1e-6, 0.0, 10, "warn")


@pytest.mark.parametrize("image", [False, True])
def test_flow_model_delegates_to_its_flow(image):
    torch.manual_seed(0)
    if image:
        m = image_residual_flow((1, 4, 4), n_scales=2, n_blocks=1, hidden=4, mode="exact").double()
        x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    else:
        m = vector_residual_flow(2, n_blocks=2, hidden=(8,)).double()
        x = torch.randn(3, 2, dtype=torch.float64)
    assert DensityModel is inv.FlowModel and isinstance(m, inv.FlowModel)
    m.initialize(x)
    m.eval()
    flow = m.distribution()
    assert isinstance(flow, inv.Flow) and flow.event_shape == (m.latent_dim,) and m.dim == m.latent_dim
    torch.testing.assert_close(m(x), flow.log_prob(x), rtol=0, atol=0)
    z, ld = m.bijection.forward_and_logdet(x)
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(1)
    torch.testing.assert_close(m.log_prob(x), normal + ld, rtol=1e-12, atol=1e-12)
    s1 = m.sample(4, generator=torch.Generator().manual_seed(5))
    s2 = flow.sample((4,), generator=torch.Generator().manual_seed(5))
    assert s1.shape == (4, *m.event_shape)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
