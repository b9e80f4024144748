"""Additive coupling and fully invertible classifiers (Definition 6.7): round trips, exact log-dets, read-out."""

import pytest
import torch
from torch import nn

import invertible as inv
from invertible.models.firevnet import FullyInvertibleClassifier, fi_iresnet, fi_revnet
from invertible.nn import AdditiveCoupling, Flatten


def _randomize(model: nn.Module, scale: float = 0.3) -> nn.Module:
    """Non-trivial parameters everywhere (couplings start as the identity, ActNorm at scale 1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "parametrizations" in name:  # spectral-normalized weights keep their (contractive) init
                continue
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _autograd_logdet(f, x: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda t: f(t).reshape(-1), x[i : i + 1]).reshape(x[0].numel(), -1)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(5, 6), (3, 4, 3, 3)])
@pytest.mark.parametrize("swap", [True, False])
def test_additive_coupling_round_trip_and_zero_logdet(shape, swap):
    c = shape[1]
    split = c // 2
    if len(shape) == 2:
        t = nn.Sequential(nn.Linear(split, 8), nn.Tanh(), nn.Linear(8, c - split))
    else:
        t = nn.Sequential(nn.Conv2d(split, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, c - split, 3, padding=1))
    layer = AdditiveCoupling(t, c, swap=swap)
    x = torch.randn(*shape)
    y, ld = layer.forward_and_logdet(x)
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-12)
    assert torch.equal(ld, torch.zeros(shape[0]))
    torch.testing.assert_close(_autograd_logdet(layer, x), ld, rtol=0, atol=1e-10)
    # y1 = x1 is carried over unchanged (in the second half when swapped)
    carried = y[:, c - split :] if swap else y[:, :split]
    torch.testing.assert_close(carried, x[:, :split], rtol=0, atol=0)


def test_additive_coupling_rejects_bad_input():
    with pytest.raises(ValueError, match="n_channels"):
        AdditiveCoupling(nn.Identity(), 1)
    layer = AdditiveCoupling(nn.Linear(2, 3), 4)  # t has the wrong output size
    with pytest.raises(ValueError, match="expected"):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match="channels"):
        AdditiveCoupling(nn.Linear(2, 2), 4)(torch.randn(2, 5))


def _tiny_revnet():
    return _randomize(fi_revnet((1, 4, 4), 3, n_squeeze=1, conv_blocks=2, hidden=4, dense_blocks=2, dense_hidden=8))


def test_fi_revnet_round_trip_and_exact_logdet():
    model = _tiny_revnet()
    x = torch.rand(3, 1, 4, 4)
    z, ld = model.forward_and_logdet(x)
    assert z.shape == (3, 16) and ld.shape == (3,)
    torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-10)
    torch.testing.assert_close(ld, _autograd_logdet(model, x), rtol=0, atol=1e-9)
    assert float(ld.detach().abs().min()) > 1e-3  # ActNorm scales make it non-trivial
    # the inverse's log-det is minus the forward one
    _, inv_ld = model.inverse_and_logdet(z)
    torch.testing.assert_close(inv_ld, -ld)


def test_fi_iresnet_round_trip_and_exact_logdet():
    model = fi_iresnet((1, 4, 4), 3, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8,
                       coeff=0.7, logdet=inv.ExactLogDet(), inverse=inv.FixedPoint(atol=1e-12, max_iter=500))
    x = torch.rand(3, 1, 4, 4)
    model.train()
    for _ in range(30):  # converge the power iterations
        model(x)
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, inv.ActNorm):
                m.log_scale.add_(0.3 * torch.randn_like(m.log_scale))
    z, ld = model.forward_and_logdet(x)
    torch.testing.assert_close(model.inverse(z), x, rtol=0, atol=1e-9)
    torch.testing.assert_close(ld, _autograd_logdet(model, x), rtol=0, atol=1e-9)


def test_simplified_read_out_split_and_predict():
    model = _tiny_revnet()
    x = torch.rand(4, 1, 4, 4)
    z = model(x)
    z_s, z_n = model.encode(x)
    assert z_s.shape == (4, 3) and z_n.shape == (4, 13)
    torch.testing.assert_close(torch.cat([z_s, z_n], 1), z, rtol=0, atol=0)
    torch.testing.assert_close(model.logits(x), z[:, :3], rtol=0, atol=0)
    assert torch.equal(model.predict(x), z[:, :3].argmax(1))
    torch.testing.assert_close(model.decode(z_s, z_n), x, rtol=0, atol=1e-10)


def test_gradients_reach_every_parameter():
    model = _tiny_revnet()
    x = torch.rand(4, 1, 4, 4)
    z, ld = model.forward_and_logdet(x)
    (nn.functional.cross_entropy(z[:, :3], torch.tensor([0, 1, 2, 0])) + z[:, 3:].pow(2).mean() - ld.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_state_dict_round_trip():
    a, b = _tiny_revnet(), fi_revnet((1, 4, 4), 3, n_squeeze=1, conv_blocks=2, hidden=4, dense_blocks=2,
                                    dense_hidden=8)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="divisible"):
        fi_revnet((1, 6, 6), 10, n_squeeze=2)
    with pytest.raises(ValueError, match="n_classes"):
        FullyInvertibleClassifier(inv.InvertibleSequential(Flatten((1, 2, 2))), (1, 2, 2), 5)
    model = _tiny_revnet()
    with pytest.raises(ValueError, match="inputs of shape"):
        model(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="codes of shape"):
        model.inverse(torch.rand(2, 15))
    with pytest.raises(ValueError, match="z_s must be"):
        model.decode(torch.rand(2, 4), torch.rand(2, 12))
