"""Benchmark: one training step of a multi-scale 1x28x28 residual flow against normflows' residual flow of the
same architecture (issue 13): step time, interleaved in one run, and peak memory per estimator.

Protocol. MNIST-10k (``../shared/data/mnist_10k.npz``; uniform noise when absent), dequantized ``(x + u) / 256``,
batch 64, Adam lr 1e-3. Both models: logit (alpha 1e-5) -> 3 scales x 2 blocks of 3x3-1x1-3x3 convolutions
(width 64, spectral norm coeff 0.9, one power iteration per optimizer step, LipSwish), ActNorm around every block,
a squeeze between scales, no factor-out, standard normal base; about 74k parameters on each side (printed).
Estimator on both sides: Russian roulette with Hutchinson probes and the Neumann gradient, term law
``N = 3 + M``, ``M ~ Geometric(1/2)`` on ``{0, 1, ...}`` (ours ``n_exact=3``; normflows' ``n_exact_terms=2``
plus its geometric on ``{1, 2, ...}``: the same law). Both draw their numbers of terms from ONE seeded schedule
(block by block, step by step), so both do exactly the same work in every step and the ratio is not noise from
unequal draws. A step is forward + backward + Adam step (+ normflows' ``compute_weight(update=True)``, its
power iteration, as the official training loop calls it once per step). Steps alternate ours / theirs; the
median over the timed steps is reported, for each thread count.

Memory. Each (model, estimator) runs in its own child process: two warm-up steps, then the peak of one step
above the resting memory (parameters, optimizer state, data). CPU: the peak resident set size (Linux
``VmHWM`` after resetting it through ``/proc/self/clear_refs``) with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
freed tensors go back to the system at once and the RSS follows the live tensor bytes. CUDA:
``torch.cuda.max_memory_allocated`` above ``memory_allocated`` before the step. Estimators: the Neumann
gradient and plain backpropagation through the series (``neumann_gradient=False`` / ``reduce_memory=False``).

    python benchmarks/resflow_images.py [--steps 20] [--threads 1,2] [--device cuda] [--json out.json]
    python benchmarks/resflow_images.py --estimators recompute32,recompute32@eager   # ours now vs before
    python benchmarks/resflow_images.py --a2      # also the A.2 MNIST model (3 x 32 blocks, hidden 32)

Measured 2026-12-01 on the shared 2-core CPU under heavy load from other jobs (load average 8-12, so steps took
~10 s instead of ~1.5 s; the ratios are interleaved), ``--steps 15 --threads 1,2 --a2``, normflows 1.7.3,
73908 vs 73926 parameters: time ratio ours / normflows 0.89 (1 thread) and 0.85 (2 threads) with the stored-graph
Neumann gradient, 0.98 / 1.06 with ``recompute``; step peak memory 397 MiB (stored graph, 1.11x normflows'
359 MiB), 186 MiB (recompute, 0.52x), backprop through the series 697 vs 1074 MiB (0.65x). A.2 MNIST model,
batch 64, 10-term series with the Neumann gradient: 2.09 GiB per step with the stored graph, 0.11 GiB with
``recompute``. Before this benchmark's changes the time ratio was about 1.0 (fused LipSwish: 0.69x step time).

Measured again 2026-12-01 (load from other jobs), ``--steps 8 --threads 1 --a2``, with ``recompute16``
(``recompute_chunk=16``): time ratio ours / normflows 1.01 (stored graph), 0.94 (recompute), 0.83 (recompute16:
the chunks' activations stay in cache); step peak memory 397 / 187 / 63 MiB against normflows' 359 MiB (1.11x,
0.52x, 0.18x); A.2 MNIST model 2.09 / 0.111 / 0.074 GiB.

After the by-hand chain (``invertible.logdet_chain``), the fused LipSwish kernels (``invertible.fused``, ``--fused
on``: every size compiled before the timed steps; ``--fused auto``, the default policy, gave 0.42 for
recompute32 as well) and the faster few-channel CPU adjoints, ``--steps 8 --warmup 3 --threads
1,2 --a2`` (2026-12-01, shared 2-core CPU): time ratio ours / normflows at 1 / 2 threads 0.61 / 0.65 (stored
graph), 0.43 / 0.45 (recompute), 0.42 / 0.46 (recompute32, the image flows' default), 0.43 / 0.50 (recompute16),
and 0.84 / 0.86 for ``recompute32@eager`` (the implementation before, in the same run); step peak memory 396 /
210 / 112 / 57 MiB against normflows' 359 (1.10x, 0.59x, 0.31x, 0.16x), backprop through the series 696 vs 1073
MiB; A.2 MNIST model 2.09 / 0.127 / 0.078 GiB (stored graph / recompute / recompute16).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import invertible as inv
from invertible.models.resflow import image_residual_flow, residual_blocks

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist_10k.npz"
SHAPE = (1, 28, 28)


# -- the shared schedule of Russian-roulette draws ------------------------------------------------------------
class Draws:
    """``M ~ Geometric(p)`` on ``{0, 1, ...}``, one per block call, from a seeded numpy generator."""

    def __init__(self, seed: int, p: float = 0.5):
        self.rng, self.p = np.random.default_rng(seed), p

    def next(self) -> int:
        return int(self.rng.geometric(self.p)) - 1


class ScheduledRoulette(inv.RussianRouletteLogDet):
    """The library's Russian-roulette estimator whose extra terms M come from a :class:`Draws` schedule."""

    def __init__(self, draws: Draws, **kw):
        super().__init__(n_exact=3, p=0.5, **kw)
        self.draws = draws

    def _sample_extra(self, device) -> int:
        return self.draws.next()


