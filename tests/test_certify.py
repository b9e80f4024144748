"""Certificates (Remark 4.9, eq. 4.6, Lemma 4.6): bounds are >= the true norms and Lipschitz ratios."""

import pytest
import torch
from torch import nn

import invertible as inv
from invertible.models.certify import (
    VERDICT_OK,
    certify_classifier,
    certify_features,
)
from invertible.models.iresnet import IResNetClassifier


def _dense_norm(conv: nn.Module, shape) -> float:
    """Ground truth: the largest singular value of the autograd Jacobian of the bias-free operator."""
    w = conv.weight.detach()

    def op(x):
        return conv._conv_forward(x.reshape(1, *shape), w, None).reshape(-1)

    jac = torch.autograd.functional.jacobian(op, torch.zeros(int(torch.tensor(shape).prod())))
    return float(torch.linalg.matrix_norm(jac, ord=2))


def _warm(model, x, steps=25):
    model.train()
    for _ in range(steps):
        model(x)
    return model.eval()


@pytest.mark.parametrize("shape,c_out,k", [((3, 5, 5), 4, 3), ((4, 6, 6), 2, 1), ((2, 3, 3), 5, 3)])
def test_norm_routines_agree_with_the_jacobian(shape, c_out, k):
    conv = nn.Conv2d(shape[0], c_out, k, padding=k // 2)
    truth = _dense_norm(conv, shape)
    assert inv.operator_norm(conv, shape) == pytest.approx(truth, rel=1e-10)
    lanczos = inv.operator_norm(conv, shape, method="lanczos", rtol=1e-10)
    assert lanczos <= truth * (1 + 1e-10)
    assert lanczos == pytest.approx(truth, rel=1e-6)
    assert inv.operator_norm_upper_bound(conv, shape) >= truth * (1 - 1e-12)


def _model(coeff=0.9, norm="actnorm", size=8, blocks=(1, 1), seed=0):
    torch.manual_seed(seed)
    model = IResNetClassifier((1, size, size), blocks=blocks, channels=4, hidden=6, coeff=coeff, norm=norm)
    return _warm(model, torch.rand(8, 1, size, size) - 0.5)


@pytest.mark.parametrize("exact", [True, False])
def test_certificate_dominates_true_norms_and_lipschitz_ratios(exact):
    model = _model(0.9)
    cert = certify_classifier(model, exact=exact)
    assert cert.certified and cert.verdict == VERDICT_OK
    x = torch.zeros(1, 1, 8, 8)
    for block_cert, block, shape_in in zip(cert.blocks, model.residual_blocks(), ((4, 8, 8), (16, 4, 4)),
                                           strict=True):
        assert block_cert.input_shape == list(shape_in)
        convs = [m for m in block.g if isinstance(m, nn.Conv2d)]
        shapes = [shape_in, (6, *shape_in[1:]), (6, *shape_in[1:])]
        for layer, conv, shape in zip(block_cert.layers, convs, shapes, strict=True):
            truth = _dense_norm(conv, shape)
            assert layer.upper >= truth * (1 - 1e-9)
            assert layer.norm == pytest.approx(truth, rel=1e-4)
            assert layer.spectral_norm
        # matches the core's certified product bound
        assert block_cert.lipschitz == pytest.approx(inv.lipschitz_constant(block.g, shape_in), rel=1e-6)
        # and bounds the Lipschitz ratio of g on random pairs
        a, b = torch.randn(32, *shape_in), torch.randn(32, *shape_in)
        with torch.no_grad():
            ratio = (block.g(a) - block.g(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
        assert float(ratio.max()) <= block_cert.lipschitz
        assert block_cert.lipschitz < 0.9**3 * 1.05
    del x


def test_bi_lipschitz_bounds_of_lemma_4_6_hold_for_the_feature_map():
    model = _model(0.7, blocks=(2, 1))
    cert = certify_classifier(model, exact=False)
    assert cert.certified
    a = torch.rand(64, 1, 8, 8) - 0.5
    b = a + 0.05 * torch.randn_like(a)
    with torch.no_grad():
        fa, fb = model.features(a), model.features(b)
    dx = (a - b).flatten(1).norm(dim=1)
    dz = (fa - fb).flatten(1).norm(dim=1)
    assert float((dz / dx).max()) <= cert.lipschitz_forward
    assert float((dx / dz).max()) <= cert.lipschitz_inverse
    expected = 1.0
    for blk in cert.blocks:
        expected *= 1 + blk.lipschitz
    assert cert.lipschitz_forward >= expected * (1 - 1e-12)  # ActNorm scales only add


def test_vanilla_twin_is_not_certified_when_a_block_is_expansive():
    model = _model(None)
    with torch.no_grad():
        for m in model.residual_blocks()[1].g:
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(10.0)
    cert = certify_classifier(model, exact=True)
    assert not cert.certified
    assert cert.verdict.startswith("NOT certified: 1 of 2 blocks")
    assert cert.blocks[1].lipschitz > 1 and not cert.blocks[1].contractive
    assert cert.lipschitz_inverse == float("inf")
    assert not any(layer.spectral_norm for b in cert.blocks for layer in b.layers)
    text = cert.format()
    assert "not contractive" in text and "NOT certified" in text
    d = cert.to_dict()
    assert d["certified"] is False and d["lipschitz_inverse"] == "inf"


def test_batchnorm_scales_enter_the_bound():
    model = _model(None, norm="batchnorm")
    with torch.no_grad():
        bn = model.residual_blocks()[0].g[0]
        bn.running_var.fill_(0.01)  # eval-mode BN scale 1 / sqrt(0.01) = 10
    cert = certify_features(model.features, (1, 8, 8), exact=True)
    block = cert.blocks[0]
    bn_layers = [layer for layer in block.layers if layer.kind == "batchnorm"]
    assert len(bn_layers) == 3
    assert bn_layers[0].upper == pytest.approx(float(bn.weight.abs().max()) / (0.01 + bn.eps) ** 0.5)
    convs = [layer.upper for layer in block.layers if layer.kind.startswith("conv")]
    prod = 1.0
    for v in convs + [layer.upper for layer in bn_layers]:
        prod *= v
    assert block.lipschitz == pytest.approx(prod)
    a, b = torch.randn(16, 4, 8, 8), torch.randn(16, 4, 8, 8)
    g = model.residual_blocks()[0].g.eval()
    with torch.no_grad():
        ratio = (g(a) - g(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= block.lipschitz


def test_certify_rejects_models_without_features():
    from invertible.models.resnet import PreActResNet

    with pytest.raises(ValueError, match="no invertible feature map"):
        certify_classifier(PreActResNet((1, 8, 8), blocks=(1,)))


def test_large_operators_get_lanczos_and_a_certified_upper_bound(monkeypatch):
    import invertible.norms
    from invertible.models.certify import _conv_norm

    monkeypatch.setattr(invertible.norms, "DENSE_LIMIT", 100)  # treat this operator as too large to materialise
    conv = nn.Conv2d(16, 16, 3, padding=1)
    shape = (16, 9, 9)
    norm, upper, exact = _conv_norm(conv, shape, exact=False)
    truth = inv.operator_norm(conv, shape, method="dense")
    assert not exact
    assert norm <= truth * (1 + 1e-9) and norm == pytest.approx(truth, rel=1e-3)
    assert upper >= truth * (1 - 1e-12)
    pointwise = nn.Conv2d(16, 8, 1)
    n, u, e = _conv_norm(pointwise, shape, exact=False)
    assert e and n == u == pytest.approx(float(torch.linalg.matrix_norm(pointwise.weight.flatten(1), ord=2)))
    assert n == pytest.approx(inv.operator_norm(pointwise, shape, method="dense"), rel=1e-10)


def test_realized_lipschitz_is_below_the_certificate_and_matches_block_jacobians():
    """realized_lipschitz: per block, the local ||J_g|| on data (checked against the autograd Jacobian of g at
    the block's input) is a lower bound that never exceeds the certified Lip(g_t)."""
    from invertible.models.certify import format_realized, realized_lipschitz

    model = _model(coeff=0.9, blocks=(1, 1), seed=3)
    x = torch.randn(3, 1, 8, 8)
    _warm(model, x)
    inv.converge_spectral_norms(model)
    cert = certify_classifier(model)
    realized = realized_lipschitz(model, x, n_iter=100)
    assert len(realized) == len(cert.blocks) == 2
    model.eval()
    h, t = x, 0
    for layer in model.features:
        if isinstance(layer, inv.ResidualBlock):
            norms = []
            for b in range(len(x)):
                jac = torch.autograd.functional.jacobian(lambda z, g=layer.g: g(z.unsqueeze(0))[0], h[b])
                norms.append(float(torch.linalg.matrix_norm(jac.reshape(h[b].numel(), -1), 2)))
            # power iteration approaches the largest singular value from below
            assert max(norms) * (1 - 1e-3) <= realized[t]["local_max"] <= max(norms) * (1 + 1e-9)
            assert realized[t]["local_max"] <= cert.blocks[t].lipschitz
            t += 1
        h = layer(h)
    assert "certified <=" in format_realized(realized, cert)
    with pytest.raises(ValueError, match="certified for inputs of shape"):
        realized_lipschitz(model, torch.randn(2, 1, 4, 4))


def test_exact_request_holds_for_every_layer_after_an_inexact_one(monkeypatch):
    """Before: ``_certify_chain`` overwrote the caller's ``exact=True`` with the first layer's result, so after one
    Lanczos-normed (inexact) layer every later layer skipped the exact dense SVD it was asked for."""
    import invertible.models.certify as certify

    requested = []
    real = certify._conv_norm

    def spy(m, shape, exact):
        requested.append(exact)
        norm, upper, _ = real(m, shape, exact)
        return norm, upper, len(requested) > 1  # pretend the first layer could only be bounded, not computed

    monkeypatch.setattr(certify, "_conv_norm", spy)
    g = nn.Sequential(inv.spectral_norm(nn.Conv2d(2, 4, 3, padding=1)), nn.ELU(),
                      inv.spectral_norm(nn.Conv2d(4, 2, 3, padding=1)))
    layers, *_ = certify._certify_chain(list(g), torch.zeros(1, 2, 4, 4), True, "g")
    assert requested == [True, True]
    assert [layer.exact for layer in layers] == [False, True]
