"""The top-level report of ``invertible reproduce``: one table of every claim tested, with its verdict.

:func:`write_index` reads the ``metrics.json`` each reproduction wrote into ``out/<id>/`` (its ``claims``, see
:meth:`~invertible.experiments.registry.RunContext.claim`, and ``full_costs``, see
:meth:`~invertible.experiments.registry.RunContext.full_cost`) and writes ``out/report.md``:

1. the claims table: experiment, claim, verdict ("holds" / "does not hold at this scale" with what it lacks),
   the thesis's number beside ours, and the evidence (with its uncertainty);
2. the full-mode costs, from this run's measured step times, with the machine;
3. every experiment's figures inline, under a link to its own report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from invertible.io import atomic_write_text

__all__ = ["claim_row", "read_claims", "read_json", "write_index"]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a run folder (``{}`` when it is missing or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def read_claims(folder: Path) -> dict[str, Any]:
    """``metrics.json`` of one reproduction's folder (``{}`` when it is missing or unreadable)."""
    return read_json(Path(folder) / "metrics.json")


def _verdict(claim: dict[str, Any]) -> str:
    if claim.get("holds"):
        return "holds"
    lacks = claim.get("limited_by")
    # without a stated lack the failure is not explained by scale: say so rather than imply it
    return f"**does not hold** at this scale ({lacks})" if lacks else "**does not hold** (unexplained: a defect to fix)"


CLAIMS_HEADER = ("| experiment | claim | verdict | thesis | this run | evidence (uncertainty) / why not |\n"
                 "|---|---|---|---|---|---|")


def claim_row(link: str, name: str, claim: dict[str, Any]) -> str:
    """One row of the claims table (:data:`CLAIMS_HEADER`): ``link`` is the experiment's markdown cell."""
    why = claim.get("evidence", "")
    if not claim.get("holds") and claim.get("full_cost"):
        why += f"; full run: {claim['full_cost']}"
    return (f"| {link} | {_cell(name)} | {_verdict(claim)} | {_cell(claim.get('thesis', ''))} | "
            f"{_cell(claim.get('ours', ''))} | {_cell(why)} |")


def write_index(out: Path, done: Sequence[tuple[str, Path]], failed: Sequence[tuple[str, str]], *,
                titles: dict[str, str], mode: str) -> Path:
    """Write ``out/report.md`` for the experiments in ``done`` (``(id, report path)``) and ``failed``
    (``(id, message)``); ``titles`` maps ids to titles, ``mode`` names the run ("quick", "full", "budget 1h").
    Returns the path."""
    out = Path(out)
    rows, costs, figures, n_claims, n_hold, seconds = [], [], [], 0, 0, 0.0
    for eid, report in done:
        folder = Path(report).parent
        metrics = read_claims(folder)
        seconds += float(metrics.get("seconds") or 0.0)
        claims = metrics.get("claims") or {}
        if not claims:
            rows.append(f"| [{eid}]({_rel(report, out)}) | (states no claim) | - | | | |")
        for name, c in claims.items():
            n_claims += 1
            n_hold += bool(c.get("holds"))
            rows.append(claim_row(f"[{eid}]({_rel(report, out)})", name, c))
        for cost in metrics.get("full_costs") or []:
            costs.append(f"| {eid} | {_cell(cost.get('what', ''))} | {_cell(cost.get('text', ''))} |")
        pngs = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
        figures.append(f"### [{eid}: {titles.get(eid, '')}]({_rel(report, out)})\n")
        figures += [f"![{eid} {p.stem}]({_rel(p, out)})" for p in pngs] + [""]
    lines = ["# invertible reproduce: the thesis's claims at this scale", "",
             f"Mode: {mode} · {len(done)} experiments ran ({seconds:.0f} s of experiment "
             f"time), {len(failed)} failed · {n_hold} of {n_claims} claims hold.", "",
             "A claim that does not hold says what it lacks (data or compute, or method when neither would help) "
             "and, where more compute is the remedy, what the full run costs on this machine.", "",
             CLAIMS_HEADER, *rows, ""]
    if failed:
        lines += ["## Failed", ""] + [f"- {eid}: {_cell(msg)}" for eid, msg in failed] + [""]
    if costs:
        lines += ["## Full-mode costs, from this run's measured step times", "",
                  "| experiment | workload | estimate |", "|---|---|---|", *costs, ""]
    if figures:
        lines += ["## Figures", "", *figures]
    index = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(index, "\n".join(lines) + "\n")
    return index


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
