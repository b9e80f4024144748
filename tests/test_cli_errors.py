"""Every bad invocation of every command is one clear line on stderr and exit code 2, never a traceback.

Each row of :data:`BAD` is ``(id, argv, needle)``: the command line (``{name}`` placeholders are the fixture
files of :func:`files`) must exit with 2, write exactly one line on stderr, name the problem (``needle``,
case-insensitive) and show no traceback. Every row fails at validation: nothing trains. Rows marked
``guard`` already passed before this table existed and are kept as regression guards.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from invertible.cli import main

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Tiny trained runs (a flow, a classifier), a ReLU checkpoint, crafted checkpoints, bad data files."""
    from safetensors.torch import save_file

    from invertible.io import save_checkpoint
    from invertible.models.relu_nets import ToyMLP, relu_net_config

    root = tmp_path_factory.mktemp("bad")
    f = {"tmp": str(root)}
    f["flow"] = str(root / "flow")
    assert main([*FLOW, "--out", f["flow"]]) == 0
    f["clf"] = str(root / "clf")
    assert main([*CLF, "--out", f["clf"]]) == 0
    torch.manual_seed(0)
    net = ToyMLP()
    f["relu"] = str(root / "relu.safetensors")
    save_checkpoint(f["relu"], {f"model.{k}": v for k, v in net.state_dict().items()}, kind="relu_net",
                    config={"model": relu_net_config(net)})
    np.save(root / "points.npy", np.zeros((4, 2), np.float32))
    f["points"] = str(root / "points.npy")
    # crafted checkpoint headers: valid JSON of the wrong types
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    for name, header in {
        "config_list": {"format": "invertible-checkpoint", "kind": "relu_net", "config": "[1, 2]",
                        "meta": "{}", "sha256": "{}"},
        "model_str": {"format": "invertible-checkpoint", "kind": "relu_net", "config": '{"model": "x"}',
                      "meta": "{}", "sha256": "{}"},
        "model_args": {"format": "invertible-checkpoint", "kind": "vector_resflow",
                       "config": '{"model": {"dim": "two"}}', "meta": "{}", "sha256": "{}"},
        "meta_list": {"format": "invertible-checkpoint", "kind": "relu_net",
                      "config": json.dumps({"model": relu_net_config(net)}), "meta": "[]", "sha256": "[]"},
        "old_meta_str": {"meta": '"just a string"'},
    }.items():
        save_file(tensors, str(root / f"{name}.safetensors"), metadata=header)
        f[name] = str(root / f"{name}.safetensors")
    # data files that are not what their name says
    (root / "text.npz").write_text("not a zip archive\n")
    np.savez(root / "good.npz", images=np.zeros((20, 8, 8), np.uint8), labels=np.arange(20) % 10)
    blob = (root / "good.npz").read_bytes()
    (root / "trunc.npz").write_bytes(blob[: len(blob) // 2])
    with zipfile.ZipFile(root / "empty.npz", "w"):
        pass
    for name in ("text", "trunc", "empty"):
        f[f"{name}_npz"] = str(root / f"{name}.npz")
    (root / "a_file").write_text("x")
    f["file"] = str(root / "a_file")
    (root / "a_dir").mkdir()
    f["dir"] = str(root / "a_dir")
    f["unwritable"] = "/proc/invertible-cannot-write-here/x"
    np.savez(root / "other.npz", images=np.zeros((200, 12, 12), np.uint8), labels=np.arange(200) % 10)
    f["other_npz"] = str(root / "other.npz")  # another image size: the stored weights would not fit
    f["ice"] = str(root / "ice")
    assert main([*ICE, "--out", f["ice"]]) == 0
    # a tiny synthetic IMS measurement
    ims = root / "ims"
    assert main(["ims", "synth", "--quick", "--spectra", "48", "--bins", "300", "--tmas", "4", "--out", str(ims)]) == 0
    f["imzml"], f["csv"] = str(ims / "synthetic.imzML"), str(ims / "synthetic.csv")
    return f


FLOW = ["train-flow", "--data", "8gaussians", "--blocks", "1", "--hidden", "8", "--steps", "2", "--n-test", "50",
        "--eval-samples", "50", "--no-progress", "--threads", "1"]
CLF = ["train-classifier", "--data", "digits", "--epochs", "1", "--blocks", "1", "--channels", "4", "--hidden", "4",
       "--train-subset", "32", "--test-subset", "16", "--no-progress"]
ICE = ["train-ice", "--data", "digits", "--epochs", "1", "--n-train", "64", "--n-test", "32", "--batch-size", "32",
       "--no-progress"]
TF = ["train-flow", "--data", "8gaussians", "--steps", "1", "--no-progress"]
TC = ["train-classifier", "--data", "digits", "--epochs", "1", "--no-progress"]
TI = ["train-ice", "--data", "digits", "--epochs", "1", "--no-progress"]
CV = ["ims", "cv", "--imzml", "{imzml}", "--annotations", "{csv}", "--model", "roc-lda", "--no-progress"]
CVN = ["ims", "cv", "--imzml", "{imzml}", "--annotations", "{csv}", "--model", "isotopenet", "--no-progress"]
OUT = ["--out", "{out}"]  # a fresh folder per row

# (id, argv, needle); "guard" ids passed before the fixes and stay as regression guards
BAD: list[tuple[str, list[str], str]] = [
    # --device on a build without it, or no device at all
    ("reproduce-device-bogus", ["reproduce", "fig6.3", "--quick", "--device", "bogus", *OUT], "unknown device 'bogus'"),
    ("train-flow-device-bogus", [*TF, "--device", "bogus", *OUT], "unknown device 'bogus'"),
    ("train-classifier-device-bogus", [*TC, "--device", "gpu", *OUT], "unknown device 'gpu'"),
    ("train-ice-device-bogus", [*TI, "--device", "cuda:x", *OUT], "unknown device 'cuda:x'"),
    ("analyze-relu-device-bogus", ["analyze-relu", "{relu}", "--data", "{points}", "--device", "tpu"],
     "unknown device"),
    ("ims-cv-device-bogus", [*CVN, "--device", "bogus"], "unknown device 'bogus'"),
    # rates and weights: finite positive numbers
    ("train-flow-lr-inf", [*TF, "--lr", "inf", *OUT], "--lr"),
    ("guard-train-flow-lr-negative", [*TF, "--lr", "-0.1", *OUT], "lr"),
    ("guard-train-flow-ema-above-one", [*TF, "--ema", "1.5", *OUT], "ema_decay must lie in [0, 1)"),
    ("guard-train-flow-coeff-one", [*TF, "--coeff", "1", *OUT], "coeff must lie in the open interval (0, 1)"),
    ("guard-train-flow-coeff-nan", [*TF, "--coeff", "nan", *OUT], "coeff must lie in the open interval"),
    ("guard-train-classifier-lr-nan", [*TC, "--lr", "nan", *OUT], "lr"),
    ("train-classifier-lr-inf", [*TC, "--lr", "inf", *OUT], "--lr"),
    ("guard-train-classifier-coeff-two", [*TC, "--coeff", "2", *OUT], "coeff must lie in"),
    ("guard-train-ice-lr-zero", [*TI, "--lr", "0", *OUT], "lr"),
    ("train-ice-nuisance-lr-inf", [*TI, "--nuisance-lr", "inf", *OUT], "--nuisance-lr"),
    ("guard-train-ice-nuisance-weight-nan", [*TI, "--nuisance-weight", "nan", *OUT],
     "--nuisance-weight: expected a finite number >= 0, got 'nan'"),
    ("guard-train-ice-mle-weight-negative", [*TI, "--mle-weight", "-1", *OUT],
     "--mle-weight: expected a finite number >= 0, got '-1'"),
    # counts
    ("guard-train-flow-threads-negative", [*TF, "--threads", "-1", *OUT], "--threads"),
    ("guard-evaluate-batch-size-zero", ["evaluate", "{flow}", "--batch-size", "0"], "--batch-size"),
    ("spheres-unused-zero", ["spheres", "--unused", "0"], "--unused"),
    ("guard-spheres-unused-all", ["spheres", "--dim", "5", "--unused", "5"], "n_unused must lie in [0, dim)"),
    ("guard-spheres-radii-order", ["spheres", "--radii", "1.3,1.0"], "radii must satisfy 0 < R1 < R2"),
    ("guard-spheres-radii-nan", ["spheres", "--radii", "nan,1.0"], "radii must satisfy"),
    ("guard-spheres-budgets-negative", ["spheres", "--budgets", "0,-0.1"], "budget must be a finite number >= 0"),
    ("guard-train-classifier-channels-too-few", [*TC, "--init-squeeze", "--channels", "2", *OUT], "channels"),
    ("seed-negative", [*TF, "--seed", "-1", *OUT], "--seed"),
    ("guard-ims-design-t-iso", ["ims", "design", "--t-iso", "1.5"], "t_iso must lie in [0, 1)"),
    ("guard-ims-cv-mz-range-empty", [*CV, "--mz-min", "900", "--mz-max", "800"],
     "mz_range must be finite with lo < hi, got (900.0, 800.0)"),
    ("guard-ims-cv-folds-too-many", [*CV, "--folds", "5"], "needs >= 5 TMAs, got 4"),
    # paths: a folder where a file is expected, a file where a folder is expected, unwritable places
    ("train-flow-out-is-a-file", [*TF, "--out", "{file}"], "is a file"),
    ("train-classifier-out-is-a-file", [*TC, "--out", "{file}"], "is a file"),
    ("train-ice-out-is-a-file", [*TI, "--out", "{file}"], "is a file"),
    ("reproduce-out-is-a-file", ["reproduce", "fig6.3", "--quick", "--out", "{file}"], "is a file"),
    ("ims-synth-out-is-a-file", ["ims", "synth", "--quick", "--out", "{file}"], "is a file"),
    ("ims-design-out-is-a-file", ["ims", "design", "--out", "{file}"], "is a file"),
    ("ims-cv-out-is-a-file", [*CV, "--out", "{file}"], "is a file"),
    ("invert-out-is-a-file", ["invert", "{clf}", "--n", "1", "--iterations", "1", "--out", "{file}"], "is a file"),
    ("sample-out-is-a-dir", ["sample", "{flow}", "-n", "2", "--out", "{dir}"], "is a folder"),
    ("evaluate-json-is-a-dir", ["evaluate", "{flow}", "--json", "{dir}"], "is a folder"),
    ("spheres-json-is-a-dir", ["spheres", "--n-train", "50", "--n-test", "20", "--json", "{dir}"], "is a folder"),
    ("certify-json-is-a-dir", ["certify", "{clf}", "--fast", "--json", "{dir}"], "is a folder"),
    ("analyze-relu-json-is-a-dir", ["analyze-relu", "{relu}", "--data", "{points}", "--json", "{dir}"],
     "is a folder"),
    ("spheres-json-under-a-file", ["spheres", "--n-train", "50", "--n-test", "20", "--json", "{file}/x.json"],
     "not a folder"),
    ("guard-train-flow-out-unwritable", [*TF, "--out", "{unwritable}"], "cannot"),
    # data files that are not what they claim
    ("train-flow-data-text-npz", ["train-flow", "--data", "{text_npz}", "--steps", "1", *OUT], "text.npz"),
    ("train-flow-data-truncated-npz", ["train-flow", "--data", "{trunc_npz}", "--steps", "1", *OUT], "trunc.npz"),
    ("train-classifier-data-truncated-npz", ["train-classifier", "--data", "{trunc_npz}", *OUT], "trunc.npz"),
    ("train-ice-data-text-npz", ["train-ice", "--data", "{text_npz}", *OUT], "text.npz"),
    ("analyze-relu-data-truncated-npz", ["analyze-relu", "{relu}", "--data", "{trunc_npz}"], "trunc.npz"),
    ("guard-evaluate-data-empty-npz", ["evaluate", "{flow}", "--data", "{empty_npz}"], "empty.npz"),
    # commands that ran on input they cannot honour, or wrote somewhere else than asked
    ("invert-other-image-size", ["invert", "{clf}", "--data", "{other_npz}", "--n", "1", "--iterations", "1", *OUT],
     "trained on inputs of shape (1, 8, 8)"),
    ("guard-certify-other-image-size", ["certify", "{clf}", "--fast", "--data", "{other_npz}"], "shape (1, 8, 8)"),
    ("sample-out-not-png", ["sample", "{flow}", "-n", "2", "--out", "{tmp}/samples.txt"], "expected a .png"),
    ("evaluate-n-test-one", ["evaluate", "{flow}", "--n-test", "1"], "--n-test"),
    ("ims-synth-name-escapes-out", ["ims", "synth", "--quick", "--name", "../x", *OUT], "--name"),
    ("ims-synth-name-empty", ["ims", "synth", "--quick", "--name", "", *OUT], "--name"),
    ("ims-design-step-tiny", ["ims", "design", "--step", "1e-300"], "--step"),
    ("train-flow-threads-huge", [*TF, "--threads", "99999999999", *OUT], "--threads"),
    ("no-command", [], "name a command"),
    ("ims-no-subcommand", ["ims"], "name a subcommand"),
    ("guard-reproduce-no-ids", ["reproduce"], "name experiments"),
    ("guard-train-flow-resume-without-checkpoint", [*TF, "--resume", *OUT], "no checkpoint"),
    ("guard-train-flow-too-many-scales", ["train-flow", "--data", "{other_npz}", "--scales", "5", *OUT],
     "cannot be squeezed"),
    ("guard-train-classifier-hidden-per-stage", [*TC, "--blocks", "1", "--hidden", "8,8,8", *OUT],
     "one value per stage"),
    ("guard-evaluate-toy-flow-on-images", ["evaluate", "{flow}", "--data", "digits"], "does not match"),
    ("guard-invert-a-flow", ["invert", "{flow}"], "not a classifier"),
    ("guard-analyze-relu-a-flow", ["analyze-relu", "{flow}", "--data", "{points}"], "not a ReLU network"),
    # checkpoints of another kind, or with crafted metadata
    ("sample-a-classifier", ["sample", "{clf}", "-n", "2"], "not a density model"),
    ("evaluate-a-classifier", ["evaluate", "{clf}"], "not a density model"),
    ("guard-certify-a-flow", ["certify", "{flow}"], "not a classifier"),
    ("crafted-config-list", ["analyze-relu", "{config_list}", "--data", "{points}"], "config_list.safetensors"),
    ("guard-crafted-model-str", ["analyze-relu", "{model_str}", "--data", "{points}"], "model_str.safetensors"),
    ("crafted-model-args", ["sample", "{model_args}", "-n", "2"], "model_args.safetensors"),
    ("crafted-meta-list", ["analyze-relu", "{meta_list}", "--data", "{points}"], "meta_list.safetensors"),
    ("crafted-old-meta-str", ["evaluate", "{old_meta_str}"], "old_meta_str.safetensors"),
]
if not CUDA:  # on a CPU-only build CUDA is refused up front, never run on the CPU instead
    BAD += [
        ("reproduce-device-cuda", ["reproduce", "fig6.3", "--quick", "--device", "cuda", *OUT],
         "CUDA is not available"),
        ("train-flow-device-cuda", [*TF, "--device", "cuda", *OUT], "CUDA is not available"),
        ("train-classifier-device-cuda", [*TC, "--device", "cuda:0", *OUT], "CUDA is not available"),
        ("train-ice-device-cuda", [*TI, "--device", "cuda", *OUT], "CUDA is not available"),
        ("ims-cv-device-cuda", [*CVN, "--device", "cuda"], "CUDA is not available"),
    ]


@pytest.mark.parametrize("argv,needle", [pytest.param(a, n, id=i) for i, a, n in BAD])
def test_bad_invocation_is_one_clear_line(files, tmp_path, capsys, argv, needle):
    argv = [a.format(out=tmp_path / "run", **files) for a in argv]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("argv,run", [
    pytest.param(FLOW, "flow", id="train-flow"),
    pytest.param(CLF, "clf", id="train-classifier"),
    pytest.param(ICE, "ice", id="train-ice"),
])
def test_resume_with_other_data_is_refused_before_any_shape_error(files, capsys, argv, run):
    """``--resume`` with a data set of another shape: the engine's config check names the changed keys; the
    state-dict size mismatch that loading the weights would give is never reached. (A regression guard: the
    three commands reached the check before this test.)"""
    argv = [files["other_npz"] if a in ("8gaussians", "digits") else a for a in argv]
    capsys.readouterr()
    assert main([*argv, "--out", files[run], "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "cannot resume" in err and "data" in err and "size mismatch" not in err and "Traceback" not in err



def test_library_reasons_reach_the_cli_as_one_line(tmp_path, capsys):
    """Two refusals that live in the library (not in argparse): a non-npz MNIST file, and a synthetic m/z axis
    too short for any peptide (before: numpy's pickle message / 'high - low < 0')."""
    from invertible.cli import main

    bad = tmp_path / "x.npz"
    bad.write_text("not a zip")
    assert main(["train-classifier", "--data", "mnist", "--data-root", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "is not an .npz archive" in capsys.readouterr().err
    assert main(["ims", "synth", "--bins", "100", "--out", str(tmp_path / "s")]) == 2
    assert "need more than 20 Da" in capsys.readouterr().err


def test_out_of_range_shift_and_baseline_window_are_refused(tmp_path, capsys):
    """Accepted silently before: a random shift as wide as the image, a baseline window wider than a spectrum."""
    import numpy as np

    from invertible.cli import main
    from invertible.ims.preprocess import remove_baseline

    assert main(["train-classifier", "--data", "digits", "--shift", "8", "--epochs", "1", "--out",
                 str(tmp_path / "c"), "--no-progress"]) == 2
    assert "shift must lie in [0, 8)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="between 1 and the number of bins"):
        remove_baseline(np.ones((2, 50), np.float32), 51)
    assert remove_baseline(np.ones((2, 50), np.float32), 50).shape == (2, 50)


@pytest.mark.parametrize("argv, needle", [
    (["spheres", "--dim", "999999999999"], "not enough memory"),
    (["train-ice", "--nuisance-weight", "nan"], "--nuisance-weight: expected a finite number >= 0"),
    (["train-ice", "--mle-weight", "1e400"], "--mle-weight: expected a finite number >= 0"),
])
def test_found_by_the_option_fuzz(argv, needle, tmp_path, capsys):
    """Found by fuzzing every option with odd values: an allocation failure was a traceback; a NaN or infinite
    loss weight started training."""
    assert main([*argv, "--out", str(tmp_path / "o")] if argv[0] == "train-ice" else argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_asking_for_more_images_than_the_split_holds_is_said(tmp_path, capsys):
    """load_splits takes at most what a split has; the command says so instead of training on fewer silently."""
    from invertible.data.splits import load_splits

    splits = load_splits("digits", n_train=64, n_test=5000, downsample=False, seed=0)
    assert len(splits.x_test) == 359 and splits.shortfall(64, 359) is None
    assert splits.shortfall(64, 5000) == ("digits holds 64 training / 359 test images in this split: using 64 / 359 "
                                          "(asked for 64 / 5000)")
    argv = [*ICE[:7], "--n-test", "5000", *ICE[9:]]
    assert main([*argv, "--out", str(tmp_path / "ice")]) == 0
    assert "using 64 / 359 (asked for 64 / 5000)" in capsys.readouterr().out
