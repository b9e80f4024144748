"""Bijections at the boundary: a fresh contractivity guard (case 5), ActNorm's state untouched by a refused
batch (case 6), LipSwish's beta (case 7), shape and dtype mistakes as ValueErrors naming both shapes (case 8)."""

import math

import pytest
import torch
from torch import nn

import invertible as inv
from helpers import conv_g, mlp_g, warm_up
from invertible.lipschitz import spectral_norm_of


def _block(seed=0):
    torch.manual_seed(seed)
    block = inv.ResidualBlock(mlp_g(3, 8, 0.9), logdet=inv.ExactLogDet())
    x = torch.randn(6, 3)
    warm_up(block, x, 5)
    return block, x


def _original(layer):
    return layer.parametrizations.weight.original


@pytest.mark.parametrize("how", ["by_hand", "optimizer", "after_certify"])
def test_contractivity_guard_sees_the_current_weights(how):
    block, x = _block()
    y = block(x)
    block.inverse(y)  # contractive: fine
    assert block.last_inverse.lipschitz < 1
    if how == "after_certify":
        assert block.certify() < 1
    with torch.no_grad():
        if how == "optimizer":  # a step that blows the weights up, and no forward since
            opt = torch.optim.SGD(block.parameters(), lr=1.0)
            for p in block.parameters():
                p.grad = -2500 * torch.randn_like(p)
            opt.step()
        else:
            _original(block.g[0]).copy_(2500 * torch.randn_like(_original(block.g[0])))
    with pytest.raises(ValueError, match=r"not contractive.*estimated at \d+") as info:
        block.inverse(y)
    lip = float(str(info.value).split("estimated at ")[1].split()[0])
    assert lip >= 1
    assert "Linear(3->8)" in str(info.value)  # names the block's g


def test_guard_estimate_is_cached_until_the_weights_change(monkeypatch):
    block, x = _block(1)
    y = block(x)
    sn = spectral_norm_of(block.g[0])
    calls = []
    real = type(sn)._power_steps
    monkeypatch.setattr(type(sn), "_power_steps", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    block.inverse(y)
    first = len(calls)
    assert first > 0
    block.inverse(y)
    block(x)  # an eval-mode forward rewrites only sigma, which the frozen map does not use
    block.inverse(y)
    assert len(calls) == first
    with torch.no_grad():
        _original(block.g[2]).mul_(1.01)
    block.inverse(y)
    assert len(calls) > first


def test_guard_names_the_layer_in_a_composition():
    block, x = _block(2)
    seq = inv.InvertibleSequential(inv.ActNorm(3), block)
    warm_up(seq, x, 1)
    y = seq(x)
    with torch.no_grad():  # (a mere rescaling would be undone by the normalization itself)
        _original(block.g[0]).copy_(5000 * torch.randn_like(_original(block.g[0])))
    with pytest.raises(ValueError, match=r"layer 1 \(ResidualBlock\).*not contractive"):
        seq.inverse(y)


def test_a_loaded_certificate_stays_valid():
    block, x = _block(3)
    cert = block.certify()
    twin, _ = _block(4)
    twin.load_state_dict(block.state_dict())
    assert twin.lipschitz_bound() == cert


def test_actnorm_refuses_an_empty_batch_before_touching_its_state():
    an = inv.ActNorm(3)
    before = {k: v.clone() for k, v in an.state_dict().items()}
    with pytest.raises(ValueError, match="non-empty batch"):
        an(torch.empty(0, 3))
    assert not bool(an.initialized)
    for k, v in an.state_dict().items():
        assert torch.equal(v, before[k]), k
    an(torch.randn(8, 3))  # a real batch still initializes it
    assert bool(an.initialized) and torch.isfinite(an.log_scale).all()
    y, ld = an.forward_and_logdet(torch.empty(0, 3))  # initialized: an empty batch is just empty
    assert y.shape == (0, 3) and ld.shape == (0,)


@pytest.mark.parametrize("beta", [-1.0, 0.0, math.nan, math.inf, "x"])
def test_lipswish_beta_must_be_finite_and_positive(beta):
    with pytest.raises(ValueError, match="beta"):
        inv.LipSwish(beta=beta)


def test_lipswish_large_beta_is_kept():
    assert float(inv.LipSwish(beta=100.0).beta) == pytest.approx(100.0)
    assert float(inv.LipSwish(beta=1.0).beta) == pytest.approx(1.0)


def _flow():
    torch.manual_seed(5)
    seq = inv.InvertibleSequential(inv.ActNorm(3), inv.ResidualBlock(mlp_g(3, 8), logdet=inv.ExactLogDet()))
    warm_up(seq, torch.randn(8, 3), 2)
    return seq


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda b: b(torch.randn(2, 4)), r"\(B, 3\).*\(2, 4\)"),
        (lambda b: b.forward_and_logdet(torch.randn(2, 4)), r"\(B, 3\).*\(2, 4\)"),
        (lambda b: b.inverse(torch.randn(2, 4)), r"\(B, 3\).*\(2, 4\)"),
        (lambda b: b(torch.randn(2, 3, dtype=torch.float32)), "float64.*float32"),
    ],
)
def test_residual_block_shape_and_dtype_errors(call, match):
    block = inv.ResidualBlock(mlp_g(3, 8), logdet=inv.ExactLogDet())
    with pytest.raises(ValueError, match=match):
        call(block)


def test_conv_block_channel_errors_and_g_that_changes_the_shape():
    block = inv.ResidualBlock(conv_g(2, 4), logdet=inv.ExactLogDet())
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\).*\(2, 3, 4, 4\)"):
        block(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\).*\(2, 2\)"):
        block(torch.randn(2, 2))
    bad = inv.ResidualBlock(nn.Sequential(nn.Linear(3, 4)), logdet=inv.ExactLogDet())
    with pytest.raises(ValueError, match=r"maps \(2, 3\) to \(2, 4\)"):
        bad(torch.randn(2, 3))


def test_sequential_names_the_layer_with_the_shape_mistake():
    seq = inv.InvertibleSequential(inv.ResidualBlock(mlp_g(3, 8)), inv.ResidualBlock(mlp_g(4, 8)))
    with pytest.raises(ValueError, match=r"layer 1 \(ResidualBlock\).*\(B, 4\).*\(2, 3\)"):
        seq(torch.randn(2, 3))


def test_flow_log_prob_and_sample_shape_errors():
    seq = _flow()
    flow = inv.Flow(seq, event_shape=(3,))
    with pytest.raises(ValueError, match=r"Flow.log_prob.*3 channels.*\(5, 4\)"):
        flow.log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"Flow.log_prob.*float64.*float32"):
        flow.log_prob(torch.randn(5, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match="Flow.log_prob.*tensor"):
        flow.log_prob([[1.0, 2.0, 3.0]])
    wrong = inv.Flow(seq, event_shape=(4,))
    with pytest.raises(ValueError, match=r"Flow.sample.*\(5, 4\).*event shape \(4,\).*\(B, 3\)"):
        wrong.sample((5,))
    assert flow.sample((5,)).shape == (5, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(atol=math.nan), "atol=nan"),
        (dict(rtol=-1.0), "rtol=-1.0"),
        (dict(n_power_iterations=1.5), "n_power_iterations=1.5"),
        (dict(max_power_iterations=0), "max_power_iterations=0"),
    ],
)
def test_spectral_norm_rejects_bad_power_iteration_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inv.spectral_norm(nn.Linear(2, 2), 0.9, **kwargs)
    with pytest.raises(ValueError, match="rtol"):
        inv.converge_spectral_norms(nn.Linear(2, 2), rtol=math.nan)
