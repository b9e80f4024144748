"""table5.1 trains its flows through the engine into its run folder: a rerun of the reproduction replaces the
quick runs (it failed with "already holds a checkpoint" before), and a stopped full run is resumed, not lost."""

import json

import pytest
import torch

from invertible.experiments import run_experiment, table5_1
from invertible.io import RunFolder
from invertible.training.datasets import DataSpec, load_data

TINY = {"subset": None, "steps": 2, "batch": 16, "n_scales": 1, "n_blocks": 1, "hidden": 4, "n_test": 16}


@pytest.fixture
def tiny(monkeypatch):
    def settings(quick):
        return {"digits": dict(TINY), "mnist": {**TINY, "subset": 32}, "modes": {"digits": ("resflow",),
                                                                                 "mnist": ()}}
    monkeypatch.setattr(table5_1, "_settings", settings)


def test_rerunning_the_quick_reproduction_replaces_it(tmp_path, tiny):
    for _ in range(2):
        run_experiment("table5.1", tmp_path, quick=True, show_progress=False)
    metrics = json.loads((tmp_path / "table5.1" / "metrics.json").read_text())
    assert "digits/resflow" in metrics["bits_per_dim"]
    steps = [json.loads(r)["step"] for r in (tmp_path / "table5.1" / "digits_resflow" / "metrics.jsonl")
             .read_text().splitlines() if json.loads(r)["split"] == "train"]
    assert max(steps) == 2 and steps.count(2) == 1  # a fresh run, not two runs' logs in one file


def test_a_stopped_full_run_resumes_from_its_checkpoint(tmp_path):
    data = load_data(DataSpec("digits", n_test=16, seed=0))
    folder = RunFolder(tmp_path / "digits_resflow")
    table5_1._train_eval(data, "resflow", dict(TINY), 0, folder)  # "stopped" after 2 of 4 steps
    torch.manual_seed(1)
    res, _, per_step = table5_1._train_eval(data, "resflow", {**TINY, "steps": 4}, 0, folder, resume=True)
    steps = [json.loads(r)["step"] for r in folder.metrics_path.read_text().splitlines()
             if json.loads(r)["split"] == "train"]
    assert steps == [2, 4] and per_step > 0  # the log continues; an overwrite would have kept only [4]
    assert torch.isfinite(torch.tensor(res["bits_per_dim"]))
