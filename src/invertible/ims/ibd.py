"""Checks of an imzML measurement's binary file (``.ibd``) against its index, before anything is read.

* :func:`check_uuid`: the first 16 bytes of the ``.ibd`` are the UUID the ``.imzML`` declares (IMS:1000080); a
  mismatch means the two files belong to different measurements.
* :func:`verify_checksums`: the SHA-1 (IMS:1000091) / MD5 (IMS:1000090) the ``.imzML`` declares, streamed in
  chunks.
* :func:`check_extents`: every array lies inside the file, after the UUID, and no two arrays overlap (m/z arrays
  may be shared between spectra; an intensity array is its own). A shifted or garbled offset thus fails here
  instead of being read as garbage.
* :func:`check_mz`: an m/z array is finite, in 0..1e9 and strictly increasing.
* :func:`output_budget` / :func:`check_budget`: the output matrix fits the memory budget (``max_bytes``, or the
  ``INVERTIBLE_IMZML_MAX_BYTES`` environment variable; 4 GiB in memory, 64 GiB memory-mapped).

Each failure is a ``ValueError`` that says what was expected and what was found.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_BYTES_CACHED",
    "MAX_BYTES_ENV",
    "check_budget",
    "check_extents",
    "check_mz",
    "check_uuid",
    "format_bytes",
    "output_budget",
    "verify_checksums",
]

UUID_ACCESSION = "IMS:1000080"
CHECKSUMS = {"IMS:1000091": ("SHA-1", "sha1", 40), "IMS:1000090": ("MD5", "md5", 32)}
MAX_BYTES_ENV = "INVERTIBLE_IMZML_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_BYTES_CACHED = 64 << 30
MAX_MZ = 1e9  # far above any measured m/z; float64 m/z read as 64-bit integers are ~4.6e18
_HEADER = 16  # an .ibd starts with the measurement's 16-byte UUID
_CHUNK = 8 << 20


def format_bytes(n: int) -> str:
    """``1000 B``, ``1.2 KiB``, ``4 GiB``."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
    raise AssertionError("unreachable")


def check_uuid(ibd: Path, declared: str | None, imzml_name: str) -> None:
    """The first 16 bytes of ``ibd`` must equal the UUID ``declared`` by the imzML (skipped if none is)."""
    if declared is None:
        return
    try:
        want = uuid.UUID(declared.strip()).bytes
    except ValueError:
        raise ValueError(f"{imzml_name} declares the universally unique identifier {declared!r}, which is not "
                         "a UUID (expected 32 hexadecimal digits such as {12345678-90ab-cdef-1234-567890abcdef})"
                         ) from None
    with ibd.open("rb") as f:
        found = f.read(_HEADER)
    if len(found) < _HEADER:
        raise ValueError(f"{ibd.name} is truncated: it has {len(found)} bytes, but an .ibd starts with the "
                         f"16-byte UUID {want.hex()} declared by {imzml_name}")
    if found != want:
        raise ValueError(f"the UUID declared by {imzml_name} ({want.hex()}) differs from the first 16 bytes of "
                         f"{ibd.name} ({found.hex()}): the .ibd belongs to another measurement or is corrupt")


def verify_checksums(ibd: Path, declared: dict[str, str], imzml_name: str) -> None:
    """Stream ``ibd`` through every checksum ``declared`` (accession -> hex digest) and compare."""
    todo = {}
    for acc, value in declared.items():
        if acc not in CHECKSUMS:
            continue
        label, algo, digits = CHECKSUMS[acc]
        if not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value.strip()):
            raise ValueError(f"{imzml_name} declares the ibd {label} {value!r}; expected {digits} hexadecimal "
                             "digits")
        todo[label] = (hashlib.new(algo), value.strip().lower())
    if not todo:
        return
    with ibd.open("rb") as f:
        while chunk := f.read(_CHUNK):
            for h, _ in todo.values():
                h.update(chunk)
    for label, (h, want) in todo.items():
        if h.hexdigest() != want:
            raise ValueError(f"the {label} checksum of {ibd.name} is {h.hexdigest()}, but {imzml_name} declares "
                             f"{want}: the .ibd is corrupt or was changed after writing (copy it again)")


