"""Trainer: exact resume after a kill, metrics, checkpoints, data sources, EMA."""

import json
import math

import pytest
import torch

from invertible.data.dequantize import dequantize, nats_to_bits_per_dim
from invertible.data.toy2d import sample_toy
from invertible.models.resflow import image_residual_flow, vector_residual_flow
from invertible.training.denormal import flush_denormals
from invertible.training.density import DensityConfig, density_trainer
from invertible.training.ema import EMA
from invertible.training.engine import StopTraining
from invertible.training.evaluate import evaluate_nll
from invertible.training.runs import load_run
from invertible.training.sources import SamplerSource, TensorSource


def _toy_trainer(out, mode="resflow", steps=10, log_every=2, seed=0):
    torch.manual_seed(0)
    model = vector_residual_flow(2, n_blocks=2, hidden=(8, 8), mode=mode).double()
    src = SamplerSource(lambda n, g: sample_toy("8gaussians", n, g), 16, seed=0, epoch_steps=4, dtype=torch.float64)
    val = sample_toy("8gaussians", 64, torch.Generator().manual_seed(1), torch.float64)
    cfg = DensityConfig(steps=steps, batch_size=16, lr=1e-2, warmup_steps=3, grad_clip=5.0, ema_decay=0.9,
                        log_every=log_every, seed=seed)
    return density_trainer(model, src, cfg, out, val_data=val, show_progress=False)


def _kill_at(step):
    def cb(trainer):
        if trainer.step == step:
            raise StopTraining
    return cb


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, equal_nan=True, msg=k)


@pytest.mark.parametrize("mode", ["resflow", "exact"])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, mode):
    """Russian roulette draws from the global RNG: resuming must restore it, the data order and Adam/EMA."""
    full = _toy_trainer(tmp_path / "full", mode)
    full.fit()
    killed = _toy_trainer(tmp_path / "killed", mode)
    assert killed.fit(callback=_kill_at(7)) == {"step": 7, "stopped": True}  # last checkpoint: step 4
    resumed = _toy_trainer(tmp_path / "killed", mode)
    torch.manual_seed(123)  # a fresh process would start from another RNG state
    out = resumed.fit(resume=True)
    assert out["step"] == 10
    _assert_same_state(full.model, resumed.model)
    for k, v in full.ema.state_dict().items():
        torch.testing.assert_close(v, resumed.ema.state_dict()[k], rtol=0, atol=0)
    # metrics logged after the checkpoint were dropped on resume: no duplicate steps, same values
    recs = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    full_recs = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    key = [(r["split"], r["step"]) for r in recs]
    assert key == [(r["split"], r["step"]) for r in full_recs] and len(set(key)) == len(key)
    assert [r["nll"] for r in recs] == [r["nll"] for r in full_recs]


def test_resume_image_flow_with_dequantization(tmp_path):
    def make(folder="img"):
        torch.manual_seed(0)
        model = image_residual_flow((1, 4, 4), n_scales=1, n_blocks=1, hidden=4, mode="iresnet", n_terms=3).double()
        data = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        src = TensorSource(data, 8, seed=1, dtype=torch.float64)
        cfg = DensityConfig(steps=5, batch_size=8, lr=1e-3, optimizer="adamax", checkpoint_every=2, log_every=1)
        return density_trainer(model, src, cfg, tmp_path / folder, val_data=data[:8], show_progress=False)

    a = make("ref")
    a.fit()
    make().fit(callback=_kill_at(3))
    b = make()
    b.fit(resume=True)
    _assert_same_state(a.model, b.model)
    assert b.last_val is not None and "bits_per_dim" in b.last_val


