"""Registry of thesis reproductions: one module per figure or table.

An experiment is a function ``run(ctx: RunContext) -> dict`` registered under the thesis's own name
(``"fig4.4"``, ``"table5.1"``, ...). The framework gives it a run folder, a seed, the quick/full switch and a
progress-bar factory; it writes ``config.json``, ``metrics.json`` and ``report.md`` around the experiment's
own figures and the markdown it adds with :meth:`RunContext.report`: the one run folder of
:class:`invertible.io.RunFolder` (``config.json``, ``metrics.jsonl``, ``metrics.json``, ``figures/*.png``,
``report.md``).
"""

from __future__ import annotations

import importlib
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from invertible.experiments.budget import (
    Budget,
    Setting,
    choose_scale,
    format_budget,
    scaled_value,
    settings_table,
)
from invertible.experiments.costs import FullCost, machine
from invertible.io import RunFolder, jsonable
from invertible.threads import intraop_threads

# Modules that register experiments when imported. One line per thesis chapter module.
EXPERIMENT_MODULES: tuple[str, ...] = (
    "invertible.experiments.fig6_3", "invertible.experiments.fig6_5", "invertible.experiments.shiftmnist",
    "invertible.experiments.fig4_1", "invertible.experiments.fig4_4",
    "invertible.experiments.fig5_1", "invertible.experiments.fig5_3",
    "invertible.experiments.table4_1", "invertible.experiments.fig4_2", "invertible.experiments.fig4_3",
    "invertible.experiments.fig3_1", "invertible.experiments.fig3_4",
    "invertible.experiments.fig7_3", "invertible.experiments.fig7_5", "invertible.experiments.sec7_5",
    "invertible.experiments.fig5_2", "invertible.experiments.table5_1", "invertible.experiments.table5_2",
)


LIMITS = ("data", "compute", "method")  # what a claim that does not hold at this scale lacks


@dataclass(frozen=True)
class Experiment:
    id: str
    title: str
    thesis: str  # what the thesis reports, in markdown, shown beside this run's numbers
    run: Callable[[RunContext], dict[str, Any]]


