"""The one checkpoint schema and the one run folder (invertible.io)."""

from __future__ import annotations

import json

import pytest
import torch

from invertible.io import (
    FORMAT_VERSION,
    RunFolder,
    atomic_write_text,
    config_differences,
    load_checkpoint,
    save_checkpoint,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "model.w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "model.flag": torch.tensor(True),
        "rng.0": torch.randint(0, 255, (16,), generator=g, dtype=torch.uint8),
        "half": torch.randn(5, generator=g).to(torch.bfloat16),
    }


def test_round_trip_keeps_kind_config_meta_and_tensors(tmp_path):
    t = _tensors()
    save_checkpoint(tmp_path / "c.safetensors", t, kind="vector_resflow", config={"dim": 2, "hidden": (8, 8)},
                    meta={"step": 3, "nll": float("nan")})
    ck = load_checkpoint(tmp_path / "c.safetensors")
    assert ck.kind == "vector_resflow"
    assert ck.config == {"dim": 2, "hidden": [8, 8]}
    assert ck.meta == {"step": 3, "nll": None}
    assert set(ck.tensors) == set(t)
    for k, v in t.items():
        assert ck.tensors[k].dtype == v.dtype and torch.equal(ck.tensors[k], v)
    assert ck.group("model").keys() == {"w", "flag"}
    assert FORMAT_VERSION >= 2


def test_a_flipped_byte_is_a_clear_error(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"model.w": torch.zeros(64, dtype=torch.float64)}, kind="k", config={})
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01  # inside the tensor data, which safetensors itself does not check
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256 mismatch in tensor.*model.w"):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False).tensors["model.w"].abs().sum() > 0


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="not a valid invertible checkpoint"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_legacy_checkpoint_without_schema_still_loads(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"model.w": torch.ones(2)}, str(path), metadata={"meta": json.dumps({"model": {"kind": "coupling"}})})
    ck = load_checkpoint(path)
    assert ck.config == {"kind": "coupling"} and torch.equal(ck.tensors["model.w"], torch.ones(2))


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"a": torch.ones(3)}, kind="k", config={"v": 1})

    def killed(tensors, filename, metadata=None):  # the process dies half-way through writing
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"a": torch.zeros(3)}, kind="k", config={"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(path).config == {"v": 1}
    atomic_write_text(tmp_path / "t.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "t.txt"]


def test_config_differences_names_dotted_keys():
    a = {"data": "8gaussians", "model": {"hidden": [8, 8], "coeff": 0.9}, "seed": 0}
    b = {"data": "2spirals", "model": {"hidden": [8, 8], "coeff": 0.8}, "seed": 0, "extra": 1}
    assert config_differences(a, b) == ["data", "extra", "model.coeff"]
    assert config_differences(a, dict(a)) == []
    assert config_differences({"h": (1, 2)}, {"h": [1, 2]}) == []


def test_run_folder_layout(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunFolder(tmp_path / "run").make()
    run.write_config({"seed": 1})
    for step in (1, 2, 3):
        run.log({"step": step, "loss": float(step)})
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.write_summary({"loss": float("inf")})
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    run.save_figure(fig, "curve")
    run.write_report("# hi")
    assert run.read_config() == {"seed": 1}
    assert run.read_summary() == {"loss": None}
    assert [p.name for p in run.figures()] == ["curve.png"]
    assert sorted(p.name for p in run.path.iterdir()) == [
        "config.json", "figures", "metrics.json", "metrics.jsonl", "report.md"]


def test_non_writer_run_folder_writes_nothing(tmp_path):
    run = RunFolder(tmp_path / "r", writer=False).make()
    run.write_config({"a": 1})
    run.log({"step": 1})
    run.save_checkpoint({"a": torch.ones(1)}, kind="k", config={})
    assert not (tmp_path / "r").exists()


def test_a_write_removes_the_temporaries_a_killed_writer_left(tmp_path):
    """Found by kill -9 seed 99: a process killed inside a checkpoint write leaves ``.checkpoint....tmp`` behind, and
    the resumed run used to keep it forever. The next write of the same file removes older temporaries only."""
    import os
    import time

    from invertible.io import atomic_write_text

    stale = tmp_path / ".metrics.json.abc123.tmp"
    stale.write_text("half a file")
    old = time.time() - 60
    os.utime(stale, (old, old))
    other = tmp_path / ".report.md.xyz.tmp"  # another file's temporary: not touched
    other.write_text("x")
    os.utime(other, (old, old))
    atomic_write_text(tmp_path / "metrics.json", "{}")
    assert not stale.exists() and other.exists()
    assert (tmp_path / "metrics.json").read_text() == "{}"