# -- models ---------------------------------------------------------------------------------------------------
def ours(draws: Draws, neumann: bool = True, n_blocks: int = 2, hidden: int = 64, activation: str = "lipswish",
         a2: bool = False, recompute: bool = False, chunk: int | None = None) -> torch.nn.Module:
    model = image_residual_flow(SHAPE, n_scales=3, n_blocks=n_blocks, hidden=hidden, activation=activation,
                                n_exact=3)
    for block in residual_blocks(model):
        if a2:  # A.2: the 10-term power series
            block.logdet = inv.PowerSeriesLogDet(n_terms=10, neumann_gradient=neumann, recompute=recompute,
                                                 recompute_chunk=chunk)
        else:
            block.logdet = ScheduledRoulette(draws, neumann_gradient=neumann, recompute=recompute,
                                             recompute_chunk=chunk)
    return model


def peer(draws: Draws, neumann: bool = True):
    """normflows' residual flow of the same architecture (None when normflows is not installed)."""
    try:
        import normflows as nf
        import normflows.flows.residual as nf_residual
    except ImportError:
        return None
    nf_residual.geometric_sample = lambda p, n: np.array([draws.next() + 1] * n)  # the shared schedule
    c, h, w = SHAPE
    data_order = [nf.transforms.Logit(alpha=1e-5)]
    for s in range(3):
        data_order.append(nf.flows.ActNorm((c, 1, 1)))
        for _ in range(2):
            net = nf.nets.LipschitzCNN([c, 64, 64, c], [3, 1, 3], lipschitz_const=0.9, max_lipschitz_iter=1,
                                       init_zeros=True)
            data_order += [nf.flows.Residual(net, reduce_memory=neumann, n_exact_terms=2, geom_p=0.5),
                           nf.flows.ActNorm((c, 1, 1))]
        if s < 2:
            data_order.append(nf.flows.Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
    q0 = nf.distributions.DiagGaussian((c, h, w), trainable=False)
    return nf.NormalizingFlow(q0, list(reversed(data_order)))  # normflows lists flows latent -> data


def _peer_power_iteration(model) -> None:
    from normflows.nets.lipschitz import InducedNormConv2d

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, InducedNormConv2d):
                m.compute_weight(update=True)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -- data and steps -------------------------------------------------------------------------------------------
