"""Fused elementwise kernels (invertible.fused) and LipSwish's hand-written derivatives, eager and compiled.

The derivatives are checked against finite differences (gradcheck / gradgradcheck in float64) for every branch
of the autograd functions: beta trainable or constant, stored or recomputed ("lean") slopes, first and second
order. The compiled kernels must give the eager numbers; that lane compiles (seconds) and is marked slow.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from invertible import activations as act
from invertible import fused


def _function(beta_grad: bool, lean: bool):
    def f(x, beta):
        with act.lean_activations() if lean else torch.enable_grad():
            return act._LipSwishFunction.apply(x, beta if beta_grad else beta.detach())
    return f


@pytest.mark.parametrize("beta_grad", [True, False])
@pytest.mark.parametrize("lean", [True, False])
def test_lipswish_first_and_second_derivatives_match_finite_differences(beta_grad, lean):
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(4, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)
    beta = torch.tensor(1.7, dtype=torch.float64, requires_grad=beta_grad)
    f = _function(beta_grad, lean)
    inputs = (x, beta) if beta_grad else (x,)
    g = (lambda a, b: f(a, b)) if beta_grad else (lambda a: f(a, beta))
    assert torch.autograd.gradcheck(g, inputs)
    assert torch.autograd.gradgradcheck(g, inputs)


def test_lipswish_function_matches_the_composite_expression():
    gen = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(3, 7, generator=gen, dtype=torch.float64)).requires_grad_(True)
    beta = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    y = act._LipSwishFunction.apply(x, beta)
    ref = x * torch.sigmoid(beta * x) / 1.1
    torch.testing.assert_close(y, ref)
    w = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad((y * w).sum(), (x, beta), create_graph=True)
    theirs = torch.autograd.grad((ref * w).sum(), (x, beta), create_graph=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    v = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    second = torch.autograd.grad((ours[0] * v).sum() + 0.3 * ours[1], (x, beta))
    expected = torch.autograd.grad((theirs[0] * v).sum() + 0.3 * theirs[1], (x, beta))
    for a, b in zip(second, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_mode_is_validated_and_restored():
    with pytest.raises(ValueError, match="mode must be one of"):
        fused.set_fused_kernels("sometimes")
    before = fused.fused_kernels_mode()
    with fused.fused_kernels("off"):
        assert fused.fused_kernels_mode() == "off"
    assert fused.fused_kernels_mode() == before


def test_auto_mode_runs_small_tensors_eagerly():
    kernel = fused.FusedKernel(lambda a: a * 2)
    with fused.fused_kernels("auto"):
        out = kernel(torch.ones(3))
    assert kernel.compiled_calls == 0 and torch.equal(out, torch.full((3,), 2.0))


def test_a_failing_compile_warns_once_and_falls_back(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    kernel = fused.FusedKernel(lambda a: a + 1)
    with fused.fused_kernels("on"), pytest.warns(RuntimeWarning, match="running it eagerly"):
        out = kernel(torch.zeros(2))
    assert torch.equal(out, torch.ones(2))
    with fused.fused_kernels("on"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(kernel(torch.zeros(2)), torch.ones(2))  # eager from now on, silently


@pytest.mark.slow
def test_compiled_kernels_give_the_eager_numbers():
    """Every LipSwish kernel, compiled, against its eager body (float64: differences are rounding only)."""
    gen = torch.Generator().manual_seed(2)
    shape = (2, 3, 5, 7)
    x, grad, u = (3 * torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    dydx, dydb = torch.rand(shape, generator=gen, dtype=torch.float64), torch.rand(shape, dtype=torch.float64)
    beta, ub = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    calls = {
        act._lipswish_value: (x, beta),
        act._lipswish_value_and_slope: (x, beta),
        act._lipswish_value_and_slopes: (x, beta),
        act._scale_and_dot: (grad, dydx, dydb),
        act._lipswish_vjp: (grad, x, beta),
        act._lipswish_vjp_with_beta: (grad, x, beta),
        act._lipswish_vjp_backward: (grad, x, beta, u),
        act._lipswish_vjp_backward_with_beta: (grad, x, beta, u, ub),
    }
    for kernel, args in calls.items():
        copies = [a.clone() for a in args]
        eager = kernel.fn(*args)
        before = kernel.compiled_calls
        with fused.fused_kernels("on"):
            compiled = kernel(*args)
        assert kernel.compiled_calls == before + 1, kernel.__name__
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12, msg=kernel.__name__)
        for a, c in zip(args, copies, strict=True):  # no kernel writes into its arguments
            assert torch.equal(a, c), kernel.__name__
    # and a whole double backward through a compiled LipSwish equals the eager one
    xs = x.clone().requires_grad_(True)
    b = beta.clone().requires_grad_(True)
    results = []
    for mode in ("off", "on"):
        with fused.fused_kernels(mode):
            y = act._LipSwishFunction.apply(xs, b)
            gx, gb = torch.autograd.grad((y * u).sum(), (xs, b), create_graph=True)
            results.append(torch.autograd.grad((gx * grad).sum() + gb, (xs, b)))
    for a, c in zip(*results, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_compiling_keeps_distribution_validation_on():
    """Dynamo turns torch.distributions' argument validation off when it compiles; a fused kernel puts it back,
    or a NaN input to a flow's base distribution would pass silently after the first compiled step."""
    kernel = fused.FusedKernel(lambda a: a * 3)
    assert torch.distributions.Distribution._validate_args
    with fused.fused_kernels("on"):
        kernel(torch.ones(4))
    assert torch.distributions.Distribution._validate_args


def test_auto_mode_decides_by_size_alone(monkeypatch):
    """Image-size inputs run compiled from the first call, small ones eagerly, whatever ran before: the same
    call gives the same bits in a fresh process (a resumed run) as in a long-running one."""
    compiled = []

    def fake_compile(fn, **kw):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    kernel = fused.FusedKernel(lambda a: a * 2)
    with fused.fused_kernels("auto"):
        for _ in range(3):
            kernel(torch.ones(fused.AUTO_MIN_NUMEL - 1))
        assert kernel.compiled_calls == 0 and not compiled
        kernel(torch.ones(fused.AUTO_MIN_NUMEL))
        assert kernel.compiled_calls == 1 and compiled
        kernel(torch.ones(3))  # small inputs stay eager
        assert kernel.compiled_calls == 1


@pytest.mark.slow
def test_compiled_elu_chain_kernels_give_the_eager_numbers():
    gen = torch.Generator().manual_seed(3)
    z, g, ct = (2 * torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    for kernel, args in ((act._elu_value_and_slope, (z, 1.0)), (act._elu_chain_backward, (z, 1.0, g, ct)),
                         (act._lipswish_chain_backward, (z, torch.tensor(0.8, dtype=torch.float64), g, ct))):
        eager = kernel.fn(*args)
        with fused.fused_kernels("on"):
            compiled = kernel(*args)
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12, msg=kernel.__name__)
