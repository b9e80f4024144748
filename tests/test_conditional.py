"""Conditional residual flows p(x | c): a density for every c, the Lipschitz argument, the distribution API, the
recipe on the engine, save/load, the certificate and the CLI (the bijection contract is in test_bijections.py)."""

import json
import math

import pytest
import torch

import invertible as inv
from invertible.data.conditional2d import (
    conditional_log_prob,
    sample_conditional,
    sample_given_context,
    two_moons_log_likelihood,
)
from invertible.data.toy2d import toy_log_prob
from invertible.models.certify import certify_conditional
from invertible.models.conditional import conditional_residual_flow
from invertible.training.conditional import conditional_density_trainer, evaluate_conditional_nll
from invertible.training.density import DensityConfig
from invertible.training.engine import StopTraining
from invertible.training.runs import load_run
from invertible.training.sources import SamplerSource


def _model(seed=0, blocks=2):
    """A small conditional flow with a context-dependent, non-trivial density (the embedding's zero-initialized
    last layers are randomized; ActNorm initialized from data; power iterations converged)."""
    torch.manual_seed(seed)
    m = conditional_residual_flow(2, 2, n_blocks=blocks, hidden=(16, 16), embed_hidden=(8,), beta=4.0)
    with torch.no_grad():
        for block in m.bijection:
            if isinstance(block, inv.ConditionalResidualBlock):
                block.g.embed[-1].weight.normal_(0, 0.5)
                block.g.embed[-1].bias.normal_(0, 0.5)
    x, c = sample_conditional("rotated-8gaussians", 256, torch.Generator().manual_seed(seed))
    m.initialize(x.double(), c.double())
    m.train()
    for _ in range(30):
        m.log_prob(x.double(), c.double())
    return m.eval()


def test_density_integrates_to_one_for_every_fixed_context():
    m = _model()
    n, half = 241, 8.0
    t = torch.linspace(-half, half, n)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    area = (t[1] - t[0]) ** 2
    masses = []
    with torch.no_grad():
        for c in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, -1.0]), torch.tensor([-0.6, 0.8])):
            masses.append(float(m(c).log_prob(grid).exp().sum() * area))
    assert all(abs(mass - 1) < 5e-3 for mass in masses), masses
    with torch.no_grad():  # and the densities differ between contexts: the context is used
        p0 = m(torch.tensor([1.0, 0.0])).log_prob(grid[:50])
        p1 = m(torch.tensor([0.0, -1.0])).log_prob(grid[:50])
    assert (p0 - p1).abs().max() > 0.1


def test_round_trip_and_logdet_match_the_exact_jacobian_per_sample():
    m = _model(1)
    x, c = torch.randn(6, 2), torch.randn(6, 2)
    z, logdet = m.bijection.forward_and_logdet(x, c)
    assert torch.allclose(m.inverse(z, c), x, atol=1e-8)
    with inv.frozen_spectral_norm():
        jac = torch.stack([torch.autograd.functional.jacobian(lambda t, i=i: m.bijection(t[None], c[i:i + 1])[0],
                                                              x[i]) for i in range(6)])
    assert torch.allclose(logdet, torch.linalg.slogdet(jac)[1], atol=1e-10)
    expected = -0.5 * (z * z).sum(1) - math.log(2 * math.pi) + logdet
    assert torch.allclose(m.log_prob(x, c), expected, atol=1e-12)


def test_contractive_in_x_for_every_context_at_the_certified_constant():
    m = _model(2)
    g = next(b for b in m.bijection if isinstance(b, inv.ConditionalResidualBlock)).g
    lip = inv.lipschitz_constant(g.x_path())
    assert lip <= 0.9**3 + 1e-9
    gen = torch.Generator().manual_seed(3)
    x, x2 = torch.randn(4000, 2, generator=gen), torch.randn(4000, 2, generator=gen) * 0.3
    c = torch.randn(4000, 2, generator=gen) * 5  # far from any training context: the bound does not care
    with torch.no_grad(), inv.frozen_spectral_norm():
        ratio = (g(x, c) - g(x + x2, c)).norm(dim=1) / x2.norm(dim=1)
        moved = (g(x, c) - g(x, c.flip(0))).norm(dim=1)
    assert float(ratio.max()) <= lip
    assert float(moved.max()) > 0.5  # not contractive in c: the context enters unconstrained


def test_distribution_api_shapes_and_broadcasting():
    m = _model(3)
    c = torch.randn(5, 2)
    d = m(c)
    assert isinstance(d, torch.distributions.Distribution)
    assert d.batch_shape == (5,) and d.event_shape == (2,)
    assert d.sample((7,)).shape == (7, 5, 2) and d.log_prob(torch.randn(3, 5, 2)).shape == (3, 5)
    assert d.log_prob(torch.randn(5, 2)).shape == (5,)
    one = m(c[0])
    assert one.batch_shape == () and one.sample((4,)).shape == (4, 2) and one.log_prob(torch.randn(9, 2)).shape == (9,)
    s = m.sample(3, c, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, m.sample(3, c, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="contexts of shape"):
        m(torch.randn(5, 3))
    with pytest.raises(ValueError, match="broadcast"):
        d.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match="context"):
        m.bijection(torch.randn(5, 2), torch.full((5, 2), math.nan))


