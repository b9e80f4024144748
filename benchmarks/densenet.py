"""Benchmark: i-DenseNet blocks (dense layers + CLipSwish) against i-ResNet residual blocks at equal parameters.

Protocol (issue 16, item 3), one run, the same seeds, data and steps for both block types, runs interleaved
(seed by seed, residual then dense) so both see the same machine load:

* toy2d (8gaussians): vector residual flows of 4 blocks (ActNorm between), coeff 0.9, LipSwish/CLipSwish slope 16,
  residual MLP 2-64-64-2 against dense layers of growth (k, k) with ``k`` chosen so that the parameter counts
  differ by < 5%; Adam lr 1e-3, batch 256, ``--toy-steps`` steps; **exact** test NLL (nats) on 5000 held-out
  points (forward-mode Jacobian log-det), next to the true density's NLL on the same points.
* MNIST-10k (``../shared/data/mnist_10k.npz``), 2x2-average-pooled to 14x14 to fit a CPU budget, 2000 training
  images, 500 test images: multi-scale image flows (2 scales, factor-out, 1 block per scale, coeff 0.9),
  2 dense layers of growth 8 (3x3 convolutions) against residual 3x3-1x1-3x3 convnets whose ``hidden`` width is
  chosen so that the parameter counts differ by < 5%; Adam lr 2e-3, batch 32, ``--mnist-steps`` steps, unbiased
  Russian-roulette training log-det; **honest** test bits/dim (unbiased estimate,
  :func:`invertible.training.evaluate.evaluate_nll`, uniform dequantization).

For each setting: per seed the test metric, and over seeds the mean with a 95% Student-t interval, and the
*paired* difference dense - residual (same seed: same data order, same test set) with its 95% t-interval;
median seconds per training step, timed with the two models' steps alternating on the same batches, and their
ratio. Small images and few steps (sized for a CPU: a comparison of the
blocks early in training, not converged numbers).

Measured 2026-12-01 (``--threads 1``; 606 s wall, 98 s CPU on the shared 2-core machine at a load average of
~9; a second run reproduced every NLL bit for bit): toy2d exact NLL residual 3.367 +- 0.040, dense 3.145 +- 0.044
nats (true density 2.818), paired difference -0.222 +- 0.043, 17956 vs 18020 parameters, dense 1.69x the seconds
per step; MNIST 14x14 honest bits/dim residual 3.367 +- 0.040, dense 3.142 +- 0.079, paired difference -0.224 +-
0.060, 3739 vs 3704 parameters, 1.02x the seconds per step. ``--toy-steps 1000 --skip-mnist``: residual 3.126 +-
0.068, dense 2.988 +- 0.054, paired difference -0.138 +- 0.041 nats.

    python benchmarks/densenet.py --threads 1 [--seeds 3] [--toy-steps 300] [--mnist-steps 150] [--json out.json]
"""

from __future__ import annotations

import statistics
import time

import torch

from _common import mean_and_halfwidth, parser, print_table, write_json
from invertible.data.splits import load_splits
from invertible.data.toy2d import best_possible_nll
from invertible.models.blocks import count_parameters
from invertible.models.resflow import image_residual_flow, vector_residual_flow
from invertible.training.datasets import DataSpec, load_data
from invertible.training.denormal import flush_denormals
from invertible.training.density import DensityConfig, density_trainer
from invertible.training.evaluate import evaluate_nll
from invertible.training.optim import make_optimizer
from invertible.training.sources import TensorSource


def _matched(build, reference: int, widths: range) -> tuple[int, int]:
    """The width whose model has the parameter count closest to ``reference``: ``(width, parameters)``."""
    best = min(widths, key=lambda k: abs(count_parameters(build(k)) - reference))
    return best, count_parameters(build(best))


def _toy_model(block: str, width: int):
    if block == "dense":
        return vector_residual_flow(2, 4, (width, width), block="dense", activation="clipswish")
    return vector_residual_flow(2, 4, (width, width))


