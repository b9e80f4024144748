"""Seeds, uncertainty and measured costs for the claims of the reproductions.

A claim that compares two settings is judged over ``n >= 3`` independent seeds, never a single run:

* :func:`t_interval` - mean and two-sided Student-t confidence interval of a sample,
  ``mean +- t_{n-1, (1+level)/2} s / sqrt(n)``;
* :func:`paired_difference` - the same for the per-seed differences ``a_i - b_i`` of two settings trained on
  the same seeds, with the two-sided paired t-test's p-value (``scipy.stats.ttest_rel``).

:func:`machine` (from :mod:`invertible.experiments.costs`) names the machine a measured time comes from and
:func:`full_cost` turns a measured time per
unit of work (a step, an epoch, a model) into the cost of the full-mode run, so that every full-mode estimate in
a report is "seconds per step here x steps of the full run", with the machine stated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from invertible.experiments.costs import format_duration, machine
from invertible.experiments.stats import mean_ci

__all__ = ["seed_list", "t_interval", "paired_difference", "slope_interval", "format_interval", "machine", "full_cost"]


def seed_list(seed: int, n: int = 3) -> list[int]:
    """The ``n`` seeds ``seed, seed + 1, ..., seed + n - 1`` of a multi-seed comparison (``--seed`` moves them all)."""
    if n < 1:
        raise ValueError(f"need at least one seed, got n={n}")
    return [int(seed) + k for k in range(n)]


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``{"mean", "lo", "hi", "n", "sd", "level"}``: the mean of ``values`` and its two-sided Student-t interval
    (:func:`invertible.experiments.stats.mean_ci`). With one value the interval is the point itself (``sd = 0``)."""
    x = [float(v) for v in values]
    if not x:
        raise ValueError("t_interval needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if len(x) == 1:
        return {"mean": x[0], "lo": x[0], "hi": x[0], "n": 1, "sd": 0.0, "level": level}
    ci = mean_ci(x, level)
    sd = math.sqrt(sum((v - ci.mean) ** 2 for v in x) / (len(x) - 1))
    return {"mean": ci.mean, "lo": ci.low, "hi": ci.high, "n": ci.n, "sd": sd, "level": level}


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Per-seed differences ``a_i - b_i``: their :func:`t_interval` plus ``p`` of the two-sided paired t-test
    (1.0 when all differences are 0, 0.0 when they are all equal and non-zero)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired_difference needs equally many values, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    out = t_interval(d, level)
    if out["sd"] > 0 and len(d) > 1:
        out["p"] = float(stats.ttest_rel([float(x) for x in a], [float(y) for y in b]).pvalue)
    else:
        out["p"] = 1.0 if out["mean"] == 0 else 0.0
    return out


def slope_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Least-squares slope of ``y`` on ``x`` (all seeds pooled) with its two-sided t-interval (``n - 2`` degrees of
    freedom) and the p-value of slope = 0 (``scipy.stats.linregress``): ``{"mean", "lo", "hi", "p", "n", "level"}``
    with ``mean`` the slope."""
    from scipy import stats

    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"slope_interval needs >= 3 (x, y) pairs, got {len(x)} and {len(y)}")
    fit = stats.linregress([float(v) for v in x], [float(v) for v in y])
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 2)) * float(fit.stderr)
    return {"mean": float(fit.slope), "lo": float(fit.slope) - half, "hi": float(fit.slope) + half,
            "p": float(fit.pvalue), "n": len(x), "level": level}


def format_interval(ci: dict[str, float], digits: int = 3, unit: str = "") -> str:
    """``"m [lo, hi] unit (95% t-interval, n seeds)"`` for a report."""
    u = f" {unit}" if unit else ""
    return (f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]{u} "
            f"({ci['level']:.0%} t-interval, {ci['n']} seeds)")


def full_cost(seconds_per_unit: float, full_units: float, unit: str = "step", what: str = "") -> str:
    """``"<s> s/<unit> measured here x <n> <unit>s <what> = <duration> on <machine> (estimate)"``: the full run's
    cost from this run's measurement (``what`` qualifies the units, e.g. ``"of both models"``); the duration and
    the machine as :mod:`invertible.experiments.costs` words them."""
    total = float(seconds_per_unit) * float(full_units)
    what = f" {what}" if what else ""
    return (f"{seconds_per_unit:.3g} s/{unit} measured here x {full_units:,.0f} {unit}s{what} = "
            f"{format_duration(total)} on {machine()} (estimate)")
