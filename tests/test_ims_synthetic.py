"""Synthetic TMA generator: layout, class signal, imzML round trip, calibration against real spectra."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from invertible.ims.annotations import align_annotations, read_annotations
from invertible.ims.imzml import read_imzml
from invertible.ims.synthetic import generate, preset, spectrum_statistics, tof_axis, write_imzml

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maldi" / "fiedler2009_subset.npz"


def test_tof_axis_law():
    mz = tof_axis(800.0, 27286, 0.0016183)
    np.testing.assert_allclose(np.diff(np.sqrt(mz)), 0.0016183, rtol=1e-9)
    assert np.mean(np.diff(mz)) == pytest.approx(0.163, abs=5e-4)  # section 7.3.2
    w = np.diff(mz)
    np.testing.assert_allclose(w[-1] / w[0], np.sqrt(mz[-1] / mz[0]), rtol=1e-3)  # width ~ sqrt(m)
    with pytest.raises(ValueError):
        tof_axis(-1.0, 10, 0.1)


def test_presets():
    adsq = preset("adsq-like")
    assert (adsq.n_spectra, adsq.n_bins, adsq.n_tmas) == (4672, 27286, 8)
    assert preset("lp-like").non_tumour_fraction > 0
    assert preset("adsq-like", quick=True).n_spectra < 500
    with pytest.raises(ValueError, match="unknown preset"):
        preset("cifar")


def test_layout_and_labels():
    cfg = preset("lp-like", quick=True)
    d = generate(cfg, seed=3)
    assert len(d) == cfg.n_spectra
    assert len(np.unique(d.tma)) == cfg.n_tmas
    assert len(np.unique(d.core)) == cfg.n_tmas * cfg.cores_per_tma
    for c in np.unique(d.core):  # one label and one TMA per core
        assert len(np.unique(d.label[d.core == c])) == 1 and len(np.unique(d.tma[d.core == c])) == 1
    for t in np.unique(d.tma):  # both classes in every TMA
        assert set(np.unique(d.label[d.tma == t])) == {0, 1}
    assert len(np.unique(np.stack([d.x, d.y], 1), axis=0)) == len(d)
    assert 0.1 < (~d.tumour).mean() < 0.4


def test_class_signal_sits_on_the_discriminative_peptides():
    cfg = replace(preset("adsq-like", quick=True), n_spectra=400, cores_per_tma=10, n_tmas=4)
    d = generate(cfg, seed=0)
    X = d.spectra(np.arange(len(d)))
    logx = np.log(X + 50)
    diff = np.abs(logx[d.label == 1].mean(0) - logx[d.label == 0].mean(0))
    peaks = d.peak_bins()
    others = np.setdiff1d(np.arange(len(d.peptide_mz)), d.discriminative)
    assert np.median(diff[peaks[d.discriminative]]) > 3 * np.median(diff[peaks[others]])
    assert np.median(diff[peaks[d.discriminative]]) > 0.1


def test_written_imzml_reads_back(tmp_path):
    cfg = replace(preset("adsq-like", quick=True), n_spectra=40, n_tmas=2, cores_per_tma=4, n_bins=300)
    imzml, csv = write_imzml(generate(cfg, seed=5), tmp_path)
    data = read_imzml(imzml)
    ref = generate(cfg, seed=5)
    expected = np.concatenate([s for _, s in ref.iter_batches()])
    np.testing.assert_allclose(data.mz, ref.mz)
    np.testing.assert_array_equal(data.spectra, expected)
    ann = read_annotations(csv)
    rows = align_annotations(data.coordinates, ann)
    np.testing.assert_array_equal(rows, np.arange(40))
    assert set(ann.label) == {"class0", "class1"}
    assert (expected >= 0).all()


@pytest.mark.skipif(not REAL.is_file(), reason="real MALDI spectra not available")
def test_calibration_against_real_tof_spectra():
    real_npz = np.load(REAL)
    real = spectrum_statistics(real_npz["mass"][0], real_npz["intensity"])
    cfg = replace(preset("adsq-like"), n_spectra=128, peak_height=0.0)  # baseline + noise only
    d = generate(cfg, seed=0)
    syn = spectrum_statistics(d.mz, d.spectra(np.arange(0, 128, 8)))
    assert real["sqrt_step_rel_sd"] < 1e-3 and syn["sqrt_step_rel_sd"] < 1e-3  # TOF law holds in both
    assert syn["sqrt_step"] == pytest.approx(real["sqrt_step"], rel=0.01)
    assert syn["baseline_power"] == pytest.approx(real["baseline_power"], abs=0.15)
    assert syn["noise_power"] == pytest.approx(real["noise_power"], abs=0.1)
    assert syn["noise_scale"] == pytest.approx(real["noise_scale"], rel=0.3)
    assert syn["tic_cv"] == pytest.approx(real["tic_cv"], abs=0.1)


def test_discriminative_scale_lowers_only_the_class_signal_peptides():
    a = generate(preset("adsq-like", quick=True), seed=3)
    b = generate(preset("adsq-like", quick=True, discriminative_scale=0.02), seed=3)
    diff = b._log_abundance - a._log_abundance
    assert np.allclose(diff[b.discriminative], np.log(0.02))
    assert np.allclose(np.delete(diff, b.discriminative), 0.0)
    with pytest.raises(ValueError, match="discriminative_scale"):
        preset("adsq-like", quick=True, discriminative_scale=0.0)
