"""Every bijection of the library against the same contract (DESIGN.md, "Tests")."""

import copy

import pytest
import torch
from torch import nn

import invertible as inv
from helpers import autograd_jacobian, conv_g, mlp_g, warm_up
from invertible.models.blocks import lipschitz_dense_convnet, lipschitz_dense_mlp


def _residual_mlp():
    return inv.ResidualBlock(mlp_g(3), logdet=inv.ExactLogDet()), torch.randn(4, 3)


def _residual_conv():
    block = inv.ResidualBlock(conv_g(2), logdet=inv.ExactLogDet(), inverse=inv.FixedPoint(atol=1e-10, max_iter=300))
    return block, torch.randn(3, 2, 4, 4)


def _residual_anderson():
    block = inv.ResidualBlock(mlp_g(3), logdet=inv.ExactLogDet(), inverse=inv.Anderson(atol=1e-10, max_iter=200))
    return block, torch.randn(4, 3)


def _dense_g(dim: int, conv: bool) -> nn.Sequential:
    """An i-DenseNet residual function: two dense layers with CLipSwish, then a normalized projection."""
    torch.manual_seed(14)
    if conv:
        return lipschitz_dense_convnet(dim, growth=2, depth=2, coeff=0.9)
    g = lipschitz_dense_mlp(dim, (4, 3), coeff=0.9)
    with torch.no_grad():  # unequal concatenation weights, so eta matters
        g[0].raw_eta.copy_(torch.tensor([0.3, 1.2]))
    return g


def _residual_dense_mlp():
    return inv.ResidualBlock(_dense_g(3, False), logdet=inv.ExactLogDet()), torch.randn(4, 3)


def _residual_dense_conv():
    block = inv.ResidualBlock(_dense_g(2, True), logdet=inv.ExactLogDet(),
                              inverse=inv.FixedPoint(atol=1e-10, max_iter=300))
    return block, torch.randn(2, 2, 3, 3)


def _actnorm_vec():
    return inv.ActNorm(3), torch.randn(5, 3) * 3 + 1


def _actnorm_img():
    return inv.ActNorm(2), torch.randn(4, 2, 3, 3) * 2 - 1


def _squeeze():
    return inv.Squeeze(), torch.randn(2, 1, 4, 4)


def _sequential():
    seq = inv.InvertibleSequential(
        inv.ActNorm(2),
        inv.ResidualBlock(conv_g(2), logdet=inv.ExactLogDet(), inverse=inv.FixedPoint(atol=1e-10, max_iter=300)),
        inv.Squeeze(),
        inv.ResidualBlock(conv_g(8, 8), logdet=inv.ExactLogDet(), inverse=inv.FixedPoint(atol=1e-10, max_iter=300)),
    )
    return seq, torch.randn(2, 2, 4, 4)


def _logit():
    return inv.LogitTransform(alpha=0.05), torch.rand(3, 2, 2, 2) * 0.98 + 0.01


def _flatten():
    return inv.Flatten((2, 2, 2)), torch.randn(3, 2, 2, 2)


def _affine_coupling():
    torch.manual_seed(11)
    c = inv.AffineCoupling(torch.tensor([True, False, True]), hidden=(8,), scale=2.0)
    with torch.no_grad():  # the last layer starts at zero (identity map); make s and t non-trivial
        c.net[-1].weight.normal_(0, 0.5)
        c.net[-1].bias.normal_(0, 0.5)
    return c, torch.randn(4, 3)


def _additive_coupling():
    torch.manual_seed(12)
    return inv.AdditiveCoupling(nn.Conv2d(1, 2, 3, padding=1), n_channels=3, split=1), torch.randn(3, 3, 2, 2)


