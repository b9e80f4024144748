"""Anderson acceleration vs plain fixed-point iteration (Algorithm 1) for inverting i-ResNet blocks.

Per-sample tolerance 1e-6 (||x[k+1] - x[k]|| <= 1e-6), c in {0.9, 0.97}, float64, two kinds of blocks:
* ``trained``: the blocks of a conv i-ResNet flow trained briefly by maximum likelihood on 8x8 digits
  (the series estimator pushes Lip(g) towards c), inverted on test digits;
* ``worst-case``: a symmetric linear block g(x) = W x with ||W|| = c, whose contraction rate really is c.
Reports mean iterations (g evaluations) and wall time; target: Anderson <= 0.5x fixed-point iterations.

    python benchmarks/inverse_solvers.py [--json results.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import invertible as inv  # noqa: E402
from _common import median_time, parser, print_table, write_json  # noqa: E402
from invertible.data import digits_tensors  # noqa: E402
from invertible.models.conv_iresnet import conv_iresnet  # noqa: E402
from invertible.training.digits import train_digits_flow  # noqa: E402


def trained_blocks(coeff: float, steps: int, seed: int):
    torch.manual_seed(seed)
    (xtr, _), (xte, _) = digits_tensors(seed)
    body = conv_iresnet(coeff, blocks_per_stage=1, hidden=32, pad=0).double()
    train_digits_flow(body, xtr, steps, torch.Generator().manual_seed(seed), lr=2e-3)
    # the input of each residual block on test data, and its output
    cases, x = [], xte[:128]
    with torch.no_grad():
        for m in body:
            y = m(x)
            if isinstance(m, inv.ResidualBlock):
                cases.append((m.g, y, m.certify()))
            x = y
    return cases


def worst_case_block(coeff: float, seed: int):
    torch.manual_seed(seed)
    lin = nn.Linear(256, 256, bias=False).double()
    with torch.no_grad():
        a = torch.randn(256, 256, dtype=torch.float64)
        lin.weight.copy_(a + a.T)
    inv.spectral_norm(lin, coeff, atol=1e-12, rtol=1e-12)
    lin(torch.zeros(1, 256, dtype=torch.float64))
    lin.eval()
    y = torch.randn(128, 256, dtype=torch.float64)
    return [(lin, y, inv.lipschitz_constant(lin))]


def measure(cases, solver):
    iters = []
    for g, y, lip in cases:
        res = solver(g, y, lipschitz=lip)
        if not res.all_converged:
            raise RuntimeError(f"{solver!r} did not converge")
        iters.append(res.iterations.double().mean().item())
    seconds = median_time(lambda: [solver(g, y) for g, y, _ in cases], repeats=3)
    return sum(iters) / len(iters), seconds


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    rows, results = [], []
    for coeff in (0.9, 0.97):
        settings = (
            ("trained", trained_blocks(coeff, 200, args.seed)),
            ("worst-case", worst_case_block(coeff, args.seed)),
        )
        for kind, cases in settings:
            fp_it, fp_s = measure(cases, inv.FixedPoint(atol=1e-6, max_iter=5000))
            an_it, an_s = measure(cases, inv.Anderson(atol=1e-6, max_iter=5000, memory=5))
            lip = max(c[2] for c in cases)
            rows.append([coeff, kind, lip, fp_it, an_it, an_it / fp_it, fp_s, an_s, an_s / fp_s])
            results.append(dict(coeff=coeff, kind=kind, certified_lipschitz=lip, fixed_point_iterations=fp_it,
                                anderson_iterations=an_it, iteration_ratio=an_it / fp_it, fixed_point_seconds=fp_s,
                                anderson_seconds=an_s, time_ratio=an_s / fp_s))
    headers = ["c", "blocks", "max Lip(g)", "FP iters", "AA iters", "AA/FP iters", "FP s", "AA s", "AA/FP time"]
    print_table(headers, rows)
    write_json(args.json, {"tolerance": 1e-6, "results": results})


if __name__ == "__main__":
    main()
