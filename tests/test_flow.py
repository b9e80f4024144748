"""Flow as a distribution: normalization, sampling, bits/dim, evaluation under no_grad; input validation."""

import math

import pytest
import torch

import invertible as inv
from helpers import conv_g, mlp_g, warm_up


def _flow2d(estimator=None):
    torch.manual_seed(0)
    seq = inv.InvertibleSequential(
        inv.ResidualBlock(mlp_g(2, 32, 0.9), logdet=estimator or inv.ExactLogDet()),
        inv.ActNorm(2),
        inv.ResidualBlock(mlp_g(2, 32, 0.9), logdet=estimator or inv.ExactLogDet()),
    )
    warm_up(seq, torch.randn(64, 2) * 2, 5)
    with torch.no_grad():
        for p in seq.parameters():
            p.add_(0.3 * torch.randn_like(p))  # something far from the identity
    warm_up(seq, torch.randn(64, 2), 5)
    return inv.Flow(seq, event_shape=(2,))


def test_density_integrates_to_one():
    flow = _flow2d()
    grid = torch.linspace(-9, 9, 241)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    with torch.no_grad():
        logp = torch.cat([flow.log_prob(chunk) for chunk in pts.split(8192)])
    mass = logp.exp().sum() * (grid[1] - grid[0]) ** 2
    assert abs(float(mass) - 1) < 5e-3


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
def test_samples_follow_the_model():
    """Samples are F^-1(z): mapping them forward gives back standard normal latents."""
    flow = _flow2d()
    x = flow.sample((2000,), generator=torch.Generator().manual_seed(1))
    assert x.shape == (2000, 2)
    z = flow.bijection(x)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=0.1)
    assert torch.allclose(z.T.cov(), torch.eye(2), atol=0.12)


def test_log_prob_is_change_of_variables():
    flow = _flow2d()
    x = torch.randn(5, 2)
    z, ld = flow.bijection.forward_and_logdet(x)
    expected = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + ld
    assert torch.allclose(flow.log_prob(x), expected)


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
def test_evaluation_under_no_grad_with_unbiased_estimator():
    flow = _flow2d(inv.RussianRouletteLogDet(generator=torch.Generator().manual_seed(0)))
    exact = _flow2d()
    x = torch.randn(8, 2)
    with torch.no_grad():
        draws = torch.stack([flow.log_prob(x) for _ in range(400)])
        target = exact.log_prob(x)
    assert not draws.requires_grad
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - target).abs() < 4 * se + 1e-12).all()


@pytest.mark.cpu_only  # seeded by a CPU torch.Generator in the test body
def test_bits_per_dim_is_the_dequantized_nll_in_bits():
    torch.manual_seed(0)
    seq = inv.InvertibleSequential(inv.ResidualBlock(conv_g(1, 4, 0.9), logdet=inv.ExactLogDet()))
    warm_up(seq, torch.rand(4, 1, 4, 4), 2)
    flow = inv.Flow(seq, event_shape=(1, 4, 4))
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    bpd = flow.bits_per_dim(x, generator=torch.Generator().manual_seed(2))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    y = (x.double() + u) / 256
    manual = -(flow.log_prob(y) - 16 * math.log(256)) / (16 * math.log(2))
    assert torch.allclose(bpd, manual)
    with pytest.raises(ValueError, match="integer data"):
        flow.bits_per_dim(torch.rand(2, 1, 4, 4))


def test_flow_needs_base_or_shape():
    with pytest.raises(ValueError, match="event_shape"):
        inv.Flow(inv.InvertibleSequential(inv.ActNorm(2)))


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([[float("nan"), 0.0]]), "NaN"),
        (torch.zeros(3), "shape"),
        (torch.zeros(2, 2, dtype=torch.long), "floating"),
    ],
)
def test_residual_block_input_validation(bad, match):
    block = inv.ResidualBlock(mlp_g(2))
    with pytest.raises(ValueError, match=match):
        block(bad)
    with pytest.raises(ValueError, match=match):
        block.forward_and_logdet(bad)


def test_sequential_checks_finiteness_once_at_its_boundary(monkeypatch):
    """A composition tests isfinite once (a device sync on GPU), its layers only shapes; NaN is still refused."""
    seq = inv.InvertibleSequential(inv.ActNorm(2), inv.ResidualBlock(mlp_g(2)), inv.ActNorm(2))
    for call in (seq, seq.forward_and_logdet, seq.inverse):
        with pytest.raises(ValueError, match="InvertibleSequential.*NaN"):
            call(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="channels"):  # shape checks of the layers stay active
        seq(torch.zeros(2, 3))
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: calls.append(1) or real(x))
    seq.forward_and_logdet(torch.randn(4, 2))
    assert len(calls) == 1
    calls.clear()
    seq[1](torch.randn(4, 2))  # a block on its own still checks
    assert len(calls) == 1


def test_actnorm_and_squeeze_shape_errors():
    with pytest.raises(ValueError, match="channels"):
        inv.ActNorm(3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="even"):
        inv.Squeeze()(torch.randn(1, 1, 3, 4))