def _image_model(block: str, width: int):
    kw = {"n_scales": 2, "n_blocks": 1, "factor_out": True, "mode": "resflow", "hidden": width}
    if block == "dense":
        return image_residual_flow((1, 14, 14), block="dense", activation="clipswish", dense_depth=2, **kw)
    return image_residual_flow((1, 14, 14), **kw)


def _interleaved_step_times(models: dict, source, n: int = 15) -> dict[str, float]:
    """Median seconds of one training step (forward, backward, Adam) per model, the models' steps alternating on
    the same batches, so that both are timed under the same machine load (the per-run averages are not)."""
    opts = {k: make_optimizer("adam", m.parameters(), 1e-3) for k, m in models.items()}  # as the recipe's
    for m in models.values():
        m.initialize(source.batch(0))
    times: dict[str, list[float]] = {k: [] for k in models}
    with flush_denormals(True):  # as the engine on a CPU
        _alternate(models, opts, source, n, times)
    return {k: statistics.median(v) for k, v in times.items()}


def _alternate(models: dict, opts: dict, source, n: int, times: dict[str, list[float]]) -> None:
    for t in range(n + 2):
        x = source.batch(t)
        for k, m in models.items():
            start = time.perf_counter()
            loss = -m(x).mean()
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if t >= 2:  # the first steps warm up
                times[k].append(time.perf_counter() - start)


def _train(model, source, steps: int, lr: float, seed: int) -> tuple[object, float]:
    cfg = DensityConfig(steps=steps, batch_size=source.batch_size, lr=lr, log_every=max(1, steps), seed=seed)
    trainer = density_trainer(model, source, cfg, None, show_progress=False)
    trainer.fit()
    return model, trainer.seconds / steps


def run_toy(seeds: list[int], steps: int) -> dict:
    data = load_data(DataSpec("8gaussians", n_test=5000, seed=0))
    ref = count_parameters(_toy_model("residual", 64))
    k, p_dense = _matched(lambda w: _toy_model("dense", w), ref, range(8, 128))
    widths = {"residual": (64, ref), "dense": (k, p_dense)}
    out = {"true_nll": best_possible_nll("8gaussians", data.test), "widths": widths, "runs": []}
    for seed in seeds:
        for block in ("residual", "dense"):
            torch.manual_seed(seed)
            model = _toy_model(block, widths[block][0])
            model, sps = _train(model, data.source(256, seed, torch.float32), steps, 1e-3, seed)
            res = evaluate_nll(model, data.test.float(), seed=seed)
            assert res["exact"]
            out["runs"].append({"block": block, "seed": seed, "nll": res["nll"], "se": res["se"],
                                "s_per_step": sps})
    torch.manual_seed(0)
    models = {b: _toy_model(b, widths[b][0]) for b in ("residual", "dense")}
    out["interleaved_s_per_step"] = _interleaved_step_times(models, data.source(256, 0, torch.float32))
    return out


def run_mnist(seeds: list[int], steps: int) -> dict:
    growth = 8  # the dense width is coarse-grained (quadratic in the growth): match the residual width to it
    ref = count_parameters(_image_model("dense", growth))
    h, p_res = _matched(lambda w: _image_model("residual", w), ref, range(4, 64))
    widths = {"residual": (h, p_res), "dense": (growth, ref)}
    out = {"widths": widths, "runs": []}
    data = load_splits("mnist", n_train=2000, n_test=500, downsample=True, seed=0)
    for seed in seeds:
        for block in ("residual", "dense"):
            torch.manual_seed(seed)
            model = _image_model(block, widths[block][0])
            source = TensorSource(data.x_train, 32, seed, discrete=True)
            model, sps = _train(model, source, steps, 2e-3, seed)
            res = evaluate_nll(model, data.x_test, seed=seed)
            out["runs"].append({"block": block, "seed": seed, "bits_per_dim": res["bits_per_dim"],
                                "se": res["bits_per_dim_se"], "s_per_step": sps})
    torch.manual_seed(0)
    models = {b: _image_model(b, widths[b][0]) for b in ("residual", "dense")}
    out["interleaved_s_per_step"] = _interleaved_step_times(models, TensorSource(data.x_train, 32, 0, discrete=True))
    return out