def test_checkpoint_reload_and_config(tmp_path):
    t = _toy_trainer(tmp_path / "run", "exact", steps=4)
    t.fit()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["kind"] == "vector_resflow" and cfg["train"]["steps"] == 4
    model, ck = load_run(tmp_path / "run", use_ema=False)
    assert ck.meta["step"] == 4 and not model.training and ck.kind == "vector_resflow"
    assert ck.config == cfg
    x = sample_toy("8gaussians", 5, torch.Generator().manual_seed(2), torch.float64)
    t.model.eval()
    torch.testing.assert_close(model.log_prob(x), t.model.log_prob(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nothing")


def test_train_config_validation():
    with pytest.raises(ValueError, match="optimizer"):
        DensityConfig(optimizer="sgd")
    with pytest.raises(ValueError):
        DensityConfig(steps=0)
    with pytest.raises(ValueError, match="grad_clip"):
        DensityConfig(grad_clip=0.0)


def test_training_reduces_nll():
    torch.manual_seed(0)
    model = vector_residual_flow(2, n_blocks=2, hidden=(16, 16), mode="exact").double()
    src = SamplerSource(lambda n, g: sample_toy("moons", n, g), 64, epoch_steps=100, dtype=torch.float64)
    val = sample_toy("moons", 500, torch.Generator().manual_seed(1), torch.float64)
    t = density_trainer(model, src, DensityConfig(steps=100, batch_size=64, lr=1e-2), None, val_data=val,
                        show_progress=False)
    model.initialize(src.batch(0))  # what fit() starts from
    before = evaluate_nll(model, val)["nll"]
    out = t.fit()
    assert out["val"]["exact"] and out["val"]["nll"] < before - 0.1


def test_sources_are_functions_of_the_step():
    data = torch.arange(40, dtype=torch.float64)[:, None].repeat(1, 2)
    src = TensorSource(data, 5, seed=3)
    assert src.steps_per_epoch(2) == 4
    b0 = src.batch(6, rank=0, world_size=2)
    assert torch.equal(b0, TensorSource(data, 5, seed=3).batch(6, rank=0, world_size=2))
    epoch = torch.cat([src.batch(s, r, 2) for s in range(4) for r in range(2)])[:, 0]
    assert sorted(epoch.tolist()) == list(range(40))  # ranks' shards partition the epoch
    with pytest.raises(ValueError):
        TensorSource(data[:3], 5)


def test_dequantize_and_bits_per_dim():
    x = torch.tensor([[0, 255, 17]], dtype=torch.uint8)
    y = dequantize(x, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ((y * 256 - x.double()) >= 0).all() and ((y * 256 - x.double()) < 1).all()
    assert nats_to_bits_per_dim(0.0, 10) == pytest.approx(8.0)
    assert nats_to_bits_per_dim(-10 * math.log(256), 10) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        dequantize(torch.tensor([0.5]))


def test_ema_average_and_restore():
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin, decay=0.5)
    before = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(2.0)
    ema.update()
    with ema.average_parameters():
        torch.testing.assert_close(lin.weight, before + 1.0)
    torch.testing.assert_close(lin.weight, before + 2.0)
    with pytest.raises(ValueError):
        EMA(lin, decay=1.0)


def test_checkpoints_hold_contractive_blocks(tmp_path):
    """With a large learning rate one power iteration per step lags behind the weights (Remark 4.9); the saved
    and validated model must nevertheless satisfy ||W_i|| <= coeff exactly."""
    from invertible.lipschitz import operator_norm

    torch.manual_seed(0)
    model = vector_residual_flow(2, n_blocks=2, hidden=(16, 16), coeff=0.9, mode="exact").double()
    src = SamplerSource(lambda n, g: sample_toy("8gaussians", n, g), 32, seed=0, epoch_steps=5, dtype=torch.float64)
    cfg = DensityConfig(steps=5, batch_size=32, lr=0.2, log_every=5)
    density_trainer(model, src, cfg, tmp_path, show_progress=False).fit()
    loaded, _ = load_run(tmp_path)
    linears = [m for m in loaded.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 6
    norms = [operator_norm(m) for m in linears]
    assert max(norms) <= 0.9 * (1 + 1e-4), norms


def test_flush_denormals_zeroes_subnormals_inside_and_restores_after():
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # subnormal in float32
    with flush_denormals():
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        assert (tiny * 1.0).item() == 0.0
        with flush_denormals():  # nested (e.g. a CLI command around a training run): stays on after the inner
            pass
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() > 0.0
    with flush_denormals(enabled=False):
        assert (tiny * 1.0).item() > 0.0


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_resume_mid_logging_interval_gives_identical_metrics(tmp_path):
    """Checkpoint at step 4 (epoch end) inside the logging interval 4..6: the first record after the resume
    must average steps 4, 5, 6 as the uninterrupted run does (the accumulators are in the checkpoint)."""
    _toy_trainer(tmp_path / "full", "exact", log_every=3).fit()
    _toy_trainer(tmp_path / "killed", "exact", log_every=3).fit(callback=_kill_at(5))
    torch.manual_seed(99)
    _toy_trainer(tmp_path / "killed", "exact", log_every=3).fit(resume=True)
    def strip(records):  # wall-clock seconds differ between runs; everything else must not
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(_records(tmp_path / "killed")) == strip(_records(tmp_path / "full"))
    assert [r["step"] for r in _records(tmp_path / "full") if r["split"] == "train"] == [3, 6, 9, 10]


def test_resume_after_the_final_checkpoint_writes_nothing_twice(tmp_path):
    _toy_trainer(tmp_path / "run", "exact", steps=4).fit()
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["step"] == 4 and summary["val"]["exact"] and summary["last_train"]["step"] == 4
    assert "Training run: vector_resflow" in (tmp_path / "run" / "report.md").read_text()
    before = _records(tmp_path / "run")
    out = _toy_trainer(tmp_path / "run", "exact", steps=4).fit(resume=True)
    assert out["step"] == 4 and out["val"] is not None
    assert _records(tmp_path / "run") == before
    assert [r["step"] for r in before if r["split"] == "val"] == [4]


def test_resume_refuses_missing_checkpoint_changed_config_and_overwriting(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _toy_trainer(tmp_path / "empty", "exact", steps=4).fit(resume=True)
    assert not (tmp_path / "empty" / "metrics.jsonl").exists()
    _toy_trainer(tmp_path / "run", "exact", steps=4).fit()
    with pytest.raises(ValueError, match=r"differs in train\.seed"):
        _toy_trainer(tmp_path / "run", "exact", steps=8, seed=1).fit(resume=True)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        _toy_trainer(tmp_path / "run", "exact", steps=4).fit()
    out = _toy_trainer(tmp_path / "run", "exact", steps=6).fit(resume=True)  # a longer budget may resume
    assert out["step"] == 6


class _BlowsUp:
    """A least-squares objective whose loss turns NaN from step 2 on."""

    def __new__(cls):
        from invertible.training.objective import Objective

        class Obj(Objective):
            def loss(self, model, batch, trainer):
                loss = (model(batch) ** 2).mean()
                return (loss * float("nan") if trainer.step >= 2 else loss), {}

        return Obj()


@pytest.mark.parametrize("policy", ["raise", "stop"])
def test_non_finite_loss_is_caught_at_the_logging_interval(tmp_path, policy):
    from invertible.io import RunFolder
    from invertible.training.engine import LoopConfig, Trainer, TrainingDiverged

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1).double()
    src = SamplerSource(lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64), 4, dtype=torch.float64)
    t = Trainer(model, _BlowsUp(), torch.optim.SGD(model.parameters(), lr=0.1), src,
                LoopConfig(steps=20, log_every=4, on_nonfinite=policy), RunFolder(tmp_path), show_progress=False)
    if policy == "raise":
        with pytest.raises(TrainingDiverged, match="non-finite loss before step 4"):
            t.fit()
    else:
        out = t.fit()
        assert out["diverged"] and out["step"] == 4
        assert (tmp_path / "checkpoint.safetensors").is_file()
