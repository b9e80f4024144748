"""``invertible train-hybrid``: a residual flow with a linear classifier head on its latent, trained on
``-(log p(x) / D + lambda log p(y | x))`` (Nalisnick et al. 2019; Residual Flows section 5).

    invertible train-hybrid --data mnist --lam 1 --out runs/h            # Ctrl-C, then the same + --resume
    invertible train-hybrid --data mnist --downsample --block dense --lam 10 --steps 500 --out runs/hd

The run's data (``load_splits``: 20% held out, seeded) is recorded under ``"labelled_data"``, not as the density
commands' data spec, so that ``invertible evaluate`` never scores it on a split that overlaps its training images;
the honest test bits/dim and accuracy are the run's own validation (``metrics.json``, ``--json``).
"""

from __future__ import annotations

import argparse
import json
import math

from invertible.commands._options import (
    add_device,
    add_json,
    add_out,
    add_progress,
    add_resume,
    add_seed,
    add_threads,
    nonnegative_float,
    positive_int,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-hybrid", help="train a hybrid generative-discriminative residual flow (density + classifier head)",
        description="Train p(x, y) = p(x) p(y|x): a multi-scale residual flow whose latent feeds a linear "
        "classifier, on -(log p(x)/D + LAM log p(y|x)). Reports honest test bits/dim and test accuracy. Writes "
        "config.json, metrics.jsonl, checkpoint.safetensors, report.md into OUT; --resume continues exactly.",
    )
    p.add_argument("--data", choices=("mnist", "fashion-mnist", "digits"), default="mnist",
                   help="a labelled grey image set (mnist: ../shared/data/mnist_10k.npz; 20%% held out)")
    add_out(p, required=True)
    p.add_argument("--lam", type=nonnegative_float, default=1.0,
                   help="weight lambda of log p(y|x) (0: the flow alone; the head stays at chance)")
    p.add_argument("--n-train", type=positive_int, default=8000, help="training images (at most the split's)")
    p.add_argument("--n-test", type=positive_int, default=1000, help="test images")
    p.add_argument("--downsample", action="store_true", help="average-pool 2x2 (28x28 -> 14x14)")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=("adam", "adamax"), default="adam")
    p.add_argument("--ema", type=float, default=None, help="parameter EMA decay, e.g. 0.999")
    p.add_argument("--block", choices=("residual", "dense"), default="residual",
                   help="residual function: i-ResNet convnet or i-DenseNet dense layers with CLipSwish")
    p.add_argument("--dense-depth", type=positive_int, default=2, help="dense layers per block")
    p.add_argument("--blocks", type=positive_int, default=2, help="residual blocks per scale")
    p.add_argument("--hidden", type=positive_int, default=None,
                   help="hidden filters (residual, default 32) or growth per dense layer (dense, default 8: about "
                   "the same parameters)")
    p.add_argument("--scales", type=positive_int, default=None,
                   help="scale-blocks (default: 3 if the side is divisible by 4, else 2)")
    p.add_argument("--coeff", type=float, default=0.9, help="spectral-norm bound c in (0, 1)")
    p.add_argument("--eval-every", type=positive_int, default=None, help="validate every N steps (default: each epoch)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="also checkpoint every N steps")
    add_seed(p)
    add_device(p)
    add_threads(p)
    add_resume(p, help="continue from OUT/checkpoint.safetensors")
    add_json(p)
    add_progress(p)
    p.set_defaults(func=train_hybrid)


def train_hybrid(args: argparse.Namespace) -> int:
    import torch

    from invertible.data.splits import load_splits
    from invertible.io import RunFolder
    from invertible.models.hybrid import hybrid_residual_flow
    from invertible.training.hybrid import HybridConfig, hybrid_trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_splits(args.data, n_train=args.n_train, n_test=args.n_test, downsample=args.downsample,
                       seed=args.seed)
    if (note := data.shortfall(args.n_train, args.n_test)) is not None:
        print(note, flush=True)
    side = data.shape[-1]
    scales = args.scales or (3 if side % 4 == 0 else 2)
    dense = args.block == "dense"
    extra = {"block": "dense", "activation": "clipswish", "dense_depth": args.dense_depth} if dense else {}
    hidden = args.hidden or (8 if dense else 32)
    n_classes = int(max(int(data.y_train.max()), int(data.y_test.max()))) + 1
    torch.manual_seed(args.seed)
    model = hybrid_residual_flow(data.shape, n_classes, n_scales=scales, n_blocks=args.blocks, hidden=hidden,
                                 coeff=args.coeff, factor_out=True, mode="resflow", **extra).to(args.device)
    cfg = HybridConfig(lam=args.lam, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       optimizer=args.optimizer, ema_decay=args.ema, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, eval_samples=len(data.x_test), seed=args.seed)
    meta = {"labelled_data": {"name": args.data, "n_train": args.n_train, "n_test": args.n_test,
                     "downsample": args.downsample, "seed": args.seed}}
    trainer = hybrid_trainer(model, data.x_train, data.y_train, cfg, RunFolder(args.out), x_val=data.x_test,
                             y_val=data.y_test, meta=meta, show_progress=not args.no_progress)
    if args.resume and (args.out / "checkpoint.safetensors").is_file():
        print(f"resuming {args.out}", flush=True)
    result = trainer.fit(resume=args.resume)
    val = result.get("val") or {}
    if val:
        print(f"lambda {args.lam:g}: test bits/dim {val['bits_per_dim']:.4f} +- {val['bits_per_dim_se']:.4f} "
              f"(honest: {val['estimator']}), test accuracy {100 * val['test_acc']:.2f}% on {len(data.x_test)} "
              "images", flush=True)
    if args.json is not None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in val.items()}
        args.json.write_text(json.dumps({"lam": args.lam, "step": result["step"], **clean}, indent=2))
    print(f"run folder: {args.out}")
    return 0