def batches(batch: int, seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    if DATA.exists():
        images = torch.from_numpy(np.load(DATA)["images"]).reshape(-1, *SHAPE).double()
    else:
        images = torch.randint(0, 256, (1024, *SHAPE), generator=gen).double()
    while True:
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x = (images[idx] + torch.rand((batch, *SHAPE), generator=gen, dtype=torch.float64)) / 256
        yield x.float().to(device)


def make_step(model, kind: str, bf16: bool = False):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    device = next(model.parameters()).device

    def step(x):
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with amp:
            loss = -model(x).mean() if kind == "ours" else model.forward_kld(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if kind == "peer":
            _peer_power_iteration(model)
        return loss

    return step


ESTIMATORS = {"ours": ("neumann", "recompute", "recompute16", "recompute32", "backprop"),
              "peer": ("neumann", "backprop")}


def build(kind: str, draws: Draws, estimator: str, device: torch.device, first: torch.Tensor, a2: bool = False,
          compile_g: bool = False, bf16: bool = False):
    """``estimator``: ``"neumann"`` (Neumann gradient; normflows: its backward-in-forward ``reduce_memory``),
    ``"recompute"`` (ours: Neumann gradient without a stored graph), ``"recomputeC"`` (the same in chunks of C
    samples, ``recompute_chunk=C``), ``"backprop"`` (through every term); ``"...@eager"``: ours without the fused
    kernels and the by-hand chain (:mod:`invertible.fused`, :mod:`invertible.logdet_chain`), the baseline."""
    torch.manual_seed(0)
    estimator, _, variant = estimator.partition("@")
    neumann, recompute = estimator != "backprop", estimator.startswith("recompute")
    chunk = int(estimator[len("recompute"):]) if recompute and estimator != "recompute" else None
    if kind == "ours":
        shape = {"n_blocks": 32, "hidden": 32, "activation": "elu", "a2": True} if a2 else {}
        model = ours(draws, neumann, recompute=recompute, chunk=chunk, **shape)
        model = model.to(device)
        model.initialize(first)
        if compile_g:
            _compile_blocks(model, first)
        if variant == "eager":  # our implementation before fused kernels and the by-hand chain: the baseline
            return model, _eager(make_step(model, kind, bf16))
    else:
        model = peer(draws, neumann).to(device)
        with torch.no_grad():
            model.forward_kld(first)  # ActNorm's data-dependent initialization
        model.train()
    return model, make_step(model, kind, bf16)


def _eager(step):
    """``step`` with eager LipSwish kernels and the autograd form of the recomputed Neumann gradient."""
    from invertible.logdet_chain import chain_by_hand

    def run(x):
        with inv.fused_kernels("off"), chain_by_hand(False):
            return step(x)

    return run


def _compile_blocks(model, first: torch.Tensor) -> None:
    """``torch.compile`` every block's g; the eager g where compiling or one compiled training step fails."""
    blocks = residual_blocks(model)
    eager = [b.g for b in blocks]
    for b in blocks:
        b.g = torch.compile(b.g, dynamic=False)
    try:
        state = copy.deepcopy(model.state_dict())
        (-model(first).mean()).backward()
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
    except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
        print(f"torch.compile failed ({type(err).__name__}: {str(err)[:120]}); eager g")
        for b, g in zip(blocks, eager, strict=True):
            b.g = g


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(args, threads: int, device: torch.device) -> dict:
    """Median seconds per step of each of our estimators and of normflows, steps interleaved."""
    torch.set_num_threads(threads)
    data = batches(args.batch, args.seed, device)
    first = next(data)
    kinds = [f"ours:{e}" for e in args.estimators.split(",")] + ([] if args.no_normflows else ["peer:neumann"])
    steps = {}
    for k in kinds:
        kind, est = k.split(":")
        steps[k] = build(kind, Draws(args.seed + 1), est, device, first, compile_g=args.compile and kind == "ours",
                         bf16=args.bf16 and kind == "ours")[1]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.warmup + args.steps):
        x = next(data)
        for k in kinds:
            _sync(device)
            t = time.perf_counter()
            steps[k](x)
            _sync(device)
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t)
    out = {k: statistics.median(v) for k, v in times.items()}
    if "peer:neumann" in out:
        out.update({f"ratio {k}": out[k] / out["peer:neumann"] for k in kinds if k.startswith("ours")})
    return out


# -- memory (child processes) ---------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args) -> None:
    device = torch.device(args.device)
    inv.set_fused_kernels(args.fused)
    torch.set_num_threads(1)
    data = batches(args.batch, args.seed, device)
    first = next(data)
    kind, estimator = args.memory_child.split(":")
    _, step = build(kind, Draws(args.seed + 1), estimator, device, first, a2=args.a2_child)
    for _ in range(2):
        step(next(data))
    x = next(data)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        step(x)
        peak = (_rss_kib("VmHWM") - before) * 1024
    print(json.dumps({"peak_bytes": peak}))


