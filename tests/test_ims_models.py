"""IsotopeNet (Table 7.2), ResidualNet (Table A.1), the locally connected layer and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invertible.ims.models import (
    IsotopeNet,
    LocallyConnected1d,
    ResidualLayer1d,
    ResidualNet,
    count_parameters,
    predict_proba,
)
from invertible.ims.training import IMSConfig, train_ims


def test_isotopenet_lengths_and_output_for_27286_bins():
    torch.manual_seed(0)
    net = IsotopeNet(27286).eval()
    assert net.lengths == [27286, 5458, 1820]
    assert net.local.length == 1820 and net.fc.in_features == 1820
    with torch.no_grad():
        h = net.features(torch.randn(2, 1, 27286))
        assert h.shape == (2, 1, 1820)
        assert net(torch.randn(2, 27286)).shape == (2, 2)


def test_isotopenet_parameter_count_pins_the_architecture():
    net = IsotopeNet(27286)
    convs = sum(p.numel() for n, p in net.named_parameters() if "conv" in n or "shortcut" in n)
    assert convs == 24 + 192 + 8 + 192 + 192 + 64 + 192 + 192 + 24 + 3 + 8
    assert net.local.weight.numel() == 1820 * 3 and net.local.bias.numel() == 1820
    assert count_parameters(net) == 12115  # thesis: 13935 (see report: one more 1820-vector)
    assert not any(m.bias is not None for m in net.modules() if isinstance(m, torch.nn.Conv1d))


def test_residual_layer_shortcut_only_where_needed():
    assert isinstance(ResidualLayer1d(8, 8, 3, 1).shortcut, torch.nn.Identity)
    assert isinstance(ResidualLayer1d(8, 8, 3, 5).shortcut, torch.nn.Conv1d)
    assert isinstance(ResidualLayer1d(1, 8, 3, 1).shortcut, torch.nn.Conv1d)
    with pytest.raises(ValueError, match="odd"):
        ResidualLayer1d(1, 8, 4)


def test_locally_connected_matches_naive_loop_and_is_unshared():
    torch.manual_seed(0)
    lc = LocallyConnected1d(37, 3, 2, kernel_size=3).double()
    with torch.no_grad():
        lc.bias.normal_()
    x = torch.randn(4, 3, 37, dtype=torch.float64)
    torch.testing.assert_close(lc(x), lc.forward_naive(x))
    torch.testing.assert_close(lc(x), lc.forward_unfold(x))
    y0 = lc(x).detach()
    with torch.no_grad():
        lc.weight[10].add_(1.0)  # weights of position 10 only
    changed = (lc(x).detach() - y0).abs().amax(dim=(0, 1)) > 0
    assert changed.tolist() == [i == 10 for i in range(37)]
    strided = LocallyConnected1d(37, 3, 2, kernel_size=3, stride=2).double()
    torch.testing.assert_close(strided(x), strided.forward_naive(x))
    torch.testing.assert_close(strided(x), strided.forward_unfold(x))
    assert strided(x).shape == (4, 2, 19)
    with pytest.raises(ValueError, match="expected length 37"):
        lc(torch.randn(1, 3, 36, dtype=torch.float64))


def test_residualnet_table_a1():
    net = ResidualNet()
    assert len(net.features) == 12
    assert [m.conv2.out_channels for m in net.features][-1] == 256
    assert all(m.conv1.kernel_size == (5,) for m in net.features)
    assert count_parameters(net) == 1622690  # thesis: 2,132,130 (see the report)
    assert net.eval()(torch.randn(3, 500)).shape == (3, 2)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for net in (IsotopeNet(120, 3), ResidualNet(3)):
        loss = net(torch.randn(4, 120)).logsumexp(-1).sum()
        loss.backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not missing, missing


def test_training_learns_a_separable_task():
    g = np.random.default_rng(0)
    n, d = 64, 100
    y = np.arange(n) % 2
    X = g.normal(0, 0.3, (n, d)).astype(np.float32)
    X[y == 1, 40:60] += 1.5  # class 1 carries a bump
    torch.manual_seed(0)
    net = IsotopeNet(d, dropout=0.0)
    hist = train_ims(net, X, y, IMSConfig(lr=5e-3, weight_decay=1e-4, batch_size=16, epochs=12),
                            generator=torch.Generator().manual_seed(0))
    assert hist[-1] < 0.5 * hist[0]
    acc = (predict_proba(net, X).argmax(1) == y).mean()
    assert acc > 0.95
    with pytest.raises(ValueError, match="equally long"):
        train_ims(net, X, y[:-1], IMSConfig(epochs=1))
