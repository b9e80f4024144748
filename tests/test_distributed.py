"""Data-parallel training: 2 gloo processes on CPU end with identical weights; only rank 0 writes."""

import os

import pytest
import torch
import torch.distributed as dist

from helpers import spawn_gloo_ranks
from invertible.data.toy2d import sample_toy
from invertible.io import RunFolder
from invertible.models.resflow import vector_residual_flow
from invertible.training.classification import ClassifierConfig, classifier_trainer, train_classifier
from invertible.training.classifier import build_classifier, load_classification_data
from invertible.training.density import DensityConfig, density_trainer
from invertible.training.sources import SamplerSource


def _worker(rank: int, world: int, folder: str) -> None:
    torch.manual_seed(0)
    model = vector_residual_flow(2, n_blocks=2, hidden=(8, 8), mode="resflow").double()
    src = SamplerSource(lambda n, g: sample_toy("8gaussians", n, g), 16, seed=0, epoch_steps=2, dtype=torch.float64)
    trainer = density_trainer(model, src, DensityConfig(steps=4, batch_size=16, lr=1e-2, log_every=1), folder,
                              show_progress=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    # the ranks see different data
    assert trainer.dist.world_size == world and trainer.dist.rank == rank
    trainer.fit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"init": init, "final": state}, os.path.join(folder, f"rank{rank}.pt"))


def _assert_ranks_identical_and_trained(folder, prefix: str) -> None:
    """Both ranks' final states are bit-identical, and training moved the weights from their start."""
    r0 = torch.load(folder / f"{prefix}0.pt", weights_only=True)
    r1 = torch.load(folder / f"{prefix}1.pt", weights_only=True)
    changed = False
    for k, v in r0["final"].items():
        torch.testing.assert_close(v, r1["final"][k], rtol=0, atol=0, equal_nan=True, msg=k)
        if v.is_floating_point() and not torch.equal(v, r0["init"][k]) and not v.isnan().any():
            changed = True
    assert changed  # training did move the weights


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    spawn_gloo_ranks(_worker, tmp_path)
    _assert_ranks_identical_and_trained(tmp_path, "rank")
    assert (tmp_path / "checkpoint.safetensors").is_file() and (tmp_path / "metrics.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def _classifier_worker(rank: int, world: int, folder: str) -> None:
    torch.set_default_dtype(torch.float64)
    data = load_classification_data("digits", train_subset=128, test_subset=32)
    cfg = ClassifierConfig(model={"blocks": [1, 1], "channels": 4, "hidden": [8, 8], "coeff": 0.9}, epochs=2,
                           batch_size=16, train_subset=128, test_subset=32, shift=1).resolve(data)
    torch.manual_seed(0)
    model = build_classifier(cfg.arch, cfg.model)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = classifier_trainer(model, cfg, data, RunFolder(os.path.join(folder, "engine")), show_progress=False)
    assert trainer.dist.world_size == world and trainer.source.steps_per_epoch(world) == 4  # 128 / (16 * 2)
    trainer.fit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"init": init, "final": state}, os.path.join(folder, f"clf_rank{rank}.pt"))
    summary = train_classifier(cfg, os.path.join(folder, "run"), progress=False, data=data)  # no DDP refusal
    torch.save({"summary": summary}, os.path.join(folder, f"clf_summary{rank}.pt"))


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_ranks_train_the_classifier_to_identical_weights(tmp_path):
    spawn_gloo_ranks(_classifier_worker, tmp_path)
    _assert_ranks_identical_and_trained(tmp_path, "clf_rank")
    summary = torch.load(tmp_path / "clf_summary0.pt", weights_only=False)["summary"]
    assert summary["epochs"] == 2 and summary["test_error"] is not None and not summary["diverged"]
    run = tmp_path / "run"
    assert (run / "checkpoint.safetensors").is_file() and (run / "metrics.json").is_file()
    assert RunFolder(run).read_config()["world_size"] == 2
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".tmp") == []


def _hybrid_worker(rank: int, world: int, folder: str) -> None:
    from invertible.models.hybrid import hybrid_residual_flow
    from invertible.training.hybrid import HybridConfig, hybrid_trainer

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(64) % 3
    torch.manual_seed(0)
    model = hybrid_residual_flow((1, 4, 4), 3, n_scales=2, n_blocks=1, hidden=3, block="dense",
                                 activation="clipswish").double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = HybridConfig(lam=1.0, steps=3, batch_size=16, lr=1e-2, log_every=1, eval_samples=8)
    trainer = hybrid_trainer(model, x, y, cfg, RunFolder(folder), x_val=x[:8], y_val=y[:8], show_progress=False)
    assert trainer.dist.world_size == world and trainer.source.steps_per_epoch(world) == 2  # 64 / (16 * 2)
    trainer.fit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"init": init, "final": state}, os.path.join(folder, f"hyb_rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_gloo_ranks_train_the_hybrid_to_identical_weights(tmp_path):
    spawn_gloo_ranks(_hybrid_worker, tmp_path)
    _assert_ranks_identical_and_trained(tmp_path, "hyb_rank")
    assert RunFolder(tmp_path).read_config()["world_size"] == 2
