"""CLI: train-flow -> (stop) -> --resume -> sample -> evaluate, and clear errors."""

import json

import numpy as np

from invertible.cli import main

TRAIN = ["train-flow", "--data", "8gaussians", "--blocks", "2", "--hidden", "8,8", "--n-test", "300",
         "--eval-samples", "300", "--no-progress", "--threads", "1"]


def test_train_resume_sample_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--steps", "20", "--checkpoint-every", "10"]) == 0
    for name in ("config.json", "metrics.jsonl", "metrics.json", "report.md", "checkpoint.safetensors",
                 "figures/samples.png", "figures/training_curves.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["steps"] == 20 and summary["val"]["exact"] and "true_nll" in summary
    assert "figures/samples.png" in (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["name"] == "8gaussians" and config["model"]["kind"] == "vector_resflow"
    assert "test NLL" in capsys.readouterr().out
    # the folder holds a run: refusing to overwrite it, continuing it with --resume
    assert main([*TRAIN, "--out", str(out), "--steps", "30"]) == 2
    assert "--resume" in capsys.readouterr().err
    # a changed setting is refused, naming it (the checkpoint interval changes the power-iteration state)
    assert main([*TRAIN, "--out", str(out), "--steps", "30", "--resume"]) == 2
    assert "train.checkpoint_every" in capsys.readouterr().err
    assert main([*TRAIN, "--out", str(out), "--steps", "30", "--checkpoint-every", "10", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 30

    assert main(["sample", str(out), "-n", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    assert "stop test met by all: True" in capsys.readouterr().out

    assert main(["evaluate", str(out), "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "exact" in text and "true density" in text
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["exact"] and res["n"] == 300 and res["nll"] > res["true_nll"] - 4 * res["se"]


def test_clear_errors(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train-flow", "--data", "no-such-data", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "unknown data set" in capsys.readouterr().err
    assert main(["train-flow", "--data", "mnist", "--data-root", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "y")]) == 2
    assert "MNIST not found" in capsys.readouterr().err


def test_interrupt_message_is_truthful(tmp_path, capsys, monkeypatch):
    import invertible.commands.flow as flow

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(flow, "train_flow", interrupted)  # the parser is built inside main(): it takes this
    assert main([*TRAIN, "--out", str(tmp_path / "fresh"), "--steps", "5"]) == 130
    assert "no checkpoint had been written yet" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.safetensors").write_bytes(b"x")
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--steps", "5"]) == 130
    assert "is intact" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError):
        main(["--debug", "evaluate", str(tmp_path / "missing")])


def test_sample_refuses_non_finite_weights(tmp_path, capsys):
    """A checkpoint with NaN weights: `sample` used to exit 0, print "all converged" and write NaN samples."""
    import torch

    from invertible.io import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--steps", "5"]) == 0
    ck = load_checkpoint(out)
    tensors = dict(ck.tensors)
    name = next(k for k in tensors if k.startswith("model.") and k.endswith("weight.original"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_checkpoint(out / "checkpoint.safetensors", tensors, kind=ck.kind, config=ck.config, meta=ck.meta)
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "20", "--out", str(tmp_path / "s.png")]) == 2
    captured = capsys.readouterr()
    assert "not finite" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "s.npy").exists()


def test_recompute_chunk_trains_an_image_flow_and_is_refused_without_a_neumann_gradient(tmp_path, capsys):
    """--recompute-chunk: the chunked recomputing Neumann gradient trains the digits image flow (the numbers are
    those of the stored graph, tests/test_logdet_recompute.py); a 2-D flow with the exact log-det has no Neumann
    gradient to recompute, which is one clear line, not a traceback."""
    argv = ["train-flow", "--data", "digits", "--mode", "resflow", "--blocks", "1", "--hidden", "8", "--scales", "1",
            "--steps", "2", "--batch-size", "32", "--subset", "64", "--n-test", "32", "--eval-samples", "32",
            "--no-progress", "--threads", "1", "--recompute-chunk", "16"]
    assert main([*argv, "--out", str(tmp_path / "img")]) == 0
    assert json.loads((tmp_path / "img" / "metrics.json").read_text())["steps"] == 2
    capsys.readouterr()
    exact = [*TRAIN, "--mode", "exact", "--steps", "2", "--recompute-chunk", "8"]
    assert main([*exact, "--out", str(tmp_path / "t")]) == 2
    assert "no series estimator with the Neumann gradient" in capsys.readouterr().err
