"""Run several reproductions, one after another or ``jobs`` at a time in worker processes.

Quick and budgeted reproductions run their small models on one intra-op thread (:mod:`invertible.threads`), so
on a machine with ``n`` cores ``jobs = n`` processes fill it. A budgeted run times its pilot under the same load
as its scaled run, so the budget still holds. Each outcome is an :class:`Outcome`: the report's path, or the
user-facing error (``ValueError``, ``FileNotFoundError``, ``RuntimeError``) that stopped that one experiment;
any other exception propagates. With several workers, what an experiment prints (its tables) would interleave with
the others' lines, so each worker's printed output goes to ``out/<id>/console.log`` instead of the console.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from invertible.experiments.registry import experiments, run_experiment

__all__ = ["Outcome", "run_many"]

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


@dataclass(frozen=True)
class Outcome:
    id: str
    seconds: float
    report: Path | None = None
    error: str | None = None


def _run_one(module: str, eid: str, out: Path, kwargs: dict, catch: bool = True, capture: bool = False) -> Outcome:
    importlib.import_module(module)  # a spawned worker registers the experiment by importing its module
    start = time.perf_counter()
    console = io.StringIO()
    redirect = contextlib.redirect_stdout(console) if capture else contextlib.nullcontext()
    try:
        with redirect:
            report = run_experiment(eid, out, **kwargs)
    except USER_ERRORS as exc:
        if not catch:
            raise
        return Outcome(eid, time.perf_counter() - start, error=str(exc))
    finally:
        if capture and console.getvalue() and (Path(out) / eid).is_dir():
            (Path(out) / eid / "console.log").write_text(console.getvalue())
    return Outcome(eid, time.perf_counter() - start, report=report)


def run_many(ids: Sequence[str], out: Path, *, quick: bool, seed: int = 0, device: str = "cpu",
             show_progress: bool = True, budget: float | None = None, jobs: int = 1,
             catch: bool = True) -> Iterator[Outcome]:
    """Run the experiments ``ids`` into ``out/<id>``, yielding each :class:`Outcome` as it finishes (in order
    when ``jobs == 1``). With ``jobs > 1`` they run in that many worker processes (forked on POSIX; spawned
    where the device is CUDA, which cannot be forked), without progress bars, each experiment's printed output
    in ``out/<id>/console.log``. ``catch=False`` lets a user
    error propagate instead of becoming an outcome (in one process: one experiment's error is the caller's)."""
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    registry = experiments()
    kwargs = dict(quick=quick, seed=seed, device=device, show_progress=show_progress, budget=budget)
    if jobs == 1 or len(ids) == 1:
        for eid in ids:
            yield _run_one(registry[eid].run.__module__, eid, out, kwargs, catch)
        return
    kwargs["show_progress"] = False
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and not device.startswith("cuda") \
        else "spawn"
    with ProcessPoolExecutor(max_workers=min(jobs, len(ids)), mp_context=multiprocessing.get_context(method)) as pool:
        pending = {pool.submit(_run_one, registry[eid].run.__module__, eid, out, kwargs, catch=True, capture=True)
                   for eid in ids}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
