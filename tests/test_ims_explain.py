"""Section 7.5 sensitivity maps: the gradient maths on models with known answers, peaks, isotope marks, the
scaler file and `invertible ims explain` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from invertible.cli import main
from invertible.ims.explain import (
    explain,
    input_gradients,
    isotope_marks,
    peak_sensitivity,
    pick_peaks,
    sensitivity_maps,
)
from invertible.ims.preprocess import StdScaler, load_scaler, save_scaler


def _linear(d: int, k: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, k).double()


def test_the_saliency_of_a_linear_model_is_its_centred_weights():
    model = _linear(7, 3)
    X = np.random.default_rng(0).normal(size=(10, 7))
    y = np.arange(10) % 3
    W = model.weight.detach().numpy()
    g = input_gradients(model, X, y)
    np.testing.assert_allclose(g, (W - W.mean(0))[y], rtol=0, atol=1e-12)
    maps, counts = sensitivity_maps(model, X, y, 3)
    np.testing.assert_allclose(maps, W - W.mean(0), atol=1e-12)
    assert counts.tolist() == [4, 3, 3]
    # log p_c: d/dx (z_c - logsumexp z) = W_c - sum_k p_k(x) W_k
    with torch.no_grad():
        p = torch.softmax(model(torch.as_tensor(X)), 1).numpy()
    np.testing.assert_allclose(input_gradients(model, X, y, score="log_prob"), W[y] - p @ W, atol=1e-12)
    with pytest.raises(ValueError, match="score must be one of"):
        input_gradients(model, X, y, score="prob")
    with pytest.raises(ValueError, match="one label per spectrum"):
        input_gradients(model, X, y[:3])
    with pytest.raises(ValueError, match="target classes must lie in"):
        input_gradients(model, X, y + 1)


def test_peaks_isotope_marks_and_peak_sensitivity():
    mz = np.linspace(800, 830, 601)  # 0.05 Da bins
    s = np.zeros_like(mz)
    for m, a in ((805.0, -3.0), (812.0, 2.0), (812.2, 1.9), (820.0, 1.0)):
        s[np.argmin(np.abs(mz - m))] = a
    bins = pick_peaks(mz, s, top=3, min_separation=0.5)
    np.testing.assert_allclose(mz[bins], [805.0, 812.0, 820.0])  # 812.2 is within 0.5 Da of a larger peak
    iso, ab = isotope_marks(850.0)
    assert iso[0] == 850.0 and ab.max() == 1.0 and len(iso) >= 2
    np.testing.assert_allclose(np.diff(iso), 1.003, atol=0.003)
    # a delta becomes the instrument's peak (a Gaussian of FWHM m / R, summing to one) ...
    delta = np.zeros_like(mz)
    delta[300] = 1.0
    p = peak_sensitivity(mz, delta, 3000.0)[0]
    assert abs(p.sum() - 1) < 1e-3 and p.argmax() == 300  # scipy truncates the kernel at 4 sigma
    sd = np.sqrt((p * (mz - mz[300]) ** 2).sum() / p.sum())
    assert abs(sd * 2 * np.sqrt(2 * np.log(2)) / (mz[300] / 3000) - 1) < 0.02  # FWHM = m / R
    # ... and bin-to-bin sign flips (a conv filter's derivative lobes) cancel
    flips = np.where(np.arange(len(mz)) % 2 == 0, 1.0, -1.0)
    assert np.abs(peak_sensitivity(mz, flips, 3000.0)[0][50:-50]).max() < 0.05


def test_explain_recovers_a_planted_isotope_pattern_of_a_linear_model():
    mz = np.linspace(800, 860, 1201)
    iso, ab = isotope_marks(830.0)
    w = np.zeros((2, len(mz)))
    for m, a in zip(iso, ab, strict=True):
        w[1] += a * np.exp(-0.5 * ((mz - m) / 0.08) ** 2)
    model = nn.Linear(len(mz), 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(w))
        model.bias.zero_()
    X = np.random.default_rng(1).normal(size=(6, len(mz)))
    smap = explain(model, X, np.array([0, 1] * 3), mz, ["a", "b"], top=3)
    top = smap.peaks[1]
    assert abs(top[0].mz - 830.0) < 0.06 and top[0].value > 0
    # supported: the isotopes whose weight is at least 1/4 of the peak's (the rule of the support count)
    assert top[0].isotope_support == int((ab >= 0.25).sum()) >= 2 and top[0].isotope_neighbours == 1
    assert abs(top[1].mz - iso[1]) < 0.06
    assert smap.peaks[0][0].value < 0  # the other class: the same pattern with the opposite sign
    assert "| b | 1 | 830.00 |" in smap.table()
    with pytest.raises(ValueError, match="bins but the m/z axis"):
        explain(model, X, np.zeros(6, int), mz[:-1])


def test_scaler_file_round_trip(tmp_path):
    sc = StdScaler().fit(np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32))
    save_scaler(tmp_path / "s.safetensors", sc, baseline_window=11)
    back, settings = load_scaler(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(back.scale_, sc.scale_)
    assert settings == {"baseline_window": 11}
    with pytest.raises(ValueError, match="not fitted"):
        save_scaler(tmp_path / "t.safetensors", StdScaler())


@pytest.mark.cpu_only
def test_cli_explain_end_to_end(tmp_path, capsys):
    from invertible.ims.evaluate import load_dataset
    from invertible.ims.models import IsotopeNet
    from invertible.ims.preprocess import SCALER_NAME
    from invertible.ims.training import IMSConfig, train_ims

    data = tmp_path / "data"
    assert main(["ims", "synth", "--quick", "--spectra", "32", "--bins", "300", "--out", str(data),
                 "--name", "s"]) == 0
    imzml, csv = data / "s.imzML", data / "s.csv"
    ds = load_dataset(imzml, csv, baseline_window=31)
    sc = StdScaler().fit(ds.X)
    torch.set_default_dtype(torch.float32)
    net = IsotopeNet(300, 2)
    train_ims(net, sc.transform(ds.X), ds.y, IMSConfig(epochs=1, batch_size=16), out=tmp_path / "model",
              generator=torch.Generator().manual_seed(0))
    save_scaler(tmp_path / "model" / SCALER_NAME, sc, baseline_window=31)
    out = tmp_path / "explain"
    capsys.readouterr()
    assert main(["ims", "explain", str(tmp_path / "model"), "--data", str(imzml), "--annotations", str(csv),
                 "--top", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| class0 | 1 |" in text and "model isotopenet" in text
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["peaks"]) == {"class0", "class1"} and all(len(v) == 2 for v in summary["peaks"].values())
    assert json.loads((out / "config.json").read_text())["baseline_window"] == 31  # from the scaler file
    assert (out / "figures" / "sensitivity.png").is_file() and "Peaks per class" in (out / "report.md").read_text()
    # the attribution to the measured intensities needs the pre-TIC spectra, which it reads back itself
    from invertible.ims.attribution import spectrum_tic

    tic = spectrum_tic(imzml, csv, baseline_window=31)
    assert tic.shape == (len(ds.y),) and np.all(tic > 0)
    assert main(["ims", "explain", str(tmp_path / "model"), "--imzml", str(imzml), "--annotations", str(csv),
                 "--attribution", "measured", "--top", "2", "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert "| class0 | 1 |" in capsys.readouterr().out
    assert "measured attribution" in (tmp_path / "m" / "report.md").read_text()
    assert main(["ims", "explain", str(tmp_path / "model"), "--imzml", str(imzml), "--annotations", str(csv),
                 "--mz-max", "820", "--no-progress"]) == 2
    assert "the model's scaler has 300 m/z bins" in capsys.readouterr().err


def test_sec7_5_is_registered():
    from invertible.experiments.registry import experiments

    assert {"sec7.5", "fig4.1", "table5.2"} <= set(experiments())
