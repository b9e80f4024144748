"""Shared helpers for the benchmark scripts: argument parsing, table printing, JSON output."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    return p


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def mean_and_halfwidth(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean of ``values`` and the half-width of its Student-t interval (``invertible.experiments.stats.mean_ci``;
    nan for a single value)."""
    from invertible.experiments.stats import mean_ci

    v = [float(x) for x in values]
    if len(v) < 2:
        return statistics.fmean(v), float("nan")
    ci = mean_ci(v, level)
    return ci.mean, ci.high - ci.mean
