"""Indexing an imzML file: where each spectrum's arrays lie in the ``.ibd`` (:class:`SpectrumIndex`).

pyimzML indexes most files; files it cannot index (e.g. imzML written by R MALDIquantForeign, which declares
the data types inline instead of through ``referenceableParamGroupRef``) are indexed by a small ElementTree
parser of our own, :func:`_index_elementtree`, which names every malformed value it meets. Before either parser
sees the XML, :func:`_prescan` refuses entity declarations (billion laughs, XXE). :func:`_file_content` reads
the declared UUID and checksums. The checks against the ``.ibd`` are in :mod:`invertible.ims.ibd`; the public
entry point is :func:`invertible.ims.imzml.index_imzml`.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SpectrumIndex"]

_DTYPE_ACC = {"MS:1000521": "<f4", "MS:1000523": "<f8", "MS:1000519": "<i4", "MS:1000522": "<i8"}
_NS = "{http://psi.hupo.org/ms/mzml}"


@dataclass(frozen=True)
class SpectrumIndex:
    """Where each spectrum's arrays lie in the ``.ibd``: offsets in bytes, lengths in values.

    Attributes: ``coordinates`` (n, 3) int (x, y, z, 1-based as in imzML); ``mz_offset``, ``mz_length``,
    ``int_offset``, ``int_length`` (n,) int64; ``mz_dtype``, ``int_dtype`` numpy dtype strings;
    ``continuous`` (all spectra share one m/z array); ``indexed_by`` ("pyimzml" or "elementtree");
    ``uuid`` (the declared IMS:1000080, or None) and ``checksums`` ((accession, hex digest) pairs declared).
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
    uuid: str | None = None
    checksums: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.coordinates)



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


def _int(value: str | None, what: str, spectrum: str | None, path: Path) -> int:
    """An integer attribute of the XML, or a ValueError naming it (fractions, text, |v| >= 2**62 refused)."""
    try:
        v = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = None
    if v is None or abs(v) >= 1 << 62:
        raise ValueError(f"{path.name}: spectrum {spectrum!r}: {what} must be an integer, found {value!r}")
    return v


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
            sid = elem.get("id")
            if "IMS:1000050" not in sp or "IMS:1000051" not in sp:
                raise ValueError(f"{path.name}: spectrum {sid!r} has no position x/y (IMS:1000050/51)")
            coords.append((_int(sp["IMS:1000050"], "position x", sid, path),
                           _int(sp["IMS:1000051"], "position y", sid, path),
                           _int(sp.get("IMS:1000052") or "1", "position z", sid, path)))
            arrays = elem.findall(f"{_NS}binaryDataArrayList/{_NS}binaryDataArray")
            found = {}
            for arr in arrays:
                acc = _params(arr, groups)
                if "MS:1000574" in acc:
                    raise ValueError(f"{path.name}: zlib-compressed arrays are not supported; write uncompressed")
                kind = "mz" if "MS:1000514" in acc else "int" if "MS:1000515" in acc else None
                if kind is None:
                    continue
                name = {"mz": "m/z", "int": "intensity"}[kind]
                dt = [d for a, d in _DTYPE_ACC.items() if a in acc]
                if len(dt) != 1:
                    raise ValueError(f"{path.name}: spectrum {sid!r}: cannot tell the {name} array's data type "
                                     f"(expected one of {', '.join(_DTYPE_ACC)}, found {len(dt)})")
                if kind in found:
                    raise ValueError(f"{path.name}: spectrum {sid!r} has two {name} arrays; expected one")
                dtypes[kind].add(dt[0])
                if "IMS:1000102" not in acc or "IMS:1000103" not in acc:
                    raise ValueError(f"{path.name}: spectrum {sid!r}: the {name} array lacks its external offset "
                                     "or array length (IMS:1000102/IMS:1000103)")
                found[kind] = (_int(acc["IMS:1000102"], f"the {name} array's external offset", sid, path),
                               _int(acc["IMS:1000103"], f"the {name} array's length", sid, path))
            if set(found) != {"mz", "int"}:
                raise ValueError(f"{path.name}: spectrum {sid!r} lacks an m/z or an intensity array")
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


def _prescan(path: Path) -> bool:
    """Stream the raw XML once (constant memory): refuse entity declarations (billion laughs, XXE) before any
    parser sees them; return whether zlib compression (MS:1000574) is declared anywhere."""
    tail, compressed = b"", False
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            window = tail + chunk
            if b"<!ENTITY" in window:
                raise ValueError(f"{path.name} declares XML entities (<!ENTITY ...>); imzML has none, and they are "
                                 "refused for safety (entity expansion, external entities)")
            compressed = compressed or b"MS:1000574" in window
            tail = chunk[-16:]
    return compressed


def _file_content(path: Path) -> dict[str, str]:
    """accession -> value of the ``fileContent`` cvParams (UUID, checksums); parsing stops right after it."""
    with path.open("rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if elem.tag == f"{_NS}fileContent":
                return _params(elem, {})
            if elem.tag == f"{_NS}spectrum":
                break
    return {}
