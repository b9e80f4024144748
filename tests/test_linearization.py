"""Local linearizations of ReLU networks (Definition 3.4), their spectra, Lemma 3.5 and Lemma 3.6."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from invertible.analysis import (
    condition_numbers,
    layer_spectra,
    local_linear_map,
    relu_stages,
    spectrum_summary,
    stage_outputs,
    window_indices,
)
from invertible.models.relu_nets import (
    ReLUMLP,
    ThinCIFAR,
    ToyMLP,
    WideCIFAR,
    build_relu_net,
    relu_net_config,
)

DT = torch.float64


def _autograd_jacobian(f, x: torch.Tensor) -> torch.Tensor:
    jac = torch.autograd.functional.jacobian
    return torch.stack([jac(lambda v: f(v[None]).flatten(), xi, vectorize=True).flatten(1) for xi in x])


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)).to(DT)


@pytest.mark.parametrize("make, shape", [(lambda: ReLUMLP([4, 7, 6, 3]).to(DT), (4,)), (_small_cnn, (2, 6, 6))])
def test_local_linear_map_equals_autograd_jacobian_and_is_exact_nearby(make, shape):
    torch.manual_seed(0)
    net = make()
    x = torch.randn(5, *shape, dtype=DT)
    A, c = local_linear_map(net, x)
    J = _autograd_jacobian(net, x)
    torch.testing.assert_close(A, J, rtol=1e-12, atol=1e-12)
    # exact affine model on the polytope: a tiny step does not cross a kink
    step = 1e-7 * torch.randn_like(x)
    xs = (x + step).flatten(1)
    torch.testing.assert_close(net(x + step).flatten(1), torch.einsum("bij,bj->bi", A, xs) + c,
                               rtol=1e-10, atol=1e-10)


def test_local_linear_map_is_the_matrix_chain_of_definition_3_4():
    torch.manual_seed(1)
    net = ReLUMLP([3, 6, 5, 2]).to(DT)
    x = torch.randn(4, 3, dtype=DT)
    A, _ = local_linear_map(net, x)
    W1, W2, W3 = net[0].weight, net[2].weight, net[4].weight
    for i in range(4):
        z1 = net[0](x[i])
        D1 = torch.diag((z1 > 0).to(DT))
        z2 = net[2](torch.relu(z1))
        D2 = torch.diag((z2 > 0).to(DT))
        torch.testing.assert_close(A[i], W3 @ D2 @ W2 @ D1 @ W1)


def test_windowed_jacobian_is_a_column_block_of_the_full_one():
    torch.manual_seed(2)
    net = _small_cnn()
    x = torch.randn(2, 2, 6, 6, dtype=DT)
    window = (slice(None), slice(1, 4), slice(2, 5))
    A_full, _ = local_linear_map(net, x)
    A_win, c_win = local_linear_map(net, x, window=window)
    idx = window_indices((2, 6, 6), window)
    assert idx.numel() == 2 * 3 * 3
    torch.testing.assert_close(A_win, A_full[:, :, idx])
    torch.testing.assert_close(torch.einsum("bij,bj->bi", A_win, x.flatten(1)[:, idx]) + c_win, net(x))
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[window] = True
    assert torch.equal(window_indices((2, 6, 6), mask), idx)


def test_layer_spectra_match_direct_svds_per_stage():
    torch.manual_seed(3)
    net = _small_cnn()
    x = torch.randn(3, 2, 6, 6, dtype=DT)
    window = (slice(None), slice(0, 3), slice(0, 4))
    idx = window_indices((2, 6, 6), window)
    spectra = layer_spectra(net, x, window=window)
    stages = relu_stages(net)
    assert [s.name for s in spectra] == ["conv1", "relu1", "conv2", "relu2", "dense3"]
    assert [s.out_features for s in spectra] == [o[0].numel() for o in stage_outputs(net, x[:1])]
    for l, sp in enumerate(spectra):
        def upto(v, l=l):
            h = v
            for st in stages[: l + 1]:
                for m in st.modules:
                    h = m(h)
            return h

        J = _autograd_jacobian(upto, x)[:, :, idx]
        s = torch.linalg.svdvals(J)
        torch.testing.assert_close(sp.singular_values, s, rtol=1e-10, atol=1e-12)
        rank = torch.linalg.matrix_rank(J)
        assert torch.equal(sp.n_nonzero, rank)
        nz = [si[si > 1e-10 * si[0]] for si in s]
        torch.testing.assert_close(sp.condition, torch.stack([v[0] / v[-1] for v in nz]))
        assert sp.median_condition == pytest.approx(float(np.median(sp.condition.numpy())))
    # ReLU removes rows: never more non-zero singular values after the ReLU than before it
    for lin, relu in zip(spectra[0:4:2], spectra[1:4:2], strict=True):
        assert torch.all(relu.n_nonzero <= lin.n_nonzero)
        assert torch.all(relu.singular_values[:, 0] <= lin.singular_values[:, 0] * (1 + 1e-12))
    rows = spectrum_summary(spectra)
    assert rows[0]["stage"] == "conv1" and rows[-1]["out_features"] == 5


def test_condition_numbers_conventions():
    s = torch.tensor([[4.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=DT)
    n, cond = condition_numbers(s)
    assert n.tolist() == [2, 1, 0]
    assert cond.tolist() == [2.0, 1.0, 0.0]  # thesis convention: 1 for rank one, 0 for the zero map


def test_bad_inputs():
    net = ReLUMLP([2, 3, 1]).to(DT)
    with pytest.raises(ValueError, match="NaN"):
        layer_spectra(net, torch.tensor([[float("nan"), 0.0]], dtype=DT))
    with pytest.raises(ValueError, match="dtype"):
        local_linear_map(net, torch.zeros(1, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="batch"):
        local_linear_map(net, torch.zeros(2, dtype=DT))
    with pytest.raises(ValueError, match="unsupported module MaxPool2d"):
        relu_stages(nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(2)))
    with pytest.raises(ValueError, match="does not index"):
        window_indices((2, 4), (slice(None), 7))
    with pytest.raises(ValueError, match="bool tensor"):
        window_indices((2, 4), torch.zeros(4, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------
# Lemma 3.5 and Lemma 3.6 as properties of a single layer's linearization D_I A (computed by the library).
def _layer_linearization(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    layer = nn.Linear(A.shape[1], A.shape[0]).to(DT)
    with torch.no_grad():
        layer.weight.copy_(A)
        layer.bias.copy_(b)
    return local_linear_map(nn.Sequential(layer, nn.ReLU()), x[None])[0][0]


def test_lemma_3_5_upper_bounds_for_admissible_index_sets():
    gen = torch.Generator().manual_seed(4)
    checked = 0
    for _ in range(200):
        n = int(torch.randint(2, 6, (1,), generator=gen))
        m = int(torch.randint(n, 3 * n, (1,), generator=gen))
        A = torch.randn(m, n, dtype=DT, generator=gen)
        b = torch.randn(m, dtype=DT, generator=gen)
        x = torch.randn(n, dtype=DT, generator=gen)
        I = (A @ x + b) <= 0  # admissible by construction
        DA = _layer_linearization(A, b, x)
        torch.testing.assert_close(DA, A * (~I)[:, None].to(DT))
        s_tilde = torch.linalg.svdvals(A)
        N = int(condition_numbers(s_tilde)[0])
        s = torch.linalg.svdvals(DA)
        n_nz = int(condition_numbers(s)[0])
        if n_nz == 0:
            continue
        assert s[0] <= s_tilde[0] * (1 + 1e-12)  # largest singular value: ReLU is contractive
        k = N - int(I.sum())
        if k >= 1:
            assert s[n_nz - 1] <= s_tilde[k - 1] * (1 + 1e-12)
            checked += 1
    assert checked >= 50


def test_lemma_3_6_removal_of_weakly_correlated_rows():
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for _ in range(100):
        n = int(torch.randint(2, 5, (1,), generator=gen))
        m = int(torch.randint(2 * n, 4 * n, (1,), generator=gen))
        A = torch.randn(m, n, dtype=DT, generator=gen)
        x = torch.randn(n, dtype=DT, generator=gen)
        b = torch.randn(m, dtype=DT, generator=gen)
        I = (A @ x + b) <= 0
        DA = _layer_linearization(A, b, x)
        s = torch.linalg.svdvals(DA)
        n_nz = int(condition_numbers(s)[0])
        if n_nz == 0:
            continue
        sigma_K = s[n_nz - 1]
        row_space = torch.linalg.svd(DA).Vh[:n_nz]
        M = int((~I).sum())
        for k in torch.nonzero(I).flatten():
            a_k = A[k]
            if torch.linalg.norm(a_k - row_space.T @ (row_space @ a_k)) > 1e-9 * torch.linalg.norm(a_k):
                continue  # a_k not in N(D_I A)^perp: lemma does not apply
            c = (A[~I] @ a_k).abs().max() * M**0.5 / torch.linalg.norm(a_k)  # smallest c with (3.5)
            assert sigma_K <= c * (1 + 1e-12)
            checked += 1
    assert checked >= 50


def test_lemma_3_6_figure_3_3_situation_gives_an_unstable_inverse():
    """Three unit vectors in R^2; ReLU removes the one that alone separates the two nearly parallel others:
    the singular values before are O(1), after the removal the smallest is below the bound c of (3.5)."""
    eps = 0.05
    A = torch.tensor([[0.0, 1.0], [1.0, eps], [1.0, -eps]], dtype=DT)
    A = A / A.norm(dim=1, keepdim=True)
    b = torch.tensor([-1.0, 0.0, 0.0], dtype=DT)
    x = torch.tensor([1.0, 0.0], dtype=DT)  # row 0 is inactive here
    s_before = torch.linalg.svdvals(A)
    DA = _layer_linearization(A, b, x)
    s_after = torch.linalg.svdvals(DA)
    c = (A[1:] @ A[0]).abs().max() * 2**0.5 / A[0].norm()
    assert s_before.min() > 0.9
    assert s_after.min() <= c and c < 0.1
    _, cond = condition_numbers(s_after[None])
    assert cond.item() > 15  # = 1 / eps: the inverse amplifies noise 20-fold


# ---------------------------------------------------------------------------------------------------------
# Models of chapter 3
@pytest.mark.parametrize(
    "cls, units",
    [
        (WideCIFAR, [32768, 16384, 16384, 8192, 8192, 4096, 512, 10]),
        (ThinCIFAR, [32768, 8192, 4096, 4096, 4096, 2048, 512, 10]),
    ],
)
def test_table_3_1_output_units(cls, units):
    net = cls()
    outs = stage_outputs(net, torch.zeros(1, 3, 32, 32))
    stages = relu_stages(net)
    assert [o[0].numel() for o, st in zip(outs, stages, strict=True) if st.kind == "linear"] == units
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs] == [((3, 3), (s, s)) for s in (1, 2, 1, 1, 1, 2)]
    assert not any(isinstance(m, nn.BatchNorm2d | nn.MaxPool2d) for m in net.modules())
    rebuilt = build_relu_net(relu_net_config(net))
    assert type(rebuilt) is cls
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in net.parameters()]


def test_toy_mlp_of_figure_3_1():
    net = ToyMLP()
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert net[0].weight.shape == (3, 2) and net[2].weight.shape == (2, 3)
    assert relu_net_config(net) == {"name": "ToyMLP", "kwargs": {"hidden": 3, "n_classes": 2}, "input_shape": [2]}
    with pytest.raises(ValueError, match="unknown ReLU network"):
        build_relu_net({"name": "ResNet"})
