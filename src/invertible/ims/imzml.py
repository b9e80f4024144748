"""Reading imzML measurements and annotation tables into one ``(n_spectra, n_bins)`` matrix.

An imzML measurement is an XML file (``.imzML``: coordinates, array offsets and data types) plus a binary file
(``.ibd``: the m/z and intensity arrays). In *continuous* mode all spectra share one m/z array; in *processed*
mode each spectrum has its own, and we resample every spectrum onto one m/z axis (linear interpolation for
profile data, which keeps peak heights; see :func:`resample`).

The XML is indexed with pyimzML. Files pyimzML cannot index (e.g. imzML written by R MALDIquantForeign, which
declares the data types inline instead of through ``referenceableParamGroupRef``, where pyimzML 1.5 raises
``AttributeError``) are indexed by a small ElementTree parser of our own (:mod:`invertible.ims.imzml_index`).
The binary arrays are then read straight from a memory map of the ``.ibd`` and streamed, spectrum by spectrum, into an
output matrix that can itself be a memory-mapped ``.npy`` cache, so that a measurement larger than memory
(tens of thousands of spectra x 27k bins) is read with flat memory.

Before anything is read, the ``.ibd`` is checked against the index (:mod:`invertible.ims.ibd`): its UUID and
declared SHA-1/MD5, every array inside the file and disjoint from the others; every m/z array must be finite
and strictly increasing, every intensity finite, and the output must fit a memory budget (``max_bytes``).
XML with entity declarations (billion laughs, XXE) is refused before it is parsed.

Every problem with the input (missing or truncated ``.ibd``, unreadable XML, compressed arrays, duplicate
coordinates, a wrong UUID or checksum, overlapping arrays, non-finite values) is raised as one
``ValueError``/``FileNotFoundError`` whose message says what was expected and what was found, never as a
traceback from inside a dependency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invertible.ims.ibd import (
    CHECKSUMS,
    UUID_ACCESSION,
    check_budget,
    check_extents,
    check_mz,
    check_uuid,
    output_budget,
    verify_checksums,
)
from invertible.ims.imzml_index import (
    SpectrumIndex,
    _file_content,
    _index_elementtree,
    _index_pyimzml,
    _prescan,
)

__all__ = [
    "ImzMLData",
    "SpectrumIndex",
    "index_imzml",
    "read_imzml",
    "resample",
]


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



def index_imzml(path: str | os.PathLike, *, verify_checksum: bool = True) -> SpectrumIndex:
    """Index an imzML file (pyimzML first, our ElementTree parser when pyimzML fails) and check it against
    its ``.ibd``: the declared UUID, every array inside the file and disjoint from the others, unique
    coordinates, and (``verify_checksum``) the declared SHA-1/MD5 of the ``.ibd``."""
    imzml, ibd = _paths(path)
    compressed = _prescan(imzml)
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
        if compressed:
            raise ValueError(f"{imzml.name}: zlib-compressed arrays are not supported; write uncompressed")
    if len(index) == 0:
        raise ValueError(f"{imzml.name} contains no spectra")
    try:
        content = _file_content(imzml)
    except ET.ParseError as exc:
        raise ValueError(f"{imzml.name} is not valid imzML XML ({exc})") from None
    index = dataclasses.replace(index, uuid=content.get(UUID_ACCESSION),
                                checksums=tuple((a, v) for a, v in content.items() if a in CHECKSUMS))
    check_uuid(ibd, index.uuid, imzml.name)
    check_extents(index, ibd.stat().st_size, imzml.name, ibd.name)
    bad = (index.coordinates < 0) | (index.coordinates > 2**31 - 1)
    if bad.any():
        i = int(np.argmax(bad.any(1)))
        raise ValueError(f"{imzml.name}: spectrum {i} lies at position {tuple(index.coordinates[i].tolist())}; "
                         "expected coordinates in 0..2147483647")
    xy = index.coordinates[:, :2]
    if len(np.unique(xy, axis=0)) != len(xy):
        raise ValueError(f"{imzml.name}: several spectra share one (x, y) coordinate; expected one per spot")
    if verify_checksum:
        verify_checksums(ibd, dict(index.checksums), imzml.name)
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
    max_bytes: int | None = None,
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
        max_bytes: the largest output (n x d x 4 bytes) to produce. Default: ``$INVERTIBLE_IMZML_MAX_BYTES``
            if set (bytes, or e.g. ``16G``), else 4 GiB in memory and 64 GiB with ``cache`` (which must also
            fit the free disk space).

    Raises:
        FileNotFoundError: the ``.imzML`` or its ``.ibd`` is missing.
        ValueError: unreadable or unsafe XML, truncated ``.ibd``, a UUID or checksum that does not match,
            arrays outside the file or overlapping, non-finite or unsorted m/z, non-finite intensities,
            unsupported encoding, duplicate coordinates, an output over the memory budget.
    """
    imzml, ibd = _paths(path)
    if mz_axis is not None:
        mz_axis = np.asarray(mz_axis, np.float64)
        if (mz_axis.ndim != 1 or len(mz_axis) < 2 or not np.all(np.isfinite(mz_axis))
                or np.any(np.diff(mz_axis) <= 0)):
            raise ValueError("mz_axis must be a 1-d finite, strictly increasing array with at least 2 values")
    if mz_range is not None:
        try:
            lo, hi = (float(v) for v in mz_range)
        except (TypeError, ValueError):
            raise ValueError(f"mz_range must be two numbers (lo, hi), got {mz_range!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"mz_range must be finite with lo < hi, got {mz_range!r}")
    cache_dir = Path(cache) if cache is not None else None
    budget = output_budget(max_bytes, cached=cache_dir is not None)
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
    index = index_imzml(imzml)  # every array lies inside the .ibd, and no two overlap
    raw = np.memmap(ibd, dtype=np.uint8, mode="r")
    checked: set[tuple[int, int]] = set()

    def array(offset: int, length: int, dtype: str) -> np.ndarray:
        nbytes = int(length) * np.dtype(dtype).itemsize
        return raw[int(offset): int(offset) + nbytes].view(dtype)

    def where(i: int) -> str:
        return f"spectrum {i} at ({index.coordinates[i, 0]}, {index.coordinates[i, 1]})"

    def mz_of(i: int) -> np.ndarray:  # spectrum i's m/z array, checked finite and increasing (once per array)
        m = array(index.mz_offset[i], index.mz_length[i], index.mz_dtype)
        if (int(index.mz_offset[i]), len(m)) not in checked:
            check_mz(m, imzml.name, f"the m/z array of {where(i)}")
            checked.add((int(index.mz_offset[i]), len(m)))
        return m

    n = len(index)
    if index.continuous:
        native = array(index.mz_offset[0], index.mz_length[0], index.mz_dtype).astype(np.float64)
        check_mz(native, imzml.name, "the shared m/z array")
    else:
        native = None
    if mz_axis is None:
        if native is not None:
            mz_axis = native
        else:
            lo, hi, longest = np.inf, -np.inf, 0
            union: np.ndarray | None = np.empty(0)
            for i in range(n):
                m = mz_of(i).astype(np.float64)
                if len(m):
                    lo, hi = min(lo, float(m[0])), max(hi, float(m[-1]))
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
        check_budget(n, d, budget, imzml.name, cache_dir)
        (cache_dir / "meta.json").unlink(missing_ok=True)
        out = np.lib.format.open_memmap(cache_dir / "spectra.npy", mode="w+", dtype=np.float32, shape=(n, d))
    else:
        check_budget(n, d, budget, imzml.name, None)
        out = np.empty((n, d), np.float32)
    rows = range(n)
    if progress is not None:
        rows = progress(rows, "reading imzML", n)
    for i in rows:
        inten = array(index.int_offset[i], index.int_length[i], index.int_dtype)
        if same_axis:
            if len(inten) != len(native):
                raise ValueError(f"{imzml.name}: {where(i)} has {len(inten)} intensities for "
                                 f"{len(native)} m/z values")
            out[i] = inten[keep]
        else:
            m = mz_of(i)
            if len(m) != len(inten):
                raise ValueError(f"{imzml.name}: {where(i)} has {len(m)} m/z values and {len(inten)} "
                                 "intensities")
            out[i] = resample(m, inten, mz_axis)
        if not np.isfinite(out[i]).all():  # every spectrum, one row at a time (also float32 overflow)
            raise ValueError(f"{imzml.name}: {where(i)} has NaN or inf intensities (or values beyond float32); "
                             "expected finite values")
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
