"""i-DenseNet (Perugachi-Diaz et al. 2021): CLipSwish's constant, the dense layer's bound, the certificates of a
dense residual block, and the dense residual flows."""

import math

import pytest
import torch
from torch import nn

import invertible as inv
from helpers import autograd_jacobian, warm_up
from invertible.activations import CLIPSWISH_LIPSCHITZ, make_activation
from invertible.lipschitz import lipschitz_constant
from invertible.models.blocks import count_parameters, lipschitz_dense_convnet, lipschitz_dense_mlp
from invertible.models.certify import certify_features
from invertible.models.registry import build_model
from invertible.models.resflow import image_residual_flow, residual_blocks, vector_residual_flow


def _swish_slope(t: torch.Tensor) -> torch.Tensor:
    """``d/dt t sigmoid(t)`` (= 1.1 LipSwish' at beta = 1)."""
    s = torch.sigmoid(t)
    return s * (1 + t * (1 - s))


def test_clipswish_constant_bounds_the_sup_and_is_tight():
    # sup_t sqrt(s(t)^2 + s(-t)^2) / 1.1 over a fine grid of t = beta x (independent of beta)
    t = torch.linspace(-20, 20, 400_001, dtype=torch.float64)
    lip = (torch.sqrt(_swish_slope(t) ** 2 + _swish_slope(-t) ** 2) / 1.1).max().item()
    assert 1.0039 < lip < CLIPSWISH_LIPSCHITZ  # certified, and the normalizer wastes < 4e-5
    # the two slopes sum to one (the identity the docstring's derivation uses)
    torch.testing.assert_close(_swish_slope(t) + _swish_slope(-t), torch.ones_like(t))


@pytest.mark.parametrize("beta", [0.5, 1.0, 16.0])
def test_clipswish_jacobian_norms_are_at_most_one_and_reach_it(beta):
    act = inv.CLipSwish(beta).double()
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)[:, None] / beta  # (B, 1) -> (B, 2)
    jac = autograd_jacobian(act, x)  # (B, 2, 1)
    norms = jac.flatten(1).norm(dim=1)
    assert norms.max() <= 1.0
    assert norms.max() > 0.9999  # near t = +-2.3994 the bound is attained up to the 1.004 / 1.003965 slack
    assert norms.min() >= math.sqrt(0.5) / (1.1 * CLIPSWISH_LIPSCHITZ) - 1e-12  # the floor at x = 0
    assert act(x).shape == (241, 2) and torch.equal(act(x)[:, 1], act(-x)[:, 0])


def test_clipswish_refused_where_a_layer_expects_the_same_width():
    with pytest.raises(ValueError, match="clipswish doubles"):
        make_activation("clipswish")
    with pytest.raises(ValueError, match="beta"):
        inv.CLipSwish(0.0)
    with pytest.raises(ValueError, match="clipswish doubles"):
        vector_residual_flow(2, 1, (8,), activation="clipswish")  # the residual MLP keeps widths


def _jacobian_norms(f, x):
    return torch.linalg.matrix_norm(autograd_jacobian(f, x), ord=2)


def test_dense_layer_bound_holds_and_is_attained_for_linear_f():
    torch.manual_seed(0)
    lin = nn.Linear(3, 5).double()
    layer = inv.DenseLayer(lin, eta=(0.4, 1.3)).double()
    e1, e2 = layer.eta().tolist()
    assert e1 * e1 + e2 * e2 == pytest.approx(1.0, abs=1e-12)
    k = torch.linalg.matrix_norm(lin.weight, ord=2).item()
    x = torch.randn(6, 3, dtype=torch.float64)
    norms = _jacobian_norms(layer, x)
    torch.testing.assert_close(norms, torch.full_like(norms, layer.lipschitz_from(k)))  # tight for linear f
    assert layer.lipschitz_from(1.0) == pytest.approx(1.0)  # K <= 1 => 1-Lipschitz, whatever eta


