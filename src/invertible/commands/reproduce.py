"""``invertible reproduce``: run thesis figures/tables into run folders with a report each."""

from __future__ import annotations

import argparse
from pathlib import Path

from invertible.commands._options import add_device, add_out, add_progress, add_seed, out_file, positive_int


def _duration(text: str) -> float:
    from invertible.experiments.budget import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="reproduce thesis figures and tables",
        description="Run registered reproductions. Each writes figures, metrics.json and report.md "
        "(the thesis's numbers beside this run's) into OUT/ID.",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="experiment ids, e.g. fig4.4 table5.1")
    p.add_argument("--list", action="store_true", help="list registered experiments and exit")
    p.add_argument("--all", action="store_true", help="run every registered experiment (no IDs with it)")
    p.add_argument("--quick", action="store_true", help="small settings that finish in minutes on a CPU")
    p.add_argument("--budget", type=_duration, default=None, metavar="DURATION",
                   help="fit each experiment to this wall time (e.g. 20m, 1h, 1h30m): a pilot at quick settings "
                   "is timed, then the settings are scaled to what the rest of the budget buys")
    p.add_argument("--results", type=out_file, default=None, metavar="PAGE",
                   help="also write a results page (e.g. docs/results.md) with the figures copied beside it "
                   "(under PAGE's folder/results/) and the command that regenerates it")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="run N experiments at a time in worker processes (quick and budgeted runs use one "
                   "thread each, so N = the number of cores fills the machine; default 1)")
    add_out(p, default=Path("runs/reproduce"), help="output folder (default runs/reproduce)")
    add_seed(p)
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from invertible.experiments import experiments
    from invertible.experiments.runner import run_many
    from invertible.experiments.summary import write_index

    registry = experiments()
    if args.list:
        for exp in registry.values():
            print(f"{exp.id:12s} {exp.title}")
        return 0
    if args.all and args.ids:
        raise ValueError(f"pass experiment ids or --all, not both (got --all and {' '.join(args.ids)})")
    ids = list(registry) if args.all else args.ids
    if not ids:
        raise ValueError("name experiments to run (see --list) or pass --all")
    if args.quick and args.budget is not None:
        raise ValueError("pass --quick or --budget, not both (a budgeted run starts from the quick settings)")
    unknown = [i for i in ids if i not in registry]
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    reports, failures = [], []
    kwargs = dict(quick=args.quick, seed=args.seed, device=args.device, show_progress=not args.no_progress,
                  budget=args.budget)
    jobs = min(args.jobs, len(ids))
    if jobs == 1:
        print(f"[1/{len(ids)}] {ids[0]}: {registry[ids[0]].title}", flush=True)
    else:
        print(f"{len(ids)} experiments in {jobs} worker processes", flush=True)
    # One experiment's missing data or failure must not cost the others their results; a single experiment's
    # error is the command's error (one line, exit code 2).
    for i, outcome in enumerate(run_many(ids, args.out, jobs=jobs, catch=len(ids) > 1, **kwargs), 1):
        if outcome.error is not None:
            print(f"      {outcome.id} FAILED after {outcome.seconds:.1f} s: {outcome.error}", flush=True)
            failures.append((outcome.id, outcome.error))
        else:
            print(f"      {outcome.id} done in {outcome.seconds:.1f} s -> {outcome.report}", flush=True)
            reports.append((outcome.id, outcome.report))
        if jobs == 1 and i < len(ids):
            print(f"[{i + 1}/{len(ids)}] {ids[i]}: {registry[ids[i]].title}", flush=True)
    order = {eid: k for k, eid in enumerate(ids)}
    reports.sort(key=lambda r: order[r[0]])
    index = write_index(args.out, reports, failures, titles={e: x.title for e, x in registry.items()},
                        mode=_mode(args))
    print(f"Report: {index.resolve()}")
    if args.results is not None:
        from invertible.experiments.results_page import write_results_page

        page = write_results_page(args.results, reports, failures, titles={e: x.title for e, x in registry.items()},
                                  theses={e: x.thesis for e, x in registry.items()}, mode=_mode(args),
                                  command=_command(args), device=args.device)
        print(f"Results page: {page.resolve()}")
    if failures:
        print(f"{len(failures)} of {len(ids)} experiments failed: {', '.join(e for e, _ in failures)}")
        return 1
    return 0


def _mode(args: argparse.Namespace) -> str:
    if args.budget is not None:
        from invertible.experiments.budget import format_budget

        return f"budget {format_budget(args.budget)} per experiment"
    return "quick" if args.quick else "full"


def _command(args: argparse.Namespace) -> str:
    """The command line that reruns this invocation (written on the results page)."""
    from invertible.experiments.budget import format_budget

    words = ["invertible", "reproduce", "--all" if args.all else " ".join(args.ids)]
    if args.quick:
        words.append("--quick")
    if args.budget is not None:
        words += ["--budget", format_budget(args.budget)]
    if args.seed:
        words += ["--seed", str(args.seed)]
    if args.device != "cpu":
        words += ["--device", args.device]
    if args.jobs != 1:
        words += ["--jobs", str(args.jobs)]
    words += ["--out", str(args.out), "--results", str(args.results)]
    return " ".join(words)
