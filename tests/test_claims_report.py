"""Claims as verdicts: measured costs, paired intervals, the verdict sentences and the top-level claims table."""

import json
import math

import numpy as np
import pytest
import torch

from invertible.cli import main
from invertible.experiments import register
from invertible.experiments.costs import FullCost, format_duration, multiply_adds, time_steps
from invertible.experiments.registry import _REGISTRY, RunContext, verdict
from invertible.experiments.stats import mean_ci, paired_ci


def test_format_duration_picks_the_unit():
    assert format_duration(41) == "41 s"
    assert format_duration(3 * 60 + 12) == "3.2 min"
    assert format_duration(5.1 * 3600) == "5.1 h"
    assert format_duration(2.3 * 86400) == "2.3 days"
    assert format_duration(10 * 86400) == "10 days"  # weeks only from 2 weeks on
    assert format_duration(3 * 7 * 86400) == "3 weeks"
    with pytest.raises(ValueError, match="non-negative"):
        format_duration(-1)


def test_full_cost_is_the_product_and_names_the_machine(tmp_path):
    ctx = RunContext(out=tmp_path, quick=True)
    cost = ctx.full_cost(0.5, 20000, scale=3.0, what="full mode x", basis="quick step x 3")
    assert cost.seconds == pytest.approx(30000.0) and cost.hours == pytest.approx(30000 / 3600)
    assert cost.days == pytest.approx(30000 / 86400)
    assert "8.3 h on " in cost.text and "cores" in cost.text and "quick step x 3" in cost.text
    assert ctx.costs == [cost]
    with pytest.raises(ValueError, match="seconds_per_step"):
        FullCost("x", float("nan"), 1, 1, "m")


def test_time_steps_counts_calls():
    calls = []
    per = time_steps(lambda: calls.append(1), 5, warmup=2)
    assert len(calls) == 7 and per >= 0
    with pytest.raises(ValueError):
        time_steps(lambda: None, 0)


def test_multiply_adds_counts_conv_and_linear_exactly():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(3 * 5 * 5, 4))
    assert multiply_adds(net, torch.zeros(1, 2, 5, 5)) == 3 * 5 * 5 * 2 * 9 + 4 * 75


def test_paired_ci_matches_the_paired_t_test():
    from scipy import stats

    a, b = [0.61, 0.55, 0.70, 0.64], [0.40, 0.47, 0.52, 0.41]
    ci = paired_ci(a, b)
    d = np.subtract(a, b)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    assert ci.mean == pytest.approx(d.mean()) and ci.low == pytest.approx(d.mean() - half)
    assert ci.p_greater == pytest.approx(stats.ttest_rel(a, b, alternative="greater").pvalue)
    assert ci.above_zero
    assert not mean_ci([0.1, -0.2, 0.15]).above_zero
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="equally many"):
        paired_ci([1, 2], [1])


def test_claim_validates_what_it_lacks_and_verdict_says_why(tmp_path):
    ctx = RunContext(out=tmp_path, quick=True)
    with pytest.raises(ValueError, match="limited_by"):
        ctx.claim("c", False, "x", limited_by="luck")
    ctx.claim("c", False, "0.9 > 0.5", thesis="0.5", ours="0.9", limited_by="compute", full_cost="about 3 days")
    c = ctx.claims["c"]
    assert c == {"holds": False, "evidence": "0.9 > 0.5", "thesis": "0.5", "ours": "0.9", "limited_by": "compute",
                 "full_cost": "about 3 days"}
    assert verdict("c", c) == ("c: does not hold at this scale because 0.9 > 0.5 [limited by compute]; the full run: "
                               "about 3 days")
    assert verdict("d", {"holds": True, "evidence": "p=0.01"}) == "d: holds (p=0.01)"
    # a failure that names no lack is not blamed on the scale
    assert verdict("e", {"holds": False, "evidence": "0.5006 > 0.5005"}).startswith("e: does not hold, unexplained")
    from invertible.experiments.summary import claim_row

    assert "unexplained" in claim_row("x", "e", {"holds": False, "evidence": "0.5006 > 0.5005"})


@pytest.fixture
def two_experiments():
    def make(eid, holds):
        @register(eid, title=f"toy {eid}", thesis="The thesis says 42.")
        def run(ctx):
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots()
            ax.plot([0, 1], [0, 1])
            ctx.save_figure(fig, "line")
            cost = ctx.full_cost(0.25, 4 * 3600, what="the full toy")
            ctx.claim(f"{eid} is the answer", holds, "41 vs 42", thesis="42", ours="41",
                      limited_by=None if holds else "compute", full_cost=None if holds else cost)
            return {}

    make("test.a", True)
    make("test.b", False)
    yield ["test.a", "test.b"]
    del _REGISTRY["test.a"], _REGISTRY["test.b"]


def test_top_level_report_is_a_claims_table_with_costs_and_figures(tmp_path, two_experiments, capsys):
    assert main(["reproduce", *two_experiments, "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "1 of 2 claims hold" in text
    assert "| [test.a](test.a/report.md) | test.a is the answer | holds | 42 | 41 | 41 vs 42 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| [test.b]"))
    assert "**does not hold** at this scale (compute)" in row and "full run: about 1 h on " in row
    assert "| test.a | the full toy | about 1 h on " in text
    assert "![test.a line](test.a/figures/line.png)" in text and "![test.b line](test.b/figures/line.png)" in text
    metrics = json.loads((tmp_path / "test.b" / "metrics.json").read_text())
    assert metrics["full_costs"][0]["seconds"] == pytest.approx(3600.0)
    sub = (tmp_path / "test.b" / "report.md").read_text()
    assert "does not hold at this scale because 41 vs 42 [limited by compute]" in sub
    assert "## Full-mode cost, from this run's measured step times" in sub


def test_training_curves_in_bits_per_dim():
    from invertible.data.dequantize import nats_to_bits_per_dim
    from invertible.training.plots_density import plot_training_curves

    recs = [{"split": "train", "step": 1, "nll": -150.0}, {"split": "val", "step": 1, "nll": -151.7, "se": 0.5}]
    fig = plot_training_curves(recs, bits_per_dim=784)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "NLL (bits/dim)"
    assert ax.lines[0].get_ydata()[0] == pytest.approx(float(nats_to_bits_per_dim(-150.0, 784)))
    with pytest.raises(ValueError, match="dimension"):
        plot_training_curves(recs, bits_per_dim=0)