@dataclass
class RunContext:
    """What an experiment gets: where to write, how big to be, and how to show progress."""

    out: Path
    quick: bool
    seed: int = 0
    device: str = "cpu"
    show_progress: bool = True
    figures: list[str] = field(default_factory=list)
    _report: list[str] = field(default_factory=list)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    costs: list[FullCost] = field(default_factory=list)
    scale: float = 1.0  # the workload multiple of a budgeted run (1: the quick settings); see budget.py
    settings: dict[str, Setting] = field(default_factory=dict)
    seconds: float = 0.0  # the wall time of exp.run, set by the framework
    metrics: dict[str, Any] = field(default_factory=dict)  # what exp.run returned

    def scaled(self, name: str, quick: float, full: float, *, power: float = 1.0, integer: bool = True):
        """The value of setting ``name``: ``full`` in full mode, ``quick`` in quick mode, and in a budgeted run
        (``--budget``) ``quick * scale**power`` capped at ``full``. The powers of an experiment's settings add up
        to (at most) one, so the run time grows like the scale (e.g. steps and data size ``power=0.5`` each).
        Every setting is recorded (``config.json["settings"]`` and the report's settings table)."""
        if name in self.settings:
            raise ValueError(f"setting {name!r} declared twice")
        value = full if not self.quick else scaled_value(quick, full, self.scale, power, integer=integer)
        self.settings[name] = Setting(name=name, quick=quick, full=full, power=float(power), value=value)
        return value

    @property
    def budgeted(self) -> bool:
        """Whether this is a budgeted run larger than the quick one (``scale > 1``)."""
        return self.quick and self.scale > 1.0

    @property
    def max_scale(self) -> float:
        """The scale at which every declared setting has reached its full value (1 when none scales)."""
        return max((s.max_scale for s in self.settings.values()), default=1.0)

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.out)

    def progress(self, iterable: Iterable, desc: str, total: int | None = None):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=not self.show_progress, leave=False)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def save_figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as ``figures/<name>.png`` in the run folder (atomically) and close it."""
        path = self.run.save_figure(fig, name)
        self.figures.append(path.name)
        return path

    def log(self, record: dict[str, Any]) -> None:
        """Append a record (e.g. one trained model's result) to the run's ``metrics.jsonl``."""
        self.run.log(record)

    def report(self, markdown: str) -> None:
        self._report.append(markdown.rstrip() + "\n")

    def claim(self, name: str, holds: bool, evidence: str, *, thesis: str | None = None, ours: str | None = None,
              limited_by: str | None = None, full_cost: FullCost | str | None = None, **numbers: Any) -> bool:
        """Record whether a claim of the thesis holds in this run: ``metrics.json["claims"][name] = {"holds",
        "evidence", **numbers}`` and a verdict row in ``report.md``. Returns ``holds``.

        ``evidence`` is the reason (with its uncertainty: a confidence interval or a paired test over >= 3 seeds
        for a comparison); ``thesis`` / ``ours`` are the thesis's number and this run's, shown side by side in the
        top-level report. A claim that does not hold at this scale names what it lacks, ``limited_by`` =
        ``"data"`` or ``"compute"`` (or ``"method"`` when more of either would not help), and where more compute
        would do, ``full_cost`` (a :meth:`full_cost` estimate) says what the full run costs."""
        if name in self.claims:
            raise ValueError(f"claim {name!r} stated twice")
        if limited_by is not None and limited_by not in LIMITS:
            raise ValueError(f"claim {name!r}: limited_by must be one of {', '.join(LIMITS)}, got {limited_by!r}")
        entry: dict[str, Any] = {"holds": bool(holds), "evidence": str(evidence)}
        for key, value in (("thesis", thesis), ("ours", ours), ("limited_by", limited_by)):
            if value is not None:
                entry[key] = str(value)
        if full_cost is not None:
            entry["full_cost"] = full_cost.text if isinstance(full_cost, FullCost) else str(full_cost)
        self.claims[name] = {**entry, **jsonable(numbers)}
        return bool(holds)

    def full_cost(self, seconds_per_step: float, full_steps: float, *, what: str, scale: float = 1.0,
                  basis: str = "") -> FullCost:
        """The cost of a full-mode workload from a step time measured in this run (``seconds_per_step``, e.g. from
        :func:`~invertible.experiments.costs.time_steps`): ``seconds_per_step * full_steps * scale`` on this
        run's machine (named in the estimate). Listed in ``metrics.json["full_costs"]`` and in ``report.md``;
        ``.text`` reads "about 2.3 days on <machine> (...)", ``.seconds`` / ``.hours`` / ``.days`` are numbers."""
        cost = FullCost(what=what, seconds_per_step=float(seconds_per_step), full_steps=float(full_steps),
                        scale=float(scale), machine=machine(self.device), basis=basis)
        self.costs.append(cost)
        return cost


_REGISTRY: dict[str, Experiment] = {}


def register(id: str, *, title: str, thesis: str):
    """Decorator: register ``run(ctx) -> metrics`` as the reproduction of thesis item ``id``."""

    def wrap(fn: Callable[[RunContext], dict[str, Any]]):
        if id in _REGISTRY:
            raise ValueError(f"experiment {id!r} registered twice")
        _REGISTRY[id] = Experiment(id=id, title=title, thesis=thesis, run=fn)
        return fn

    return wrap


def experiments() -> dict[str, Experiment]:
    """All registered experiments, importing their modules on first use."""
    for name in EXPERIMENT_MODULES:
        importlib.import_module(name)
    return dict(sorted(_REGISTRY.items(), key=lambda kv: _natural_key(kv[0])))


def _natural_key(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _cell(text: str) -> str:
    """Text for a markdown table cell (a bare pipe would end the cell)."""
    return str(text).replace("|", "\\|")


def verdict(name: str, claim: dict[str, Any]) -> str:
    """One sentence: "<name>: holds (<evidence>)" or "<name>: does not hold at this scale because <evidence>"
    with what it lacks and, where given, what the full run costs."""
    if claim["holds"]:
        return f"{name}: holds ({claim['evidence']})"
    if not claim.get("limited_by"):  # no stated lack: not a matter of scale
        return f"{name}: does not hold, unexplained (neither data, compute nor method named): {claim['evidence']}"
    text = f"{name}: does not hold at this scale because {claim['evidence']}"
    text += f" [limited by {claim['limited_by']}]"
    if claim.get("full_cost"):
        text += f"; the full run: {claim['full_cost']}"
    return text


def run_experiment(
    id: str, out: Path, *, quick: bool, seed: int = 0, device: str = "cpu", show_progress: bool = True,
    budget: float | None = None,
) -> Path:
    """Run one registered experiment into ``out/<id>`` and return the path of its ``report.md``.

    With ``budget`` (seconds) the run is fitted to that wall time (:mod:`invertible.experiments.budget`): a pilot
    at quick settings measures this machine, then the workload is scaled to what the rest of the budget buys."""
    registry = experiments()
    if id not in registry:
        raise ValueError(f"unknown experiment {id!r}; known: {', '.join(registry)}")
    exp = registry[id]
    _check_device(device)
    folder = Path(out) / id
    opts = dict(quick=quick, seed=seed, device=device, show_progress=show_progress)
    if budget is None:
        return _finish(exp, _execute(exp, folder, **opts), budget=None)
    if not (budget > 0):
        raise ValueError(f"the budget must be a positive number of seconds, got {budget!r}")
    opts["quick"] = True  # a budgeted run grows the quick settings
    pilot_folder = Path(out) / f".{id}.pilot"
    start = time.perf_counter()
    try:
        pilot = _execute(exp, pilot_folder, **opts)
    except BaseException:
        shutil.rmtree(pilot_folder, ignore_errors=True)
        raise
    pilot_s = time.perf_counter() - start
    scale = choose_scale(budget, pilot_s, pilot.max_scale)
    plan = Budget(seconds=float(budget), pilot_seconds=pilot_s, scale=scale, max_scale=pilot.max_scale)
    if scale <= 1.0:  # the pilot is the run: it moves into place
        if folder.exists():
            shutil.rmtree(folder)
        pilot_folder.rename(folder)
        pilot.out = folder
        return _finish(exp, pilot, budget=plan)
    shutil.rmtree(pilot_folder, ignore_errors=True)
    return _finish(exp, _execute(exp, folder, **opts, scale=scale), budget=plan)


def _execute(exp: Experiment, folder: Path, *, quick: bool, seed: int, device: str, show_progress: bool,
             scale: float = 1.0) -> RunContext:
    """Run ``exp`` into a fresh run folder at ``folder``; the context holds its metrics and wall seconds."""
    run = RunFolder(folder).make()
    run.reset_metrics()
    ctx = RunContext(out=folder, quick=quick, seed=seed, device=device, show_progress=show_progress, scale=scale)
    torch.manual_seed(seed)
    start = time.perf_counter()
    # Quick (and budgeted) runs use small models, for which one thread is as fast as two and immune to
    # oversubscription; a budgeted run keeps the pilot's setting so that its measured time stays valid.
    with intraop_threads(1) if quick else nullcontext():
        ctx.metrics = exp.run(ctx)
    ctx.seconds = time.perf_counter() - start
    return ctx


def _finish(exp: Experiment, ctx: RunContext, *, budget: Budget | None) -> Path:
    """Write config.json, metrics.json and report.md of a finished run (``ctx.metrics``, ``ctx.seconds``)."""
    run = RunFolder(ctx.out)
    seconds = ctx.seconds
    mode = "full" if not ctx.quick else ("quick" if budget is None else f"budget {format_budget(budget.seconds)}")
    config = {
        "experiment": exp.id,
        "quick": ctx.quick,
        "mode": mode,
        "seed": ctx.seed,
        "device": ctx.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if budget is not None:
        config["budget"] = budget.as_dict()
    settings = {name: st.as_dict() for name, st in ctx.settings.items()}
    if settings:
        config["settings"] = settings
    run.write_config(config)
    metrics = {**jsonable(ctx.metrics), "seconds": round(seconds, 2), "mode": mode}
    if budget is not None:
        metrics["budget"] = budget.as_dict()
    if ctx.claims:
        metrics["claims"] = ctx.claims
    if ctx.costs:
        metrics["full_costs"] = [c.as_dict() for c in ctx.costs]
    run.write_summary(metrics)
    run.log({"split": "summary", "experiment": exp.id, "seconds": round(seconds, 2)})
    lines = [
        f"# {exp.id}: {exp.title}",
        "",
        f"Mode: {mode} · seed {ctx.seed} · device {ctx.device} · {seconds:.1f} s",
        "",
    ]
    if budget is not None:
        lines += [f"This run: {budget.text}.", ""]
    if ctx.quick:
        lines += settings_table(settings)
    lines += [
        "## What the thesis reports",
        "",
        exp.thesis.strip(),
        "",
        "## This run",
        "",
        *ctx._report,
        "",
    ]
    if ctx.claims:
        lines += ["## Claims at this scale", "", "| claim | holds | evidence |", "|---|---|---|"]
        lines += [f"| {_cell(name)} | {'yes' if c['holds'] else '**no**'} | {_cell(c['evidence'])} |"
                  for name, c in ctx.claims.items()]
        lines += [""] + [f"- {verdict(name, c)}" for name, c in ctx.claims.items()] + [""]
    if ctx.costs:
        lines += ["## Full-mode cost, from this run's measured step times", ""]
        lines += [f"- {c.what}: {c.text}" for c in ctx.costs] + [""]
    if ctx.figures:
        lines += ["## Figures", ""] + [f"![{f}](figures/{f})" for f in ctx.figures] + [""]
    return run.write_report("\n".join(lines))


def _check_device(device: str) -> None:
    """Refuse a device this build or machine lacks: the report must not say "device cuda" of a CPU run."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        built = "no CUDA device is available" if torch.backends.cuda.is_built() else \
            "CUDA is not available in this torch build"
        raise ValueError(f"device {device!r}: {built}")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda or cuda:N")