def check_extents(index, size: int, imzml_name: str, ibd_name: str) -> None:
    """Every array of ``index`` (a :class:`~invertible.ims.imzml_index.SpectrumIndex`) lies in an ``.ibd`` of ``size``
    bytes, after its UUID, and no two overlap (except m/z arrays shared by several spectra)."""
    items = {"m/z": np.dtype(index.mz_dtype).itemsize, "intensity": np.dtype(index.int_dtype).itemsize}
    arrays = {"m/z": (index.mz_offset, index.mz_length), "intensity": (index.int_offset, index.int_length)}
    for kind, (off, length) in arrays.items():
        for what, values in (("offset", off), ("length", length)):
            if len(values) and values.min() < 0:
                i = int(np.argmax(values < 0))
                raise ValueError(f"{imzml_name}: spectrum {i} has a negative {kind} array {what} ({values[i]}); "
                                 "expected a value >= 0")
    need, worst = 0, ""
    for kind, (off, length) in arrays.items():
        # clip first so that the int64 arithmetic cannot overflow; a clipped value is beyond the file anyway
        ends = np.minimum(off, size + 1) + np.minimum(length, size + 1) * items[kind]
        i = int(np.argmax(ends))
        if len(ends) and ends[i] > need:
            need, worst = int(off[i]) + int(length[i]) * items[kind], f"the {kind} array of spectrum {i}"
    if need > size:
        raise ValueError(f"{ibd_name} is truncated: the imzML index needs {need} bytes ({worst} ends there), the "
                         f"file has {size} (copy the .ibd again or re-export the measurement)")
    starts, ends, names = [], [], []
    for kind, (off, length) in arrays.items():
        nbytes = length * items[kind]
        keep = nbytes > 0
        idx = np.flatnonzero(keep)
        s, e = off[keep], off[keep] + nbytes[keep]
        if kind == "m/z":  # spectra may share one m/z array: keep each distinct (offset, length) once
            _, first = np.unique(np.stack([s, e], 1), axis=0, return_index=True)
            idx, s, e = idx[first], s[first], e[first]
        starts.append(s)
        ends.append(e)
        names += [(kind, int(i)) for i in idx]
    s, e = np.concatenate(starts), np.concatenate(ends)
    if len(s) and s.min() < _HEADER:
        k = int(np.argmin(s))
        raise ValueError(f"{imzml_name}: the {names[k][0]} array of spectrum {names[k][1]} starts at byte "
                         f"{s[k]}, inside the 16-byte UUID that begins every .ibd; expected offsets >= 16")
    order = np.lexsort((e, s))
    s, e = s[order], e[order]
    clash = np.flatnonzero(s[1:] < e[:-1])
    if len(clash):
        a, b = order[clash[0]], order[clash[0] + 1]
        (ka, ia), (kb, ib) = names[a], names[b]
        raise ValueError(f"{imzml_name}: the {ka} array of spectrum {ia} (bytes {s[clash[0]]}..{e[clash[0]]}) "
                         f"overlaps the {kb} array of spectrum {ib} (bytes {s[clash[0] + 1]}..{e[clash[0] + 1]}) "
                         f"in {ibd_name}; expected disjoint arrays (a corrupt offset or length?)")


def check_mz(mz: np.ndarray, imzml_name: str, what: str) -> None:
    """``mz`` (k,) must be finite, in ``[0, MAX_MZ)`` and strictly increasing; ``what`` names the array."""
    bad = ~np.isfinite(mz)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{imzml_name}: {what} has the value {mz[i]} at index {i}; expected finite, strictly "
                         "increasing m/z values")
    out = (mz < 0) | (mz >= MAX_MZ)
    if out.any():
        i = int(np.argmax(out))
        raise ValueError(f"{imzml_name}: {what} has the value {mz[i]:.6g} at index {i}; expected m/z values in "
                         f"0..{MAX_MZ:.0e} (a misdeclared data type or a corrupt offset?)")
    if len(mz) > 1:
        step = np.diff(mz)
        if np.any(step <= 0):
            i = int(np.argmax(step <= 0))
            raise ValueError(f"{imzml_name}: {what} is not strictly increasing (m/z[{i}] = {mz[i]:.10g}, "
                             f"m/z[{i + 1}] = {mz[i + 1]:.10g}); expected finite, strictly increasing m/z values")


def output_budget(max_bytes: int | None, *, cached: bool) -> int:
    """The memory budget in bytes: ``max_bytes``, else ``$INVERTIBLE_IMZML_MAX_BYTES``, else 4 GiB (64 GiB for a
    memory-mapped cache). The variable takes an integer number of bytes, optionally with a K/M/G/T suffix."""
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive integer number of bytes, got {max_bytes!r}")
        return int(max_bytes)
    env = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not env:
        return DEFAULT_MAX_BYTES_CACHED if cached else DEFAULT_MAX_BYTES
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", env, flags=re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{MAX_BYTES_ENV}={env!r} is not a positive number of bytes (e.g. 8589934592 or 8G)")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def check_budget(n: int, d: int, budget: int, imzml_name: str, cache_dir: Path | None) -> None:
    """Refuse an ``(n, d)`` float32 output larger than ``budget`` (or than the free disk space of a cache)."""
    nbytes = 4 * int(n) * int(d)
    where = "memory-mapped cache" if cache_dir is not None else "memory"
    if nbytes > budget:
        raise ValueError(
            f"{imzml_name}: the output would be {n} spectra x {d} bins float32 = {format_bytes(nbytes)}, more than "
            f"the {where} budget of {format_bytes(budget)}; to allow it pass max_bytes={nbytes} (or more) or set "
            f"{MAX_BYTES_ENV}={nbytes}; or read through cache= (a memory-mapped file, default budget "
            f"{format_bytes(DEFAULT_MAX_BYTES_CACHED)}), or shrink the output with mz_range or a coarser mz_axis")
    if cache_dir is not None:
        free = shutil.disk_usage(cache_dir).free
        if nbytes > free:
            raise ValueError(f"{imzml_name}: the cached output needs {format_bytes(nbytes)}, but only "
                             f"{format_bytes(free)} are free in {cache_dir}; free space or choose another cache")
