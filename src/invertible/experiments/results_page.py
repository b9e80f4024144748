"""The committed results page (``docs/results.md``): what every reproduction gives on a stated machine and budget.

:func:`write_results_page` reads the run folders that ``invertible reproduce`` wrote (``config.json``,
``metrics.json``, ``figures/*.png``) and writes one markdown page:

1. how it was made: the command that regenerates it, the machine, the date, the mode (e.g. a one-hour budget per
   experiment) and the seconds measured;
2. an overview table: experiment, mode, seconds, how many of its claims hold;
3. the claims table of every experiment (our number beside the thesis's, the verdict, its evidence);
4. per experiment: what the thesis reports, the settings that ran (quick / this run / full), the full-mode costs
   from measured step times, and its figures, copied beside the page as small PNGs (``<page folder>/results/<id>/``,
   at most :data:`MAX_WIDTH` pixels wide) so that the page renders on its own.

Claims that need data we cannot ship or a GPU say so through their ``limited_by`` and ``full_cost``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from invertible.experiments.budget import settings_table
from invertible.experiments.costs import format_duration, machine
from invertible.experiments.summary import CLAIMS_HEADER, claim_row, read_claims, read_json
from invertible.io import atomic_write_text
from invertible.threads import intraop_threads

__all__ = ["MAX_WIDTH", "write_results_page"]

MAX_WIDTH = 800  # pixels: the committed PNGs stay small


def _copy_figure(src: Path, dst: Path) -> None:
    """Copy a PNG, downscaled to at most :data:`MAX_WIDTH` pixels wide (Pillow, which matplotlib brings)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - matplotlib depends on Pillow
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as im:
        if im.width > MAX_WIDTH:
            im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
        tmp = dst.with_name(dst.name + ".tmp")
        im.save(tmp, format="PNG", optimize=True)
    tmp.replace(dst)


def write_results_page(page: Path, done: Sequence[tuple[str, Path]], failed: Sequence[tuple[str, str]], *,
                       titles: dict[str, str], theses: dict[str, str], mode: str, command: str,
                       device: str = "cpu") -> Path:
    """Write the results page ``page`` for the reproductions in ``done`` (``(id, report path)``) and ``failed``
    (``(id, message)``), copying their figures under ``page.parent / "results"``. ``theses`` maps ids to what
    the thesis reports; ``command`` is the one command that regenerates the page. Returns ``page``."""
    page = Path(page)
    fig_root = page.parent / "results"
    if fig_root.exists():
        shutil.rmtree(fig_root)  # figures of experiments that no longer exist must not linger
    overview, claims_rows, sections = [], [], []
    total_s, n_claims, n_hold = 0.0, 0, 0
    for eid, report in done:
        folder = Path(report).parent
        metrics, config = read_claims(folder), read_json(folder / "config.json")
        seconds = float(metrics.get("seconds") or 0.0)
        total_s += seconds
        claims = metrics.get("claims") or {}
        held = sum(bool(c.get("holds")) for c in claims.values())
        n_claims, n_hold = n_claims + len(claims), n_hold + held
        anchor = eid.replace(".", "")
        link = f"[{eid}](#{anchor})"
        overview.append(f"| {link} | {titles.get(eid, '')} | {metrics.get('mode', config.get('mode', ''))} | "
                        f"{seconds:.0f} | {held} of {len(claims)} |")
        claims_rows += [claim_row(link, name, c) for name, c in claims.items()]
        sec = [f"## {eid}", "", f"**{titles.get(eid, '')}** · {seconds:.0f} s · "
               f"{metrics.get('mode', config.get('mode', ''))} · seed {config.get('seed', '')}", ""]
        budget = metrics.get("budget")
        if budget:
            scale, top = float(budget.get("scale", 1.0)), float(budget.get("max_scale", 1.0))
            sec += [f"Budget: pilot at quick settings {budget.get('pilot_seconds')} s, workload scaled by "
                    f"{scale:.3g}x (the full settings are {top:.3g}x the quick ones).", ""]
        sec += settings_table(config.get("settings") or {})
        sec += ["**What the thesis reports.**", "", theses.get(eid, "").strip(), ""]
        if claims:
            sec += [CLAIMS_HEADER, *[claim_row(eid, name, c) for name, c in claims.items()], ""]
        costs = metrics.get("full_costs") or []
        if costs:
            sec += ["Full-mode costs, from this run's measured step times:", ""]
            sec += [f"- {c.get('what', '')}: {c.get('text', '')}" for c in costs] + [""]
        pngs = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
        for png in pngs:
            dst = fig_root / eid / png.name
            _copy_figure(png, dst)
            sec.append(f"![{eid} {png.stem}]({dst.relative_to(page.parent).as_posix()})")
        sections += sec + [""]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if mode == "full":
        where = machine(device)
    else:
        with intraop_threads(1):  # quick and budgeted runs use one thread each (registry.run_experiment)
            where = machine(device)
    lines = [
        "# Results: every reproduction on one machine", "",
        f"Regenerate this page with `{command}`. Made {when} on {where}; mode: {mode}; "
        f"{len(done)} reproductions in {format_duration(total_s)} of experiment time; **{n_hold} of {n_claims} "
        f"claims hold**.", "",
        "A claim that does not hold says what it lacks (`data`: the thesis's data sets, CIFAR-10 or the ADSQ/LP "
        "tumour spectra, cannot be shipped; `compute`: the full settings need more time or a GPU, with the cost "
        "measured from this run's step times; `method`: neither would help).", "",
        "| experiment | title | mode | seconds | claims holding |", "|---|---|---|---|---|", *overview, "",
    ]
    if failed:
        lines += ["**Failed:**", ""] + [f"- {eid}: {msg}" for eid, msg in failed] + [""]
    lines += ["## All claims", "", CLAIMS_HEADER, *claims_rows, "", *sections]
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(page, "\n".join(lines).rstrip() + "\n")
    return page
