"""Benchmark: the hybrid generative-discriminative residual flow, accuracy and bits/dim together, for several lambda.

Protocol (issue 16, item 4; Residual Flows section 5, Nalisnick et al. 2019): MNIST-10k
(``../shared/data/mnist_10k.npz``) 2x2-average-pooled to 14x14 (a CPU budget), 2000 training and 500 test images;
a multi-scale residual flow (2 scales, factor-out, 1 block per scale, 32 hidden filters, coeff 0.9, unbiased
Russian-roulette training log-det) with a linear head on its latent, trained on
``-(log p(x) / D + lambda log p(y | x))`` (:mod:`invertible.training.hybrid`) with Adam lr 2e-3, batch 32,
``--steps`` steps, one run per lambda and seed (each seed: the same initialization, data order and
dequantization noise for every lambda). Reported: honest test bits/dim (unbiased estimate with its standard
error) and test accuracy of the head, per run and as means over seeds with 95% t-intervals (``--seeds >= 2``).

Peers in the same run: ``lambda = 0`` is the pure flow (the density peer; its head stays at chance), and a
multinomial logistic regression on the *pixels* (scikit-learn, the same 2000 images) is the linear classifier the
head on the invertible features is compared with. The default runtime (one seed) is ~4 minutes on one free
CPU thread, 10 minutes on the shared machine (small images, few steps: early-training numbers, not converged ones).

    python benchmarks/hybrid.py --threads 1 [--lams 0,0.1,1,10] [--steps 200] [--seeds 1] [--json out.json]

Measured 2026-12-01 (``--threads 1 --seeds 3``, 287 s wall on the shared machine), mean +- 95% t-interval over
seeds 0-2: lambda 0: 3.341 +- 0.221 bits/dim, 7.9 +- 6.2% accuracy; 0.1: 3.283 +- 0.126, 83.7 +- 6.5%; 1: 3.446 +-
0.073, 85.4 +- 2.2%; 10: 4.295 +- 0.130, 87.7 +- 1.4%; logistic regression on the pixels 89.4%. Seed 0 alone
(the default) reproduces its row of that run bit for bit.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from _common import mean_and_halfwidth, parser, print_table, write_json
from invertible.data.splits import load_splits
from invertible.models.blocks import count_parameters
from invertible.models.hybrid import hybrid_residual_flow
from invertible.training.hybrid import HybridConfig, hybrid_trainer


def _pixel_baseline(data) -> float:
    """Test accuracy of a multinomial logistic regression on the pixels in [0, 1]."""
    x_tr = data.x_train.flatten(1).numpy().astype(np.float64) / 255
    x_te = data.x_test.flatten(1).numpy().astype(np.float64) / 255
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(x_tr, data.y_train.numpy())
    return float(clf.score(x_te, data.y_test.numpy()))


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lams", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 0.1, 1.0, 10.0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, default=1, help="seeds seed..seed+n-1 (>= 2: 95%% t-intervals)")
    p.add_argument("--block", choices=("residual", "dense"), default="residual")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_splits("mnist", n_train=2000, n_test=500, downsample=True, seed=0)
    extra = {"block": "dense", "activation": "clipswish", "hidden": 8} if args.block == "dense" else {"hidden": 32}
    seeds = list(range(args.seed, args.seed + args.seeds))
    runs = []
    for seed in seeds:
        for lam in args.lams:
            torch.manual_seed(seed)
            model = hybrid_residual_flow(data.shape, 10, n_scales=2, n_blocks=1, factor_out=True, mode="resflow",
                                         **extra)
            cfg = HybridConfig(lam=lam, steps=args.steps, batch_size=32, lr=2e-3,
                               log_every=max(1, args.steps // 4), eval_samples=len(data.x_test), seed=seed)
            trainer = hybrid_trainer(model, data.x_train, data.y_train, cfg, None, x_val=data.x_test,
                                     y_val=data.y_test, show_progress=False)
            val = trainer.fit()["val"]
            runs.append({"lam": lam, "seed": seed, "bits_per_dim": val["bits_per_dim"],
                         "bits_per_dim_se": val["bits_per_dim_se"], "test_acc": val["test_acc"],
                         "s_per_step": trainer.seconds / args.steps, "parameters": count_parameters(model)})
    pixel_acc = _pixel_baseline(data)
    print(f"\nhybrid residual flow ({args.block} blocks, {runs[0]['parameters']} parameters), MNIST-10k 14x14, "
          f"{args.steps} steps, seeds {seeds}; 500 test images")
    print_table(["lambda", "seed", "test bits/dim (honest, +- SE)", "test acc %", "s/step"],
                [[f"{r['lam']:g}", r["seed"], f"{r['bits_per_dim']:.4f} +- {r['bits_per_dim_se']:.4f}",
                  f"{100 * r['test_acc']:.1f}", f"{r['s_per_step']:.3f}"] for r in runs])
    summary, rows = [], []
    for lam in args.lams:
        sel = [r for r in runs if r["lam"] == lam]
        bpd, bpd_ci = mean_and_halfwidth([r["bits_per_dim"] for r in sel])
        acc, acc_ci = mean_and_halfwidth([r["test_acc"] for r in sel])
        summary.append({"lam": lam, "bits_per_dim": bpd, "bits_per_dim_ci95": bpd_ci, "test_acc": acc,
                        "test_acc_ci95": acc_ci})
        rows.append([f"{lam:g}", f"{bpd:.4f} +- {bpd_ci:.4f}", f"{100 * acc:.1f} +- {100 * acc_ci:.1f}"])
    rows.append(["logistic regression on pixels", "-", f"{100 * pixel_acc:.1f}"])
    print(f"\nmean over {len(seeds)} seed(s) +- 95% t-interval (nan: one seed)")
    print_table(["lambda", "test bits/dim", "test acc %"], rows)
    n = len(data.y_test)
    print(f"(binomial standard error of an accuracy near 90%: {100 * (0.9 * 0.1 / n) ** 0.5:.1f} points, {n} images)")
    payload = {"steps": args.steps, "seeds": seeds, "block": args.block, "runs": runs, "summary": summary,
               "pixel_logistic_regression_acc": pixel_acc, "seconds": time.perf_counter() - start}
    print(f"total {payload['seconds']:.0f} s")
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
