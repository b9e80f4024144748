"""``invertible train-ice``: the one run folder, and a resume with other data refused in one line."""

import json

import numpy as np

from invertible.cli import main


def test_train_ice_writes_the_run_folder_and_refuses_other_data(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train-ice", "--data", "digits", "--epochs", "1", "--n-train", "120", "--n-test", "60", "--batch-size",
            "64", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["name"] == "digits" and config["backbone"] == "revnet"
    assert config["model"] == {"kind": "fi_revnet", "input_shape": [1, 8, 8], "n_classes": 10, "n_squeeze": 1}
    assert config["train"]["objective"] == "ice" and config["train"]["nuisance_steps"] == 2
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["test_error"]) == {"train", "shifted", "clean"} and summary["epochs"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "train"] == [0]
    assert (out / "figures" / "training_curves.png").stat().st_size > 0
    assert "training_curves.png" in (out / "report.md").read_text()
    from invertible.training.runs import load_run

    model, ck = load_run(out)  # the one loader rebuilds the fi-RevNet from the registry
    assert ck.kind == "fi_revnet" and model.n_classes == 10
    capsys.readouterr()
    # the same 8x8 digits from another file: the weights would fit, the run would not be the same one
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(tmp_path / "other.npz", images=(d.images * 16).clip(0, 255).astype(np.uint8), labels=d.target)
    other = [*argv[:2], str(tmp_path / "other.npz"), *argv[3:], "--resume"]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "data.name" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--resume"]) == 0  # the same settings resume (nothing left to train)
