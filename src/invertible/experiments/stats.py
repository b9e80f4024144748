"""Uncertainty of a claim over repeated runs: Student-t confidence intervals of a mean and of paired differences.

A comparison of two methods over ``n >= 3`` seeds (or folds) is stated as the mean paired difference
``d_i = a_i - b_i`` with its two-sided ``level`` confidence interval ``mean(d) +- t_{n-1} * sd(d) / sqrt(n)``
and the one-sided p-value of the paired t-test of ``H0: E[d] <= 0``. A claim "a beats b" holds when the whole
interval lies above 0 (equivalently, p < (1 - level) / 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "mean_ci", "paired_ci"]


@dataclass(frozen=True)
class Interval:
    """Mean, confidence bounds, the level, the number of values and the one-sided p-value of ``mean <= 0``."""

    mean: float
    low: float
    high: float
    level: float
    n: int
    p_greater: float

    @property
    def above_zero(self) -> bool:
        return self.low > 0

    def text(self, fmt: str = ".3f") -> str:
        return (f"{self.mean:{fmt}} [{self.level:.0%} CI {self.low:{fmt}}, {self.high:{fmt}}], n={self.n}, "
                f"one-sided p={self.p_greater:.2g}")

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "level": self.level, "n": self.n,
                "p_greater": self.p_greater}


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (n >= 2); a zero spread gives a zero-width interval."""
    from scipy import stats

    v = [float(x) for x in values]
    n = len(v)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    mean = sum(v) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    if sd > 0:
        p = float(stats.t.sf(mean / (sd / math.sqrt(n)), n - 1))
    else:
        p = 0.0 if mean > 0 else 1.0
    return Interval(mean, mean - half, mean + half, level, n, p)


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Interval of the mean paired difference ``a_i - b_i`` (same seed / fold ``i``)."""
    if len(a) != len(b):
        raise ValueError(f"paired values must be equally many, got {len(a)} and {len(b)}")
    return mean_ci([float(x) - float(y) for x, y in zip(a, b, strict=True)], level)