def _summarize(name: str, result: dict, metric: str, unit: str) -> dict:
    runs = result["runs"]
    by = {b: [r for r in runs if r["block"] == b] for b in ("residual", "dense")}
    print(f"\n{name}: per seed ({unit}; +- the test-set standard error)")
    print_table(["seed", "residual", "dense", "dense - residual"],
                [[r["seed"], f"{r[metric]:.4f} +- {r['se']:.4f}", f"{d[metric]:.4f} +- {d['se']:.4f}",
                  f"{d[metric] - r[metric]:+.4f}"] for r, d in zip(by["residual"], by["dense"], strict=True)])
    rows, summary = [], {}
    for b in ("residual", "dense"):
        mean, half = mean_and_halfwidth([r[metric] for r in by[b]])
        sps = result["interleaved_s_per_step"][b]
        width, params = result["widths"][b]
        summary[b] = {"mean": mean, "ci95": half, "s_per_step": sps, "width": width, "parameters": params}
        rows.append([b, width, params, f"{mean:.4f} +- {half:.4f}", f"{sps:.4f}"])
    diff_mean, diff_half = mean_and_halfwidth([d[metric] - r[metric] for r, d in zip(by["residual"], by["dense"],
                                                                             strict=True)])
    ratio_p = summary["dense"]["parameters"] / summary["residual"]["parameters"]
    ratio_t = summary["dense"]["s_per_step"] / summary["residual"]["s_per_step"]
    rows.append(["dense - residual", "", f"x{ratio_p:.3f}", f"{diff_mean:+.4f} +- {diff_half:.4f}",
                 f"x{ratio_t:.2f}"])
    print(f"\n{name}: mean over {len(by['residual'])} seeds +- 95% t-interval (last row: paired difference)")
    print_table(["block", "width", "parameters", f"test {unit}", "s/step"], rows)
    summary["difference"] = {"mean": diff_mean, "ci95": diff_half, "parameter_ratio": ratio_p,
                             "time_ratio": ratio_t}
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 (>= 3 for intervals worth the name)")
    p.add_argument("--toy-steps", type=int, default=300)
    p.add_argument("--mnist-steps", type=int, default=150)
    p.add_argument("--skip-mnist", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seed, args.seed + args.seeds))
    start = time.perf_counter()
    toy = run_toy(seeds, args.toy_steps)
    payload = {"seeds": seeds, "toy_steps": args.toy_steps, "mnist_steps": args.mnist_steps, "toy2d": toy}
    payload["toy2d_summary"] = _summarize(f"toy2d 8gaussians, {args.toy_steps} steps, exact NLL", toy, "nll",
                                          "nats")
    print(f"true density on the same 5000 points: {toy['true_nll']:.4f} nats")
    if not args.skip_mnist:
        mnist = run_mnist(seeds, args.mnist_steps)
        payload["mnist"] = mnist
        payload["mnist_summary"] = _summarize(f"MNIST-10k 14x14, {args.mnist_steps} steps, honest", mnist,
                                              "bits_per_dim", "bits/dim")
    payload["seconds"] = time.perf_counter() - start
    print(f"\ntotal {payload['seconds']:.0f} s")
    for key in ("toy2d_summary", "mnist_summary"):
        if key in payload:
            ratio = payload[key]["difference"]["parameter_ratio"]
            assert abs(ratio - 1) < 0.05, f"{key}: parameter counts differ by {abs(ratio - 1):.1%}"
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
