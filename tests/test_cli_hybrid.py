"""CLI: train-hybrid (run, resume, evaluate) and train-flow --block dense."""

import json

import pytest

from invertible.cli import main
from invertible.training.runs import load_run

HYBRID = ["train-hybrid", "--data", "digits", "--n-train", "64", "--n-test", "32", "--batch-size", "16",
          "--blocks", "1", "--hidden", "3", "--block", "dense", "--lam", "2", "--no-progress", "--threads", "1"]


@pytest.mark.slow
def test_train_hybrid_resume_and_evaluate(tmp_path, capsys):
    out = tmp_path / "h"
    assert main([*HYBRID, "--out", str(out), "--steps", "4"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main([*HYBRID, "--out", str(out), "--steps", "6", "--resume", "--json", str(tmp_path / "h.json")]) == 0
    res = json.loads((tmp_path / "h.json").read_text())
    assert res["step"] == 6 and res["lam"] == 2.0 and 0 <= res["test_acc"] <= 1 and res["bits_per_dim"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "hybrid" and config["model"]["block"] == "dense"
    model, _ = load_run(out)
    assert type(model).__name__ == "HybridFlowModel"
    assert config["labelled_data"]["name"] == "digits" and "data" not in config  # evaluate cannot mix splits
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    assert "pass --data" in capsys.readouterr().err
    assert main([*HYBRID, "--out", str(tmp_path / "bad"), "--lam", "-1"]) == 2


@pytest.mark.slow
def test_train_flow_with_dense_blocks(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["train-flow", "--data", "8gaussians", "--block", "dense", "--blocks", "2", "--hidden", "6,6",
            "--steps", "5", "--n-test", "50", "--eval-samples", "50", "--no-progress", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["block"] == "dense" and config["activation"] == "clipswish"
    assert "test NLL" in capsys.readouterr().out
    assert main([*args, "--arch", "coupling", "--out", str(tmp_path / "c")]) == 2
    assert "--block dense" in capsys.readouterr().err
