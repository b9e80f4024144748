"""Budgeted reproductions: a mode between ``--quick`` (minutes) and the thesis's full settings (CPU-days).

``invertible reproduce ID --budget 1h`` fits each experiment's workload to a wall-clock budget from a
measurement, never from a guess:

1. **Pilot.** The experiment runs once at its quick settings (``scale = 1``); its wall time ``T_1`` is measured
   on this machine, and every setting it declares through :meth:`RunContext.scaled
   <invertible.experiments.registry.RunContext.scaled>` reports how far it can grow before it reaches the full
   setting.
2. **Scale.** The remaining budget buys ``s = safety * (B - T_1) / T_1`` times the pilot's workload
   (:func:`choose_scale`; the run time of these experiments grows at most linearly in the workload, so
   ``s * T_1`` bounds it), capped where every setting reaches its full value.
3. **Run.** The experiment runs again at scale ``s``; a setting declared with power ``p`` takes the value
   ``quick * s**p`` (capped at full), so an experiment splits its workload between knobs whose powers add up to
   one (e.g. steps ``p = 0.5`` and data ``p = 0.5``; a cost quadratic in a knob gets ``p = 0.25`` there).

When ``s`` would not exceed 1 (the budget is smaller than two pilots), or nothing scales, the pilot is the run.
The report states the budget, the pilot's seconds, the scale and every setting (quick, this run, full).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Budget", "Setting", "choose_scale", "format_budget", "parse_duration", "scaled_value", "settings_table"]

SAFETY = 0.8  # the share of the remaining budget a scaled run plans to use (run times vary on a shared machine)

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(d|h|min|m|sec|s)?\s*", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"90"``, ``"90s"``, ``"5m"``, ``"1h"``, ``"1h30m"`` or ``"2.5h"``.

    A bare number is seconds. Raises ``ValueError`` naming the text for anything else (empty, negative, zero,
    a unit it does not know, or more than 30 days)."""
    s = str(text).strip()
    pos, total, parts = 0, 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None or m.end() == pos:
            break
        unit = (m.group(2) or "s").lower()
        if m.group(2) is None and (parts or m.end() < len(s)):
            break  # a bare number (seconds) is only allowed as the whole text
        total += float(m.group(1)) * _UNITS[unit]
        parts += 1
        pos = m.end()
    if not parts or pos != len(s) or not math.isfinite(total) or total <= 0:
        raise ValueError(f"expected a positive duration such as 90s, 5m, 1h or 1h30m, got {text!r}")
    if total > 30 * 86400:
        raise ValueError(f"a budget of {text!r} is more than 30 days; run the full settings instead (no --budget)")
    return total


def format_budget(seconds: float) -> str:
    """``3600 -> "1h"``, ``5400 -> "1h30m"``, ``90 -> "1m30s"``, ``12.5 -> "12.5s"``."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.3g}s"
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)


def choose_scale(budget_s: float, pilot_s: float, max_scale: float, *, safety: float = SAFETY) -> float:
    """The workload multiple a run at ``budget_s`` seconds can afford after a pilot of ``pilot_s`` seconds:
    ``min(max_scale, safety * (budget_s - pilot_s) / pilot_s)``, or 1 (keep the pilot) when that is not above 1."""
    if not (pilot_s > 0 and math.isfinite(pilot_s)):
        raise ValueError(f"the pilot's wall time must be a positive number of seconds, got {pilot_s!r}")
    s = min(float(max_scale), safety * (float(budget_s) - pilot_s) / pilot_s)
    return s if s > 1.0 else 1.0


@dataclass(frozen=True)
class Setting:
    """One scalable setting of an experiment: its quick and full values and how it grows with the scale."""

    name: str
    quick: float
    full: float
    power: float
    value: float

    @property
    def max_scale(self) -> float:
        """The scale at which this setting reaches its full value (``(full / quick) ** (1 / power)``)."""
        if self.power <= 0 or self.full <= self.quick or self.quick <= 0:
            return 1.0
        return (self.full / self.quick) ** (1.0 / self.power)

    def as_dict(self) -> dict[str, Any]:
        return {"quick": self.quick, "value": self.value, "full": self.full, "power": self.power}


def scaled_value(quick: float, full: float, scale: float, power: float, *, integer: bool = True) -> float:
    """``quick * scale**power`` capped at ``full`` (never below ``quick``), rounded when ``integer``."""
    if power < 0 or not math.isfinite(power):
        raise ValueError(f"a setting's power must be a finite number >= 0, got {power!r}")
    value = quick * float(scale) ** power
    value = min(value, full) if full >= quick else quick
    return int(round(value)) if integer else float(value)


@dataclass(frozen=True)
class Budget:
    """What a budgeted run did: the budget, the pilot's measured seconds and the scale it chose."""

    seconds: float
    pilot_seconds: float
    scale: float
    max_scale: float

    @property
    def text(self) -> str:
        if self.scale <= 1.0:
            why = ("nothing in it scales" if self.max_scale <= 1.0 else
                   "the budget does not buy a second, larger run")
            return (f"budget {format_budget(self.seconds)}: the pilot at quick settings took "
                    f"{self.pilot_seconds:.1f} s and is the run ({why})")
        capped = " (every setting at its full value)" if self.scale >= self.max_scale else ""
        return (f"budget {format_budget(self.seconds)}: a pilot at quick settings took {self.pilot_seconds:.1f} s, "
                f"so this run scales the workload by {self.scale:.3g}x{capped}")

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "pilot_seconds": round(self.pilot_seconds, 2), "scale": self.scale,
                "max_scale": self.max_scale}


def _number(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def settings_table(settings: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown rows ``| setting | quick | this run | full |`` for settings in :meth:`Setting.as_dict` form
    (``[]`` when there are none), as the report and the results page show them."""
    if not settings:
        return []
    rows = ["| setting | quick | this run | full |", "|---|---|---|---|"]
    rows += [f"| {name} | {_number(s.get('quick'))} | {_number(s.get('value'))} | {_number(s.get('full'))} |"
             for name, s in settings.items()]
    return rows + [""]
