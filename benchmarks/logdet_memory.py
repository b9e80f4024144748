"""Memory and time of one training step through a conv i-ResNet block: Neumann-series gradient vs plain
backpropagation through a 10-term power series (Residual Flows' memory-saving gradient, Chen et al. 2019).

Memory is measured as the bytes the autograd graph keeps for the backward pass (every tensor saved by
``saved_tensors_hooks``, unique storages): deterministic on CPU, and what dominates a training step's peak.
On CUDA the script also reports ``torch.cuda.max_memory_allocated``. Target: Neumann <= 0.5x memory.

    python benchmarks/logdet_memory.py [--json results.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import invertible as inv  # noqa: E402
from _common import median_time, parser, print_table, write_json  # noqa: E402
from invertible.models.blocks import residual_function  # noqa: E402


def graph_bytes(step) -> int:
    """Bytes of all distinct storages the autograd graph saves while ``step`` builds it."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(seen.values())


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=16, help="image side")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    g = residual_function(args.channels, 64, 0.9).to(dev)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=dev)
    g(x)  # shape and power-iteration init
    estimators = {
        "backprop 10-term series": inv.PowerSeriesLogDet(n_terms=10, generator=torch.Generator(dev).manual_seed(0)),
        "Neumann gradient 10 terms": inv.PowerSeriesLogDet(
            n_terms=10, neumann_gradient=True, generator=torch.Generator(dev).manual_seed(0)
        ),
    }
    rows, results = [], {}
    for name, est in estimators.items():
        block = inv.ResidualBlock(g, logdet=est)

        def step(block=block):
            y, ld = block.forward_and_logdet(x)
            return (0.5 * y.square().flatten(1).sum(1) - ld).mean()

        saved = graph_bytes(step)
        peak = None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            step().backward()
            peak = torch.cuda.max_memory_allocated(dev)
        seconds = median_time(lambda step=step: step().backward(), repeats=5)
        results[name] = {"graph_bytes": saved, "cuda_peak_bytes": peak, "seconds_per_step": seconds}
        rows.append([name, saved / 2**20, "-" if peak is None else peak / 2**20, seconds])
    base, neu = results["backprop 10-term series"], results["Neumann gradient 10 terms"]
    print_table(["estimator", "graph MiB", "CUDA peak MiB", "s/step"], rows)
    mem_ratio = neu["graph_bytes"] / base["graph_bytes"]
    time_ratio = neu["seconds_per_step"] / base["seconds_per_step"]
    print(f"Neumann / backprop: memory {mem_ratio:.3f}x, time {time_ratio:.3f}x (target memory <= 0.5x)")
    write_json(args.json, {"config": vars(args) | {"json": str(args.json)}, "results": results,
                           "memory_ratio": mem_ratio, "time_ratio": time_ratio})


if __name__ == "__main__":
    main()
