"""IResNetClassifier (Appendix A.1), its vanilla / BatchNorm twins, the ResNet baseline, reconstructions."""

import math

import pytest
import torch
from torch import nn

import invertible as inv
from invertible.models.iresnet import IResNetClassifier
from invertible.models.reconstruct import error_vs_iterations, invert_features, make_solver, reconstruct
from invertible.models.resnet import PreActResNet
from invertible.training.augment import random_flip, random_shift


def _trained_like(model: nn.Module, x: torch.Tensor, steps: int = 25) -> nn.Module:
    """Training-mode forwards (ActNorm init, power iterations converge, BN statistics), then eval."""
    model.train()
    for _ in range(steps):
        model(x)
    return model.eval()


def _kind(m: nn.Module) -> str:
    return "Conv2d" if isinstance(m, nn.Conv2d) else type(m).__name__


def _layout(model: nn.Module) -> list[list[str]]:
    out = []
    for layer in model.features:
        g = getattr(layer, "g", None)
        out.append([_kind(layer)] + ([_kind(m) for m in g] if g is not None else []))
    return out


def _sn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and hasattr(m, "parametrizations")]


def test_layout_follows_appendix_a1():
    model = IResNetClassifier((1, 8, 8), blocks=(2, 1, 1), channels=16, hidden=(8, 16, 16), coeff=0.9)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == [
        "InjectivePad", "ResidualBlock", "ActNorm", "ResidualBlock", "Squeeze", "ActNorm", "ResidualBlock",
        "Squeeze", "ActNorm", "ResidualBlock",
    ]
    assert model.features[0].n_extra_channels == 15
    g = model.residual_blocks()[0].g
    convs = [m for m in g if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (1, 1), (3, 3)]
    assert [_kind(m) for m in g] == ["ELU", "Conv2d", "ELU", "Conv2d", "ELU", "Conv2d"]
    assert len(_sn_layers(model)) == 12
    z = model.forward_features(torch.randn(3, 1, 8, 8))
    assert z.shape == (3, 256, 2, 2)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    head = [type(m).__name__ for m in model.head]
    assert head == ["BatchNorm2d", "ELU", "AdaptiveAvgPool2d", "Flatten", "Linear"]


def test_vanilla_twin_has_same_layout_and_no_spectral_norm():
    sn = IResNetClassifier((1, 8, 8), blocks=(1, 1), channels=8, hidden=8, coeff=0.9)
    vanilla = IResNetClassifier((1, 8, 8), blocks=(1, 1), channels=8, hidden=8, coeff=None)
    assert vanilla.vanilla and not sn.vanilla
    assert _sn_layers(vanilla) == []
    assert len(_sn_layers(sn)) == 6
    assert _layout(sn) == _layout(vanilla)
    n_sn = sum(p.numel() for p in sn.parameters())
    assert n_sn == sum(p.numel() for p in vanilla.parameters())
    assert all(b.lipschitz_estimate() is None for b in vanilla.residual_blocks())


def test_batchnorm_variant_puts_bn_before_every_nonlinearity():
    model = IResNetClassifier((1, 8, 8), blocks=(1, 1), channels=8, hidden=8, coeff=None, norm="batchnorm")
    g = model.residual_blocks()[0].g
    assert [_kind(m) for m in g] == ["BatchNorm2d", "ELU", "Conv2d"] * 3
    assert not any(isinstance(m, inv.ActNorm) for m in model.features)


def test_init_squeeze_and_bad_inputs():
    model = IResNetClassifier((1, 8, 8), blocks=(1, 1), channels=8, hidden=4, init_squeeze=True)
    assert model.forward_features(torch.randn(2, 1, 8, 8)).shape == (2, 32, 2, 2)
    with pytest.raises(ValueError, match="divisible"):
        IResNetClassifier((1, 6, 6), blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="norm"):
        IResNetClassifier((1, 8, 8), blocks=(1,), norm="layernorm")
    with pytest.raises(ValueError, match="coeff"):
        IResNetClassifier((1, 8, 8), blocks=(1,), coeff=1.0)
    with pytest.raises(ValueError, match="channels"):
        IResNetClassifier((3, 8, 8), blocks=(1,), channels=2)
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(2, 3, 8, 8))


