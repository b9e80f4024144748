"""imzML reading: round trips through pyimzML's writer, foreign files, and clear errors for broken input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from invertible.ims.annotations import Annotations, align_annotations, read_annotations
from invertible.ims.imzml import index_imzml, read_imzml, resample

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imzml"


def _write(path: Path, mzs, spectra, coords, mode: str) -> Path:
    from pyimzml.ImzMLWriter import ImzMLWriter

    with ImzMLWriter(str(path), mode=mode, mz_dtype=np.float64, intensity_dtype=np.float32,
                     spec_type="profile") as w:
        for mz, s, c in zip(mzs, spectra, coords, strict=True):
            w.addSpectrum(mz, s, c)
    return path


@pytest.fixture
def continuous(tmp_path):
    rng = np.random.default_rng(0)
    mz = np.linspace(100, 200, 50)
    spectra = rng.random((6, 50)).astype(np.float32)
    coords = [(x, y, 1) for y in (1, 2) for x in (1, 2, 3)]
    return _write(tmp_path / "c.imzML", [mz] * 6, spectra, coords, "continuous"), mz, spectra, coords


def test_continuous_round_trip(continuous):
    path, mz, spectra, coords = continuous
    data = read_imzml(path)
    assert data.indexed_by == "pyimzml"
    np.testing.assert_allclose(data.mz, mz)
    np.testing.assert_array_equal(data.spectra, spectra)
    np.testing.assert_array_equal(data.coordinates, np.asarray(coords))


def test_processed_spectra_resampled_to_common_axis(tmp_path):
    rng = np.random.default_rng(1)
    mzs = [np.sort(rng.uniform(100, 200, 40)) for _ in range(3)]
    spectra = [rng.random(40).astype(np.float32) for _ in range(3)]
    path = _write(tmp_path / "p.imzML", mzs, spectra, [(i + 1, 1, 1) for i in range(3)], "processed")
    axis = np.linspace(110, 190, 30)
    data = read_imzml(path, mz_axis=axis)
    assert data.spectra.shape == (3, 30)
    for i in range(3):
        np.testing.assert_allclose(data.spectra[i], np.interp(axis, mzs[i], spectra[i]), rtol=1e-6)
    default = read_imzml(path)  # every spectrum has its own m/z values -> TOF grid over the pooled range
    assert default.mz[0] == pytest.approx(min(m.min() for m in mzs))
    assert default.mz[-1] == pytest.approx(max(m.max() for m in mzs))
    assert len(default.mz) == 40


def test_crop_and_cache_reuse(continuous, tmp_path):
    path, mz, spectra, _ = continuous
    cache = tmp_path / "cache"
    a = read_imzml(path, mz_range=(120, 160), cache=cache)
    keep = (mz >= 120) & (mz <= 160)
    np.testing.assert_array_equal(np.asarray(a.spectra), spectra[:, keep])
    assert isinstance(a.spectra, np.memmap)
    stamp = (cache / "spectra.npy").stat().st_mtime_ns
    b = read_imzml(path, mz_range=(120, 160), cache=cache)
    assert (cache / "spectra.npy").stat().st_mtime_ns == stamp  # reused, not rewritten
    np.testing.assert_array_equal(np.asarray(b.spectra), np.asarray(a.spectra))
    c = read_imzml(path, mz_range=(100, 150), cache=cache)  # other inputs -> rebuilt
    assert c.spectra.shape[1] == int(((mz >= 100) & (mz <= 150)).sum())


@pytest.mark.skipif(not DATA.is_dir(), reason="shared data not available")
def test_foreign_files_that_pyimzml_cannot_parse_are_read():
    from pyimzml.ImzMLParser import ImzMLParser

    with pytest.raises(AttributeError):  # the dependency's failure that we work around
        ImzMLParser(str(DATA / "tiny_continuous.imzML"), parse_lib="ElementTree")
    c = read_imzml(DATA / "tiny_continuous.imzML")
    assert c.indexed_by == "elementtree"
    np.testing.assert_array_equal(c.mz, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(c.spectra, [[6, 7, 8, 9, 10], [10, 9, 8, 7, 6]])
    np.testing.assert_array_equal(c.coordinates[:, :2], [[1, 1], [2, 1]])
    p = read_imzml(DATA / "tiny_processed.imzML")  # m/z 1..5 and 6..10: union axis, zeros elsewhere
    np.testing.assert_array_equal(p.mz, np.arange(1, 11))
    np.testing.assert_array_equal(p.spectra, [[6, 7, 8, 9, 10, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 10, 9, 8, 7, 6]])


def test_missing_ibd(continuous):
    path = continuous[0]
    path.with_suffix(".ibd").unlink()
    with pytest.raises(FileNotFoundError, match=r"c\.ibd not found"):
        read_imzml(path)


def test_missing_imzml_and_wrong_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="imzML file not found"):
        read_imzml(tmp_path / "nope.imzML")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="expected an .imzML"):
        read_imzml(tmp_path / "x.txt")


def test_truncated_ibd(continuous):
    path = continuous[0]
    ibd = path.with_suffix(".ibd")
    ibd.write_bytes(ibd.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_imzml(path)


def test_garbage_xml(tmp_path):
    (tmp_path / "g.imzML").write_text("<mzML><run><spectrumList>")
    (tmp_path / "g.ibd").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not valid imzML"):
        read_imzml(tmp_path / "g.imzML")


def test_duplicate_coordinates(tmp_path):
    mz = np.linspace(1, 2, 5)
    path = _write(tmp_path / "d.imzML", [mz] * 2, np.ones((2, 5), np.float32), [(1, 1, 1), (1, 1, 1)],
                  "continuous")
    with pytest.raises(ValueError, match="share one"):
        index_imzml(path)


def test_annotations_and_mismatched_coordinates(tmp_path, continuous):
    path = continuous[0]
    csv = tmp_path / "a.csv"
    csv.write_text("x,y,core,tma,label\n1,1,c1,t1,A\n3,2,c2,t1,B\n")
    ann = read_annotations(csv)
    coords = read_imzml(path).coordinates
    np.testing.assert_array_equal(align_annotations(coords, ann), [0, 5])
    assert ann.core.tolist() == ["t1/c1", "t1/c2"]
    csv.write_text("x,y,core,tma,label\n1,1,c1,t1,A\n9,9,c2,t1,B\n")
    with pytest.raises(ValueError, match=r"1 of 2 annotated spots have no spectrum.*\(9, 9\)"):
        align_annotations(coords, read_annotations(csv))
    csv.write_text("x,y,core,label\n1,1,c1,A\n")
    with pytest.raises(ValueError, match="missing column.*tma"):
        read_annotations(csv)
    csv.write_text("x;y;core;tma;label\n1;1;c1;t1;A\n1;1;c1;t1;A\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_annotations(csv)


def test_resample_interpolates_and_zero_fills():
    out = resample(np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0]), np.array([0.5, 1.5, 2.5, 3.5]))
    np.testing.assert_allclose(out, [0, 15, 25, 0])


def test_compressed_and_incomplete_files_give_one_clear_error(continuous, tmp_path):
    path = continuous[0]
    text = path.read_text()
    z = tmp_path / "z.imzML"
    z.write_text(text.replace('accession="MS:1000576" name="no compression"',
                              'accession="MS:1000574" name="zlib compression"'))
    (tmp_path / "z.ibd").write_bytes(path.with_suffix(".ibd").read_bytes())
    with pytest.raises(ValueError, match="zlib-compressed"):
        read_imzml(z)
    n = tmp_path / "n.imzML"  # an offset parameter missing: neither parser can index it
    n.write_text(text.replace('accession="IMS:1000102"', 'accession="IMS:9999999"', 1))
    (tmp_path / "n.ibd").write_bytes(path.with_suffix(".ibd").read_bytes())
    with pytest.raises(ValueError, match="n.imzML"):
        read_imzml(n)


# ------------------------------------------------------------------------- silently-wrong inputs (hardening)


def _copy(src: Path, dst: Path, *, xml=None, ibd=None) -> Path:
    """``src`` (.imzML + .ibd) copied to ``dst`` with the XML text and/or the .ibd bytes transformed."""
    text = src.read_text(encoding="latin-1")
    data = src.with_suffix(".ibd").read_bytes()
    dst.write_text(xml(text) if xml else text, encoding="latin-1")
    dst.with_suffix(".ibd").write_bytes(ibd(data) if ibd else data)
    return dst


def _drop_checksum(text: str) -> str:
    import re

    return re.sub(r'<cvParam[^>]*accession="IMS:100009[01]"[^>]*/>', "", text)


def test_nan_after_the_first_64_spectra_is_an_error(tmp_path):
    mz = np.linspace(100, 200, 8)
    spectra = np.ones((70, 8), np.float32)
    spectra[67, 3] = np.nan
    path = _write(tmp_path / "nan.imzML", [mz] * 70, spectra, [(i + 1, 1, 1) for i in range(70)], "continuous")
    with pytest.raises(ValueError, match=r"spectrum 67 .*\(68, 1\).*NaN or inf"):
        read_imzml(path)
    spectra[67, 3] = np.inf
    path = _write(tmp_path / "inf.imzML", [mz] * 70, spectra, [(i + 1, 1, 1) for i in range(70)], "processed")
    with pytest.raises(ValueError, match="NaN or inf"):
        read_imzml(path, cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "meta.json").exists()  # a failed read leaves no reusable cache


def test_ibd_of_another_measurement_is_refused_by_its_uuid(continuous, tmp_path):
    path = continuous[0]
    other = _copy(path, tmp_path / "o.imzML", ibd=lambda b: bytes(16) + b[16:])
    with pytest.raises(ValueError, match=r"UUID.*o\.ibd.*00000000000000000000000000000000"):
        read_imzml(other)
    bad = _copy(path, tmp_path / "u.imzML", xml=lambda t: t.replace("{", "{X", 1))
    with pytest.raises(ValueError, match="universally unique identifier"):
        read_imzml(bad)


def test_checksum_is_verified_and_named(continuous, tmp_path):
    import hashlib
    import re

    path, _, spectra, _ = continuous
    raw = path.with_suffix(".ibd").read_bytes()
    flip = _copy(path, tmp_path / "f.imzML", ibd=lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:])
    with pytest.raises(ValueError, match=r"SHA-1.*f\.ibd"):
        read_imzml(flip)
    md5 = hashlib.md5(raw).hexdigest()

    def to_md5(text, value):
        return re.sub(r'accession="IMS:1000091" name="ibd SHA-1" value="[0-9A-Fa-f]*"',
                      f'accession="IMS:1000090" name="ibd MD5" value="{value}"', text)

    good = _copy(path, tmp_path / "m.imzML", xml=lambda t: to_md5(t, md5.upper()))
    np.testing.assert_array_equal(read_imzml(good).spectra, spectra)
    wrong = _copy(path, tmp_path / "w.imzML", xml=lambda t: to_md5(t, md5[::-1]))
    with pytest.raises(ValueError, match=r"MD5.*w\.ibd"):
        read_imzml(wrong)


def test_shifted_offsets_are_errors_not_garbage(continuous, tmp_path):
    path = continuous[0]

    def shift_mz(text):  # the shared m/z array starts at byte 16: point every spectrum one byte later
        return text.replace('name="external offset" value="16"', 'name="external offset" value="17"')

    shifted = _copy(path, tmp_path / "s.imzML", xml=lambda t: _drop_checksum(shift_mz(t)))
    with pytest.raises(ValueError, match="m/z"):
        read_imzml(shifted)
    rng = np.random.default_rng(3)
    mzs = [np.sort(rng.uniform(100, 200, 20)) for _ in range(3)]
    proc = _write(tmp_path / "p.imzML", mzs, [rng.random(20).astype(np.float32) for _ in range(3)],
                  [(i + 1, 1, 1) for i in range(3)], "processed")
    offsets = index_imzml(proc).int_offset

    def shift_int(text):  # the middle spectrum's intensities one byte later: they overlap the next array
        return text.replace(f'value="{offsets[1]}"', f'value="{offsets[1] + 1}"')

    with pytest.raises(ValueError, match="overlap"):
        read_imzml(_copy(proc, tmp_path / "q.imzML", xml=shift_int))
    neg = _copy(path, tmp_path / "n.imzML", xml=lambda t: t.replace(
        'name="external array length" value="50"', 'name="external array length" value="-50"', 1))
    with pytest.raises(ValueError, match="negative"):
        read_imzml(neg)


def test_non_finite_or_unsorted_mz_is_an_error(tmp_path):
    mz = np.linspace(100, 200, 6)
    ones = np.ones((2, 6), np.float32)
    coords = [(1, 1, 1), (2, 1, 1)]
    bad = mz.copy()
    bad[-1] = np.inf
    with pytest.raises(ValueError, match=r"m/z.*finite"):
        read_imzml(_write(tmp_path / "c.imzML", [bad] * 2, ones, coords, "continuous"))
    with pytest.raises(ValueError, match=r"m/z array of spectrum 1 .*inf.*expected finite"):
        read_imzml(_write(tmp_path / "p.imzML", [mz, bad], ones, coords, "processed"))
    with pytest.raises(ValueError, match=r"spectrum 0 .*strictly increasing"):
        read_imzml(_write(tmp_path / "u.imzML", [mz[::-1], mz], ones, coords, "processed"), mz_axis=mz)
    with pytest.raises(ValueError, match="finite"):
        read_imzml(_write(tmp_path / "ok.imzML", [mz] * 2, ones, coords, "continuous"),
                   mz_axis=np.array([100.0, np.inf]))


def test_output_larger_than_the_memory_budget_is_refused(continuous, tmp_path, monkeypatch):
    path, mz, spectra, _ = continuous  # 6 x 50 float32 = 1200 bytes
    with pytest.raises(ValueError, match=r"1\.17 KiB.*budget of 1000 B.*max_bytes.*INVERTIBLE_IMZML_MAX_BYTES"):
        read_imzml(path, max_bytes=1000)
    np.testing.assert_array_equal(read_imzml(path, max_bytes=1200).spectra, spectra)
    monkeypatch.setenv("INVERTIBLE_IMZML_MAX_BYTES", "1000")
    with pytest.raises(ValueError, match="budget"):
        read_imzml(path)
    monkeypatch.setenv("INVERTIBLE_IMZML_MAX_BYTES", "2000")
    np.testing.assert_array_equal(read_imzml(path).spectra, spectra)
    monkeypatch.setenv("INVERTIBLE_IMZML_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="INVERTIBLE_IMZML_MAX_BYTES"):
        read_imzml(path)
    monkeypatch.delenv("INVERTIBLE_IMZML_MAX_BYTES")
    with pytest.raises(ValueError, match="memory-mapped cache budget"):  # a longer requested axis, cached
        read_imzml(path, mz_axis=np.linspace(100, 200, 1000), max_bytes=20_000, cache=tmp_path / "cache")


def test_entity_declarations_are_refused(tmp_path):
    """Billion laughs and XXE: no entity is expanded or resolved, the file is refused quickly."""
    laughs = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
              + "".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10))
              + ']>\n<mzML xmlns="http://psi.hupo.org/ms/mzml"><run><spectrumList>&lol9;</spectrumList></run></mzML>')
    xxe = ('<?xml version="1.0"?>\n<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
           '<mzML xmlns="http://psi.hupo.org/ms/mzml"><run><spectrumList>&xxe;</spectrumList></run></mzML>')
    for name, text in (("laughs", laughs), ("xxe", xxe)):
        (tmp_path / f"{name}.imzML").write_text(text)
        (tmp_path / f"{name}.ibd").write_bytes(bytes(16))
        with pytest.raises(ValueError, match="entity"):
            read_imzml(tmp_path / f"{name}.imzML")


def test_malformed_numbers_in_the_xml_are_named(continuous, tmp_path):
    path = continuous[0]
    big = _copy(path, tmp_path / "b.imzML", xml=lambda t: t.replace(
        'name="external offset" value="16"', 'name="external offset" value="99999999999999999999999"', 1))
    with pytest.raises(ValueError, match="b.imzML"):
        read_imzml(big)
    frac = _copy(path, tmp_path / "x.imzML", xml=lambda t: t.replace(
        'name="position x" value="1"', 'name="position x" value="1.5"', 1))
    with pytest.raises(ValueError, match=r"position x.*'1\.5'"):
        read_imzml(frac)


# --------------------------------------------------------------------------- annotation tables (hardening)


def _table(tmp_path, text: str, name="t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unterminated_quote_is_an_error_not_63_lost_rows(tmp_path):
    rows = [f"{i},1,c{i},t1,A" for i in range(1, 65)]
    rows[1] = '2,1,c2,t1,"A'  # the quote swallows rows 3..64 into this label
    with pytest.raises(ValueError, match=r"t\.csv:3.*quote"):
        read_annotations(_table(tmp_path, "x,y,core,tma,label\n" + "\n".join(rows) + "\n"))
    rows[1] = '2,1,"c\n2",t1,A'  # a closed quote that spans a line break is also refused
    with pytest.raises(ValueError, match=r"t\.csv:3.*line break"):
        read_annotations(_table(tmp_path, "x,y,core,tma,label\n" + "\n".join(rows) + "\n"))


def test_coordinates_must_be_integers_in_range(tmp_path):
    for value in ("1.9", "inf", "nan", "1e400", "99999999999999999999", "-1", "x1", ""):
        with pytest.raises(ValueError, match=r"t\.csv:3: 'x'"):
            read_annotations(_table(tmp_path, f"x,y,core,tma,label\n1,1,c,t,A\n{value},2,c,t,A\n"))
    ann = read_annotations(_table(tmp_path, "x,y,core,tma,label\n1.0,1,c,t,A\n 2 ,1,c,t,A\n"))
    assert ann.x.tolist() == [1, 2]


def test_stray_comma_and_duplicates_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"t\.csv:3: 6 fields, the header has 5"):
        read_annotations(_table(tmp_path, "x,y,core,tma,label\n1,1,c,t,A\n2,1,c,t,A,\n"))
    with pytest.raises(ValueError, match=r"t\.csv:3: 4 fields"):
        read_annotations(_table(tmp_path, "x,y,core,tma,label\n1,1,c,t,A\n2,1,c,t\n"))
    with pytest.raises(ValueError, match=r"t\.csv:4.*\(1, 1\).*line 2"):
        read_annotations(_table(tmp_path, "x,y,core,tma,label\n1,1,c,t,A\n2,1,c,t,A\n1,1,c,t,B\n"))
    with pytest.raises(ValueError, match="column 'x' twice"):
        read_annotations(_table(tmp_path, "x,y,core,tma,label,x\n1,1,c,t,A,1\n"))
    with pytest.raises(ValueError, match="NUL"):
        read_annotations(_table(tmp_path, "x,y,core,tma,label\n1,1,c\0,t,A\n"))
    with pytest.raises(ValueError, match="UTF-8"):
        (tmp_path / "b.csv").write_bytes(b"x,y,core,tma,label\n1,1,\xff,t,A\n")
        read_annotations(tmp_path / "b.csv")
    extra = read_annotations(_table(tmp_path, "x,y,core,tma,label,tumour\n\n1,1,c,t,A,1\n\n"))  # blank lines
    assert len(extra) == 1 and extra.label.tolist() == ["A"]


def test_align_annotations_with_no_spectra_is_named():
    ann = Annotations(x=np.array([1]), y=np.array([1]), core=np.array(["t/c"]), tma=np.array(["t"]),
                      label=np.array(["A"]))
    with pytest.raises(ValueError, match="no spectra"):
        align_annotations(np.zeros((0, 3), np.int64), ann)


def test_implausible_positions_and_mz_values_are_errors(continuous, tmp_path):
    """A float64 m/z array declared as 64-bit integers reads as m/z ~4.6e18, increasing and finite."""
    path = continuous[0]
    ints = _copy(path, tmp_path / "i.imzML", xml=lambda t: t.replace(
        'accession="MS:1000523" name="64-bit float"', 'accession="MS:1000522" name="64-bit integer"', 1))
    with pytest.raises(ValueError, match=r"shared m/z array has the value 4\.6.*e\+18.*misdeclared data type"):
        read_imzml(ints)
    neg = _copy(path, tmp_path / "n.imzML", xml=lambda t: t.replace(
        'name="position x" value="1"', 'name="position x" value="-7"', 1))
    with pytest.raises(ValueError, match=r"spectrum 0 lies at position \(-7, 1, 1\)"):
        read_imzml(neg)


def test_a_spectrum_with_two_mz_arrays_is_ambiguous(tmp_path):
    """In inline-cvParam files (MALDIquantForeign style) a second m/z array used to replace the first silently."""
    if not DATA.is_dir():
        pytest.skip("shared data not available")
    text = (DATA / "tiny_processed.imzML").read_text(encoding="latin-1")
    first = text.index("<binaryDataArray>")
    end = text.index("</binaryDataArray>", first) + len("</binaryDataArray>")
    dup = text[:end] + text[first:end].replace('value="16"', 'value="56"') + text[end:]  # a second m/z array
    p = _copy(DATA / "tiny_processed.imzML", tmp_path / "two.imzML", xml=lambda _: dup)
    with pytest.raises(ValueError, match="has two m/z arrays"):
        read_imzml(p)
