"""Benchmark: IMS pipeline of thesis chapter 7 on CPU.

1. Training throughput (spectra/s, Adam steps incl. backward) and peak memory of IsotopeNet on 27286-bin
   spectra with 2 threads; ResidualNet (Table A.1) on the same input as the baseline (ratio).
2. The locally connected layer (length 1820, kernel 3) as unfold + einsum vs a naive loop over positions,
   forward + backward (ratio).
3. Reading a large synthetic imzML (continuous, float32, 27286 bins) into a memory-mapped cache: MB/s and the
   reader's peak memory (RSS growth), vs the naive pyimzML ``getspectrum`` loop into an in-memory array.

Every measurement runs in a fresh subprocess, so peak RSS (``ru_maxrss``) is the measurement's own.

    python benchmarks/ims.py [--spectra 2000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_BINS = 27286


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _AnonPeak:
    """Peak anonymous (non file-backed) resident memory, sampled from /proc every 5 ms. Memory-mapped file
    pages count in RSS but are page cache the kernel can drop; RssAnon is what a reader really holds."""

    def __init__(self):
        import threading

        self.peak, self._stop = 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return float(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.005)

    def __enter__(self):
        self.base = self.now()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def worker_train(model: str, threads: int, batch: int, steps: int) -> dict:
    import torch

    from invertible.ims.models import IsotopeNet, ResidualNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = IsotopeNet(N_BINS) if model == "isotopenet" else ResidualNet()
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    x = torch.randn(batch, N_BINS)
    y = torch.randint(0, 2, (batch,))
    base = _rss_mb()

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t
    return {"spectra_per_s": batch * steps / dt, "peak_rss_mb": _rss_mb(), "rss_growth_mb": _rss_mb() - base,
            "batch": batch, "steps": steps, "threads": threads}


def worker_local(threads: int, batch: int, reps: int) -> dict:
    import torch

    from invertible.ims.models import LocallyConnected1d

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lc = LocallyConnected1d(1820, 1, 1, kernel_size=3)
    x = torch.randn(batch, 1, 1820, requires_grad=True)
    out = {}
    for name, fn in (("einsum", lc.forward), ("unfold", lc.forward_unfold), ("naive", lc.forward_naive)):
        n = 1 if name == "naive" else reps  # the loop over 1820 positions is slow
        if name != "naive":
            fn(x).sum().backward()  # warm-up
        t = time.perf_counter()
        for _ in range(n):
            fn(x).sum().backward()
        out[name] = (time.perf_counter() - t) / n
    diff = (lc.forward(x) - lc.forward_naive(x)).abs().max().item()
    return {"einsum_s": out["einsum"], "unfold_s": out["unfold"], "naive_s": out["naive"], "max_abs_diff": diff,
            "batch": batch}


def worker_read(path: str, method: str, cache: str) -> dict:
    import numpy as np
    from pyimzml.ImzMLParser import ImzMLParser

    from invertible.ims.imzml import read_imzml

    base = _rss_mb()
    with _AnonPeak() as mem:
        t = time.perf_counter()
        if method == "pyimzml":  # the naive way: pyimzML getspectrum into one in-memory array
            p = ImzMLParser(path)
            X = np.stack([p.getspectrum(i)[1] for i in range(len(p.coordinates))])
        else:
            X = read_imzml(path, cache=cache or None).spectra
        checksum = float(np.asarray(X[::97], np.float64).sum())
        dt = time.perf_counter() - t
    size = Path(path).with_suffix(".ibd").stat().st_size / 2**20
    return {"seconds": dt, "mb_per_s": size / dt, "ibd_mb": size, "rss_growth_mb": _rss_mb() - base,
            "anon_growth_mb": mem.peak - mem.base, "checksum": checksum}


def _sub(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spectra", type=int, default=2000, help="spectra in the imzML read benchmark")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "train":
            res = worker_train(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        elif kind == "local":
            res = worker_local(int(rest[0]), int(rest[1]), int(rest[2]))
        else:
            res = worker_read(rest[0], rest[1], rest[2])
        print(json.dumps(res))
        return 0

    from dataclasses import replace

    from invertible.ims.synthetic import generate, preset, write_imzml

    results: dict = {}
    print(f"[1/3] training throughput on {N_BINS} bins, {args.threads} threads", flush=True)
    iso = _sub("train", "isotopenet", str(args.threads), str(args.batch), str(args.steps))
    iso1 = _sub("train", "isotopenet", "1", str(args.batch), str(args.steps))
    res = _sub("train", "residualnet", str(args.threads), str(max(4, args.batch // 8)), "2")
    results["train"] = {"isotopenet": iso, "isotopenet_1_thread": iso1, "residualnet": res,
                        "speedup_vs_residualnet": iso["spectra_per_s"] / res["spectra_per_s"]}
    print("[2/3] locally connected layer", flush=True)
    lc = _sub("local", str(args.threads), "256", "5")
    lc["speedup"] = lc["naive_s"] / lc["einsum_s"]
    results["locally_connected"] = lc
    print(f"[3/3] reading a {args.spectra} x {N_BINS} imzML", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(preset("adsq-like"), n_spectra=args.spectra)
        imzml, _ = write_imzml(generate(cfg, seed=0), tmp, name="bench")
        naive = _sub("read", str(imzml), "pyimzml", "")
        inmem = _sub("read", str(imzml), "invertible", "")
        ours = _sub("read", str(imzml), "invertible", str(Path(tmp) / "cache"))
    for r in (ours, inmem):
        if abs(r["checksum"] - naive["checksum"]) > 1e-6 * abs(naive["checksum"]):
            raise RuntimeError("readers disagree")
    results["read"] = {"invertible_memmap": ours, "invertible_in_memory": inmem, "pyimzml_naive": naive,
                       "speedup": naive["seconds"] / ours["seconds"],
                       "anon_memory_ratio": ours["anon_growth_mb"] / max(naive["anon_growth_mb"], 1e-9)}

    rows = [
        (f"IsotopeNet training, B={args.batch}, {args.threads} threads", f"{iso['spectra_per_s']:.1f} spectra/s",
         f"peak RSS {iso['peak_rss_mb']:.0f} MB", f"x{results['train']['speedup_vs_residualnet']:.1f} vs "
         f"ResidualNet ({res['spectra_per_s']:.2f} spectra/s, peak RSS {res['peak_rss_mb']:.0f} MB)"),
        (f"IsotopeNet training, B={args.batch}, 1 thread", f"{iso1['spectra_per_s']:.1f} spectra/s",
         f"peak RSS {iso1['peak_rss_mb']:.0f} MB", "(shared CPU: extra threads may contend)"),
        ("Locally connected fwd+bwd (B=256, L=1820)", f"{lc['einsum_s'] * 1e3:.1f} ms",
         f"unfold {lc['unfold_s'] * 1e3:.1f} ms", f"naive loop {lc['naive_s'] * 1e3:.0f} ms: x{lc['speedup']:.0f} "
         f"faster (max diff {lc['max_abs_diff']:.1e})"),
        (f"imzML read -> memmap cache ({ours['ibd_mb']:.0f} MB)", f"{ours['mb_per_s']:.0f} MB/s",
         f"anon. memory +{ours['anon_growth_mb']:.0f} MB", f"pyimzML loop: {naive['mb_per_s']:.0f} MB/s, anon. "
         f"+{naive['anon_growth_mb']:.0f} MB"),
        ("imzML read -> in memory", f"{inmem['mb_per_s']:.0f} MB/s", f"anon. memory +{inmem['anon_growth_mb']:.0f} MB",
         f"x{naive['seconds'] / inmem['seconds']:.1f} speed vs pyimzML loop"),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("measurement", "ours", "memory", "vs baseline")
    w = [max(a, len(b)) for a, b in zip(w, head, strict=True)]
    print(" | ".join(h.ljust(n) for h, n in zip(head, w, strict=True)))
    print("-+-".join("-" * n for n in w))
    for r in rows:
        print(" | ".join(c.ljust(n) for c, n in zip(r, w, strict=True)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
