"""The reverse-KL recipe (variational inference with a flow), the 2-D targets it is tested on, and the Fig. 5.1
reproduction that contrasts it with maximum likelihood."""

from __future__ import annotations

import json
import math

import pytest
import torch

import invertible as inv
from invertible.data.targets2d import Banana2D, GaussianMixture2D, fig5_1_mixture
from invertible.io import RunFolder
from invertible.models.resflow import vector_residual_flow
from invertible.training.engine import StopTraining
from invertible.training.variational import ReverseKLConfig, ReverseKLObjective, reverse_kl_trainer

pytestmark = pytest.mark.cpu_only  # CPU generators seed the latents and the targets' samples


def _gaussian_kl(model, mean, std, n=4000):
    """Reverse KL of the flow to N(mean, std^2 I) in nats (Monte Carlo, exact 2-D log-det)."""
    target = GaussianMixture2D(means=(mean,), weights=(1.0,), std=std)
    with torch.no_grad():
        xs = model.distribution().sample((n,), generator=torch.Generator().manual_seed(3))
        return float((model.log_prob(xs) - target.log_prob(xs)).mean())


def test_targets_are_normalized_and_sample_what_they_evaluate():
    g = torch.Generator().manual_seed(0)
    ax = torch.linspace(-12, 12, 601, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    cell = float(ax[1] - ax[0]) ** 2
    banana, mixture = Banana2D(), fig5_1_mixture()
    for target in (banana, mixture):  # densities integrate to 1 on a grid
        assert abs(float(target.log_prob(pts).exp().sum()) * cell - 1) < 1e-3
    assert torch.allclose(banana.log_prob(pts), banana.unnormalized_log_prob(pts) - math.log(2 * math.pi * 2 * 0.5))
    x = mixture.sample(20_000, g, dtype=torch.float64)
    mass = mixture.mode_mass(x)
    assert torch.allclose(mass, mixture.mode_weights(), atol=0.015)  # samples follow the weights
    xb = banana.sample(20_000, g, dtype=torch.float64)  # x2 - b x1^2 + c ~ N(0, s2^2)
    resid = xb[:, 1] - 0.25 * xb[:, 0] ** 2 + 1
    assert abs(float(resid.std()) - 0.5) < 0.01 and abs(float(xb[:, 0].std()) - 2.0) < 0.04
    with pytest.raises(ValueError, match="one positive weight per mean"):
        GaussianMixture2D(means=((0.0, 0.0),), weights=(1.0, 2.0), std=1.0)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        mixture.log_prob(torch.zeros(3, 3))


def test_reverse_kl_fits_a_gaussian_target():
    """Reverse KL to N((1, -1), 0.5^2 I) falls from its value at the initialization to near 0 in 40 steps."""
    torch.manual_seed(0)
    model = vector_residual_flow(2, n_blocks=1, hidden=(8,), coeff=0.5, mode="exact")
    mean, std = (1.0, -1.0), 0.5
    target = GaussianMixture2D(means=(mean,), weights=(1.0,), std=std)
    trainer = reverse_kl_trainer(model, lambda x: target.log_prob(x) + 7.0,  # any normalizer
                                 ReverseKLConfig(steps=40, batch_size=64, lr=5e-2, log_every=40))
    model.initialize(torch.randn(128, 2))
    before = _gaussian_kl(model, mean, std)
    trainer.fit()
    model.eval()
    after = _gaussian_kl(model, mean, std)
    assert before > 1.0 and after < 0.05 * before, (before, after)
    assert math.isfinite(float(trainer.objective.last_loss))


def test_reverse_kl_recipe_resumes_exactly(tmp_path):
    def make(folder):
        torch.manual_seed(1)
        model = vector_residual_flow(2, n_blocks=1, hidden=(8,), coeff=0.7, mode="exact")
        cfg = ReverseKLConfig(steps=8, batch_size=32, lr=1e-2, log_every=2, checkpoint_every=3, seed=4)
        return reverse_kl_trainer(model, Banana2D().unnormalized_log_prob, cfg, RunFolder(folder))

    full = make(tmp_path / "full")
    full.fit()

    def kill(trainer):
        if trainer.step == 5:
            raise StopTraining

    assert make(tmp_path / "killed").fit(callback=kill)["stopped"]
    resumed = make(tmp_path / "killed")
    resumed.fit(resume=True)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=k)

    def records(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "full") == records(tmp_path / "killed")
    assert json.loads((tmp_path / "full" / "config.json").read_text())["recipe"] == "reverse_kl"


def test_reverse_kl_inputs_are_checked():
    with pytest.raises(ValueError, match="log_target must be a function"):
        ReverseKLObjective(3.0)
    with pytest.raises(ValueError, match="gradient must be 'implicit' or 'unrolled'"):
        ReverseKLObjective(Banana2D().log_prob, gradient="detached")
    with pytest.raises(ValueError, match="gradient must be 'implicit' or 'unrolled'"):
        ReverseKLConfig(gradient="none")
    with pytest.raises(ValueError, match="fits a FlowModel"):
        reverse_kl_trainer(inv.ActNorm(2), Banana2D().log_prob, ReverseKLConfig(steps=1))
    model = vector_residual_flow(2, n_blocks=1, hidden=(4,))
    trainer = reverse_kl_trainer(model, lambda x: x.sum(), ReverseKLConfig(steps=1, batch_size=8))
    with pytest.raises(ValueError, match="one value per sample"):
        trainer.fit()


def test_fig5_1_is_registered_with_its_pieces():
    from invertible.experiments.fig5_1 import interval
    from invertible.experiments.registry import _REGISTRY, EXPERIMENT_MODULES

    assert "invertible.experiments.fig5_1" in EXPERIMENT_MODULES and "fig5.1" in _REGISTRY
    mean, lo, hi = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(hi - mean, 4.302652729911275 / math.sqrt(3), rel_tol=1e-9)
    assert mean - lo == pytest.approx(hi - mean)


@pytest.mark.slow
def test_fig5_1_quick_run_states_its_claims(tmp_path):
    from invertible.experiments import run_experiment

    report = run_experiment("fig5.1", tmp_path, quick=True, show_progress=False)
    metrics = json.loads((tmp_path / "fig5.1" / "metrics.json").read_text())
    claims = metrics["claims"]
    assert len(claims) == 4 and all(c["holds"] for c in claims.values()), claims
    assert len(metrics["per_seed"]["forward"]) >= 3
    assert metrics["summary"]["reverse"]["forward_kl"][1] > metrics["summary"]["forward"]["forward_kl"][2]
    assert (tmp_path / "fig5.1" / "figures" / "fig5_1_forward_vs_reverse_kl.png").read_bytes()[:4] == b"\x89PNG"
    assert "Claims at this scale" in report.read_text()


@pytest.mark.slow
def test_the_variational_inference_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"}
    args = ["--steps", "3", "--n-eval", "500", "--figure", str(tmp_path / "vi.png")]
    out = subprocess.run([sys.executable, str(root / "examples" / "variational_inference.py"), *args],
                         capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    assert "fitted q" in out and (tmp_path / "vi.png").read_bytes()[:4] == b"\x89PNG"