@pytest.mark.parametrize("raw_eta", [(0.0, 0.0), (-3.0, 2.0), (2.0, -3.0)])
def test_dense_residual_function_is_certified_below_coeff(raw_eta):
    torch.manual_seed(1)
    g = lipschitz_dense_mlp(3, (6, 5), coeff=0.9, beta=2.0).double()
    with torch.no_grad():
        for m in g:
            if isinstance(m, inv.DenseLayer):
                m.raw_eta.copy_(torch.tensor(raw_eta))
    block = inv.ResidualBlock(g, logdet=inv.ExactLogDet())
    x = torch.randn(64, 3, dtype=torch.float64) * 2
    warm_up(block, x, steps=60)
    cert = block.certify()
    assert cert <= 0.9 + 1e-9
    assert lipschitz_constant(g) == pytest.approx(cert)
    assert block.lipschitz_estimate() == pytest.approx(cert, rel=1e-4)
    # the certificate dominates every local Lipschitz constant and every difference quotient
    assert _jacobian_norms(g, x).max() <= cert
    y = x + 0.3 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (g(x) - g(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert ratio.max() <= cert


def test_certify_features_lists_dense_layers_and_matches_the_block():
    torch.manual_seed(2)
    g = lipschitz_dense_convnet(2, growth=3, depth=2, coeff=0.8)
    block = inv.ResidualBlock(g)
    seq = inv.InvertibleSequential(inv.ActNorm(2), block)
    warm_up(seq, torch.randn(4, 2, 5, 5), steps=60)
    cert = certify_features(seq, (2, 5, 5))
    assert cert.certified and cert.blocks[0].lipschitz == pytest.approx(block.certify((2, 5, 5)), rel=1e-6)
    kinds = [layer.kind for layer in cert.blocks[0].layers]
    assert kinds == ["conv3x3", "dense", "conv3x3", "dense", "conv3x3"]
    assert cert.blocks[0].lipschitz <= 0.8 + 1e-6


def test_dense_vector_flow_exact_density_and_registry_round_trip():
    torch.manual_seed(3)
    model = vector_residual_flow(2, 2, (6, 6), block="dense", activation="clipswish", beta=4.0).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    model.initialize(x)
    model.eval()
    # the density integrates to one: compare log p with the exact Jacobian determinant of the whole flow
    z = model.bijection(x)
    _, ld = torch.linalg.slogdet(autograd_jacobian(model.bijection, x))
    expected = -0.5 * (z * z).sum(1) - math.log(2 * math.pi) + ld
    torch.testing.assert_close(model.log_prob(x), expected)
    assert all(b.certify() < 0.9 for b in residual_blocks(model))
    twin = build_model(model.config_dict).double()
    twin.load_state_dict(model.state_dict())
    twin.eval()
    torch.testing.assert_close(twin.log_prob(x), model.log_prob(x), atol=0, rtol=0)
    # a stored config from before the option rebuilds the residual MLP
    old = {k: v for k, v in vector_residual_flow(2, 1, (4,)).config_dict.items() if k != "block"}
    assert not any(isinstance(m, inv.DenseLayer) for m in build_model(old).modules())
    with pytest.raises(ValueError, match="block must be"):
        vector_residual_flow(2, 1, (4,), block="densenet")


def test_dense_image_flow_inverts_and_parameters_are_counted():
    torch.manual_seed(4)
    model = image_residual_flow((1, 4, 4), n_scales=2, n_blocks=1, hidden=3, block="dense",
                                activation="clipswish", mode="exact")
    x = torch.rand(3, 1, 4, 4) * 0.9 + 0.05
    model.initialize(x)
    model.eval()
    z = model.bijection(x)
    torch.testing.assert_close(model.bijection.inverse(z), x, atol=1e-4, rtol=0)
    dense = [m for m in model.modules() if isinstance(m, inv.DenseLayer)]
    assert len(dense) == 2 * 2  # two dense layers per block, one block per scale
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("activation", ["clipswish", "lipswish"])
def test_forward_jacobian_logdet_of_dense_blocks_is_exact(activation):
    torch.manual_seed(5)
    g = lipschitz_dense_mlp(3, (4, 5), coeff=0.95, activation=activation, beta=3.0).double()
    with torch.no_grad():
        g[1].raw_eta.copy_(torch.tensor([-1.0, 1.5]))
    x = torch.randn(7, 3, dtype=torch.float64)
    warm_up(g, x)
    gx, logdet = inv.ForwardJacobianLogDet()(g, x)
    gx_ref, ref = inv.ExactLogDet()(g, x)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(logdet, ref)
    assert inv.logdet_exact._mlp_layers(g) is not None  # the forward path ran, not the fallback
