"""Reading imzML measurements and annotation tables into one ``(n_spectra, n_bins)`` matrix.

An imzML measurement is an XML file (``.imzML``: coordinates, array offsets and data types) plus a binary file
(``.ibd``: the m/z and intensity arrays). In *continuous* mode all spectra share one m/z array; in *processed*
mode each spectrum has its own, and we resample every spectrum onto one m/z axis (linear interpolation for
profile data, which keeps peak heights; see :func:`resample`).

The XML is indexed with pyimzML. Files pyimzML cannot index (e.g. imzML written by R MALDIquantForeign, which
declares the data types inline instead of through ``referenceableParamGroupRef``, where pyimzML 1.5 raises
``AttributeError``) are indexed by a small ElementTree parser of our own, :func:`_index_elementtree`. The binary
arrays are then read straight from a memory map of the ``.ibd`` and streamed, spectrum by spectrum, into an
output matrix that can itself be a memory-mapped ``.npy`` cache, so that a measurement larger than memory
(tens of thousands of spectra x 27k bins) is read with flat memory.

Every problem with the input (missing or truncated ``.ibd``, unreadable XML, compressed arrays, duplicate
coordinates, annotation rows that match no spectrum) is raised as one ``ValueError``/``FileNotFoundError``
whose message says what was expected and what was found, never as a traceback from inside a dependency.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Annotations",
    "ImzMLData",
    "SpectrumIndex",
    "align_annotations",
    "index_imzml",
    "read_annotations",
    "read_imzml",
    "resample",
]

_DTYPES = {"32-bit float": "<f4", "64-bit float": "<f8", "32-bit integer": "<i4", "64-bit integer": "<i8"}
_DTYPE_ACC = {"MS:1000521": "<f4", "MS:1000523": "<f8", "MS:1000519": "<i4", "MS:1000522": "<i8"}
_NS = "{http://psi.hupo.org/ms/mzml}"


@dataclass(frozen=True)
class SpectrumIndex:
    """Where each spectrum's arrays lie in the ``.ibd``: offsets in bytes, lengths in values.

    Attributes: ``coordinates`` (n, 3) int (x, y, z, 1-based as in imzML); ``mz_offset``, ``mz_length``,
    ``int_offset``, ``int_length`` (n,) int64; ``mz_dtype``, ``int_dtype`` numpy dtype strings;
    ``continuous`` (all spectra share one m/z array); ``indexed_by`` ("pyimzml" or "elementtree").
    """

    coordinates: np.ndarray
    mz_offset: np.ndarray
    mz_length: np.ndarray
    int_offset: np.ndarray
    int_length: np.ndarray
    mz_dtype: str
    int_dtype: str
    continuous: bool
    indexed_by: str

    def __len__(self) -> int:
        return len(self.coordinates)


@dataclass
class ImzMLData:
    """A measurement on one m/z axis: ``spectra`` (n, d) float32 (possibly a read-only memmap), ``mz`` (d,)
    float64 increasing, ``coordinates`` (n, 3) int."""

    mz: np.ndarray
    spectra: np.ndarray
    coordinates: np.ndarray
    source: str = ""
    indexed_by: str = ""

    def __post_init__(self) -> None:
        if self.spectra.ndim != 2 or self.spectra.shape[1] != len(self.mz):
            raise ValueError(f"spectra must be (n, {len(self.mz)}), got {self.spectra.shape}")
        if len(self.coordinates) != len(self.spectra):
            raise ValueError(f"{len(self.coordinates)} coordinates for {len(self.spectra)} spectra")


# ----------------------------------------------------------------------------------------------- indexing


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix.lower() != ".imzml":
        raise ValueError(f"expected an .imzML file, got {path.name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"imzML file not found: {path}")
    ibd = path.with_suffix(".ibd")
    if not ibd.is_file():
        alt = [p for p in path.parent.glob(path.stem + ".*") if p.suffix.lower() == ".ibd"]
        if not alt:
            raise FileNotFoundError(f"binary file {ibd.name} not found next to {path} (imzML needs both)")
        ibd = alt[0]
    return path, ibd


def _index_pyimzml(path: Path) -> SpectrumIndex:
    from pyimzml.ImzMLParser import ImzMLParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = ImzMLParser(str(path), parse_lib="ElementTree")
    try:
        n = len(parser.coordinates)
        mz_off = np.asarray(parser.mzOffsets, dtype=np.int64).reshape(n)
        mz_len = np.asarray(parser.mzLengths, dtype=np.int64).reshape(n)
        continuous = bool(n) and bool(np.all(mz_off == mz_off[0]) and np.all(mz_len == mz_len[0]))
        return SpectrumIndex(
            coordinates=np.asarray(parser.coordinates, dtype=np.int64).reshape(n, 3),
            mz_offset=mz_off,
            mz_length=mz_len,
            int_offset=np.asarray(parser.intensityOffsets, dtype=np.int64).reshape(n),
            int_length=np.asarray(parser.intensityLengths, dtype=np.int64).reshape(n),
            mz_dtype=np.dtype(parser.mzPrecision).newbyteorder("<").str,
            int_dtype=np.dtype(parser.intensityPrecision).newbyteorder("<").str,
            continuous=continuous,
            indexed_by="pyimzml",
        )
    finally:
        parser.m.close()


def _params(elem: ET.Element, groups: dict[str, dict[str, str]]) -> dict[str, str]:
    """accession -> value of the cvParams of ``elem``, including referenced param groups."""
    out: dict[str, str] = {}
    for ref in elem.findall(f"{_NS}referenceableParamGroupRef"):
        out.update(groups.get(ref.get("ref", ""), {}))
    for p in elem.findall(f"{_NS}cvParam"):
        out[p.get("accession", "")] = p.get("value", "")
    return out


def _index_elementtree(path: Path) -> SpectrumIndex:
    """Index an imzML with the standard library only: inline cvParams and referenceable param groups."""
    groups: dict[str, dict[str, str]] = {}
    coords, mz_off, mz_len, in_off, in_len = [], [], [], [], []
    dtypes: dict[str, set[str]] = {"mz": set(), "int": set()}
    continuous_flag = None
    for _, elem in ET.iterparse(str(path), events=("end",)):
        tag = elem.tag
        if tag == f"{_NS}referenceableParamGroup":
            groups[elem.get("id", "")] = _params(elem, {})
        elif tag == f"{_NS}fileContent":
            acc = _params(elem, groups)
            continuous_flag = True if "IMS:1000030" in acc else False if "IMS:1000031" in acc else None
        elif tag == f"{_NS}spectrum":
            sp = _params(elem, groups)
            scan = elem.find(f"{_NS}scanList/{_NS}scan")
            if scan is not None:
                sp = {**sp, **_params(scan, groups)}
            if "IMS:1000050" not in sp or "IMS:1000051" not in sp:
                raise ValueError(f"spectrum {elem.get('id')!r} has no position x/y (IMS:1000050/51)")
            coords.append((int(sp["IMS:1000050"]), int(sp["IMS:1000051"]), int(sp.get("IMS:1000052") or 1)))
            arrays = elem.findall(f"{_NS}binaryDataArrayList/{_NS}binaryDataArray")
            found = {}
            for arr in arrays:
                acc = _params(arr, groups)
                if "MS:1000574" in acc:
                    raise ValueError(f"{path.name}: zlib-compressed arrays are not supported; write uncompressed")
                kind = "mz" if "MS:1000514" in acc else "int" if "MS:1000515" in acc else None
                if kind is None:
                    continue
                dt = [d for a, d in _DTYPE_ACC.items() if a in acc]
                if len(dt) != 1:
                    raise ValueError(f"spectrum {elem.get('id')!r}: cannot tell the {kind} array's data type")
                dtypes[kind].add(dt[0])
                found[kind] = (int(acc["IMS:1000102"]), int(acc["IMS:1000103"]))
            if set(found) != {"mz", "int"}:
                raise ValueError(f"spectrum {elem.get('id')!r} lacks an m/z or an intensity array")
            mz_off.append(found["mz"][0])
            mz_len.append(found["mz"][1])
            in_off.append(found["int"][0])
            in_len.append(found["int"][1])
            elem.clear()
    if not coords:
        raise ValueError(f"{path.name} contains no spectra")
    for kind in ("mz", "int"):
        if len(dtypes[kind]) != 1:
            raise ValueError(f"{path.name}: expected one {kind} data type, found {sorted(dtypes[kind])}")
    mz_off_a, mz_len_a = np.asarray(mz_off, np.int64), np.asarray(mz_len, np.int64)
    same = bool(np.all(mz_off_a == mz_off_a[0]) and np.all(mz_len_a == mz_len_a[0]))
    return SpectrumIndex(
        coordinates=np.asarray(coords, np.int64),
        mz_offset=mz_off_a,
        mz_length=mz_len_a,
        int_offset=np.asarray(in_off, np.int64),
        int_length=np.asarray(in_len, np.int64),
        mz_dtype=dtypes["mz"].pop(),
        int_dtype=dtypes["int"].pop(),
        continuous=same if continuous_flag is None else (continuous_flag and same),
        indexed_by="elementtree",
    )


def _declares_compression(path: Path) -> bool:
    """Whether the imzML declares zlib compression (MS:1000574) anywhere (streamed, constant memory)."""
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if b"MS:1000574" in tail + chunk:
                return True
            tail = chunk[-16:]
    return False


def index_imzml(path: str | os.PathLike) -> SpectrumIndex:
    """Index an imzML file (pyimzML first, our ElementTree parser when pyimzML fails) and check it against
    its ``.ibd``: every array must lie inside the file, coordinates must be unique."""
    imzml, ibd = _paths(path)
    try:
        index = _index_pyimzml(imzml)
    except Exception as first:  # pyimzML raises AttributeError/KeyError/RuntimeError on files it can't parse
        try:
            index = _index_elementtree(imzml)
        except ET.ParseError as exc:
            raise ValueError(f"{imzml.name} is not valid imzML XML ({exc}; pyimzML: {first!r})") from None
        except ValueError:
            raise
        except Exception as exc:  # e.g. a missing offset/length parameter or a non-numeric value
            raise ValueError(f"{imzml.name}: cannot index this imzML ({exc!r}; pyimzML: {first!r})") from None
    else:
        if _declares_compression(imzml):
            raise ValueError(f"{imzml.name}: zlib-compressed arrays are not supported; write uncompressed")
    if len(index) == 0:
        raise ValueError(f"{imzml.name} contains no spectra")
    size = ibd.stat().st_size
    mz_item, in_item = np.dtype(index.mz_dtype).itemsize, np.dtype(index.int_dtype).itemsize
    end = max(int((index.mz_offset + index.mz_length * mz_item).max()),
              int((index.int_offset + index.int_length * in_item).max()))
    if end > size:
        raise ValueError(
            f"{ibd.name} is truncated: the imzML index needs {end} bytes, the file has {size} "
            "(copy the .ibd again or re-export the measurement)"
        )
    if min(index.mz_offset.min(), index.int_offset.min()) < 0:
        raise ValueError(f"{imzml.name} has negative array offsets")
    xy = index.coordinates[:, :2]
    if len(np.unique(xy, axis=0)) != len(xy):
        raise ValueError(f"{imzml.name}: several spectra share one (x, y) coordinate; expected one per spot")
    return index


# --------------------------------------------------------------------------------------------- resampling


def resample(mz: np.ndarray, intensity: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Resample one profile spectrum onto ``axis`` by linear interpolation (zero outside its m/z range).

    Shapes: ``mz``, ``intensity`` (k,), ``axis`` (d,) -> (d,) float32. ``mz`` need not be sorted.
    """
    mz = np.asarray(mz, np.float64)
    intensity = np.asarray(intensity, np.float64)
    if len(mz) == 0:
        return np.zeros(len(axis), np.float32)
    order = np.argsort(mz, kind="stable")
    return np.interp(axis, mz[order], intensity[order], left=0.0, right=0.0).astype(np.float32)


