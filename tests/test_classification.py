"""The classification recipe on the engine reproduces the loop it replaced; its sources replay any step."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from invertible.cli import main
from invertible.io import load_checkpoint
from invertible.lipschitz import converge_spectral_norms
from invertible.training.augment import Augmentation
from invertible.training.classification import ClassifierConfig, load_classifier, train_classifier
from invertible.training.classifier import build_classifier, evaluate, load_classification_data
from invertible.training.runs import load_run
from invertible.training.sources import FullBatchSource, RandomIndexSource, ShuffledSource

TINY = {"blocks": [1, 1], "channels": 4, "hidden": [8, 8]}


@pytest.fixture(scope="module")
def digits():
    return load_classification_data("digits", train_subset=256, test_subset=128)


def _old_loop(cfg: ClassifierConfig, data):
    """A frozen copy of the classifier training loop before the engine (its data order, augmentation, schedule
    and update), without the run folder: returns the final state dict and each epoch's (test loss, error)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg.arch, cfg.model)
        dtype = next(model.parameters()).dtype
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        n = len(data.x_train)
        bs = min(cfg.batch_size, n)
        steps_per_epoch = n // bs
        total = steps_per_epoch * cfg.epochs
        step, history = 0, []
        for epoch in range(cfg.epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=gen)
            model.train()
            for i in range(steps_per_epoch):
                idx = perm[i * bs : (i + 1) * bs]
                xb = data.x_train[idx]
                if cfg.shift:
                    s, (b, _, h, w) = cfg.shift, xb.shape
                    off = torch.randint(0, 2 * s + 1, (2, b), generator=gen)
                    padded = F.pad(xb, (s, s, s, s)).permute(0, 2, 3, 1)
                    rows = torch.arange(h)[None, :] + off[0][:, None]
                    cols = torch.arange(w)[None, :] + off[1][:, None]
                    xb = padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
                    xb = xb.permute(0, 3, 1, 2).contiguous()
                if cfg.flip:
                    flip = torch.rand(xb.shape[0], generator=gen) < 0.5
                    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                lr = cfg.lr * cfg.gamma ** sum(step >= math.ceil(m * total) for m in cfg.milestones)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = F.cross_entropy(model(xb.to(dtype=dtype)), data.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            converge_spectral_norms(model)
            history.append(evaluate(model, data.x_test, data.y_test))
    return model.state_dict(), history


@pytest.mark.parametrize("kw", [
    {"model": {**TINY, "coeff": 0.9}, "shift": 1, "flip": True, "epochs": 3, "batch_size": 32},
    {"arch": "resnet", "model": {"blocks": [1]}, "shift": 2, "epochs": 2, "batch_size": 100},
], ids=["iresnet-shift-flip", "resnet-ragged"])
def test_recipe_reproduces_the_old_loop_bit_for_bit(tmp_path, digits, kw):
    cfg = ClassifierConfig(data="digits", train_subset=256, test_subset=128, **kw)
    state, history = _old_loop(cfg.resolve(digits), digits)
    summary = train_classifier(cfg, tmp_path / "run", progress=False, data=digits)
    records = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [(r["test_loss"], r["test_error"]) for r in records if r["split"] == "val"]
    assert val == history and summary["test_error"] == history[-1][1]
    new = load_checkpoint(tmp_path / "run").group("model")
    assert new.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(new[k], v, rtol=0, atol=0, equal_nan=True, msg=k)


def test_divergence_stops_with_chance_level_error(tmp_path, digits):
    cfg = ClassifierConfig(data="digits", model={**TINY, "coeff": None}, lr=50.0, epochs=3, batch_size=32,
                           train_subset=256, test_subset=128, shift=1)
    summary = train_classifier(cfg, tmp_path / "run", progress=False, data=digits)
    assert summary["diverged"] is True and summary["test_error"] == pytest.approx(90.0)
    assert summary["epochs"] == 1  # stopped after the epoch in which the loss became non-finite
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["diverged"] is True
    _, info = load_classifier(tmp_path / "run")
    assert info["metrics"]["diverged"] is True and info["metrics"]["test_error"] == pytest.approx(90.0)


def test_shuffled_source_replays_any_step_and_shards_ranks():
    x = torch.arange(50.0).view(50, 1, 1, 1).expand(50, 1, 4, 4).contiguous()
    y = torch.arange(50)
    make = lambda: ShuffledSource((x, y), 8, lambda e: torch.Generator().manual_seed(7 + e),  # noqa: E731
                                  augment=Augmentation(1, True))
    src = make()
    spe = src.steps_per_epoch()
    assert spe == 6
    in_order = [src.batch(t) for t in range(3 * spe)]
    other = make()
    for t in [13, 2, 17, 0, 5, 5, 12, 1]:
        xb, yb = other.batch(t)
        assert torch.equal(xb, in_order[t][0]) and torch.equal(yb, in_order[t][1]), t
    # two ranks: step i of rank r is global batch 2 i + r of the single-process stream (epoch 0)
    two = make()
    assert two.steps_per_epoch(2) == 3
    for i in range(3):
        for r in (1, 0):
            xb, yb = two.batch(i, r, 2)
            assert torch.equal(xb, in_order[2 * i + r][0]) and torch.equal(yb, in_order[2 * i + r][1])


def test_shuffled_source_with_one_stream_matches_the_classic_loop():
    x = torch.arange(21.0)
    gen = torch.Generator().manual_seed(3)
    classic = []
    for _ in range(3):  # for epoch: perm = randperm(n); for start in range(0, n, batch): ... (short last batch)
        perm = torch.randperm(21, generator=gen)
        classic += [x[perm[s : s + 5]] for s in range(0, 21, 5)]
    src = ShuffledSource(x, 5, torch.Generator().manual_seed(3), drop_last=False)
    assert src.steps_per_epoch() == 5
    for t in list(range(15)) + [9, 3, 14, 0]:
        assert torch.equal(src.batch(t), classic[t]), t
    with pytest.raises(ValueError, match="single process"):
        src.steps_per_epoch(2)


def test_random_index_source_replays_one_generator():
    x, y = torch.randn(30, 2), torch.arange(30)
    g = torch.Generator().manual_seed(1)
    classic = [torch.randint(0, 30, (4,), generator=g) for _ in range(10)]
    gen = torch.Generator().manual_seed(1)
    src = RandomIndexSource((x, y), 4, gen, epoch_steps=10)
    for t in [0, 1, 7, 3, 9, 9, 2]:
        xb, yb = src.batch(t)
        assert torch.equal(yb, classic[t]) and torch.equal(xb, x[classic[t]])
    assert torch.equal(torch.randint(0, 30, (4,), generator=gen), classic[0])  # the caller's generator is untouched
    live = torch.Generator().manual_seed(1)
    shared = RandomIndexSource(y, 4, live, epoch_steps=10, replay=False)
    assert torch.equal(shared.batch(0), classic[0]) and torch.equal(shared.batch(0), classic[0])
    assert torch.equal(shared.batch(1), classic[1])
    assert torch.equal(torch.randint(0, 30, (4,), generator=live), classic[2])  # drawn live
    with pytest.raises(ValueError, match="cannot go back"):
        shared.batch(0)
    assert FullBatchSource((x, y), epoch_steps=3).batch(5)[0] is x


def test_old_classifier_checkpoints_still_load(tmp_path, digits):
    cfg = ClassifierConfig(model={**TINY, "coeff": 0.9}).resolve(digits)
    torch.manual_seed(0)
    model = build_classifier(cfg.arch, cfg.model)  # float64 (the tests' default dtype)
    with torch.no_grad():
        model(digits.x_train[:16].double())  # data-dependent initialization, as the first training step does
    meta = {"kind": "invertible.classifier", "version": 1, "config": cfg.to_json(), "epoch": 3, "step": 24,
            "metrics": {"test_error": 12.5}, "mean": [0.5], "std": [1.0]}
    from safetensors.torch import save_file  # the format before the schema: {"meta": json} only

    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "checkpoint.safetensors"), metadata={"meta": json.dumps(meta)})
    loaded, ck = load_run(tmp_path)
    assert type(loaded) is type(model) and next(loaded.parameters()).dtype == torch.float64
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, equal_nan=True)
    net, info = load_classifier(tmp_path / "checkpoint.safetensors")
    assert info["epoch"] == 3 and info["metrics"]["test_error"] == 12.5 and info["config"]["arch"] == "iresnet"
    assert info["kind"] == "iresnet_classifier"
    x = digits.x_test[:4].double()
    torch.testing.assert_close(net(x), model.eval()(x), rtol=0, atol=0)


def test_cli_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    args = ["train-classifier", "--data", "digits", "--blocks", "1,1", "--channels", "4", "--hidden", "8,8",
            "--epochs", "1", "--batch-size", "64", "--train-subset", "128", "--test-subset", "32", "--out",
            str(tmp_path / "none"), "--no-progress", "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "Traceback" not in err


def test_model_keywords_are_checked_through_the_registry():
    with pytest.raises(ValueError, match="hiden"):
        build_classifier("iresnet", {"blocks": [1, 1], "channels": 4, "hiden": [8, 8]})
    model = build_classifier("iresnet", {"blocks": [1, 1], "channels": 4, "hidden": [8, 8]})
    assert model.kind == "iresnet_classifier" and tuple(model.config.blocks) == (1, 1)
