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

from invertible.io import RunFolder, jsonable
from invertible.threads import intraop_threads

# Modules that register experiments when imported. One line per thesis chapter module.
EXPERIMENT_MODULES: tuple[str, ...] = (
    "invertible.experiments.fig6_3", "invertible.experiments.fig6_5", "invertible.experiments.shiftmnist",
    "invertible.experiments.fig4_1", "invertible.experiments.fig4_4",
    "invertible.experiments.fig5_3",
    "invertible.experiments.table4_1", "invertible.experiments.fig4_2", "invertible.experiments.fig4_3",
    "invertible.experiments.fig3_1", "invertible.experiments.fig3_4",
    "invertible.experiments.fig7_3", "invertible.experiments.fig7_5", "invertible.experiments.sec7_5",
    "invertible.experiments.fig5_2", "invertible.experiments.table5_1", "invertible.experiments.table5_2",
)


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

    def claim(self, name: str, holds: bool, evidence: str, **numbers: Any) -> bool:
        """Record whether a claim of the thesis holds in this run: ``metrics.json["claims"][name] = {"holds",
        "evidence", **numbers}`` and a verdict row in ``report.md``. Returns ``holds``."""
        if name in self.claims:
            raise ValueError(f"claim {name!r} stated twice")
        self.claims[name] = {"holds": bool(holds), "evidence": str(evidence), **jsonable(numbers)}
        return bool(holds)


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
        lines.append("")
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