def _tof_axis(lo: float, hi: float, n: int) -> np.ndarray:
    """n bins with equal steps in sqrt(m/z), the time-of-flight law (see :mod:`invertible.ims.synthetic`)."""
    axis = np.linspace(np.sqrt(lo), np.sqrt(hi), n) ** 2
    axis[0], axis[-1] = lo, hi
    return axis


# ------------------------------------------------------------------------------------------------ reading


def _cache_key(imzml: Path, ibd: Path, axis: np.ndarray | None, mz_range) -> str:
    h = hashlib.sha1()
    for p in (imzml, ibd):
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    if axis is not None:
        h.update(np.ascontiguousarray(axis, np.float64).tobytes())
    h.update(repr(mz_range).encode())
    return h.hexdigest()


def read_imzml(
    path: str | os.PathLike,
    *,
    mz_axis: np.ndarray | None = None,
    mz_range: tuple[float, float] | None = None,
    cache: str | os.PathLike | None = None,
    progress: Callable[[Iterable, str, int], Iterable] | None = None,
) -> ImzMLData:
    """Read an imzML measurement into ``ImzMLData`` with spectra (n, d) float32 on one m/z axis.

    Args:
        path: the ``.imzML`` file; its ``.ibd`` must lie beside it.
        mz_axis: target m/z axis (d,), increasing. Default: the shared axis of a continuous file; for a
            processed file the union of the spectra's m/z values when they share most of them (at most twice
            as many as the longest spectrum), else a TOF axis (equal steps in sqrt(m/z)) over the pooled m/z
            range with as many bins as the longest spectrum.
        mz_range: optional ``(lo, hi)`` crop of the axis, applied while reading.
        cache: folder for a memory-mapped cache (``spectra.npy``, ``mz.npy``, ``coordinates.npy``,
            ``meta.json``). Spectra are streamed into it, so memory stays flat; a later call with the same
            inputs reuses it. Without a cache the matrix is held in memory.
        progress: optional ``progress(iterable, desc, total)`` wrapper (e.g. a tqdm factory).

    Raises:
        FileNotFoundError: the ``.imzML`` or its ``.ibd`` is missing.
        ValueError: unreadable XML, truncated ``.ibd``, unsupported encoding, duplicate coordinates.
    """
    imzml, ibd = _paths(path)
    if mz_axis is not None:
        mz_axis = np.asarray(mz_axis, np.float64)
        if mz_axis.ndim != 1 or len(mz_axis) < 2 or np.any(np.diff(mz_axis) <= 0):
            raise ValueError("mz_axis must be a 1-d strictly increasing array with at least 2 values")
    cache_dir = Path(cache) if cache is not None else None
    if cache_dir is not None:
        key = _cache_key(imzml, ibd, mz_axis, mz_range)
        meta_path = cache_dir / "meta.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            if meta.get("key") == key and meta.get("complete"):
                return ImzMLData(
                    mz=np.load(cache_dir / "mz.npy"),
                    spectra=np.load(cache_dir / "spectra.npy", mmap_mode="r"),
                    coordinates=np.load(cache_dir / "coordinates.npy"),
                    source=str(imzml),
                    indexed_by=meta.get("indexed_by", ""),
                )
    index = index_imzml(imzml)
    raw = np.memmap(ibd, dtype=np.uint8, mode="r")

    def array(offset: int, length: int, dtype: str) -> np.ndarray:
        nbytes = int(length) * np.dtype(dtype).itemsize
        return raw[int(offset): int(offset) + nbytes].view(dtype)

    n = len(index)
    if index.continuous:
        native = array(index.mz_offset[0], index.mz_length[0], index.mz_dtype).astype(np.float64)
        if np.any(np.diff(native) <= 0):
            raise ValueError(f"{imzml.name}: the shared m/z array is not strictly increasing")
    else:
        native = None
    if mz_axis is None:
        if native is not None:
            mz_axis = native
        else:
            lo, hi, longest = np.inf, -np.inf, 0
            union: np.ndarray | None = np.empty(0)
            for i in range(n):
                m = array(index.mz_offset[i], index.mz_length[i], index.mz_dtype).astype(np.float64)
                if len(m):
                    lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
                longest = max(longest, int(index.mz_length[i]))
                if union is not None:
                    union = np.union1d(union, m)
                    if len(union) > 2 * longest:  # every spectrum has its own axis: resample to a TOF grid
                        union = None
            if not np.isfinite(lo) or hi <= lo or longest < 2:
                raise ValueError(f"{imzml.name}: the spectra hold no usable m/z values")
            # spectra share (a few) m/z values: their union loses nothing; otherwise a TOF grid
            mz_axis = union if union is not None else _tof_axis(lo, hi, longest)
    keep = slice(None)
    if mz_range is not None:
        lo, hi = mz_range
        mask = (mz_axis >= lo) & (mz_axis <= hi)
        if mask.sum() < 2:
            raise ValueError(f"mz_range {mz_range} keeps fewer than 2 bins of the axis "
                             f"[{mz_axis[0]:.2f}, {mz_axis[-1]:.2f}]")
        idx = np.flatnonzero(mask)
        keep = slice(idx[0], idx[-1] + 1)
        mz_axis = mz_axis[keep]
    d = len(mz_axis)
    same_axis = native is not None and (mz_axis.shape == native[keep].shape) and np.array_equal(
        mz_axis, native[keep])
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / "meta.json").unlink(missing_ok=True)
        out = np.lib.format.open_memmap(cache_dir / "spectra.npy", mode="w+", dtype=np.float32, shape=(n, d))
    else:
        out = np.empty((n, d), np.float32)
    rows = range(n)
    if progress is not None:
        rows = progress(rows, "reading imzML", n)
    for i in rows:
        inten = array(index.int_offset[i], index.int_length[i], index.int_dtype)
        if same_axis:
            if len(inten) != len(native):
                raise ValueError(f"{imzml.name}: spectrum {i} has {len(inten)} intensities for "
                                 f"{len(native)} m/z values")
            out[i] = inten[keep]
        else:
            m = array(index.mz_offset[i], index.mz_length[i], index.mz_dtype)
            if len(m) != len(inten):
                raise ValueError(f"{imzml.name}: spectrum {i} has {len(m)} m/z values and {len(inten)} "
                                 "intensities")
            out[i] = resample(m, inten, mz_axis)
    if not np.all(np.isfinite(out[: min(n, 64)])):
        raise ValueError(f"{imzml.name}: intensities contain NaN or inf")
    if cache_dir is not None:
        out.flush()
        del out
        np.save(cache_dir / "mz.npy", mz_axis)
        np.save(cache_dir / "coordinates.npy", index.coordinates)
        meta = {"key": key, "complete": True, "source": str(imzml), "n": n, "d": d,
                "indexed_by": index.indexed_by}
        from invertible.io import atomic_write_text

        atomic_write_text(cache_dir / "meta.json", json.dumps(meta, indent=2))
        out = np.load(cache_dir / "spectra.npy", mmap_mode="r")
    return ImzMLData(mz=mz_axis, spectra=out, coordinates=index.coordinates, source=str(imzml),
                     indexed_by=index.indexed_by)


# ------------------------------------------------------------------------------------------- annotations


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