def _stage(c):
    return inv.InvertibleSequential(inv.ActNorm(c), inv.AdditiveCoupling(nn.Conv2d(c // 2, c - c // 2, 1), c))


def _multiscale(factor_out, squeeze_before_split, c=2):
    torch.manual_seed(13)
    channels = [c]
    for _ in range(2):
        c4 = 4 * channels[-1] if not factor_out else (
            (4 * channels[-1]) // 2 if squeeze_before_split else 4 * (channels[-1] // 2))
        channels.append(c4)
    stages = [_stage(k) for k in channels]
    ms = inv.MultiScale(stages, (channels[0], 4, 4), factor_out, squeeze_before_split=squeeze_before_split)
    return ms, torch.randn(2, channels[0], 4, 4)


def _pre_then():
    ms, _ = _multiscale(True, True)
    return inv.PreThen(inv.LogitTransform(0.05), ms), torch.rand(2, 2, 4, 4) * 0.98 + 0.01


def _conditional_g(dim, seed):
    from invertible.models.blocks import ConditionalLipschitzMLP

    torch.manual_seed(seed)
    g = ConditionalLipschitzMLP([dim, 16, 16, dim], context_dim=2, embed_hidden=(8,), beta=2.0)
    with torch.no_grad():  # the embedding's last layer starts at zero (no context); make the context matter
        g.embed[-1].weight.normal_(0, 0.5)
        g.embed[-1].bias.normal_(0, 0.5)
    return g


def _conditional_residual():
    """``x -> x + g(x, c)`` with one context for every sample (a fixed ``c``: a plain bijection)."""
    block = inv.ConditionalResidualBlock(_conditional_g(3, 14), inverse=inv.FixedPoint(atol=1e-12, max_iter=400))
    return block.given(torch.randn(2, generator=torch.Generator().manual_seed(0))), torch.randn(4, 3)


def _conditional_sequential():
    """ActNorm and two conditional blocks given one context (the contract evaluates single samples too; contexts
    per sample are tested in test_conditional.py)."""
    blocks = [inv.ConditionalResidualBlock(_conditional_g(2, s), inverse=inv.FixedPoint(atol=1e-12, max_iter=400))
              for s in (15, 16)]
    seq = inv.ConditionalSequential(inv.ActNorm(2), blocks[0], inv.ActNorm(2), blocks[1])
    return seq.given(torch.randn(2, generator=torch.Generator().manual_seed(1))), torch.randn(5, 2)


REGISTRY = {
    "residual-mlp": _residual_mlp,
    "residual-conv": _residual_conv,
    "residual-anderson": _residual_anderson,
    "residual-dense-mlp": _residual_dense_mlp,
    "residual-dense-conv": _residual_dense_conv,
    "actnorm-1d": _actnorm_vec,
    "actnorm-2d": _actnorm_img,
    "squeeze": _squeeze,
    "sequential": _sequential,
    "logit": _logit,
    "flatten": _flatten,
    "affine-coupling": _affine_coupling,
    "additive-coupling": _additive_coupling,
    "multiscale": lambda: _multiscale(False, False),
    "multiscale-factor-out": lambda: _multiscale(True, True),
    "multiscale-factor-out-legacy": lambda: _multiscale(True, False),
    "pre-then": _pre_then,
    "conditional-residual": _conditional_residual,
    "conditional-sequential": _conditional_sequential,
}


def make(name):
    bij, x = REGISTRY[name]()
    warm_up(bij, x)  # data-dependent init, converged power iteration; then eval mode
    # give ActNorm non-trivial parameters beyond its data init
    with torch.no_grad():
        for m in bij.modules():
            if isinstance(m, inv.ActNorm):
                m.log_scale.add_(0.3 * torch.randn_like(m.log_scale))
    return bij, x


@pytest.mark.parametrize("name", REGISTRY)
def test_round_trip(name):
    bij, x = make(name)
    y = bij(x)
    assert y.shape[0] == x.shape[0]
    assert torch.allclose(bij.inverse(y), x, atol=1e-8)


@pytest.mark.parametrize("name", REGISTRY)
def test_logdet_matches_slogdet_of_autograd_jacobian(name):
    bij, x = make(name)
    _, logdet = bij.forward_and_logdet(x)
    assert logdet.shape == (x.shape[0],)
    jac = autograd_jacobian(bij, x)
    _, expected = torch.linalg.slogdet(jac)
    assert torch.allclose(logdet, expected, atol=1e-8), (logdet, expected)


@pytest.mark.parametrize("name", REGISTRY)
def test_inverse_logdet_is_minus_forward(name):
    bij, x = make(name)
    y, logdet = bij.forward_and_logdet(x)
    x_back, inv_logdet = bij.inverse_and_logdet(y)
    assert torch.allclose(x_back, x, atol=1e-8)
    assert torch.allclose(inv_logdet, -logdet, atol=1e-8)
    # and the inverse's own Jacobian agrees: log|det J_{F^-1}(y)| = -log|det J_F(x)|
    _, jac_inv = torch.linalg.slogdet(autograd_jacobian(lambda t: _unrolled_inverse(bij, t), y))
    assert torch.allclose(jac_inv, -logdet, atol=1e-6)


def _unrolled_inverse(bij, y):
    """The inverse written with differentiable operations (fixed-point iterations unrolled)."""
    if not any(isinstance(m, inv.ResidualBlock) for m in bij.modules()):
        return bij.inverse(y)  # analytic inverses are differentiable as they stand
    layers = list(bij) if isinstance(bij, inv.InvertibleSequential) else [bij]
    for layer in reversed(layers):
        if isinstance(layer, inv.ResidualBlock):
            x = y
            for _ in range(200):
                x = y - layer.g(x)
            y = x
        else:
            y = layer.inverse(y)
    return y


@pytest.mark.parametrize("name", REGISTRY)
def test_gradients_reach_every_parameter(name):
    bij, x = make(name)
    if not list(bij.parameters()):
        pytest.skip("no parameters")
    bij.train()
    y, logdet = bij.forward_and_logdet(x)
    (y.square().sum() - logdet.sum()).backward()
    params = dict(bij.named_parameters())
    for pname, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"


@pytest.mark.parametrize("name", REGISTRY)
def test_state_dict_round_trip(name):
    bij, x = make(name)
    fresh, _ = REGISTRY[name]()
    fresh.load_state_dict(bij.state_dict())
    fresh.eval()
    torch.testing.assert_close(fresh(x), bij(x), atol=0, rtol=0)
    for m_a, m_b in zip(bij.modules(), fresh.modules(), strict=True):
        if isinstance(m_a, inv.ActNorm):
            assert bool(m_b.initialized)


@pytest.mark.parametrize("name", REGISTRY)
def test_repr_and_deepcopy(name):
    bij, x = make(name)
    text = repr(bij)
    assert type(bij).__name__ in text
    clone = copy.deepcopy(bij)
    torch.testing.assert_close(clone(x), bij(x))


def test_actnorm_initializes_to_zero_mean_unit_variance():
    x = torch.randn(256, 3, 2, 2) * torch.tensor([1.0, 5.0, 0.1])[None, :, None, None] + 7
    an = inv.ActNorm(3)
    y = an(x)
    flat = y.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(flat.mean(1), torch.zeros(3), atol=1e-10)
    assert torch.allclose(flat.std(1, unbiased=False), torch.ones(3), atol=1e-5)


def test_squeeze_matches_pixel_unshuffle_order():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = inv.Squeeze()(x)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


def test_injective_pad_round_trip_and_refuses_non_image():
    pad = inv.InjectivePad(3)
    x = torch.randn(2, 1, 4, 4)
    y, logdet = pad.forward_and_logdet(x)
    assert y.shape == (2, 4, 4, 4) and torch.equal(logdet, torch.zeros(2))
    assert torch.equal(pad.inverse(y), x)
    # The Jacobian has orthonormal columns: log sqrt(det J^T J) = 0, the reported log-det.
    jac = autograd_jacobian(pad, x)
    _, ld = torch.linalg.slogdet(jac.transpose(1, 2) @ jac)
    assert torch.allclose(ld / 2, logdet)
    y[:, 2] += 0.1
    with pytest.raises(ValueError, match="not ~0"):
        pad.inverse(y)


def test_lipswish_is_one_lipschitz():
    act = inv.LipSwish(beta=0.3)
    for beta in (0.01, 0.5, 1.0, 3.0, 50.0):
        with torch.no_grad():
            act.raw_beta.fill_(torch.log(torch.expm1(torch.tensor(beta))))
        x = torch.linspace(-30 / beta, 30 / beta, 20001, requires_grad=True)  # the max sits near 2.4 / beta
        (grad,) = torch.autograd.grad(act(x).sum(), x)
        assert grad.abs().max() <= 1.0
        assert grad.abs().max() > 0.9  # and not trivially small: tight bound


def test_sequential_refuses_non_bijection():
    with pytest.raises(TypeError, match="not a bijection"):
        inv.InvertibleSequential(nn.Linear(2, 2))


def test_actnorm_leaves_constant_channels_at_unit_scale():
    x = torch.randn(64, 3)
    x[:, 1] = 0.5  # e.g. an empty border pixel
    an = inv.ActNorm(3)
    y = an(x)
    assert float(an.log_scale[1]) == 0.0
    assert torch.allclose(y[:, 1], torch.zeros(64))
    assert y.abs().max() < 10
