"""imzML reading: round trips through pyimzML's writer, foreign files, and clear errors for broken input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from invertible.ims.annotations import align_annotations, read_annotations
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
