"""`invertible ims synth|design|cv`: end to end on a tiny synthetic measurement, and clean user errors."""

from __future__ import annotations

import json

import pytest

from invertible.cli import main


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    assert main(["ims", "synth", "--preset", "adsq-like", "--quick", "--spectra", "96", "--bins", "400",
                 "--out", str(out), "--seed", "1"]) == 0
    return out


def test_synth_writes_imzml_and_csv(synth, capsys):
    assert (synth / "synthetic.imzML").is_file() and (synth / "synthetic.ibd").is_file()
    lines = (synth / "synthetic.csv").read_text().splitlines()
    assert lines[0].startswith("x,y,core,tma,label") and len(lines) == 97


def test_design(synth, tmp_path, capsys):
    assert main(["ims", "design", "--imzml", str(synth / "synthetic.imzML"), "--step", "20",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "receptive field of IsotopeNet: 49 bins" in out and "bins per 1 Da" in out
    assert json.loads((tmp_path / "design.json").read_text())["receptive_field"] == 49
    assert (tmp_path / "design.png").stat().st_size > 0


def test_cv_roc_lda(synth, tmp_path, capsys):
    assert main(["ims", "cv", "--imzml", str(synth / "synthetic.imzML"), "--annotations",
                 str(synth / "synthetic.csv"), "--model", "roc-lda", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ROC/LDA (worst / best K)" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"balanced_accuracy_spot", "balanced_accuracy_core"} <= set(metrics)
    assert (tmp_path / "figures" / "boxplot.png").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "roc-lda" and config["folds"] == 4 and config["data"]["n_spectra"] == 96
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ks = {r["run"] for r in records}  # one record per K and fold
    assert len(ks) > 1 and len(records) == 4 * len(ks) and all(r["method"] == "ROC/LDA" for r in records)
    assert "figures/boxplot.png" in (tmp_path / "report.md").read_text()


def test_cv_isotopenet_one_epoch(synth, tmp_path, capsys):
    assert main(["ims", "cv", "--imzml", str(synth / "synthetic.imzML"), "--annotations",
                 str(synth / "synthetic.csv"), "--model", "isotopenet", "--epochs", "1", "--repeats", "2",
                 "--threads", "1", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "IsotopeNet |" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["fold"]) for r in records] == [(f"run {i}", f) for i in (1, 2) for f in range(4)]
    assert all(len(r["train_loss"]) == 1 for r in records)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 1
    assert set(json.loads((tmp_path / "metrics.json").read_text())) >= {"model", "balanced_accuracy_spot"}


def test_user_errors_are_one_line(synth, tmp_path, capsys):
    assert main(["ims", "cv", "--imzml", str(tmp_path / "missing.imzML"), "--annotations",
                 str(synth / "synthetic.csv"), "--model", "roc-lda"]) == 2
    err = capsys.readouterr().err
    assert "error: imzML file not found" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,core,tma,label\n999,999,c,t,A\n")
    assert main(["ims", "cv", "--imzml", str(synth / "synthetic.imzML"), "--annotations", str(bad),
                 "--model", "roc-lda"]) == 2
    assert "have no spectrum in the measurement" in capsys.readouterr().err
