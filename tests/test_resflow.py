"""Residual-flow models: exact log-dets against autograd Jacobians, inverses, rebuild from config, honest eval."""

import math

import pytest
import torch

import invertible as inv
from invertible.logdet import ForwardJacobianLogDet, make_estimator, override_estimators
from invertible.models.blocks import lipschitz_mlp
from invertible.models.coupling_baseline import coupling_flow
from invertible.models.resflow import build_model, image_residual_flow, vector_residual_flow
from invertible.nn import LogitTransform
from invertible.training.evaluate import evaluate_nll


def _full_log_prob(model, x):
    """log N(F(x)) + log|det dF/dx| from the dense autograd Jacobian of the whole bijection, per sample."""
    out = []
    for xi in x:
        def f(v, shape=xi.shape):
            return model.bijection(v.reshape(1, *shape)).reshape(-1)
        with inv.frozen_spectral_norm():
            jac = torch.autograd.functional.jacobian(f, xi.reshape(-1))
            z = f(xi.reshape(-1))
        out.append(-0.5 * (z * z).sum() - 0.5 * z.numel() * math.log(2 * math.pi) + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("d,act,preact", [(1, "lipswish", True), (2, "lipswish", True), (2, "elu", False),
                                          (3, "tanh", True), (4, "lipswish", False)])
def test_forward_jacobian_logdet_is_exact(d, act, preact):
    torch.manual_seed(d)
    g = lipschitz_mlp([d, 16, 16, d], 0.9, act, preact=preact, beta=2.0, last_scale=1.0).double()
    x = torch.randn(6, d, dtype=torch.float64)
    g(x)  # initialize the power-iteration vectors
    g.eval()
    gx, ld = ForwardJacobianLogDet()(g, x)
    gx2, ld2 = inv.ExactLogDet()(g, x)
    torch.testing.assert_close(gx, gx2, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld, ld2, rtol=1e-10, atol=1e-10)
    # gradients in the parameters agree too
    g1 = torch.autograd.grad(ld.sum(), list(g.parameters()), allow_unused=True)
    g2 = torch.autograd.grad(inv.ExactLogDet()(g, x)[1].sum(), list(g.parameters()), allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("preact", [False, True])
def test_forward_jacobian_logdet_compiled_matches_eager(preact):
    """The opt-in torch.compile path computes the same exact log-det and parameter gradients (training mode)."""
    torch.manual_seed(1)
    g = lipschitz_mlp([2, 16, 16, 2], 0.9, "lipswish", preact=preact, beta=16.0).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    g(x)
    with inv.frozen_spectral_norm():
        gx, ld = ForwardJacobianLogDet()(g, x)
        gx2, ld2 = ForwardJacobianLogDet(compile=True)(g, x)
        torch.testing.assert_close(gx2, gx, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ld2, ld, rtol=1e-10, atol=1e-12)
        g1 = torch.autograd.grad((gx.sum() + ld.sum()), list(g.parameters()))
        g2 = torch.autograd.grad((gx2.sum() + ld2.sum()), list(g.parameters()))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)
    assert repr(ForwardJacobianLogDet(compile=True)) == "ForwardJacobianLogDet(compile=True)"


def test_vector_flow_density_inverse_and_rebuild():
    torch.manual_seed(0)
    m = vector_residual_flow(2, n_blocks=3, hidden=(16, 16)).double()
    x = torch.randn(8, 2, dtype=torch.float64) * 2
    m.initialize(x)
    m.eval()
    lp = m.log_prob(x)
    torch.testing.assert_close(lp, _full_log_prob(m, x), rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        z = m.bijection(x)
        torch.testing.assert_close(m.bijection.inverse(z), x, rtol=0, atol=1e-5)
    m2 = build_model(m.config).double()
    m2.load_state_dict(m.state_dict())
    m2.eval()
    torch.testing.assert_close(m2.log_prob(x), lp, rtol=0, atol=0)
    s = m.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 2) and torch.isfinite(s).all()


@pytest.mark.parametrize("factor_out,squeeze_first", [(False, False), (True, True)])
def test_image_flow_exact_density_and_inverse(factor_out, squeeze_first):
    torch.manual_seed(1)
    m = image_residual_flow((1, 4, 4), n_scales=2, n_blocks=1, hidden=4, mode="resflow", factor_out=factor_out,
                            squeeze_first=squeeze_first, logit_alpha=0.05).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    m.initialize(x)
    m.eval()
    with override_estimators(m, inv.ExactLogDet()):
        lp = m.log_prob(x)
    torch.testing.assert_close(lp, _full_log_prob(m, x), rtol=1e-9, atol=1e-8)
    with torch.no_grad():
        z = m.bijection(x)
        assert z.shape == (2, 16)
        torch.testing.assert_close(m.bijection.inverse(z), x, rtol=0, atol=1e-5)
        assert m.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 4, 4)


