"""Annotation tables of IMS measurements: which spot (x, y) lies in which tissue core and TMA, with which label.

A CSV with a header and (at least) the columns ``x, y, core, tma, label``; :func:`align_annotations` matches
its rows to the spectra of an imzML measurement by coordinates. Every malformed row is a ``ValueError`` that
names the row and the problem.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Annotations", "align_annotations", "read_annotations"]


@dataclass(frozen=True)
class Annotations:
    """One row per annotated spot: ``x``, ``y`` (int), ``core``, ``tma``, ``label`` (str arrays)."""

    x: np.ndarray
    y: np.ndarray
    core: np.ndarray
    tma: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


_COLUMNS = ("x", "y", "core", "tma", "label")


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Read an annotation CSV with (at least) the columns ``x, y, core, tma, label`` (header required).

    ``x, y`` are the imzML spot coordinates; ``core`` and ``tma`` identify the tissue core and the TMA (one
    measurement); ``label`` is the class. Core ids are made unique per TMA (``tma/core``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation table not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        sample = f.read(4096)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(f, dialect=dialect)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in _COLUMNS if c not in fields]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {missing}; expected header {', '.join(_COLUMNS)}, "
                             f"got {reader.fieldnames}")
        cols: dict[str, list[str]] = {c: [] for c in _COLUMNS}
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            for c in _COLUMNS:
                if row.get(c, "") == "":
                    raise ValueError(f"{path.name}:{lineno}: empty {c!r}")
                cols[c].append(row[c])
    if not cols["x"]:
        raise ValueError(f"{path.name} has a header but no rows")
    try:
        x = np.asarray([int(float(v)) for v in cols["x"]], np.int64)
        y = np.asarray([int(float(v)) for v in cols["y"]], np.int64)
    except ValueError as exc:
        raise ValueError(f"{path.name}: x and y must be integers ({exc})") from None
    tma = np.asarray(cols["tma"])
    core = np.asarray([f"{t}/{c}" for t, c in zip(cols["tma"], cols["core"], strict=True)])
    xy = np.stack([x, y], 1)
    if len(np.unique(xy, axis=0)) != len(xy):
        raise ValueError(f"{path.name}: duplicate (x, y) rows; each spot must be annotated once")
    return Annotations(x=x, y=y, core=core, tma=tma, label=np.asarray(cols["label"]))


def align_annotations(coordinates: np.ndarray, annotations: Annotations) -> np.ndarray:
    """Row index into ``coordinates`` (n, 2+) of each annotation row (matching x and y).

    Spectra without annotation are simply not used (as for the thesis's ROI-only task ADSQ). Annotation rows
    that match no spectrum are an error: coordinates of table and measurement do not belong together.
    """
    lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(np.asarray(coordinates)[:, :2])}
    rows = np.asarray([lookup.get((int(a), int(b)), -1) for a, b in zip(annotations.x, annotations.y,
                                                                         strict=True)])
    bad = np.flatnonzero(rows < 0)
    if len(bad):
        ex = ", ".join(f"({annotations.x[i]}, {annotations.y[i]})" for i in bad[:5])
        cx, cy = np.asarray(coordinates)[:, 0], np.asarray(coordinates)[:, 1]
        raise ValueError(
            f"{len(bad)} of {len(rows)} annotated spots have no spectrum in the measurement, e.g. {ex}; "
            f"the imzML covers x {cx.min()}..{cx.max()}, y {cy.min()}..{cy.max()} - do the table and the "
            "measurement belong together?"
        )
    return rows
