"""Memory and time of ``Flow.rsample`` + backward against the number of fixed-point iterations: implicit
differentiation (the adjoint fixed point ``a = u - J_g^T a``) against unrolled backpropagation through the
iterations.

Memory is the bytes of the distinct storages autograd saves while the step runs (``saved_tensors_hooks`` over the
forward *and* the backward pass, so the implicit gradient's re-evaluation of ``g`` in the backward pass counts):
deterministic on CPU. On CUDA the script also reports ``torch.cuda.max_memory_allocated``. Every block runs
exactly k iterations (a tolerance nothing meets). The gradients of the two modes are compared at every k:
unrolled differentiation converges to the implicit gradient as the iterate converges (error ~ Lip(g)^k).

    python benchmarks/rsample_memory.py [--iterations 5 10 20 50 100] [--json results.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import invertible as inv  # noqa: E402
from _common import median_time, parser, print_table, write_json  # noqa: E402
from invertible.models.resflow import vector_residual_flow  # noqa: E402

MODES = ("unrolled", "implicit")


def step_bytes(step) -> int:
    """Bytes of all distinct storages autograd saves while ``step()`` (forward and backward) runs. The storages
    are held until the end, so a freed one's address cannot be reused and counted once for two: the count is
    deterministic (and, for the implicit mode, sums the per-block re-evaluations of the backward pass)."""
    seen: dict[int, int] = {}
    held = []

    def pack(t):
        try:
            s = t.untyped_storage()
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
            held.append(s)
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--coeff", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    model = vector_residual_flow(args.dim, n_blocks=args.blocks, hidden=(args.hidden,), coeff=args.coeff).to(dev)
    model.initialize(torch.randn(512, args.dim, device=dev))
    inv.converge_spectral_norms(model)
    model.eval()
    flow = model.distribution()
    params = list(model.parameters())
    blocks = [m for m in model.modules() if isinstance(m, inv.ResidualBlock)]
    z = torch.randn(args.batch, args.dim, device=dev)

    def step(mode):
        x = flow.reparameterize(z, gradient=mode)
        loss = x.square().sum(1).mean()
        return torch.autograd.grad(loss, params)

    rows, results = [], {}
    for k in args.iterations:
        for b in blocks:  # exactly k evaluations of g per block
            b.solver = inv.FixedPoint(atol=0.0, rtol=1e-300, max_iter=k, on_failure="ignore")
        grads = {mode: step(mode) for mode in MODES}
        num = sum(float((a - b).square().sum()) for a, b in zip(grads["implicit"], grads["unrolled"], strict=True))
        den = sum(float(a.square().sum()) for a in grads["implicit"])
        rel = (num / den) ** 0.5
        entry = {}
        for mode in MODES:  # interleaved per k: the same machine state for both
            saved = step_bytes(lambda mode=mode: step(mode))
            peak = None
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                step(mode)
                torch.cuda.synchronize(dev)
                peak = torch.cuda.max_memory_allocated(dev)

            def timed(mode=mode):
                step(mode)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            seconds = median_time(timed, repeats=args.repeats)
            entry[mode] = {"saved_bytes": saved, "cuda_peak_bytes": peak, "seconds": seconds}
        entry["relative_gradient_difference"] = rel
        results[str(k)] = entry
        u, i = entry["unrolled"], entry["implicit"]
        rows.append([k, u["saved_bytes"] / 2**20, i["saved_bytes"] / 2**20, i["saved_bytes"] / u["saved_bytes"],
                     u["seconds"] * 1e3, i["seconds"] * 1e3, i["seconds"] / u["seconds"], f"{rel:.1e}"])
    print(f"rsample + backward: {args.blocks} blocks, d={args.dim}, hidden {args.hidden}, batch {args.batch}, "
          f"coeff {args.coeff}, device {dev}")
    print_table(["iterations", "unrolled MiB", "implicit MiB", "mem ratio", "unrolled ms", "implicit ms",
                 "time ratio", "rel grad diff"], rows)
    first, last = results[str(args.iterations[0])], results[str(args.iterations[-1])]
    growth = {m: last[m]["saved_bytes"] / first[m]["saved_bytes"] for m in MODES}
    print(f"memory growth from {args.iterations[0]} to {args.iterations[-1]} iterations: unrolled "
          f"{growth['unrolled']:.2f}x, implicit {growth['implicit']:.2f}x")
    write_json(args.json, {"config": vars(args) | {"json": str(args.json)}, "results": results,
                           "memory_growth": growth})


if __name__ == "__main__":
    main()