def test_image_flow_factors_out_one_channel_images():
    """Issue 13: a 1-channel image at 3 scales with factor_out squeezes before it splits (Residual Flows order);
    splitting first left 0 channels ("n_channels must be >= 1, got 0")."""
    torch.manual_seed(3)
    big = image_residual_flow((1, 28, 28), n_scales=3, n_blocks=1, hidden=4, factor_out=True)
    assert [s[0] for s in big.bijection.ms.shapes] == [1, 2, 4]
    m = image_residual_flow((1, 8, 8), n_scales=3, n_blocks=1, hidden=4, mode="resflow", factor_out=True,
                            logit_alpha=0.05).double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    m.initialize(x)
    m.eval()
    with override_estimators(m, inv.ExactLogDet()):
        lp = m.log_prob(x)
    torch.testing.assert_close(lp, _full_log_prob(m, x), rtol=1e-9, atol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(m.bijection.inverse(m.bijection(x)), x, rtol=0, atol=1e-5)


def test_old_factor_out_configs_keep_their_layout():
    """Checkpoints written before ``squeeze_before_split`` factored out first; their configs rebuild that layout."""
    old = {"kind": "image_resflow", "shape": [2, 8, 8], "n_scales": 3, "n_blocks": 1, "hidden": 4, "coeff": 0.9,
           "mode": "resflow", "activation": "lipswish", "factor_out": True, "logit_alpha": 1e-5,
           "n_power_iterations": 1, "n_terms": 10, "n_exact": 2, "squeeze_first": False, "inverse_atol": 1e-5}
    m = build_model(old)
    assert m.config.squeeze_before_split is False and not m.bijection.ms.squeeze_before_split
    assert [s[0] for s in m.bijection.ms.shapes] == [2, 4, 8]
    assert m.config.probe == "gaussian"  # configs stored before the probe field drew Gaussian probes
    torch.manual_seed(0)
    legacy = build_model(old)
    torch.manual_seed(0)
    direct = image_residual_flow((2, 8, 8), n_scales=3, n_blocks=1, hidden=4, factor_out=True,
                                 squeeze_before_split=False, n_exact=2, probe="gaussian")
    x = torch.rand(3, 2, 8, 8)
    torch.manual_seed(1)
    a = legacy.log_prob(x)
    torch.manual_seed(1)
    torch.testing.assert_close(a, direct.log_prob(x), rtol=0, atol=0)
    new = image_residual_flow((2, 8, 8), n_scales=3, n_blocks=1, hidden=4, factor_out=True)
    assert new.bijection.ms.squeeze_before_split and [s[0] for s in new.bijection.ms.shapes] == [2, 4, 8]


def test_logit_transform_logdet():
    t = LogitTransform(0.05).double()
    x = torch.rand(4, 3, dtype=torch.float64)
    y, ld = t.forward_and_logdet(x)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: t(v[None])[0], xi) for xi in x])
    torch.testing.assert_close(ld, torch.linalg.slogdet(jac)[1])
    torch.testing.assert_close(t.inverse(y), x)
    with pytest.raises(ValueError):
        LogitTransform(0.5)


def test_coupling_baseline_exact():
    torch.manual_seed(2)
    m = coupling_flow(2, n_blocks=3, hidden=(16,)).double()
    for p in m.parameters():  # leave the identity initialization
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(5, 2, dtype=torch.float64)
    m.eval()
    torch.testing.assert_close(m.log_prob(x), _full_log_prob(m, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.bijection.inverse(m.bijection(x)), x)
    assert build_model(m.config).config == m.config


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="mode"):
        make_estimator("neumann")
    with pytest.raises(ValueError, match="squeezed"):
        image_residual_flow((1, 28, 28), n_scales=4)
    with pytest.raises(ValueError, match="kind"):
        build_model({"kind": "glow"})
    m = vector_residual_flow(2, n_blocks=1, hidden=(4,))
    with pytest.raises(ValueError, match="shape"):
        m.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="activation"):
        lipschitz_mlp([2, 4, 2], activation="relu6")


def test_unbiased_evaluation_matches_exact_within_error():
    """Above exact_max_dim the evaluation uses Russian roulette: unbiased, so within 4 SE of the exact value."""
    torch.manual_seed(3)
    m = image_residual_flow((1, 4, 4), n_scales=1, n_blocks=2, hidden=8, logit_alpha=0.05).double()
    data = torch.randint(0, 256, (120, 1, 4, 4), dtype=torch.uint8)
    m.initialize(data[:32].double() / 256)
    exact = evaluate_nll(m, data, batch_size=20, exact_max_dim=16, seed=5)
    rr = evaluate_nll(m, data, batch_size=10, exact_max_dim=8, n_exact=2, seed=5)
    assert exact["exact"] and not rr["exact"]
    assert "RussianRoulette" in rr["estimator"] and "neumann_gradient=False" in rr["estimator"]
    assert rr["se"] > 0
    assert abs(rr["nll"] - exact["nll"]) < 4 * rr["se"] + 1e-9
    assert exact["bits_per_dim"] == pytest.approx((exact["nll"] + 16 * math.log(256)) / (16 * math.log(2)))
    with pytest.raises(ValueError, match="event shape"):
        evaluate_nll(m, torch.zeros(3, 2))
