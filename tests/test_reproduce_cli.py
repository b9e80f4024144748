"""The reproduction framework and the CLI front door."""

import json

import pytest

from invertible.cli import main
from invertible.experiments import experiments, register, run_experiment
from invertible.experiments.registry import _REGISTRY


@pytest.fixture
def toy_experiment():
    @register("test.toy", title="toy", thesis="The thesis says 42.")
    def run(ctx):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        ctx.save_figure(fig, "line")
        ctx.report("| value |\n|---|\n| 41 |")
        ctx.claim("the value is the answer", False, "41 != 42", value=41)
        ctx.claim("a pipe stays in its cell", True, "|x| = 1")
        return {"value": 41, "quick": ctx.quick}

    yield "test.toy"
    del _REGISTRY["test.toy"]


def test_run_experiment_writes_config_metrics_figures_and_report(tmp_path, toy_experiment):
    report = run_experiment(toy_experiment, tmp_path, quick=True, show_progress=False)
    folder = tmp_path / toy_experiment
    assert report == folder / "report.md"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["value"] == 41 and metrics["quick"] is True and "seconds" in metrics
    assert json.loads((folder / "config.json").read_text())["quick"] is True
    assert (folder / "figures" / "line.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "metrics.jsonl").is_file()
    assert metrics["claims"]["the value is the answer"] == {"holds": False, "evidence": "41 != 42", "value": 41}
    text = report.read_text()
    assert "| the value is the answer | **no** | 41 != 42 |" in text
    assert "| a pipe stays in its cell | yes | \\|x\\| = 1 |" in text
    assert "The thesis says 42." in text and "| 41 |" in text and "figures/line.png" in text


def test_cli_lists_and_rejects_unknown(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for eid in ("fig4.4", "fig5.3"):
        assert eid in out
    assert main(["reproduce", "fig9.9"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_cli_runs_and_prints_report_location(tmp_path, capsys, toy_experiment):
    assert main(["reproduce", toy_experiment, "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Report:" in out and (tmp_path / "report.md").is_file()


def test_core_experiments_are_registered():
    ids = set(experiments())
    assert {"fig4.4", "fig5.3"} <= ids
