"""`invertible analyze-relu`, the chapter-3 data loaders and the fig3.1/fig3.4 registrations."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from invertible.analysis import layer_preimages
from invertible.cli import main
from invertible.data.arrays import load_cifar10, load_mnist_npz, load_model_inputs, to_rgb32
from invertible.io import save_checkpoint
from invertible.models.relu_nets import ThinCIFAR, ToyMLP, relu_net_config


def test_mnist_npz_and_padding(tmp_path):
    images = np.arange(4 * 28 * 28, dtype=np.uint64).reshape(4, 28, 28).astype(np.uint8)
    np.savez(tmp_path / "m.npz", images=images, labels=np.array([3, 1, 4, 1], dtype=np.uint8))
    x, y = load_mnist_npz(tmp_path / "m.npz")
    assert x.shape == (4, 1, 28, 28) and y.tolist() == [3, 1, 4, 1]
    assert torch.allclose(x[0, 0] * 255, torch.from_numpy(images[0]).float())
    rgb = to_rgb32(x)
    assert rgb.shape == (4, 3, 32, 32)
    assert torch.equal(rgb[:, 1, 2:30, 2:30], x[:, 0]) and rgb[:, :, :2].abs().max() == 0
    assert load_model_inputs(tmp_path / "m.npz", (3, 32, 32)).shape == (4, 3, 32, 32)
    np.savez(tmp_path / "bad.npz", pixels=images)
    with pytest.raises(ValueError, match="'images' and 'labels'"):
        load_mnist_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_mnist_npz(tmp_path / "missing.npz")


def test_cifar_pickles_load_safely(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 5), ("data_batch_2", 3), ("test_batch", 4)):
        batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    splits = load_cifar10(tmp_path)
    assert splits["train"][0].shape == (8, 3, 32, 32) and splits["test"][1].tolist() == [0, 1, 2, 3]
    assert 0 <= splits["train"][0].min() and splits["train"][0].max() <= 1

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_cifar10(tmp_path / "evil")


def _toy_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = ToyMLP()
    save_checkpoint(tmp_path / "toy.safetensors", {f"model.{k}": v for k, v in net.state_dict().items()},
                    kind="relu_net", config={"model": relu_net_config(net)})
    points = torch.randn(30, 2)
    np.save(tmp_path / "points.npy", points.numpy())
    return net, points


def test_analyze_relu_on_an_mlp_reports_spectra_and_preimages(tmp_path, capsys):
    net, points = _toy_checkpoint(tmp_path)
    rc = main(["analyze-relu", str(tmp_path / "toy.safetensors"), "--data", str(tmp_path / "points.npy"),
               "--n", "30", "--json", str(tmp_path / "out.json"), "--no-progress"])
    assert rc == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert [s["stage"] for s in out["stages"]] == ["dense1", "relu1", "dense2"]
    assert out["stages"][0]["out_features"] == 3 and out["stages"][0]["n_singular_values"] == 2
    want = layer_preimages(net, points)[0].fractions()  # all 30 points, order does not matter
    assert out["preimages"][0] == {"layer": "dense1", **want}
    assert "singleton" in capsys.readouterr().out


def test_analyze_relu_on_a_cnn_with_window(tmp_path):
    torch.manual_seed(0)
    net = ThinCIFAR()
    save_checkpoint(tmp_path / "thin.safetensors", {f"model.{k}": v for k, v in net.state_dict().items()},
                    kind="relu_net", config={"model": relu_net_config(net)})
    np.save(tmp_path / "x.npy", torch.rand(2, 3, 32, 32).numpy())
    rc = main(["analyze-relu", str(tmp_path / "thin.safetensors"), "--data", str(tmp_path / "x.npy"),
               "--n", "1", "--window", "2", "--json", str(tmp_path / "o.json"), "--no-progress"])
    assert rc == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["window"] == "input window 2x2" and len(out["stages"]) == 15
    assert all(s["n_singular_values"] == 12 for s in out["stages"][:-1])  # 2x2x3 window columns


def test_analyze_relu_user_errors(tmp_path, capsys):
    _toy_checkpoint(tmp_path)
    ckpt = str(tmp_path / "toy.safetensors")
    assert main(["analyze-relu", ckpt, "--data", str(tmp_path / "points.npy"), "--n", "0"]) == 2
    assert main(["analyze-relu", ckpt, "--data", str(tmp_path / "nothing.npy")]) == 2
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), dtype=np.float32))
    assert main(["analyze-relu", ckpt, "--data", str(tmp_path / "wrong.npy")]) == 2
    save_checkpoint(tmp_path / "plain.safetensors", {"w": torch.zeros(1)}, kind="weights", config={})
    assert main(["analyze-relu", str(tmp_path / "plain.safetensors"), "--data", str(tmp_path / "points.npy")]) == 2
    err = capsys.readouterr().err
    assert "argument --n: expected a positive integer" in err
    assert "the model expects (2,)" in err and "no model config" in err


def test_chapter_3_experiments_are_registered():
    import invertible.experiments.fig3_1 as fig3_1
    import invertible.experiments.fig3_4  # noqa: F401
    from invertible.experiments.registry import _REGISTRY, EXPERIMENT_MODULES

    assert {"invertible.experiments.fig3_1", "invertible.experiments.fig3_4"} <= set(EXPERIMENT_MODULES)
    assert {"fig3.1", "fig3.4"} <= set(_REGISTRY)
    x, y = fig3_1.two_circles(400, factor=0.5, noise=0.0, generator=torch.Generator().manual_seed(0))
    r = x.norm(dim=1)
    assert torch.allclose(r[y == 1], torch.tensor(0.5)) and torch.allclose(r[y == 0], torch.tensor(1.0))


def test_checkpoints_before_the_schema_still_load_and_foreign_weights_are_named(tmp_path):
    from safetensors.torch import save_file

    from invertible.training.runs import load_run

    torch.manual_seed(0)
    net = ToyMLP()
    save_file(dict(net.state_dict()), str(tmp_path / "old.safetensors"),
              metadata={"meta": json.dumps({"model": relu_net_config(net), "experiment": "fig3.1"})})
    loaded, ck = load_run(tmp_path / "old.safetensors")
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    bad = {f"model.{k}": v[..., :1] for k, v in net.state_dict().items()}
    save_checkpoint(tmp_path / "bad.safetensors", bad, kind="relu_net", config={"model": relu_net_config(net)})
    with pytest.raises(ValueError, match="do not fit a relu_net model"):
        load_run(tmp_path / "bad.safetensors")