def test_iresnet_feature_map_inverts_to_tolerance():
    torch.manual_seed(1)
    model = IResNetClassifier((1, 8, 8), blocks=(2, 1), channels=8, hidden=16, coeff=0.9)
    x = torch.rand(6, 1, 8, 8) - 0.5
    _trained_like(model, x)
    rec = reconstruct(model, x, iterations=200, atol=1e-13)
    assert not rec.diverged
    assert rec.max_abs_error < 1e-10
    assert rec.padding_residual < 1e-10
    # Lemma 4.5 with the certified constant bounds the actual error of the last block solve
    z = model.features(x)
    lips = [b.certify() for b in model.residual_blocks()]
    assert max(lips) < 1
    x_hat, info = invert_features(model.features, z, make_solver("fixed-point", 3), lipschitz=lips)
    assert torch.isfinite(info["error_bound"]).all()
    # plain Bijection inverse of the whole feature map agrees
    assert torch.allclose(model.features.inverse(z), x, atol=1e-5)


def test_error_vs_iterations_decays_geometrically():
    torch.manual_seed(2)
    model = IResNetClassifier((1, 8, 8), blocks=(1, 1), channels=8, hidden=8, coeff=0.5)
    x = torch.rand(4, 1, 8, 8) - 0.5
    _trained_like(model, x)
    curves = error_vs_iterations(model, x, iterations=(1, 2, 4, 8, 16, 32))
    fp = curves["fixed-point"]
    assert all(b <= a * 1.0001 + 1e-15 for a, b in zip(fp, fp[1:], strict=False))  # monotone
    assert fp[-1] < 1e-9 < fp[0]
    assert curves["anderson"][-1] < 1e-9


def test_vanilla_reconstruction_can_fail_and_is_reported():
    torch.manual_seed(3)
    model = IResNetClassifier((1, 8, 8), blocks=(1,), channels=4, hidden=16, coeff=None, norm="none")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(8.0)  # Lip(g) far above 1: the fixed-point map is expansive
    x = torch.rand(3, 1, 8, 8) - 0.5
    rec = reconstruct(model.eval(), x, iterations=50)
    assert rec.diverged or rec.max_abs_error > 1e-2
    if rec.diverged:
        assert math.isinf(rec.max_abs_error) and torch.isnan(rec.x_hat).all()


def test_state_dict_round_trip_keeps_outputs():
    torch.manual_seed(4)
    model = IResNetClassifier((1, 8, 8), blocks=(1, 1), channels=8, hidden=8, coeff=0.8)
    x = torch.randn(5, 1, 8, 8)
    _trained_like(model, x, steps=3)
    twin = IResNetClassifier(**model.config.kwargs())
    twin.load_state_dict(model.state_dict())
    twin.eval()
    assert torch.equal(model(x), twin(x))


def test_preact_resnet_baseline():
    model = PreActResNet((3, 8, 8), n_classes=5, blocks=(1, 2))
    out = model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in model.modules()) >= 1
    with pytest.raises(ValueError):
        PreActResNet((3, 8, 8), blocks=(0,))


def test_augmentations_shift_and_flip_exactly():
    x = torch.arange(2 * 16, dtype=torch.float64).reshape(2, 1, 4, 4) + 1
    gen = torch.Generator().manual_seed(0)
    y = random_shift(x, 1, gen)
    for i in range(2):  # each output is a zero-filled translate of the input by at most one pixel
        found = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = torch.zeros_like(x[i])
                src = x[i][:, max(dy, 0) : 4 + min(dy, 0), max(dx, 0) : 4 + min(dx, 0)]
                shifted[:, max(-dy, 0) : 4 + min(-dy, 0), max(-dx, 0) : 4 + min(-dx, 0)] = src
                found |= torch.equal(shifted, y[i])
        assert found
    assert torch.equal(random_shift(x, 0, gen), x)
    f = random_flip(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1)) for i in range(2))
    with pytest.raises(ValueError):
        random_shift(x[0], 1)
