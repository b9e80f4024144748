"""``invertible analyze-relu CKPT --data PATH``: invertibility analysis of a trained ReLU network (chapter 3).

Prints, per stage (each linear/conv map and each ReLU), the output size, the number of singular values of
the local linearization, the median number of non-zero ones and the median condition number over the
inputs (Fig. 3.4); for MLPs also the Theorem 3.3 preimage class fractions of every ReLU layer (Fig. 3.1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from invertible.commands._options import (
    add_device,
    add_json,
    add_progress,
    add_seed,
    data_path,
    nonnegative_int,
    positive_int,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze-relu",
        help="preimages and linearization spectra of a trained ReLU network",
        description="Load a ReLU-network checkpoint (written by `invertible reproduce fig3.1/fig3.4`) and report "
        "the singular values / condition numbers of its local linearizations per layer and, for MLPs, the "
        "preimage class (singleton/compact/unbounded, Theorem 3.3) of every ReLU layer.",
    )
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="a .safetensors checkpoint with model meta")
    p.add_argument("--data", type=data_path, required=True,
                   help="inputs: .npy array (N, *input_shape), MNIST-style .npz (padded to 3x32x32 for CIFAR "
                        "models) or a CIFAR-10 python-pickle folder/batch file")
    p.add_argument("--n", type=positive_int, default=50, help="number of inputs (random, seeded; default 50)")
    p.add_argument("--window", type=nonnegative_int, default=None,
                   help="image models: Jacobian w.r.t. the centred KxK window of all channels (default 8; "
                        "0 = full input, expensive)")
    add_seed(p)
    add_device(p)
    add_json(p, help="also write the results as JSON here")
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from invertible.analysis import layer_preimages, layer_spectra, spectrum_summary
    from invertible.data.arrays import load_model_inputs
    from invertible.io import atomic_write_text
    from invertible.training.runs import load_run, model_config_of

    if args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    net, ck = load_run(args.checkpoint, device=args.device)
    if ck.kind != "relu_net" and getattr(net, "kind", None) != "relu_net":
        raise ValueError(f"{args.checkpoint} holds a {ck.kind} model, not a ReLU network of chapter 3")
    model_cfg = model_config_of(ck)[1]
    input_shape = tuple(net.config.input_shape)
    x = load_model_inputs(args.data, input_shape)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    x = x[perm].to(args.device)

    window = None
    if len(input_shape) == 3:
        k = 8 if args.window is None else args.window
        if k < 0 or k > min(input_shape[1:]):
            raise ValueError(f"--window must lie in [0, {min(input_shape[1:])}], got {k}")
        if k:
            r0, c0 = (input_shape[1] - k) // 2, (input_shape[2] - k) // 2
            window = (slice(None), slice(r0, r0 + k), slice(c0, c0 + k))
    elif args.window:
        raise ValueError("--window applies to image models (C, H, W) only")

    from tqdm.auto import tqdm

    spectra = layer_spectra(net, x, window=window,
                            progress=lambda it: tqdm(it, desc="spectra", disable=args.no_progress, leave=False))
    rows = spectrum_summary(spectra)
    cols = "input window " + (f"{window[1].stop - window[1].start}x{window[2].stop - window[2].start}"
                              if window else "full")
    print(f"{model_cfg['name']} from {args.checkpoint} · {len(x)} inputs from {args.data} · {cols}")
    print(f"{'stage':8s} {'units':>7s} {'#sv':>5s} {'#nonzero':>9s} {'cond':>10s} {'sigma_max':>10s} "
          f"{'sigma_min':>10s}   (medians over inputs)")
    for r in rows:
        print(f"{r['stage']:8s} {r['out_features']:7d} {r['n_singular_values']:5d} {r['median_n_nonzero']:9.1f} "
              f"{r['median_condition']:10.4g} {r['median_sigma_max']:10.4g} {r['median_sigma_min_nonzero']:10.4g}")
    result: dict = {"model": model_cfg, "n_inputs": len(x), "window": cols, "stages": rows}
    if len(input_shape) == 1:
        layers = layer_preimages(net, x.cpu())
        print("\npreimage classes of ReLU layers (Theorem 3.3; fraction of inputs)")
        for lp in layers:
            fr = lp.fractions()
            print(f"{lp.name:8s} {lp.in_features:4d} -> {lp.out_features:<5d} "
                  + "  ".join(f"{k} {v:.2f}" for k, v in fr.items()))
        result["preimages"] = [{"layer": lp.name, **lp.fractions()} for lp in layers]
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0
