"""Fuzzing the imzML reader and the annotation-table parser: a mutated input gives correct data or a documented
error (``ValueError``/``FileNotFoundError`` with a message), never another exception, a hang, or silently
different numbers.

Valid inputs come from the project's own writer (:func:`invertible.ims.synthetic.write_imzml`, continuous) and
pyimzML (processed), each also rewritten with inline cvParams as R MALDIquantForeign writes them (so that both
indexers, pyimzML's and our ElementTree one, are fuzzed). Mutations: of the ``.imzML`` text (elements deleted
or duplicated, attribute values garbled, accessions swapped, offsets/lengths/data types changed, attributes
dropped, text truncated or garbage inserted), of the ``.ibd`` bytes (bit flips, truncation, inserted/deleted
bytes, overwritten runs, appended bytes; with and without the declared SHA-1), and of annotation tables
(quotes, delimiters, characters and coordinate values, duplicated/deleted/blank lines, header damage).
Oracles: with a checksum declared, any change of the ``.ibd`` is an error; a duplicated spectrum or a changed
array offset/length is an error; whenever no error is raised, every spectrum (table row) the mutation could
not have touched reads exactly as before, and the output is finite, on a finite strictly increasing m/z axis.
The fast lane runs 60 examples per test (derandomized, no example database); ``@slow`` campaigns run 600.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from invertible.ims.annotations import read_annotations
from invertible.ims.imzml import index_imzml, read_imzml, resample
from invertible.ims.synthetic import generate, preset, write_imzml

pytestmark = pytest.mark.cpu_only

# A new campaign: INVERTIBLE_FUZZ_EXAMPLES=3000 pytest tests/test_ims_fuzz.py -m slow --hypothesis-seed=N (with
# the variable set, the examples are random from the seed instead of derandomized).
_CAMPAIGN = int(os.environ.get("INVERTIBLE_FUZZ_EXAMPLES", "0"))
FAST = settings(max_examples=60, deadline=3000, database=None, derandomize=not _CAMPAIGN,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(FAST, max_examples=_CAMPAIGN or 600)
DOCUMENTED = (ValueError, FileNotFoundError)
# pyimzML-written (indexed by pyimzML) and MALDIquantForeign-style inline cvParams (our ElementTree indexer)
MODES = ["continuous", "processed", "inline-continuous", "inline-processed"]


class Measurement:
    """A valid imzML measurement, its text, bytes, per-spectrum native arrays and XML blocks."""

    def __init__(self, imzml: Path):
        self.text = imzml.read_text(encoding="latin-1")
        self.ibd = imzml.with_suffix(".ibd").read_bytes()
        index = index_imzml(imzml)
        self.coords = [tuple(int(v) for v in c) for c in index.coordinates]
        raw = np.frombuffer(self.ibd, np.uint8)

        def arr(off, n, dt):
            return raw[off: off + n * np.dtype(dt).itemsize].view(dt)

        self.mz = [arr(o, n, index.mz_dtype) for o, n in zip(index.mz_offset, index.mz_length, strict=True)]
        self.int = [arr(o, n, index.int_dtype) for o, n in zip(index.int_offset, index.int_length, strict=True)]
        item = {"mz": np.dtype(index.mz_dtype).itemsize, "int": np.dtype(index.int_dtype).itemsize}
        self.extents = [((int(mo), int(mo) + int(ml) * item["mz"]), (int(io_), int(io_) + int(il) * item["int"]))
                        for mo, ml, io_, il in zip(index.mz_offset, index.mz_length, index.int_offset,
                                                   index.int_length, strict=True)]
        self.blocks = [(m.start(), m.end()) for m in re.finditer(r"<spectrum .*?</spectrum>", self.text, re.S)]
        assert len(self.blocks) == len(self.coords)

    def touched_by_text(self, a: int, b: int) -> set[int] | None:
        """Spectra whose XML block meets [a, b); None if the edit lies outside every block (global)."""
        hit = {i for i, (s, e) in enumerate(self.blocks) if a < e and b > s}
        inside = any(s <= a and b <= e for s, e in self.blocks)
        return hit if inside else None

    def touched_by_bytes(self, a: int, b: int) -> set[int]:
        """Spectra with an array meeting the byte range [a, b)."""
        return {i for i, ext in enumerate(self.extents) if any(s < b and a < e for s, e in ext)}


def _inline(src: Path, dst: Path) -> Path:
    """``src`` rewritten the way R MALDIquantForeign writes imzML: every referenceableParamGroupRef replaced by
    the group's cvParams, no group list. pyimzML cannot index that, so our ElementTree parser does."""
    t = src.read_text(encoding="latin-1")
    groups = {g.group(1): g.group(2).strip() for g in
              re.finditer(r'<referenceableParamGroup id="([^"]+)">(.*?)</referenceableParamGroup>', t, re.S)}
    t = re.sub(r'<referenceableParamGroupRef ref="([^"]+)"/>', lambda r: groups[r.group(1)], t)
    dst.write_text(re.sub(r"<referenceableParamGroupList.*?</referenceableParamGroupList>", "", t, flags=re.S),
                   encoding="latin-1")
    dst.with_suffix(".ibd").write_bytes(src.with_suffix(".ibd").read_bytes())
    return dst


