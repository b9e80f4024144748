"""The activation table: derivatives against autograd, Lipschitz constants against sampled slopes (float64)."""

import pytest
import torch
from torch import nn

import invertible as inv
from invertible.activations import (
    ACTIVATIONS,
    activation_lipschitz,
    activation_value_and_derivative,
    has_derivative,
    make_activation,
)

# (module, whether the Lipschitz constant is attained, i.e. the bound is tight)
CASES = {
    "lipswish-1": (lambda: inv.LipSwish(1.0), True),
    "lipswish-4": (lambda: inv.LipSwish(4.0), True),
    "lipswish-0.3": (lambda: inv.LipSwish(0.3), True),
    "elu": (lambda: nn.ELU(), True),
    "elu-2": (lambda: nn.ELU(alpha=2.0), True),
    "leaky-relu": (lambda: nn.LeakyReLU(0.1), True),
    "leaky-relu-steep": (lambda: nn.LeakyReLU(-3.0), True),
    "relu": (lambda: nn.ReLU(), True),
    "tanh": (lambda: nn.Tanh(), True),
    "softplus": (lambda: nn.Softplus(), True),
    "sigmoid": (lambda: nn.Sigmoid(), True),
    "identity": (lambda: nn.Identity(), True),
}


def test_every_row_with_a_derivative_is_tested():
    covered = {type(f()) for f, _ in CASES.values()}
    for row in ACTIVATIONS:
        if row.value_and_derivative is not None:
            assert row.module_type in covered, row.module_type


@pytest.mark.parametrize("name", CASES)
def test_value_and_derivative_match_autograd(name):
    m = CASES[name][0]().double()
    torch.manual_seed(0)
    h = (torch.randn(500, dtype=torch.float64) * 4).requires_grad_(True)
    value, deriv = activation_value_and_derivative(m, h)
    torch.testing.assert_close(value, m(h), rtol=1e-12, atol=1e-12)
    (auto,) = torch.autograd.grad(m(h).sum(), h)
    torch.testing.assert_close(deriv, auto, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_lipschitz_constant_bounds_the_slope_and_is_tight(name):
    make, tight = CASES[name]
    m = make().double()
    lip = activation_lipschitz(m)
    h = torch.linspace(-60, 60, 400001, dtype=torch.float64)
    _, deriv = activation_value_and_derivative(m, h)
    slope = float(deriv.abs().max())
    assert slope <= lip * (1 + 1e-12)
    if tight:
        assert slope >= 0.99 * lip, (slope, lip)


def test_lipswish_is_not_loosely_bounded():
    """sup |d/dx x sigmoid(beta x)| = 1.0998..., so LipSwish's slope reaches 0.9998 of its constant 1."""
    _, d = activation_value_and_derivative(inv.LipSwish(2.0).double(), torch.linspace(-5, 5, 200001).double())
    assert 0.9995 < float(d.max()) <= 1.0


def test_unknown_modules_and_unsupported_parameters():
    assert activation_lipschitz(nn.GELU()) is None and not has_derivative(nn.GELU())
    assert activation_lipschitz(nn.Dropout()) == 1.0 and not has_derivative(nn.Dropout())
    with pytest.raises(TypeError, match="GELU"):
        activation_value_and_derivative(nn.GELU(), torch.zeros(2))
    with pytest.raises(TypeError, match="beta"):
        activation_value_and_derivative(nn.Softplus(beta=2.0), torch.zeros(2))
    assert isinstance(make_activation("lipswish", 4.0), inv.LipSwish)
    assert float(make_activation("lipswish", 4.0).beta) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="relu6"):
        make_activation("relu6")


def test_lipswish_reexports():
    from invertible.activations import LipSwish
    from invertible.nn import LipSwish as NNLipSwish

    assert inv.LipSwish is LipSwish is NNLipSwish
