"""Annotation tables of IMS measurements: which spot (x, y) lies in which tissue core and TMA, with which label.

A CSV with a header and (at least) the columns ``x, y, core, tma, label``; :func:`align_annotations` matches
its rows to the spectra of an imzML measurement by coordinates.

The table is parsed by the ``csv`` module in strict mode against a schema, and every line is accounted for:
the delimiter (``,``, ``;`` or tab) is the one that splits the header into the required columns; each
non-blank line is one record with exactly as many fields as the header (a quote may not span lines, so an
unterminated quote cannot swallow the rows after it); ``x`` and ``y`` are integers in 0..2**31-1 (``3`` or
``3.0``, never ``1.9``, ``inf`` or ``1e400``); ``core``, ``tma`` and ``label`` are non-empty; every (x, y) occurs
once. A violation is a ``ValueError`` naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import io
import os
import re
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
_DELIMITERS = (",", ";", "\t")
_INT = re.compile(r"[+]?([0-9]{1,10})(?:\.0*)?")
_MAX_COORD = 2**31 - 1


def _coordinate(value: str, column: str, where: str) -> int:
    m = _INT.fullmatch(value)
    v = int(m.group(1)) if m else None
    if v is None or v > _MAX_COORD:
        raise ValueError(f"{where}: {column!r} must be an integer in 0..{_MAX_COORD}, found {value!r}")
    return v


def _delimiter(header: str, name: str) -> str:
    """The delimiter that splits ``header`` into fields containing every required column."""
    for d in _DELIMITERS:
        try:
            fields = [c.strip().lower() for c in next(csv.reader([header], delimiter=d, strict=True))]
        except csv.Error:
            continue
        if all(c in fields for c in _COLUMNS):
            return d
    fields = [c.strip() for c in header.split(",")]
    missing = [c for c in _COLUMNS if c not in [f.lower() for f in fields]]
    raise ValueError(f"{name}: missing column(s) {missing}; expected header {', '.join(_COLUMNS)} (separated by "
                     f"',', ';' or tab), got {header.strip()[:200]!r}")


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Read an annotation CSV with (at least) the columns ``x, y, core, tma, label`` (header required).

    ``x, y`` are the imzML spot coordinates; ``core`` and ``tma`` identify the tissue core and the TMA (one
    measurement); ``label`` is the class. Core ids are made unique per TMA (``tma/core``). Blank lines are
    skipped; anything else that does not fit the schema (see the module docstring) is a ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation table not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path.name}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the table "
                         "as UTF-8 CSV") from None
    if "\0" in text:
        raise ValueError(f"{path.name}:{text[: text.index(chr(0))].count(chr(10)) + 1}: contains a NUL byte; "
                         "expected a text CSV")
    header = re.split(r"\r\n|\n|\r", text, maxsplit=1)[0]
    if not header.strip():
        raise ValueError(f"{path.name} is empty or starts with a blank line; expected the header "
                         f"{', '.join(_COLUMNS)}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(header, path.name), quotechar='"',
                        doublequote=True, strict=True)
    cols: dict[str, list[str]] = {c: [] for c in _COLUMNS}
    lines: list[int] = []
    seen: dict[tuple[int, int], int] = {}
    fields: list[str] | None = None
    last = 0  # physical line of the previous record
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            what = "an unterminated quote" if "end of data" in str(exc) else "malformed CSV"
            raise ValueError(f"{path.name}:{last + 1}: {what} ({exc}); expected one record per line, quotes "
                             "closed on the line they open") from None
        lineno, first = reader.line_num, last + 1
        last = lineno
        if lineno != first:
            raise ValueError(f"{path.name}:{first}: a quoted field contains a line break (lines {first}..{lineno}"
                             " form one record; an unbalanced quote?); expected one record per line")
        if fields is None:
            fields = [c.strip().lower() for c in record]
            dup = sorted({c for c in fields if c and fields.count(c) > 1})
            if dup:
                raise ValueError(f"{path.name}:1: the header names column {dup[0]!r} twice")
            pos = {c: fields.index(c) for c in _COLUMNS}
            continue
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # a blank line
        if len(record) != len(fields):
            raise ValueError(f"{path.name}:{lineno}: {len(record)} fields, the header has {len(fields)} "
                             f"({', '.join(fields)}); a stray or missing delimiter?")
        row = {c: record[pos[c]].strip() for c in _COLUMNS}
        where = f"{path.name}:{lineno}"
        for c in ("core", "tma", "label"):
            if not row[c]:
                raise ValueError(f"{where}: empty {c!r}")
        xy = (_coordinate(row["x"], "x", where), _coordinate(row["y"], "y", where))
        if xy in seen:
            raise ValueError(f"{where}: spot {xy} is annotated twice (first on line {seen[xy]}); duplicate (x, y) "
                             "rows; each spot must be annotated once")
        seen[xy] = lineno
        lines.append(lineno)
        for c in _COLUMNS:
            cols[c].append(row[c])
    if not lines:
        raise ValueError(f"{path.name} has a header but no rows")
    x = np.asarray([k[0] for k in seen], np.int64)
    y = np.asarray([k[1] for k in seen], np.int64)
    tma = np.asarray(cols["tma"])
    core = np.asarray([f"{t}/{c}" for t, c in zip(cols["tma"], cols["core"], strict=True)])
    return Annotations(x=x, y=y, core=core, tma=tma, label=np.asarray(cols["label"]))


def align_annotations(coordinates: np.ndarray, annotations: Annotations) -> np.ndarray:
    """Row index into ``coordinates`` (n, 2+) of each annotation row (matching x and y).

    Spectra without annotation are simply not used (as for the thesis's ROI-only task ADSQ). Annotation rows
    that match no spectrum are an error: coordinates of table and measurement do not belong together.
    """
    coordinates = np.asarray(coordinates)
    if coordinates.ndim != 2 or coordinates.shape[1] < 2:
        raise ValueError(f"coordinates must be (n, 2+) spot coordinates, got shape {coordinates.shape}")
    if len(coordinates) == 0:
        raise ValueError(f"the measurement has no spectra to align {len(annotations)} annotated spots with")
    lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(coordinates[:, :2])}
    rows = np.asarray([lookup.get((int(a), int(b)), -1) for a, b in zip(annotations.x, annotations.y,
                                                                         strict=True)], np.int64)
    bad = np.flatnonzero(rows < 0)
    if len(bad):
        ex = ", ".join(f"({annotations.x[i]}, {annotations.y[i]})" for i in bad[:5])
        cx, cy = coordinates[:, 0], coordinates[:, 1]
        raise ValueError(
            f"{len(bad)} of {len(rows)} annotated spots have no spectrum in the measurement, e.g. {ex}; "
            f"the imzML covers x {cx.min()}..{cx.max()}, y {cy.min()}..{cy.max()} - do the table and the "
            "measurement belong together?"
        )
    return rows