def _no_checksum(text: str) -> str:
    return re.sub(r'<cvParam[^>]*accession="IMS:100009[01]"[^>]*/>', "", text)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cfg = replace(preset("adsq-like", quick=True), n_spectra=6, n_tmas=1, cores_per_tma=2, n_bins=16,
                  sqrt_step=0.05)
    cont, table = write_imzml(generate(cfg, seed=0), root / "cont")
    from pyimzml.ImzMLWriter import ImzMLWriter

    rng = np.random.default_rng(0)
    proc = root / "proc.imzML"
    with ImzMLWriter(str(proc), mode="processed", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for i, k in enumerate((5, 9, 7)):
            w.addSpectrum(np.sort(rng.uniform(100, 200, k)), rng.random(k).astype(np.float32), (i + 1, 1, 1))
    inline = {f"inline-{k}": _inline(p, root / f"inline-{k}.imzML") for k, p in (("continuous", cont),
                                                                                 ("processed", proc))}
    assert all(read_imzml(p).indexed_by == "elementtree" for p in inline.values())
    return {"continuous": Measurement(cont), "processed": Measurement(proc),
            **{k: Measurement(p) for k, p in inline.items()}, "table": table.read_text()}


def _read(text: str, ibd: bytes):
    """(data, None) or (None, error) for the mutated measurement; any other exception propagates."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.imzML"
        path.write_bytes(text.encode("latin-1", errors="replace"))
        path.with_suffix(".ibd").write_bytes(ibd)
        try:
            data = read_imzml(path, max_bytes=1 << 26)
            return data, None
        except DOCUMENTED as exc:
            assert str(exc), f"{type(exc).__name__} without a message"
            return None, exc


def _check(m: Measurement, data, untouched) -> None:
    """A successful reading is sane, and every untouched spectrum reads exactly as the original."""
    mz = np.asarray(data.mz)
    assert mz.ndim == 1 and np.all(np.isfinite(mz)) and np.all(np.diff(mz) > 0)
    spectra = np.asarray(data.spectra)
    assert spectra.shape == (len(data.coordinates), len(mz)) and np.all(np.isfinite(spectra))
    xy = [tuple(int(v) for v in c[:2]) for c in data.coordinates]
    assert len(set(xy)) == len(xy)
    for j in untouched:
        assert m.coords[j][:2] in xy, f"untouched spectrum {j} at {m.coords[j]} is missing"
        row = xy.index(m.coords[j][:2])
        expected = resample(m.mz[j], m.int[j], mz)
        np.testing.assert_array_equal(spectra[row], expected, err_msg=f"untouched spectrum {j} changed")


# ---------------------------------------------------------------------------------------------- imzML text

_ELEMENTS = ("cvParam", "spectrum", "binaryDataArray", "referenceableParamGroupRef", "referenceableParamGroup",
             "scan", "fileContent", "binaryDataArrayList", "scanList")
_ACCESSIONS = ("MS:1000521", "MS:1000523", "MS:1000519", "MS:1000522", "MS:1000514", "MS:1000515",
               "MS:1000574", "MS:1000576", "IMS:1000030", "IMS:1000031", "IMS:1000050", "IMS:1000051",
               "IMS:1000052", "IMS:1000080", "IMS:1000090", "IMS:1000091", "IMS:1000102", "IMS:1000103")
_VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-3, 1200).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "abc", "1.5", "1e3", "0x10", "nan", "inf", "-0", "१२", "16 ", "&amp;", "{}"]),
    st.text(alphabet="0123456789abcdefABCDEF-{}", max_size=40),
)


@st.composite
def xml_mutation(draw, m: Measurement):
    """(mutated text, (a, b) span of the edit in the original text, kind)."""
    t = m.text
    kind = draw(st.sampled_from(["delete", "duplicate", "value", "accession", "offset", "length", "dtype",
                                 "drop_attr", "truncate", "insert", "ref"]))
    if kind in ("delete", "duplicate"):
        tag = draw(st.sampled_from(_ELEMENTS))
        spans = [(x.start(), x.end()) for x in re.finditer(rf"<{tag}\b[^>]*/>|<{tag}\b[^>]*>.*?</{tag}>", t, re.S)]
        if not spans:
            return t, (0, 0), "identity"
        a, b = draw(st.sampled_from(spans))
        new = t[:a] + t[b:] if kind == "delete" else t[:b] + t[a:b] + t[b:]
        return new, (a, b), f"{kind} {tag}"
    if kind in ("value", "offset", "length"):
        pat = {"value": r'value="([^"]*)"', "offset": r'"IMS:1000102"[^>]*value="([^"]*)"',
               "length": r'"IMS:1000103"[^>]*value="([^"]*)"'}[kind]
        hits = list(re.finditer(pat, t))
        x = draw(st.sampled_from(hits))
        if kind == "value":
            v = draw(_VALUES)
            element = t[t.rfind("<", 0, x.start()): t.find(">", x.end()) + 1]
            old = x.group(1)
            if re.search(r'"IMS:100010[23]"', element) and not (re.fullmatch(r"\+?[0-9]+", v.strip())
                                                               and int(v) == int(old)):
                kind = "offset" if "IMS:1000102" in element else "length"
        else:
            v = str(max(0, int(x.group(1)) + draw(st.sampled_from([-8, -4, -1, 1, 4, 8, 64, -16]))))
        a, b = x.span(1)
        return t[:a] + v + t[b:], (a, b), kind
    if kind in ("accession", "dtype"):
        hits = list(re.finditer(r'accession="([^"]*)"', t))
        if kind == "dtype":
            hits = [h for h in hits if h.group(1) in _ACCESSIONS[:4]]
        x = draw(st.sampled_from(hits))
        v = draw(st.sampled_from(_ACCESSIONS[:4] if kind == "dtype" else _ACCESSIONS))
        a, b = x.span(1)
        return t[:a] + v + t[b:], (a, b), kind
    if kind == "ref":
        hits = list(re.finditer(r'ref="([^"]*)"', t))
        if not hits:  # inline cvParams: no group references
            return t, (0, 0), "identity"
        x = draw(st.sampled_from(hits))
        v = draw(st.sampled_from(["mzArray", "intensityArray", "scan1", "spectrum1", "nope", ""]))
        a, b = x.span(1)
        return t[:a] + v + t[b:], (a, b), kind
    if kind == "drop_attr":
        hits = list(re.finditer(r' (?:accession|value|ref|id)="[^"]*"', t))
        a, b = draw(st.sampled_from(hits)).span()
        return t[:a] + t[b:], (a, b), kind
    if kind == "truncate":
        a = draw(st.integers(0, len(t) - 1))
        return t[:a], (a, len(t)), kind
    a = draw(st.integers(0, len(t)))
    junk = draw(st.text(alphabet='<>/="&;!?x1 \n-', min_size=1, max_size=12))
    return t[:a] + junk + t[a:], (a, a), kind


def _xml_case(m: Measurement, mutation, *, checksum: bool) -> None:
    text, (a, b), kind = mutation
    if not checksum:
        text = _no_checksum(text)  # span positions refer to the original text, which keeps its checksum
    data, err = _read(text, m.ibd)
    event(f"{kind}: {'error' if err else 'read'}")
    if kind == "duplicate spectrum":
        assert err is not None, "a duplicated spectrum was read without error"
    if kind in ("offset", "length"):  # the writer packs arrays back to back: any other offset or length
        assert err is not None, f"a changed array {kind} was read without error"  # overlaps or leaves the file
    if err is None:
        touched = m.touched_by_text(a, b)
        untouched = [] if touched is None else [j for j in range(len(m.coords)) if j not in touched]
        _check(m, data, untouched)


@pytest.mark.parametrize("mode", MODES)
@FAST
@given(data=st.data())
def test_mutated_xml_gives_the_data_or_a_documented_error(files, mode, data):
    m = files[mode]
    _xml_case(m, data.draw(xml_mutation(m)), checksum=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("checksum", [True, False])
@SLOW
@given(data=st.data())
def test_mutated_xml_campaign(files, mode, checksum, data):
    m = files[mode]
    _xml_case(m, data.draw(xml_mutation(m)), checksum=checksum)


@pytest.mark.parametrize("mode", MODES)
@FAST
@given(value=_VALUES, which=st.sampled_from(["IMS:1000080", "IMS:1000091"]))
def test_garbled_uuid_or_checksum_is_always_an_error(files, mode, value, which):
    m = files[mode]
    x = re.search(rf'accession="{which}"[^>]*value="([^"]*)"', m.text)
    old = x.group(1)
    same = (value.strip().lower() == old.lower() if which == "IMS:1000091"
            else re.sub("[{}-]", "", value.strip().lower()) == re.sub("[{}-]", "", old.lower()))
    data, err = _read(m.text[: x.start(1)] + value + m.text[x.end(1):], m.ibd)
    assert (err is None) == same, f"{which} {old!r} -> {value!r}: {err!r}"
    if err is None:
        _check(m, data, range(len(m.coords)))


# ----------------------------------------------------------------------------------------------- ibd bytes


@st.composite
def ibd_mutation(draw, m: Measurement):
    """(mutated bytes, (a, b) byte range whose content changed, from-a-on flag for shifts/truncation)."""
    raw = m.ibd
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "append"]))
    if kind == "flip":
        p, bit = draw(st.integers(0, len(raw) - 1)), draw(st.integers(0, 7))
        return raw[:p] + bytes([raw[p] ^ (1 << bit)]) + raw[p + 1:], (p, p + 1), kind
    if kind == "truncate":
        p = draw(st.integers(0, len(raw) - 1))
        return raw[:p], (p, len(raw)), kind
    if kind == "append":
        return raw + draw(st.binary(min_size=1, max_size=64)), (len(raw), len(raw)), kind
    p = draw(st.integers(0, len(raw)))
    if kind == "insert":
        return raw[:p] + draw(st.binary(min_size=1, max_size=9)) + raw[p:], (p, len(raw) + 1), kind
    if kind == "delete":
        n = draw(st.integers(1, 9))
        return raw[:p] + raw[p + n:], (p, len(raw) + 1), kind
    junk = draw(st.binary(min_size=1, max_size=16))
    new = raw[:p] + junk + raw[p + len(junk):]
    return new[: len(raw)], (p, p + len(junk)), kind


def _ibd_case(m: Measurement, mutation, *, checksum: bool) -> None:
    ibd, (a, b), kind = mutation
    text = m.text if checksum else _no_checksum(m.text)
    data, err = _read(text, ibd)
    event(f"{kind}: {'error' if err else 'read'}")
    if ibd == m.ibd:
        assert err is None
    elif checksum:
        assert err is not None, f"{kind} of the .ibd at {a}..{b} read without error despite its SHA-1"
    if err is None:
        touched = m.touched_by_bytes(a, b) if ibd != m.ibd else set()
        _check(m, data, [j for j in range(len(m.coords)) if j not in touched])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("checksum", [True, False])
@FAST
@given(data=st.data())
def test_mutated_ibd_gives_the_data_or_a_documented_error(files, mode, checksum, data):
    m = files[mode]
    _ibd_case(m, data.draw(ibd_mutation(m)), checksum=checksum)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("checksum", [True, False])
@SLOW
@given(data=st.data())
def test_mutated_ibd_campaign(files, mode, checksum, data):
    m = files[mode]
    _ibd_case(m, data.draw(ibd_mutation(m)), checksum=checksum)


# ------------------------------------------------------------------------------------------ annotation table

_CHARS = st.sampled_from(list('",;\t .eE-+0123456789xyé\\\'\r') + ["inf", "nan", "1e400", "99999999999", '""'])
_COORDS = st.one_of(st.integers(-5, 2**40).map(str), st.floats().map(repr),
                    st.sampled_from(["1.9", "2.0", " 3 ", "+4", "inf", "-inf", "nan", "1e400", "", "x", "٣", "0x1"]))


@st.composite
def table_mutation(draw, table: str):
    """(mutated text, index of the edited line or None, kind); lines of ``table`` are split on newlines."""
    lines = table.rstrip("\n").split("\n")
    kind = draw(st.sampled_from(["char", "chars", "delete_char", "coord", "duplicate", "delete_line", "blank",
                                 "header", "crlf", "swap"]))
    i = draw(st.integers(1, len(lines) - 1))
    if kind in ("char", "chars", "delete_char", "header"):
        i = 0 if kind == "header" else i
        line = lines[i]
        p = draw(st.integers(0, len(line)))
        if kind == "delete_char" or (kind == "header" and draw(st.booleans())):
            new = line[:p] + line[p + 1:]
        else:
            ins = draw(_CHARS) if kind != "chars" else "".join(draw(st.lists(_CHARS, min_size=2, max_size=5)))
            new = line[:p] + ins + line[p:]
        return "\n".join(lines[:i] + [new] + lines[i + 1:]) + "\n", i, kind
    if kind == "coord":
        fields = lines[i].split(",")
        c = draw(st.integers(0, 1))
        fields[c] = draw(_COORDS)
        return "\n".join(lines[:i] + [",".join(fields)] + lines[i + 1:]) + "\n", i, kind
    if kind == "duplicate":
        return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:]) + "\n", i, kind
    if kind == "delete_line":
        return "\n".join(lines[:i] + lines[i + 1:]) + "\n", i, kind
    if kind == "blank":
        return "\n".join(lines[:i] + [""] + lines[i:]) + "\n", None, kind
    if kind == "crlf":
        return "\r\n".join(lines) + "\r\n", None, kind
    j = draw(st.integers(1, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n", None, kind


def _rows(table: str) -> list[tuple]:
    r = list(csv.DictReader(io.StringIO(table)))
    return [(int(d["x"]), int(d["y"]), f"{d['tma']}/{d['core']}", d["tma"], d["label"]) for d in r]


def _table_case(table: str, mutation) -> None:
    text, edited, kind = mutation
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.csv"
        path.write_bytes(text.encode("utf-8"))
        try:
            ann = read_annotations(path)
        except DOCUMENTED as exc:
            event(f"{kind}: error")
            assert str(exc)
            assert kind not in ("blank", "crlf", "swap"), f"{kind}: a harmless edit was refused: {exc}"
            return
    event(f"{kind}: read")
    assert kind != "duplicate", "a duplicated row was read without error"
    got = list(zip(ann.x.tolist(), ann.y.tolist(), ann.core.tolist(), ann.tma.tolist(), ann.label.tolist(),
                   strict=True))
    original = _rows(table)
    data_lines = [ln for ln in text.replace("\r\n", "\n").split("\n")[1:] if ln.strip()]
    assert len(got) == len(data_lines), f"{kind}: {len(data_lines)} rows in the table, {len(got)} read"
    if kind == "swap":
        assert sorted(got) == sorted(original)
        return
    if kind == "delete_line":
        assert got == original[: edited - 1] + original[edited:]
        return
    for k, row in enumerate(got):
        if edited is None or edited == 0 or k != edited - 1:
            assert row == original[k], f"{kind}: untouched row {k + 1} changed: {row} != {original[k]}"
        else:  # the edited row: what one csv record of that line says, with integer coordinates
            fields = next(csv.reader([data_lines[k]], strict=True))
            head = [h.strip().lower() for h in text.split("\n")[0].split(",")]
            f = {h: fields[n].strip() for n, h in enumerate(head)}
            assert re.fullmatch(r"\+?[0-9]+(\.0*)?", f["x"]) and re.fullmatch(r"\+?[0-9]+(\.0*)?", f["y"])
            assert row == (int(float(f["x"])), int(float(f["y"])), f"{f['tma']}/{f['core']}", f["tma"], f["label"])


@FAST
@given(data=st.data())
def test_mutated_table_gives_the_rows_or_a_documented_error(files, data):
    _table_case(files["table"], data.draw(table_mutation(files["table"])))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_mutated_table_campaign(files, data):
    _table_case(files["table"], data.draw(table_mutation(files["table"])))
