"""``reproduce --budget``: durations, the scale a measured pilot buys, scaled settings, and the results page."""

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invertible.cli import main
from invertible.experiments import register, run_experiment
from invertible.experiments.budget import choose_scale, format_budget, parse_duration, scaled_value
from invertible.experiments.registry import _REGISTRY, RunContext

STEP_S = 0.03  # the toy experiment's seconds per step


@pytest.fixture
def timed_experiment():
    """A toy whose run time is proportional to its ``steps`` setting (quick 10, full 400)."""

    @register("test.timed", title="timed", thesis="The thesis trains 400 steps.")
    def run(ctx):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = ctx.scaled("steps", 10, 400)
        width = ctx.scaled("width", 8, 8, power=0.0)  # a setting that does not grow
        print(f"table of the timed toy: {steps} steps")
        time.sleep(steps * STEP_S)
        fig, ax = plt.subplots(figsize=(16, 4), dpi=100)  # 1600 px wide: the results page downsizes it
        ax.plot([0, steps], [0, 1])
        ctx.save_figure(fig, "curve")
        ctx.claim("more steps help", steps > 10, f"{steps} steps", thesis="400", ours=str(steps))
        return {"steps": steps, "width": width}

    yield "test.timed"
    del _REGISTRY["test.timed"]


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("5 min", 300), ("1h", 3600),
                                           ("1h30m", 5400), ("2.5h", 9000), ("1d", 86400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_budget(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "1h30", "abc", "1.5.5h", "1y", "inf", "nan", "40d", "h"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="duration|30 days"):
        parse_duration(text)


@settings(max_examples=200, deadline=None)
@given(quick=st.integers(1, 1000), full=st.integers(1, 10**6), scale=st.floats(1, 1e6), power=st.floats(0, 1))
def test_scaled_value_stays_between_quick_and_full(quick, full, scale, power):
    v = scaled_value(quick, full, scale, power)
    assert min(quick, full) <= v <= max(quick, full) or v == quick
    assert v <= max(quick, full)
    if full >= quick:
        assert v == round(min(full, quick * scale**power))


def test_choose_scale_fills_the_rest_of_the_budget_and_caps():
    assert choose_scale(100, 10, max_scale=1e9) == pytest.approx(0.8 * 90 / 10)
    assert choose_scale(100, 10, max_scale=3.0) == 3.0
    assert choose_scale(15, 10, max_scale=1e9) == 1.0  # the rest does not buy a larger run
    with pytest.raises(ValueError, match="pilot"):
        choose_scale(100, 0.0, max_scale=2)


def test_scaled_settings_per_mode(tmp_path):
    quick, full = RunContext(out=tmp_path, quick=True), RunContext(out=tmp_path, quick=False)
    budget = RunContext(out=tmp_path, quick=True, scale=16.0)
    assert quick.scaled("steps", 10, 400) == 10 and full.scaled("steps", 10, 400) == 400
    assert budget.scaled("steps", 10, 400, power=0.5) == 40 and budget.budgeted and not quick.budgeted
    assert budget.scaled("n", 100, 200, power=0.5) == 200  # capped at full
    assert budget.settings["steps"].max_scale == pytest.approx(40.0**2)
    assert budget.max_scale == pytest.approx(1600.0)
    with pytest.raises(ValueError, match="twice"):
        budget.scaled("steps", 1, 2)


def test_budget_scales_the_workload_from_the_measured_pilot(tmp_path, timed_experiment):
    import matplotlib.pyplot  # noqa: F401  (imported before the pilot, whose time must be the workload's)

    budget = 3.0  # seconds; the pilot takes ~0.1 s + overhead, so the run scales several times
    start = time.perf_counter()
    report = run_experiment(timed_experiment, tmp_path, quick=False, show_progress=False, budget=budget)
    wall = time.perf_counter() - start
    folder = tmp_path / timed_experiment
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    pilot_s, scale = config["budget"]["pilot_seconds"], config["budget"]["scale"]
    assert scale == pytest.approx(max(1.0, min(0.8 * (budget - pilot_s) / pilot_s, 40.0)), rel=0.02)
    assert pilot_s < 0.5 * budget, f"the machine is too loaded for this test (pilot {pilot_s:.2f} s)"
    assert metrics["steps"] == round(10 * scale) > 10 and metrics["width"] == 8
    assert config["settings"]["steps"] == {"quick": 10, "value": metrics["steps"], "full": 400, "power": 1.0}
    assert metrics["claims"]["more steps help"]["holds"]
    assert wall < 1.5 * budget  # the pilot plus the scaled run fit the budget (with room for a loaded machine)
    text = report.read_text()
    assert "Mode: budget 3s" in text and "scales the workload by" in text
    assert f"| steps | 10 | {metrics['steps']} | 400 |" in text
    assert not any(p.name.endswith(".pilot") for p in tmp_path.iterdir())  # the pilot's folder is gone


def test_a_small_budget_keeps_the_pilot(tmp_path, timed_experiment):
    report = run_experiment(timed_experiment, tmp_path, quick=False, show_progress=False, budget=0.05)
    metrics = json.loads((tmp_path / timed_experiment / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["budget"]["scale"] == 1.0
    assert "is the run (the budget does not buy a second, larger run)" in report.read_text()
    assert (tmp_path / timed_experiment / "figures" / "curve.png").is_file()
    assert not any(p.name.endswith(".pilot") for p in tmp_path.iterdir())


def test_cli_budget_writes_a_results_page(tmp_path, capsys, timed_experiment):
    page = tmp_path / "docs" / "results.md"
    out = tmp_path / "runs"
    assert main(["reproduce", timed_experiment, "--budget", "1s", "--out", str(out), "--results", str(page),
                 "--no-progress"]) == 0
    assert "Results page:" in capsys.readouterr().out
    text = page.read_text()
    assert f"`invertible reproduce {timed_experiment} --budget 1s --out {out} --results {page}`" in text
    assert "The thesis trains 400 steps." in text and "| more steps help |" in text
    assert "| [test.timed](#testtimed) | timed | budget 1s |" in text
    png = page.parent / "results" / timed_experiment / "curve.png"
    assert f"(results/{timed_experiment}/curve.png)" in text
    from PIL import Image

    with Image.open(png) as im:
        assert im.width == 800  # downsized from 1600 px
    assert "budget 1s per experiment" in (out / "report.md").read_text()


def test_cli_refuses_quick_with_budget_and_bad_durations(tmp_path, capsys, timed_experiment):
    assert main(["reproduce", timed_experiment, "--quick", "--budget", "1h", "--out", str(tmp_path)]) == 2
    assert "--quick or --budget" in capsys.readouterr().err
    assert main(["reproduce", timed_experiment, "--budget", "soon", "--out", str(tmp_path)]) == 2
    assert "expected a positive duration" in capsys.readouterr().err


def test_jobs_run_experiments_in_worker_processes(tmp_path, capsys, timed_experiment):
    @register("test.broken", title="broken", thesis="-")
    def broken(ctx):
        raise FileNotFoundError("no such data: /nowhere.npz")

    try:
        code = main(["reproduce", timed_experiment, "test.broken", "--quick", "--jobs", "2", "--out", str(tmp_path),
                     "--no-progress"])
    finally:
        del _REGISTRY["test.broken"]
    out = capsys.readouterr().out
    assert code == 1 and "2 experiments in 2 worker processes" in out
    assert "test.broken FAILED" in out and "no such data: /nowhere.npz" in out
    assert json.loads((tmp_path / timed_experiment / "metrics.json").read_text())["steps"] == 10
    # a worker's printed tables go to its folder, not into the interleaved console
    assert "table of the timed toy" not in out
    assert "table of the timed toy: 10 steps" in (tmp_path / timed_experiment / "console.log").read_text()
    index = (tmp_path / "report.md").read_text()
    assert "more steps help" in index and "test.broken: no such data" in index
