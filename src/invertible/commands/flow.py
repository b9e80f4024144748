"""``invertible train-flow``, ``invertible sample`` and ``invertible evaluate``: density modelling from the shell.

    invertible train-flow --data 8gaussians --out runs/a          # Ctrl-C, then the same command + --resume
    invertible train-flow --data 8gaussians --block dense --out runs/d   # i-DenseNet blocks (CLipSwish)
    invertible sample runs/a -n 5000                              # runs/a/samples.png (+ .npy)
    invertible evaluate runs/a                                    # honest test NLL +- standard error
    torchrun --nproc_per_node=2 -m invertible.cli train-flow ...  # data parallel (gloo on CPU)
"""

from __future__ import annotations

import argparse
import contextlib
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
    add_threads,
    at_least_two,
    data_name,
    nonnegative_int,
    out_file,
    positive_float,
    positive_int,
    positive_int_list,
)

_DTYPES = ("float32", "float64")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-flow", help="train a residual flow (or coupling baseline) by maximum likelihood",
        description="Train a density model on a 2-D toy density or an image set. Writes config.json, "
        "metrics.jsonl, checkpoint.safetensors and plots into OUT; --resume continues a killed run exactly.",
    )
    p.add_argument("--data", type=data_name, required=True, help="8gaussians, checkerboard, 2spirals, pinwheel, "
                   "rings, moons, circles, swissroll, digits, mnist, fashion-mnist, cifar10 or a path "
                   "(.npz / IDX / CIFAR folder)")
    p.add_argument("--data-root", default=None, help="folder or file of a named image set")
    add_out(p, required=True)
    p.add_argument("--arch", choices=("resflow", "coupling"), default="resflow")
    p.add_argument("--mode", choices=("auto", "exact", "resflow", "iresnet"), default="auto",
                   help="log-det estimator for training: exact (small d), resflow (unbiased Russian roulette + "
                   "Neumann gradient), iresnet (truncated power series); auto: exact for 2-D, resflow for images")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: 2000 for 2-D data)")
    p.add_argument("--epochs", type=positive_float, default=None, help="epochs over an image training set")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--optimizer", choices=("adam", "adamax"), default="adam")
    p.add_argument("--warmup", type=nonnegative_int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=positive_float, default=None)
    p.add_argument("--ema", type=float, default=None, help="parameter EMA decay, e.g. 0.999")
    p.add_argument("--blocks", type=positive_int, default=None, help="residual blocks (per scale for images)")
    p.add_argument("--hidden", type=positive_int_list, default=None,
                   help="hidden widths, e.g. 128,128 (vector) / filters (image: the first entry)")
    p.add_argument("--coeff", type=float, default=0.9, help="spectral-norm bound c in (0, 1)")
    p.add_argument("--block", choices=("residual", "dense"), default="residual",
                   help="residual function: the i-ResNet MLP/convnet, or i-DenseNet dense layers with CLipSwish "
                   "(--hidden: the growth per dense layer; default 89,89 / 8, within 2%% of the residual defaults' "
                   "parameters)")
    p.add_argument("--dense-depth", type=positive_int, default=2, help="dense layers per image block")
    p.add_argument("--scales", type=positive_int, default=3, help="scale-blocks of the image flow")
    p.add_argument("--factor-out", action="store_true", help="factor out half the channels between scales")
    p.add_argument("--n-terms", type=positive_int, default=10, help="power-series terms (iresnet mode)")
    p.add_argument("--recompute-chunk", type=positive_int, default=None, metavar="N",
                   help="resflow mode: keep no graph between forward and backward and run the Neumann gradient on N "
                        "samples at a time (same numbers, a fraction of the memory; logdet.set_recompute; image flows "
                        "do so with N = 32 by default, stored in the model's config)")
    p.add_argument("--n-test", type=at_least_two, default=10_000, help="test points (>= 2, for a standard error)")
    p.add_argument("--subset", type=positive_int, default=None, help="use only this many training images")
    p.add_argument("--eval-every", type=positive_int, default=None, help="validate every N steps (default: each epoch)")
    p.add_argument("--eval-samples", type=positive_int, default=2000, help="validation samples during training")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="also checkpoint every N steps")
    add_seed(p)
    p.add_argument("--dtype", choices=_DTYPES, default="float32")
    add_device(p)
    add_threads(p)
    add_resume(p, help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tb (needs tensorboard)")
    add_progress(p)
    p.set_defaults(func=train_flow)

    s = sub.add_parser("sample", help="draw samples from a trained flow",
                       description="Sample x = F^{-1}(z), z ~ N(0, I), by fixed-point inversion of every block.")
    s.add_argument("checkpoint", type=Path, help="run folder or checkpoint.safetensors")
    s.add_argument("-n", type=positive_int, default=1000, help="number of samples")
    s.add_argument("--out", type=out_file, default=None,
                   help="output .png (a .npy of the samples is written beside; default RUN/samples_cli.png)")
    add_seed(s)
    s.add_argument("--no-ema", action="store_true", help="use the live instead of the averaged weights")
    s.set_defaults(func=sample)

    e = sub.add_parser("evaluate", help="honest test NLL (nats) / bits per dim with standard error",
                       description="Exact log-det for small dimension, otherwise the unbiased Russian-roulette "
                       "estimate; never the Neumann gradient surrogate.")
    e.add_argument("checkpoint", type=Path, help="run folder or checkpoint.safetensors")
    e.add_argument("--data", type=data_name, default=None, help="data set (default: the one the model was trained on)")
    e.add_argument("--data-root", default=None)
    e.add_argument("--n-test", type=at_least_two, default=None, help="test points (>= 2, for a standard error)")
    e.add_argument("--batch-size", type=positive_int, default=500)
    e.add_argument("--n-exact", type=nonnegative_int, default=8, help="fixed terms of the unbiased estimator")
    add_seed(e)
    add_json(e)
    e.add_argument("--no-ema", action="store_true")
    e.set_defaults(func=evaluate)


def _build(args, data) -> object:
    from invertible.logdet import default_mode
    from invertible.models.coupling_baseline import coupling_flow
    from invertible.models.resflow import image_residual_flow, vector_residual_flow

    mode = default_mode(data.event_shape) if args.mode == "auto" else args.mode
    dense = args.block == "dense"
    if dense and args.arch == "coupling":
        raise ValueError("--block dense is a residual-flow block; it does not apply to --arch coupling")
    block = {"block": "dense", "activation": "clipswish"} if dense else {}
    if data.kind == "toy":
        hidden = args.hidden or ([89, 89] if dense else [128, 128])
        blocks = args.blocks or 8
        if args.arch == "coupling":
            return coupling_flow(2, blocks, hidden)
        return vector_residual_flow(2, blocks, hidden, args.coeff, mode=mode, n_terms=args.n_terms, **block)
    if args.arch == "coupling":
        raise ValueError("--arch coupling is implemented for 2-D data only")
    hidden = (args.hidden or [8 if dense else 32])[0]
    if dense:
        block["dense_depth"] = args.dense_depth
    return image_residual_flow(data.event_shape, n_scales=args.scales, n_blocks=args.blocks or 4, hidden=hidden,
                               coeff=args.coeff, mode=mode, factor_out=args.factor_out, n_terms=args.n_terms,
                               **block, **({"recompute_chunk": args.recompute_chunk} if args.recompute_chunk else {}))


def train_flow(args: argparse.Namespace) -> int:
    import torch

    from invertible.io import RunFolder
    from invertible.training.datasets import DataSpec, load_data
    from invertible.training.density import DensityConfig, density_trainer
    from invertible.training.distributed import cleanup, is_main

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = args.out / "checkpoint.safetensors"
    spec = DataSpec(args.data, root=args.data_root, n_test=args.n_test, subset=args.subset, seed=args.seed)
    data = load_data(spec)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    model = _build(args, data).to(device=args.device, dtype=dtype)
    if args.recompute_chunk is not None:
        from invertible.logdet import set_recompute

        set_recompute(model, args.recompute_chunk)  # ValueError (one line) for a model without a Neumann gradient
    batch = args.batch_size or (256 if data.kind == "toy" else 64)
    src = data.source(batch, args.seed, dtype)
    if args.steps is not None:
        steps = args.steps
    elif args.epochs is not None:
        steps = max(1, int(round(args.epochs * src.steps_per_epoch())))
    else:
        steps = 2000 if data.kind == "toy" else 10 * src.steps_per_epoch()
    cfg = DensityConfig(steps=steps, batch_size=batch, lr=args.lr, optimizer=args.optimizer,
                        warmup_steps=args.warmup, grad_clip=args.grad_clip, ema_decay=args.ema,
                        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                        eval_samples=args.eval_samples, seed=args.seed)
    run = RunFolder(args.out, writer=is_main(), tensorboard=args.tensorboard)
    trainer = density_trainer(model, src, cfg, run, val_data=data.test, meta={"data": spec.to_dict()},
                              show_progress=not args.no_progress)
    if args.resume and ckpt.is_file() and is_main():
        print(f"resuming {args.out} from step {_ckpt_step(ckpt)}", flush=True)
    try:
        result = trainer.fit(resume=args.resume)
        if is_main():
            val = result.get("val")
            if val:
                print(_format_result(val, data.kind), flush=True)
            _plots(trainer, data, run)
            _summarize(trainer, data, run, result)
            print(f"run folder: {args.out}")
    finally:
        cleanup()
    return 0


def _ckpt_step(path: Path) -> int:
    from invertible.io import load_checkpoint

    return int(load_checkpoint(path).meta.get("step", 0))


def _summarize(trainer, data, run, result: dict) -> None:
    """``metrics.json`` and ``report.md`` of a ``train-flow`` run."""
    val = result.get("val") or {}
    summary = {"steps": trainer.step, "train_seconds": trainer.seconds, "val": val}
    n_params = sum(p.numel() for p in trainer.model.parameters())
    sections = {"Run": [f"data: {data.spec.name} ({data.kind}, event shape {tuple(data.event_shape)})",
                        f"model: {trainer.config['model'].get('kind')}, {n_params} parameters",
                        f"steps: {trainer.step}, batch {trainer.config['train']['batch_size']}, "
                        f"{trainer.config['train']['optimizer']} lr {trainer.config['train']['lr']}, "
                        f"{trainer.seconds:.1f} s of training"]}
    if val:
        sections["Result"] = _format_result(val, data.kind).replace("\n", "  \n")
        if data.kind == "toy":
            from invertible.data.toy2d import best_possible_nll

            best = best_possible_nll(data.spec.name, data.test)
            if best is not None and math.isfinite(best):
                summary["true_nll"] = best
                sections["Result"] += f"  \ntrue density on the same points: {best:.4f} nats"
    run.write_summary(summary)
    run.report(f"train-flow: {data.spec.name}", sections)


def _format_result(res: dict, kind: str) -> str:
    how = "exact" if res["exact"] else "unbiased estimate"
    if "bits_per_dim" in res:  # images: bits/dim only (the nats of the dequantized [0, 1) data read as negative)
        return (f"test bits/dim = {res['bits_per_dim']:.4f} +- {res['bits_per_dim_se']:.4f} ({how}, "
                f"{res['estimator']}, n={res['n']})")
    return f"test NLL = {res['nll']:.4f} +- {res['se']:.4f} nats ({how}, {res['estimator']}, n={res['n']})"


def _plots(trainer, data, run) -> None:
    import torch

    from invertible.training.plots_density import plot_density_2d, plot_image_grid, plot_training_curves

    model = trainer.model
    ctx = trainer.ema.average_parameters() if trainer.ema is not None else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(0)
    with ctx:
        model.eval()
        if data.kind == "toy":
            fig = plot_density_2d({"model": model}, data.test[:5000], generator=gen, title=data.spec.name)
        else:
            fig = plot_image_grid(model.sample(64, generator=gen).clamp(0, 1), data.test[:64])
        run.save_figure(fig, "samples")
    d = None if data.kind == "toy" else model.latent_dim
    run.save_figure(plot_training_curves(run.read_metrics(), title=data.spec.name, bits_per_dim=d), "training_curves")


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    plt.close(fig)


def sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from invertible.models.resflow import residual_blocks
    from invertible.training.plots_density import plot_image_grid
    from invertible.training.runs import load_run

    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    model, ck = load_run(args.checkpoint, use_ema=not args.no_ema)
    _require_flow(model, ck)
    x = model.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    if not torch.isfinite(x).all():
        raise ValueError(f"{args.checkpoint}: {int((~torch.isfinite(x)).any(1).sum())} of {args.n} samples are not "
                         "finite (non-finite weights, or a block whose fixed-point inverse diverged); nothing written")
    folder = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    out = args.out or folder / "samples_cli.png"
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out: expected a .png file name (the samples' .npy is written beside it), got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_suffix(".npy"), x.cpu().numpy())
    if len(model.event_shape) == 1 and model.event_shape[0] == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        xs = x.double().numpy()
        ax.hist2d(xs[:, 0], xs[:, 1], bins=100, range=[[-4.5, 4.5], [-4.5, 4.5]], cmap="viridis")
        ax.set_aspect("equal")
        ax.set_title(f"{args.n} samples")
        _save(fig, out)
    elif len(model.event_shape) == 3:
        _save(plot_image_grid(x[:64].clamp(0, 1)), out)
    res = [b.last_inverse for b in residual_blocks(model) if b.last_inverse is not None]
    if res:
        iters = max(int(r.iterations.max()) for r in res)
        conv = all(r.all_converged for r in res)
        bound = max(float(r.error_bound.max()) for r in res)
        atol = max(float(b.solver.atol) for b in residual_blocks(model))
        print(f"fixed-point inverse: max {iters} iterations per block, stop test met by all: {conv}; "
              f"max per-block error bound (Lemma 4.5, with round-off): {bound:.2e} "
              f"({'within' if bound <= atol else 'ABOVE'} the tolerance {atol:.0e})")
    print(f"{args.n} samples of shape {tuple(x.shape[1:])} -> {out} and {out.with_suffix('.npy')}")
    return 0


def _require_flow(model, ck) -> None:
    """``sample`` and ``evaluate`` need a density model (``event_shape``, ``sample``, ``log_prob``)."""
    if not all(hasattr(model, a) for a in ("event_shape", "sample", "log_prob")):
        raise ValueError(f"{ck.path} holds a model of kind {ck.kind!r}, not a density model (a flow from train-flow)")


def evaluate(args: argparse.Namespace) -> int:
    from invertible.training.datasets import DataSpec, load_data
    from invertible.training.evaluate import evaluate_nll
    from invertible.training.runs import load_run

    model, ck = load_run(args.checkpoint, use_ema=not args.no_ema)
    _require_flow(model, ck)
    recorded = ck.config.get("data") or ck.meta.get("data") or {}
    if not isinstance(recorded, dict) and args.data is None:
        raise ValueError(f"{ck.path} records its data set as {recorded!r}, not a data spec: pass --data")
    spec_d = dict(recorded) if isinstance(recorded, dict) else {}
    if args.data is not None:
        spec_d = {"name": args.data, "seed": spec_d.get("seed", 0)}
    if not spec_d:
        raise ValueError("the checkpoint records no data set: pass --data")
    if args.data_root is not None:
        spec_d["root"] = args.data_root
    if args.n_test is not None:
        spec_d["n_test"] = args.n_test
    try:
        spec = DataSpec(**spec_d)
    except TypeError as exc:  # a crafted or foreign checkpoint
        raise ValueError(f"{ck.path} records a data spec this version cannot read ({exc}): pass --data") from None
    data = load_data(spec)
    if data.event_shape != model.event_shape:
        raise ValueError(f"data shape {data.event_shape} does not match the model's {model.event_shape}")
    res = evaluate_nll(model, data.test, batch_size=args.batch_size, n_exact=args.n_exact, seed=args.seed)
    print(f"{data.spec.name}: {_format_result(res, data.kind)}")
    if data.kind == "toy":
        from invertible.data.toy2d import best_possible_nll

        best = best_possible_nll(data.spec.name, data.test)
        if best is not None and math.isfinite(best):
            print(f"true density on the same test set: {best:.4f} nats (gap {res['nll'] - best:+.4f})")
            res["true_nll"] = best
    if args.json:
        from invertible.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(res, indent=2))
    return 0
