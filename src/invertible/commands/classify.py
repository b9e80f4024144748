"""``invertible train-classifier``, ``invertible certify`` and ``invertible invert`` (thesis Section 4.3)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from invertible.commands._options import (
    add_device,
    add_json,
    add_out,
    add_progress,
    add_resume,
    add_seed,
    data_name,
    nonnegative_int,
    positive_float,
    positive_int,
    positive_int_list,
)


def _coeff(text: str) -> float | None:
    if text.lower() in ("none", "vanilla"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--coeff takes a number in (0, 1) or 'none', got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-classifier",
        help="train an i-ResNet (or its vanilla twin / a ResNet) image classifier",
        description="Train with SGD + momentum, weight decay 5e-4 and the step schedule of Appendix A.1 scaled to "
        "the epoch budget. Writes config.json, metrics.jsonl, checkpoint.safetensors (every epoch) and report.md "
        "into --out; --resume continues a killed run exactly.",
    )
    p.add_argument("--data", type=data_name, default="digits", help="digits, mnist, fashion-mnist, cifar10, or a path")
    p.add_argument("--data-root", default=None, help="folder/file of the named data set")
    p.add_argument("--arch", choices=("iresnet", "resnet"), default="iresnet")
    p.add_argument("--coeff", type=_coeff, default=0.9, help="spectral-norm coefficient c in (0,1), or 'none'")
    p.add_argument("--norm", choices=("actnorm", "batchnorm", "none"), default="actnorm")
    p.add_argument("--blocks", type=positive_int_list, default=None, help="residual blocks per stage, e.g. 13,13,13")
    p.add_argument("--channels", type=positive_int, default=16, help="channels after injective padding")
    p.add_argument("--hidden", type=positive_int_list, default=None, help="bottleneck width per stage, e.g. 32,64,64")
    p.add_argument("--init-squeeze", action="store_true", help="squeeze the input once before padding")
    p.add_argument("--n-power-iterations", type=positive_int, default=1)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--shift", type=nonnegative_int, default=None,
                   help="max random shift in pixels (default 2*min(H,W)//28)")
    p.add_argument("--train-subset", type=positive_int, default=None)
    p.add_argument("--test-subset", type=positive_int, default=None)
    add_seed(p)
    add_device(p)
    add_out(p, required=True)
    add_resume(p, help="continue the checkpoint in --out")
    add_progress(p)
    p.set_defaults(func=train)

    c = sub.add_parser(
        "certify",
        help="certify that a trained i-ResNet classifier is invertible",
        description="Per residual block: the operator norm of every convolution (Fig. 4.2) and the certified "
        "Lip(g_t) <= prod ||A_i||_2 (eq. 4.6). Verdict 'invertible (certified)' only if every bound is < 1; "
        "bi-Lipschitz bounds of the whole feature map (Lemma 4.6). Saves certificate.json next to CKPT.",
    )
    c.add_argument("checkpoint", type=Path, metavar="CKPT", help="checkpoint.safetensors or its run folder")
    c.add_argument("--fast", action="store_true", help="power iteration + FFT bounds instead of dense SVDs")
    add_json(c, help="where to save the certificate (JSON)")
    c.add_argument("--data", type=data_name, nargs="?", const="", default=None, metavar="NAME",
                   help="also measure the realized local Lip(g_t) on test images (no NAME: the training data set)")
    c.add_argument("--data-root", default=None)
    c.add_argument("--n", type=positive_int, default=32, help="test images for --data")
    c.set_defaults(func=certify)

    v = sub.add_parser(
        "invert",
        help="reconstruct images through the inverse of trained classifiers (Fig. 4.3, 4.4)",
        description="Inverts the feature map up to the head for test images with fixed-point iteration "
        "(Algorithm 1) and saves original/reconstruction grids, error vs iterations (fixed point and Anderson) "
        "and invert.json. Pass an i-ResNet and its vanilla twin to compare them.",
    )
    v.add_argument("checkpoints", type=Path, nargs="+", metavar="CKPT")
    v.add_argument("--data", type=data_name, default=None,
                   help="data set (default: the one the first model was trained on)")
    v.add_argument("--data-root", default=None)
    v.add_argument("--n", type=positive_int, default=10, help="number of test images")
    v.add_argument("--iterations", type=positive_int, default=100,
                   help="fixed-point iterations per block (thesis: 100)")
    add_out(v, help="output folder (default: <first CKPT folder>/invert)")
    v.set_defaults(func=invert)


def train(args: argparse.Namespace) -> int:
    from invertible.training.classification import ClassifierConfig, train_classifier

    if args.arch == "iresnet":
        model = {
            "channels": args.channels, "coeff": args.coeff, "norm": args.norm, "init_squeeze": args.init_squeeze,
            "n_power_iterations": args.n_power_iterations,
        }
        if args.hidden is not None:
            model["hidden"] = args.hidden
    else:
        model = {}
    if args.blocks is not None:
        model["blocks"] = args.blocks
    cfg = ClassifierConfig(
        data=args.data, data_root=args.data_root, arch=args.arch, model=model, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, shift=args.shift, train_subset=args.train_subset,
        test_subset=args.test_subset, seed=args.seed, device=args.device,
    )
    summary = train_classifier(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def certify(args: argparse.Namespace) -> int:
    from invertible.io import atomic_write_text
    from invertible.models.certify import certify_classifier
    model, meta = _load_classifier(args.checkpoint)
    cert = certify_classifier(model, exact=not args.fast)
    cfg = meta["config"]
    coeff = cfg["model"].get("coeff")
    print(f"{args.checkpoint}: {cfg['arch']} ({'vanilla' if coeff is None else f'c = {coeff}'}) on {cfg['data']}, "
          f"epoch {meta['epoch']}, test error {meta['metrics'].get('test_error', math.nan):.2f} %")
    print(cert.format())
    record = cert.to_dict()
    if args.data is not None:
        from invertible.models.certify import format_realized, realized_lipschitz
        from invertible.training.classifier import load_classification_data

        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        name = args.data or cfg["data"]
        root = args.data_root if args.data else cfg["data_root"]
        data = load_classification_data(name, root, test_fraction=cfg["test_fraction"])
        p = next(model.parameters())
        record["realized"] = realized_lipschitz(model, data.x_test[: args.n].to(device=p.device, dtype=p.dtype))
        print()
        print(format_realized(record["realized"], cert))
    path = args.json or (args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent) / "certificate.json"
    atomic_write_text(path, json.dumps(record, indent=2))
    print(f"saved {path}")
    return 0


def invert(args: argparse.Namespace) -> int:
    import torch

    from invertible.io import atomic_write_text
    from invertible.models.certify import certify_classifier
    from invertible.models.reconstruct import (
        error_vs_iterations,
        plot_error_vs_iterations,
        plot_reconstructions,
        reconstruct,
    )
    from invertible.training.classifier import denormalize, load_classification_data

    if args.n < 1 or args.iterations < 1:
        raise ValueError(f"--n and --iterations must be >= 1, got {args.n}, {args.iterations}")
    loaded = [(p, *_load_classifier(p)) for p in args.checkpoints]
    first_cfg = loaded[0][2]["config"]
    data = load_classification_data(
        args.data or first_cfg["data"], args.data_root if args.data else first_cfg["data_root"],
        test_fraction=first_cfg["test_fraction"],
    )
    x = data.x_test[: args.n]
    for path, model, _ in loaded:  # a fully convolutional model runs on any size, but its certificate does not hold
        expected = getattr(model, "input_shape", None)
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise ValueError(f"{path} was trained on inputs of shape {tuple(expected)}, but the data has images of "
                             f"shape {tuple(x.shape[1:])}: invert it on data of the kind it was trained on")
    rows = {"original": data.denormalize(x)}
    curves, results = {}, {}
    steps = [k for k in (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100) if k <= max(args.iterations, 2)]
    for path, model, meta in loaded:
        coeff = meta["config"]["model"].get("coeff")
        label = "vanilla" if coeff is None else f"c={coeff}"
        if label in results:
            label = f"{label} ({path})"
        cert = certify_classifier(model, exact=False)
        rec = reconstruct(model, x, iterations=args.iterations, lipschitz=[b.lipschitz for b in cert.blocks])
        rows[label] = denormalize(rec.x_hat, meta["mean"], meta["std"])
        curves[label] = error_vs_iterations(model, x, steps)
        results[label] = {
            "checkpoint": str(path), "certified": cert.certified, "max_lipschitz": cert.max_lipschitz,
            "max_abs_error": rec.max_abs_error, "mean_rel_error": float(torch.nan_to_num(rec.rel_error, nan=math.inf)
                                                                        .mean()),
            "diverged": rec.diverged, "padding_residual": rec.padding_residual,
            "error_bound": float(rec.error_bound.max()), "iterations_per_sample": float(rec.iterations.float().mean()),
        }
        print(f"{label:>12}: {cert.verdict}; max |x_hat - x| = {rec.max_abs_error:.3g}"
              f"{' (diverged)' if rec.diverged else ''}, padding residual {rec.padding_residual:.3g}")
    out = args.out or (args.checkpoints[0] if args.checkpoints[0].is_dir() else args.checkpoints[0].parent) / "invert"
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in (
        ("reconstructions", plot_reconstructions(rows, f"{args.iterations} fixed-point iterations per block")),
        ("error_vs_iterations", plot_error_vs_iterations(curves, steps)),
    ):
        fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    report = {"models": results, "iterations": steps, "curves": curves}
    atomic_write_text(out / "invert.json", json.dumps(_finite(report), indent=2))
    print(f"saved {out / 'reconstructions.png'}, {out / 'error_vs_iterations.png'}, {out / 'invert.json'}")
    return 0


def _load_classifier(path: Path):
    """:func:`load_classifier`, with a checkpoint whose metadata lacks a classifier run's keys (or has them with
    other types) refused as a ``ValueError`` naming the file."""
    from invertible.training.classification import load_classifier

    try:
        return load_classifier(path)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: its metadata is not a classifier run's ({type(exc).__name__}: {exc})") from exc


def _finite(obj):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj
