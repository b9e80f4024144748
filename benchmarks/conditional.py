"""Benchmark: the conditional residual flow p(x | c) against zuko's conditional neural spline flow, same run.

Two tasks (``invertible.data.conditional2d``), both with an exact reference density:

* ``rotated-8gaussians``: ``p(x | angle)``, context ``(cos a, sin a)``; the true ``log p(x | c)`` is closed form.
* ``two-moons-sbi``: the posterior ``p(theta | y)`` of the two-moons simulator (two parameters, 2-D observation);
  the true posterior is the known likelihood times the uniform prior over the evidence (a quadrature).

Protocol: per task and seed, both models start from ``torch.manual_seed(seed)`` and see the same batches (fresh
simulations per step, ``step_generator(seed, step)``); their steps are interleaved so both are timed under the
same load. Adam, the same learning rate for both, cosine decay to 0 over the run. Ours: 6 conditional residual
blocks (x-path 2-48-48-2 spectrally normalized, coeff 0.98, so Lip_x(g_t) <= 0.98^3 = 0.94; context embedding
2-24-98 unconstrained), ActNorm between blocks; chosen on a validation set of two-moons (seed 20000, 500 steps,
seed 0: -2.25 nats for 4 blocks 64-64 at coeff 0.9, -2.50 at coeff 0.98, -2.89 for this one), never the test set.
zuko: ``NSF(features=2, context=2, transforms=4, hidden_features=(64, 64))`` (8 bins), about the same number
of parameters (printed). Test NLL is exact for both (ours: forward-Jacobian log-det; zuko: its analytic spline
log-det), on ``--n-test`` fresh pairs per task; mean over seeds with a 95 % t-interval.

    python benchmarks/conditional.py [--steps 500] [--seeds 0 1 2] [--threads 1] [--json out.json]

zuko is optional (``pip install --no-deps zuko``); without it only our rows are printed.

Measured 2026-12-01 (defaults, ``--threads 1``, the shared 2-core machine at a load average of ~12; 716 s):
rotated-8gaussians ours 3.2781 +- 0.0017 vs zuko 3.2788 +- 0.0052 nats (true 2.8505), two-moons-sbi ours
-2.817 +- 0.201 vs zuko -3.235 +- 0.115 (true posterior -3.778); params ours/zuko 1.029; time per step ours/zuko
1.65 and 1.69.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_table, write_json  # noqa: E402
from invertible.data.conditional2d import conditional_log_prob, sample_conditional  # noqa: E402
from invertible.models import conditional_residual_flow  # noqa: E402
from invertible.training.conditional import ConditionalDensityObjective, evaluate_conditional_nll  # noqa: E402
from invertible.training.sources import step_generator  # noqa: E402

TASKS = ("rotated-8gaussians", "two-moons-sbi")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _ours() -> torch.nn.Module:
    return conditional_residual_flow(2, 2, n_blocks=6, hidden=(48, 48), embed_hidden=(24,), coeff=0.98)


def _zuko():
    try:
        import zuko
    except ImportError:
        return None
    return zuko.flows.NSF(features=2, context=2, transforms=4, hidden_features=(64, 64))


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, math.nan
    return m, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def run_task(task: str, seed: int, steps: int, batch_size: int, lr: float, test: tuple, with_zuko: bool) -> dict:
    torch.manual_seed(seed)
    ours = _ours()
    torch.manual_seed(seed)
    theirs = _zuko() if with_zuko else None
    objective = ConditionalDensityObjective()
    ours.initialize(*sample_conditional(task, batch_size, step_generator(seed, 0)))
    models = {"ours": ours} if theirs is None else {"ours": ours, "zuko": theirs}
    opts = {k: torch.optim.Adam(m.parameters(), lr=lr) for k, m in models.items()}
    scheds = {k: torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for k, o in opts.items()}
    times: dict[str, list[float]] = {k: [] for k in models}

    def loss_of(name, x, c):
        if name == "ours":
            return objective.loss(ours, (x, c), None)[0]
        return -theirs(c).log_prob(x).mean()

    for step in range(steps):
        x, c = sample_conditional(task, batch_size, step_generator(seed, step))
        for name, model in models.items():
            t = time.perf_counter()
            model.train()
            loss = loss_of(name, x, c)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            scheds[name].step()
            times[name].append(time.perf_counter() - t)
    out = {}
    xt, ct = test
    res = evaluate_conditional_nll(ours, xt, ct)
    out["ours"] = {"nll": res["nll"], "se": res["se"], "s_per_step": statistics.median(times["ours"]),
                   "params": _params(ours), "max_lip_x": max(ours.bijection.lipschitz_bounds())}
    if theirs is not None:
        theirs.eval()
        with torch.no_grad():
            nll = torch.cat([-theirs(cb).log_prob(xb) for xb, cb in zip(xt.split(2000), ct.split(2000),
                                                                         strict=True)]).double()
        out["zuko"] = {"nll": float(nll.mean()), "se": float(nll.std() / math.sqrt(nll.numel())),
                       "s_per_step": statistics.median(times["zuko"]), "params": _params(theirs)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--no-zuko", action="store_true", help="skip zuko even when installed")
    ap.set_defaults(threads=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with_zuko = not args.no_zuko and _zuko() is not None
    started = time.perf_counter()
    result: dict = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seeds": args.seeds,
                    "n_test": args.n_test, "threads": args.threads, "tasks": {}}
    for k, task in enumerate(args.tasks):
        test = sample_conditional(task, args.n_test, torch.Generator().manual_seed(10_000 + k))
        true_nll = float(-conditional_log_prob(task, test[0].double(), test[1].double()).mean())
        runs = [run_task(task, s, args.steps, args.batch_size, args.lr, test, with_zuko) for s in args.seeds]
        summary = {"true_nll": true_nll, "per_seed": runs}
        for name in runs[0]:
            mean, half = _interval([r[name]["nll"] for r in runs])
            summary[name] = {"nll_mean": mean, "nll_ci95": half, "params": runs[0][name]["params"],
                             "s_per_step": statistics.median(r[name]["s_per_step"] for r in runs)}
        if "zuko" in summary:
            summary["time_ratio"] = summary["ours"]["s_per_step"] / summary["zuko"]["s_per_step"]
            summary["param_ratio"] = summary["ours"]["params"] / summary["zuko"]["params"]
        result["tasks"][task] = summary
        print(f"{task} done ({time.perf_counter() - started:.0f} s)", flush=True)
    result["seconds"] = time.perf_counter() - started

    rows = []
    for task, s in result["tasks"].items():
        for name, label in (("ours", "invertible conditional resflow"), ("zuko", "zuko NSF (4 transforms)")):
            if name in s:
                per_seed = " ".join(f"{r[name]['nll']:.3f}" for r in s["per_seed"])
                rows.append([task, label, s[name]["params"], f"{s[name]['nll_mean']:.4f} +- {s[name]['nll_ci95']:.4f}",
                             per_seed, f"{s[name]['s_per_step']:.4f}"])
        rows.append([task, "true density", "", f"{s['true_nll']:.4f}", "", ""])
    print(f"\n{args.steps} steps, batch {args.batch_size}, Adam {args.lr} cosine, seeds {args.seeds}, "
          f"{args.n_test} test pairs, {args.threads} thread(s); exact test NLL (nats), mean +- 95% t-interval")
    print_table(["task", "model", "params", "test NLL", "per seed", "s/step"], rows)
    for task, s in result["tasks"].items():
        if "time_ratio" in s:
            print(f"{task}: params ours/zuko {s['param_ratio']:.3f}, time per step ours/zuko {s['time_ratio']:.2f}, "
                  f"NLL ours - zuko {s['ours']['nll_mean'] - s['zuko']['nll_mean']:+.4f}")
    print(f"total {result['seconds']:.0f} s")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