def measure_memory(args, kind: str, estimator: str, a2: bool = False) -> int | None:
    cmd = [sys.executable, __file__, "--memory-child", f"{kind}:{estimator}", "--batch", str(args.batch),
           "--fused", args.fused,
           "--device", args.device, "--seed", str(args.seed)] + (["--a2-child"] if a2 else [])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.memory_timeout)
    if proc.returncode != 0:
        print(f"memory run {kind}:{estimator} failed (rc {proc.returncode}): {proc.stderr.strip()[-400:]}")
        return None
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


# -- main -----------------------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model and thread count")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-normflows", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--estimators", default="neumann,recompute,recompute16,recompute32,recompute32@eager",
                    help="our estimators in the timed steps, comma-separated (normflows: its Neumann "
                         "backward-in-forward)")
    ap.add_argument("--fused", default="on", choices=("on", "auto", "off"),
                    help="our fused-kernel policy (invertible.fused; on: every size compiled, before the timed "
                         "steps; auto, the library default: inputs of at least 2^17 elements)")
    ap.add_argument("--bf16", action="store_true", help="ours under bf16 autocast (CUDA; log-det in float32)")
    ap.add_argument("--compile", action="store_true", help="ours with torch.compile of every g (eager fallback)")
    ap.add_argument("--a2", action="store_true", help="also the A.2 MNIST model's step memory (Neumann gradient)")
    ap.add_argument("--memory-timeout", type=float, default=900)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--a2-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return {}
    device = torch.device(args.device)
    inv.set_fused_kernels(args.fused)
    if args.no_normflows or peer(Draws(0)) is None:
        args.no_normflows = True
    first = next(batches(args.batch, args.seed, torch.device("cpu")))
    counts = {"ours": n_params(build("ours", Draws(0), "neumann", torch.device("cpu"), first)[0])}
    if not args.no_normflows:
        counts["peer"] = n_params(build("peer", Draws(0), "neumann", torch.device("cpu"), first)[0])
    result: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "params": counts, "torch": torch.__version__, "timing": {}, "memory": {}}
    for threads in [int(t) for t in args.threads.split(",")]:
        result["timing"][threads] = time_steps(args, threads, device)
    if not args.no_memory:
        for kind in ["ours"] + ([] if args.no_normflows else ["peer"]):
            for est in ESTIMATORS[kind]:
                result["memory"][f"{kind}:{est}"] = measure_memory(args, kind, est)
    if args.a2:
        result["a2_peak_bytes"] = {est: measure_memory(args, "ours", est, a2=True)
                                   for est in ("neumann", "recompute", "recompute16")}

    print(f"\n1x28x28 residual flow, 3 scales x 2 blocks, width 64, batch {args.batch}, {args.device}; "
          f"params ours {counts['ours']}" + (f", normflows {counts['peer']}" if "peer" in counts else ""))
    rows = []
    for threads, t in result["timing"].items():
        for k in [k for k in t if k.startswith("ours:")]:
            rows.append([threads, k.split(":")[1], t[k], t.get("peer:neumann", "-"), t.get(f"ratio {k}", "-")])
    _table(["threads", "our estimator", "ours s/step", "normflows s/step", "time ratio"], rows)
    if result["memory"]:
        mem = result["memory"]
        rows = []
        for est in ESTIMATORS["ours"]:
            o, p = mem.get(f"ours:{est}"), mem.get(f"peer:{'neumann' if est.startswith('recompute') else est}")
            ratio = o / p if o and p else "-"
            rows.append([est, "-" if o is None else o / 2**20, "-" if p is None else p / 2**20, ratio])
        print()
        _table(["estimator", "ours peak MiB", "normflows peak MiB", "memory ratio"], rows)
    if args.a2:
        for est, a2 in result["a2_peak_bytes"].items():
            print(f"A.2 MNIST model (3 x 32 blocks, hidden 32, batch {args.batch}, 10-term series, {est}): "
                  f"step peak {'failed' if a2 is None else f'{a2 / 2**30:.3f} GiB'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
