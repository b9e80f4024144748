"""Classifier training (A.1 recipe on the engine): schedule, run folder, exact resume, checkpoints, CLI."""

import json

import pytest
import torch

import invertible.training.classifier as clf
from invertible.cli import main
from invertible.data.images import FASHION_MNIST_DIR
from invertible.io import RunFolder, load_checkpoint
from invertible.training.classification import ClassifierConfig, load_classifier, train_classifier
from invertible.training.classifier import load_classification_data
from invertible.training.optim import milestones

TINY = {"blocks": [1, 1], "channels": 4, "hidden": [8, 8]}


@pytest.fixture(scope="module")
def digits():
    return load_classification_data("digits", train_subset=256, test_subset=128)


def _cfg(**kw):
    base = {"data": "digits", "model": {**TINY, "coeff": 0.9}, "epochs": 2, "batch_size": 32,
            "train_subset": 256, "test_subset": 128, "shift": 1}
    return ClassifierConfig(**{**base, **kw})


def test_step_schedule_scales_a1_to_the_budget():
    # A.1: 0.1, x0.2 after 60/120/160 of 200 epochs
    learning_rate = milestones(0.1, 200)
    assert learning_rate(0) == pytest.approx(0.1)
    assert learning_rate(59) == pytest.approx(0.1)
    assert learning_rate(60) == pytest.approx(0.02)
    assert learning_rate(120) == pytest.approx(0.004)
    assert learning_rate(160) == pytest.approx(0.0008)
    assert learning_rate(199) == pytest.approx(0.0008)


def test_data_loading_and_normalization(digits):
    assert digits.x_train.shape == (256, 1, 8, 8) and digits.x_test.shape == (128, 1, 8, 8)
    assert float(digits.x_train.min()) >= -0.5 and float(digits.x_train.max()) <= 0.5  # A.1: [-0.5, 0.5]
    assert digits.n_classes == 10
    assert torch.allclose(digits.denormalize(digits.x_train).clamp(0, 1), digits.denormalize(digits.x_train))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_classification_data("fashion-mnist", "/nonexistent/fashion")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST not installed (apt-get install "
                    "dataset-fashion-mnist)")
def test_fashion_mnist_has_its_own_test_split():
    data = load_classification_data("fashion-mnist", train_subset=100, test_subset=50)
    assert data.x_train.shape == (100, 1, 28, 28) and data.x_test.shape == (50, 1, 28, 28)


def test_run_folder_training_and_reload(tmp_path, digits):
    out = tmp_path / "run"
    summary = train_classifier(_cfg(), out, progress=False, data=digits)
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "report.md", "metrics.json",
                 "figures/training_curves.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    val = [m for m in lines if m["split"] == "val"]
    assert [m["epoch"] + 1 for m in train] == [1, 2] and [m["step"] for m in val] == [m["step"] for m in train]
    assert train[-1]["loss"] < 2.3  # below chance-level cross-entropy log(10) = 2.30
    assert summary["test_error"] == val[-1]["test_error"]
    assert summary["train_loss"] == train[-1]["loss"] and summary["train_acc"] == train[-1]["acc"]
    assert json.loads((out / "metrics.json").read_text()) == summary
    assert "figures/training_curves.png" in (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["input_shape"] == [1, 8, 8] and config["weight_decay"] == 5e-4
    assert config["model"]["kind"] == "iresnet_classifier" and config["scaling"] == {"mean": [0.5], "std": [1.0]}
    ck = load_checkpoint(out)
    assert ck.kind == "iresnet_classifier" and ck.config == config
    model, meta = load_classifier(out)
    assert meta["epoch"] == 2
    assert meta["config"]["model"] == {k: v for k, v in config["model"].items() if k != "kind"}
    loss, err = clf.evaluate(model, digits.x_test, digits.y_test)
    assert err == pytest.approx(summary["test_error"])
    with pytest.raises(ValueError, match="resume"):
        train_classifier(_cfg(), out, progress=False, data=digits)
    with pytest.raises(ValueError, match="config differs in lr"):
        train_classifier(_cfg(lr=0.05), out, resume=True, progress=False, data=digits)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_classifier(_cfg(), tmp_path / "empty", resume=True, progress=False, data=digits)
    again = train_classifier(_cfg(), out, resume=True, progress=False, data=digits)  # finished: returns at once
    assert {k: v for k, v in again.items() if k != "seconds_per_epoch"} == {
        k: v for k, v in summary.items() if k != "seconds_per_epoch"}


def test_resume_after_a_kill_continues_exactly(tmp_path, digits, monkeypatch):
    straight = tmp_path / "straight"
    train_classifier(_cfg(), straight, progress=False, data=digits)

    killed = tmp_path / "killed"
    real_save = RunFolder.save_checkpoint

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(RunFolder, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(_cfg(), killed, progress=False, data=digits)
    monkeypatch.setattr(RunFolder, "save_checkpoint", real_save)
    assert load_classifier(killed)[1]["epoch"] == 1
    train_classifier(_cfg(), killed, resume=True, progress=False, data=digits)

    a, b = load_checkpoint(straight), load_checkpoint(killed)
    assert a.tensors.keys() == b.tensors.keys() and any(k.startswith("optim.") for k in a.tensors)
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]) or (a.tensors[k].isnan().all() and b.tensors[k].isnan().all()), k
    assert a.meta["last_val"]["test_error"] == b.meta["last_val"]["test_error"]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in RunFolder(straight).read_metrics()]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in RunFolder(killed).read_metrics()] == strip
    assert len(strip) == 4  # one train and one val record per epoch


def test_resnet_baseline_and_vanilla_train(tmp_path, digits):
    s1 = train_classifier(_cfg(arch="resnet", model={"blocks": [1]}, epochs=1), tmp_path / "r", progress=False,
                          data=digits)
    s2 = train_classifier(_cfg(model={**TINY, "coeff": None}, epochs=1), tmp_path / "v", progress=False, data=digits)
    assert s1["epochs"] == s2["epochs"] == 1
    with pytest.raises(ValueError, match="arch"):
        train_classifier(_cfg(arch="vgg"), tmp_path / "x", progress=False, data=digits)


def test_cli_train_certify_invert(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train-classifier", "--data", "digits", "--blocks", "1,1", "--channels", "4", "--hidden", "8,8",
            "--epochs", "1", "--batch-size", "64", "--train-subset", "256", "--test-subset", "64", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2  # existing run without --resume: a clear error, not an overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert main(["certify", str(out / "checkpoint.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "verdict: invertible (certified)" in text and "Lip(F^-1) <=" in text
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["certified"] is True and len(cert["blocks"]) == 2
    assert main(["certify", str(out), "--fast", "--data", "--n", "4"]) == 0  # realized local Lip(g_t) on test data
    assert "Realized on data" in capsys.readouterr().out
    realized = json.loads((out / "certificate.json").read_text())["realized"]
    assert len(realized) == 2
    assert all(0 < r["local_max"] <= b["lipschitz"] for r, b in zip(realized, cert["blocks"], strict=True))
    assert main(["invert", str(out), "--n", "4", "--iterations", "60"]) == 0
    result = json.loads((out / "invert" / "invert.json").read_text())
    assert result["models"]["c=0.9"]["max_abs_error"] < 1e-8
    assert (out / "invert" / "reconstructions.png").stat().st_size > 0
    assert main(["certify", str(tmp_path / "missing.safetensors")]) == 2