def test_rsample_is_differentiable_in_the_context_and_the_parameters():
    m = _model(4)
    z = torch.randn(3, 2, dtype=torch.float64)
    c = torch.randn(3, 2, requires_grad=True)
    x = m.inverse(z, c)
    (grad,) = torch.autograd.grad(x.sum(), c)
    eps = 1e-6
    fd = torch.zeros(3, 2)
    with torch.no_grad():
        for j in range(2):
            e = torch.zeros(3, 2)
            e[:, j] = eps
            fd[:, j] = ((m.inverse(z, c + e) - m.inverse(z, c - e)).sum(1)) / (2 * eps)
    assert torch.allclose(grad, fd, atol=1e-5), (grad, fd)
    x = m(c.detach()).rsample((2,))
    x.square().sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_refuses_a_block_that_is_not_contractive():
    m = _model(5)
    block = next(b for b in m.bijection if isinstance(b, inv.ConditionalResidualBlock))
    block.lipschitz_bound = lambda: 1.2  # e.g. an x-path without spectral normalization
    with pytest.raises(ValueError, match="not < 1"):
        block.inverse(torch.randn(2, 2), torch.randn(2, 2))


def test_certificate_for_a_fixed_context():
    m = _model(6)
    cert = certify_conditional(m, torch.tensor([0.3, -0.8]))
    assert cert.certified and len(cert.blocks) == 2
    for b in cert.blocks:
        assert b.lipschitz == pytest.approx(math.prod(layer.upper for layer in b.layers))
        assert b.lipschitz <= 0.9**3 + 1e-9
    assert "max ||J_x g_t(x_t, c)||_2" in cert.format()


def test_data_sets_have_their_exact_densities():
    g = torch.Generator().manual_seed(0)
    x, c = sample_conditional("rotated-8gaussians", 500, g, torch.float64)
    angle = torch.atan2(c[:, 1], c[:, 0])
    back = torch.stack([torch.cos(angle) * x[:, 0] + torch.sin(angle) * x[:, 1],
                        -torch.sin(angle) * x[:, 0] + torch.cos(angle) * x[:, 1]], 1)
    torch.testing.assert_close(conditional_log_prob("rotated-8gaussians", x, c), toy_log_prob("8gaussians", back))
    # the two-moons posterior for one observation integrates to 1 over the prior box
    _, y = sample_conditional("two-moons-sbi", 1, g, torch.float64)
    n = 600
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1
    theta = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    mass = conditional_log_prob("two-moons-sbi", theta, y.expand(theta.shape[0], 2)).exp().sum() * (2 / n) ** 2
    assert abs(float(mass) - 1) < 0.01
    post = sample_given_context("two-moons-sbi", y[0], 200, torch.Generator().manual_seed(1))
    assert torch.isfinite(two_moons_log_likelihood(y.expand(200, 2), post)).all()
    with pytest.raises(ValueError, match="unknown conditional data set"):
        sample_conditional("moons", 3)


def _trainer(folder, steps=6):
    torch.manual_seed(0)
    m = conditional_residual_flow(2, 2, n_blocks=2, hidden=(16, 16), embed_hidden=(8,))
    src = SamplerSource(lambda n, g: sample_conditional("rotated-8gaussians", n, g), 64, seed=0, epoch_steps=3,
                        dtype=torch.float64)
    val = sample_conditional("rotated-8gaussians", 200, torch.Generator().manual_seed(9), torch.float64)
    cfg = DensityConfig(steps=steps, batch_size=64, lr=3e-3, log_every=1, eval_samples=200)
    return conditional_density_trainer(m, src, cfg, folder, val=val, show_progress=False), val


def test_recipe_trains_saves_loads_and_resumes_exactly(tmp_path):
    full, val = _trainer(tmp_path / "full")
    before = evaluate_conditional_nll(full.model, *val)["nll"]
    result = full.fit()
    assert result["val"]["exact"] and result["val"]["nll"] < before
    loaded, ck = load_run(tmp_path / "full")
    assert ck.config["recipe"] == "conditional_density" and ck.kind == "conditional_resflow"
    torch.testing.assert_close(loaded.log_prob(*val), full.model.eval().log_prob(*val), atol=0, rtol=0)

    def kill(trainer):
        if trainer.step == 4:
            raise StopTraining

    assert _trainer(tmp_path / "killed")[0].fit(callback=kill)["stopped"]
    resumed, _ = _trainer(tmp_path / "killed")
    resumed.fit(resume=True)
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, atol=0, rtol=0)

    def records(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "killed") == records(tmp_path / "full")


@pytest.mark.slow
def test_cli_train_conditional(tmp_path, capsys):
    from invertible.cli import main

    out = tmp_path / "run"
    assert main(["train-conditional", "--data", "two-moons-sbi", "--out", str(out), "--steps", "3",
                 "--n-test", "50", "--blocks", "1", "--hidden", "8", "--embed-hidden", "8", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "true density on the same pairs" in text
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["certificate"]["certified"] and math.isfinite(summary["val"]["nll"])
    assert (out / "figures" / "samples.png").is_file()
    model, _ = load_run(out)
    assert model(torch.zeros(2)).sample((5,)).shape == (5, 2)
