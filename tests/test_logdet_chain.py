"""The by-hand recomputed Neumann gradient of a chain g (invertible.logdet_chain) equals the autograd form
(invertible.logdet_recompute with graphs), value and every gradient, on convolution and linear chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import invertible as inv
from invertible.logdet_chain import chain_by_hand, chain_layers
from invertible.models.blocks import lipschitz_convnet, lipschitz_mlp


def _estimator(seed: int, n_probes: int, chunk: int | None) -> inv.RussianRouletteLogDet:
    return inv.RussianRouletteLogDet(n_exact=2, p=0.5, neumann_gradient=True, recompute=True, recompute_chunk=chunk,
                                     n_probes=n_probes, generator=torch.Generator().manual_seed(seed))


def _run(g: nn.Module, x: torch.Tensor, seed: int, n_probes: int, chunk: int | None, by_hand: bool):
    """Value and gradients (input, parameters) of a loss with unequal sample weights on g(x) and the log-det."""
    block = inv.ResidualBlock(g, logdet=_estimator(seed, n_probes, chunk))
    weights = torch.linspace(0.3, 2.5, x.shape[0])
    xin = x.clone().requires_grad_(True)
    with chain_by_hand(by_hand):
        y, ld = block.forward_and_logdet(xin)
        loss = (y.square().flatten(1).sum(1) * weights).sum() - (ld * weights.flip(0)).sum()
        loss.backward()
    params = [p.grad.clone() if p.grad is not None else None for p in g.parameters()]
    return ld.detach(), xin.grad, params, {k: v.clone() for k, v in g.state_dict().items()}


def _compare(make, x, n_probes, chunk):
    assert chain_layers(make()) is not None  # the by-hand path is taken
    for seed in range(2):
        torch.manual_seed(0)
        a, b = make(), make()
        a(x)  # power-iteration vectors drawn once, then the same state in both
        b.load_state_dict(a.state_dict())
        ld_a, gx_a, gp_a, state_a = _run(a, x, seed, n_probes, chunk, by_hand=False)
        ld_b, gx_b, gp_b, state_b = _run(b, x, seed, n_probes, chunk, by_hand=True)
        torch.testing.assert_close(ld_b, ld_a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gx_b, gx_a, rtol=1e-9, atol=1e-12)
        for p, q in zip(gp_b, gp_a, strict=True):
            assert (p is None) == (q is None)
            if p is not None:
                torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        for k, v in state_a.items():  # the power iteration ran the same way (spectral-norm buffers)
            torch.testing.assert_close(state_b[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["lipswish", "elu"])
@pytest.mark.parametrize("n_probes,chunk", [(1, None), (2, 2), (1, 1)])
def test_conv_chain_by_hand_equals_autograd(activation, n_probes, chunk):
    x = torch.rand(3, 2, 6, 6)
    _compare(lambda: lipschitz_convnet(2, 8, 0.9, activation), x, n_probes, chunk)


@pytest.mark.parametrize("chunk", [None, 2])
def test_linear_chain_with_a_plain_layer_and_a_frozen_beta(chunk):
    """Linear layers (one without spectral norm, one without bias), a LipSwish whose beta does not train."""
    def make():
        g = lipschitz_mlp([3, 7, 7, 3], coeff=0.8, preact=False)
        g[2] = nn.Linear(7, 7, bias=False)
        with torch.no_grad():
            g[2].weight.mul_(0.3)
        g[1].raw_beta.requires_grad_(False)
        return g

    assert chain_layers(make()) is not None
    _compare(make, torch.randn(5, 3), 2, chunk)


def test_dilated_conv_chain():
    def make():
        g = lipschitz_convnet(2, 6, 0.9)
        g[0].dilation, g[0].padding = (2, 2), (2, 2)
        return g

    _compare(make, torch.rand(2, 2, 7, 7), 1, None)


def test_unsupported_functions_take_the_autograd_form():
    assert chain_layers(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))) is None
    assert chain_layers(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.ELU(),
                                      nn.Conv2d(4, 2, 3, padding=1))) is None
    assert chain_layers(nn.Sequential(nn.Linear(2, 2), nn.ELU())) is None
    g = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        for m in g[0::2]:
            m.weight.mul_(0.2)
    block = inv.ResidualBlock(g, logdet=_estimator(0, 1, None))
    x = torch.randn(4, 2, requires_grad=True)
    y, ld = block.forward_and_logdet(x)
    (y.sum() + ld.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("c_in,c_out,k,pad,dil", [(1, 8, 3, 1, 1), (8, 1, 3, 1, 1), (3, 9, 3, 2, 2), (9, 2, 5, 1, 1),
                                                  (2, 6, 3, 0, 1), (6, 3, 3, 3, 1), (8, 8, 3, 1, 1)])
def test_cpu_adjoint_kernels_equal_the_convolution_backward(c_in, c_out, k, pad, dil):
    """The faster CPU adjoints of few-channel convolutions (flipped-kernel convolution, direct transposed
    convolution) are the data gradient <c, L'(x)> = <L'^T c, x> of the convolution, for any padding and
    dilation; where no faster kernel applies (pad > dilation (k - 1), many channels) the plain one runs."""
    from invertible.logdet_chain import _Operator

    conv = nn.Conv2d(c_in, c_out, k, padding=pad, dilation=dil)
    x = torch.randn(2, c_in, 9, 9, requires_grad=True)
    y = conv(x)
    c = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, c)
    got = _Operator(conv, conv.weight.detach()).adjoint(c, x.shape)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
