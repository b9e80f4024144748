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
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
    text = f"{name}: does not hold at this scale because {claim['evidence']}"
    if claim.get("limited_by"):
        text += f" [limited by {claim['limited_by']}]"
    if claim.get("full_cost"):
        text += f"; the full run: {claim['full_cost']}"
    return text


def run_experiment(
    id: str, out: Path, *, quick: bool, seed: int = 0, device: str = "cpu", show_progress: bool = True
) -> Path:
    """Run one registered experiment into ``out/<id>`` and return the path of its ``report.md``."""
    registry = experiments()
    if id not in registry:
        raise ValueError(f"unknown experiment {id!r}; known: {', '.join(registry)}")
    exp = registry[id]
    _check_device(device)
    folder = Path(out) / id
    run = RunFolder(folder).make()
    run.reset_metrics()
    ctx = RunContext(out=folder, quick=quick, seed=seed, device=device, show_progress=show_progress)
    config = {
        "experiment": id,
        "quick": quick,
        "seed": seed,
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    run.write_config(config)
    torch.manual_seed(seed)
    start = time.perf_counter()
    # Quick runs use tiny models, for which one thread is as fast as two and immune to oversubscription.
    with intraop_threads(1) if quick else nullcontext():
        metrics = exp.run(ctx)
    seconds = time.perf_counter() - start
    metrics = {**jsonable(metrics), "seconds": round(seconds, 2)}
    if ctx.claims:
        metrics["claims"] = ctx.claims
    if ctx.costs:
        metrics["full_costs"] = [c.as_dict() for c in ctx.costs]
    run.write_summary(metrics)
    run.log({"split": "summary", "experiment": id, "seconds": round(seconds, 2)})
    lines = [
        f"# {id}: {exp.title}",
        "",
        f"Mode: {'quick' if quick else 'full'} · seed {seed} · device {device} · {seconds:.1f} s",
        "",
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
