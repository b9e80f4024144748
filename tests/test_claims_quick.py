"""Claims of the reproductions: the statistics behind them (seeds, t-intervals, paired tests, the I(Y; z_n)
bound) and quick runs whose claims must be present and, with the default seeds, hold."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from invertible.experiments import run_experiment
from invertible.experiments.seeds import full_cost, paired_difference, seed_list, slope_interval, t_interval
from invertible.experiments.shiftmnist import label_information


def test_t_interval_matches_the_student_t_formula():
    x = [1.0, 2.0, 4.0]
    ci = t_interval(x)
    half = stats.t.ppf(0.975, 2) * np.std(x, ddof=1) / math.sqrt(3)
    assert ci["mean"] == pytest.approx(7 / 3)
    assert (ci["lo"], ci["hi"]) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert t_interval([5.0])["lo"] == t_interval([5.0])["hi"] == 5.0
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


def test_paired_difference_is_the_paired_t_test():
    a, b = [3.0, 4.1, 5.3, 2.2], [2.5, 3.0, 5.0, 1.0]
    d = paired_difference(a, b)
    ref = stats.ttest_rel(a, b)
    assert d["p"] == pytest.approx(ref.pvalue)
    assert d["mean"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert d["lo"] < d["mean"] < d["hi"]
    assert paired_difference([1, 2], [1, 2])["p"] == 1.0  # identical settings: no evidence of a difference
    with pytest.raises(ValueError, match="equally many"):
        paired_difference([1, 2], [1])


def test_slope_interval_recovers_a_noiseless_line_and_seeds_move_together():
    s = slope_interval([0.5, 0.7, 0.9, 0.5, 0.7, 0.9], [9.0, 7.0, 5.0, 9.2, 6.8, 5.0])
    assert s["lo"] < -10 < s["hi"] < 0 and s["p"] < 1e-3
    assert seed_list(7) == [7, 8, 9]
    assert "s/step measured here x 1,000 steps = 1.7 min" in full_cost(0.1, 1000)


def test_label_information_is_zero_for_the_prior_and_the_entropy_for_a_perfect_probe():
    y = torch.arange(10).repeat(20)  # uniform labels: H(Y) = log 10
    classes = np.arange(10)

    def perfect(x):
        q = np.full((len(x), 10), 1e-9)
        q[np.arange(len(x)), y.numpy()] = 1.0
        return classes, q / q.sum(1, keepdims=True)

    def prior(x):
        return classes, np.full((len(x), 10), 0.1)

    x = torch.zeros(len(y), 1)
    assert label_information(perfect, y, x, y)["nats"] == pytest.approx(math.log(10), abs=1e-6)
    assert label_information(perfect, y, x, y)["accuracy"] == 1.0
    assert label_information(prior, y, x, y)["nats"] == pytest.approx(0.0, abs=1e-12)


def _claims(tmp_path, name):
    run_experiment(name, tmp_path, quick=True, show_progress=False)
    claims = json.loads((tmp_path / name / "metrics.json").read_text())["claims"]
    assert claims and all({"holds", "evidence"} <= set(c) for c in claims.values())
    assert "## Claims at this scale" in (tmp_path / name / "report.md").read_text()
    return claims


@pytest.mark.slow
def test_fig3_1_quick_claims_hold(tmp_path):
    claims = _claims(tmp_path, "fig3.1")
    assert len(claims) == 2 and all(c["holds"] for c in claims.values()), claims


@pytest.mark.slow
def test_fig4_3_quick_vanilla_inverse_fails_beside_a_certified_reconstruction(tmp_path):
    claims = _claims(tmp_path, "fig4.3")
    assert all(c["holds"] for c in claims.values()), claims
    rec = next(c for name, c in claims.items() if "reconstructs" in name)
    fails = next(c for name, c in claims.items() if "fails" in name)
    assert max(rec["max_abs_error"]) <= 1e-6 and min(fails["max_abs_error"]) > 1e-2
    assert len(rec["seeds"]) == 3
