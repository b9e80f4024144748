"""Fig. 3.4: singular values of the linearization over the layers of WideCIFAR and ThinCIFAR (Table 3.1).

Both CNNs are trained (Adam, cross-entropy) and, for test inputs, the local linearization ``A_P`` up to every
stage (each conv/dense map and each ReLU separately) is computed exactly by forward-mode AD. We report the
median over inputs of the sorted singular values (left panel of Fig. 3.4) and, per stage, the output size,
the number of non-zero singular values and the condition number of the non-zero part (right panels).

Data: CIFAR-10 python pickles if the environment variable ``INVERTIBLE_CIFAR10`` names their folder,
otherwise MNIST-10k (``INVERTIBLE_MNIST_NPZ`` or ``../shared/data/mnist_10k.npz``) zero-padded to 32x32
and copied to three channels. On a CPU the Jacobian is taken w.r.t. a centred input window (all channels)
to keep the SVDs small (4x4 in quick mode, 8x8 otherwise); with ``--device cuda`` the full run uses all
3072 input coordinates as the thesis does.
The trained models are saved as ``WideCIFAR.safetensors`` / ``ThinCIFAR.safetensors`` for
``invertible analyze-relu``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from invertible.analysis import layer_spectra, relu_stages, spectrum_summary, stage_outputs
from invertible.data.images import default_mnist_npz
from invertible.data.images import load_images as load_image_set
from invertible.data.tensors import load_cifar10, load_mnist_npz, to_rgb32
from invertible.experiments.registry import RunContext, register
from invertible.models.relu_nets import ThinCIFAR, WideCIFAR, relu_net_config
from invertible.training.checkpoint import save_checkpoint

THESIS = """\
Fig. 3.4 (CIFAR-10, Keras `cifar10_cnn` training, median over 50 test samples, full 3072-column Jacobians):
*left* - over conv layers 1-6 (after ReLU) the shape of the singular-value curve stays similar for layers 1-5,
the **largest singular value grows** and the **small singular values decrease significantly**; layer 6 has zero
singular values (invariant directions), which the condition number ignores. *Right* - WideCIFAR vs ThinCIFAR per
stage (conv and ReLU split): output units, number of non-zero singular values, condition number. For ThinCIFAR
"the number of singular values decreases in layer 5, which cuts off the smallest singular values, resulting in a
lower condition number. Yet, there are more invariant directions." (No numeric table in the thesis.)"""


def _load_data(ctx: RunContext, n_train: int, n_test: int):
    cifar = os.environ.get("INVERTIBLE_CIFAR10")
    gen = ctx.generator(7)
    if cifar:
        splits = load_cifar10(cifar)
        if "train" not in splits or "test" not in splits:
            raise ValueError(f"{cifar}: need both data_batch_* and test_batch for fig3.4")
        (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
        ptr = torch.randperm(len(xtr), generator=gen)[:n_train]
        pte = torch.randperm(len(xte), generator=gen)[:n_test]
        return xtr[ptr], ytr[ptr], xte[pte], yte[pte], f"CIFAR-10 ({cifar})"
    path = Path(os.environ.get("INVERTIBLE_MNIST_NPZ") or default_mnist_npz())
    if path.is_file():
        x, y = load_mnist_npz(path)
        source = f"MNIST-10k padded to 32x32x3 ({path.name}; CIFAR-10 pickles not given)"
    else:  # no data files at all: scikit-learn's digits, upsampled 3x to 24x24, still real images
        images, labels = load_image_set("digits")
        x = torch.from_numpy(images.astype("float32") / 255.0).repeat_interleave(3, 2).repeat_interleave(3, 3)
        y = torch.from_numpy(labels)
        source = f"scikit-learn digits upsampled to 24x24, padded to 32x32x3 (no CIFAR-10 pickles; {path} missing)"
    perm = torch.randperm(len(x), generator=gen)  # the file is sorted by class
    x, y = to_rgb32(x[perm]), y[perm]
    n_test_avail = min(n_test, len(x) // 10)
    xte, yte = x[:n_test_avail], y[:n_test_avail]
    xtr, ytr = x[n_test_avail:][:n_train], y[n_test_avail:][:n_train]
    return xtr, ytr, xte, yte, source


def _train(net, x, y, *, epochs: int, batch: int, lr: float, ctx: RunContext, name: str, device) -> float:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = ctx.generator(11)
    net.train()
    loss_value = float("nan")
    steps = epochs * ((len(x) + batch - 1) // batch)
    bar = ctx.progress(range(steps), desc=f"fig3.4 train {name}")
    it = iter(bar)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = perm[start:start + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            next(it, None)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_value:.3f}")
    net.eval()
    return loss_value


def _accuracy(net, x, y, device) -> float:
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(x), 256)])
    return float((pred == y).double().mean())


@register("fig3.4", title="Singular values over layers: WideCIFAR vs ThinCIFAR", thesis=THESIS)
def run(ctx: RunContext) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Window side for the Jacobian (None = all 3072 input coordinates, as in the thesis). The SVD cost grows
    # roughly with the square of the window area, so a CPU run uses an 8x8 window and a GPU run the full input.
    full_window = None if torch.device(ctx.device).type == "cuda" else 8
    cfg = (dict(n_train=1024, n_test=256, epochs=1, n_eval=4, window=4) if ctx.quick
           else dict(n_train=50000, n_test=2000, epochs=8, n_eval=50, window=full_window))
    cfg.update(batch=32, lr=1e-3)
    device = torch.device(ctx.device)
    xtr, ytr, xte, yte, data_desc = _load_data(ctx, cfg["n_train"], cfg["n_test"])
    w = cfg["window"]
    lo = (32 - w) // 2 if w else 0
    window = (slice(None), slice(lo, lo + w), slice(lo, lo + w)) if w else None
    n_cols = 3 * w * w if w else 3072
    x_eval = xte[: cfg["n_eval"]].to(device)

    results: dict[str, dict] = {}
    for k, cls in enumerate((WideCIFAR, ThinCIFAR)):
        name = cls.__name__
        torch.manual_seed(ctx.seed + k)
        net = cls().to(device)
        loss = _train(net, xtr, ytr, epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"], ctx=ctx,
                      name=name, device=device)
        acc = _accuracy(net, xte, yte, device)
        save_checkpoint(ctx.out / f"{name}.safetensors", net.state_dict(),
                        {"model": relu_net_config(net), "experiment": "fig3.4", "data": data_desc,
                         "test_accuracy": acc})
        spectra = layer_spectra(net, x_eval, window=window,
                                progress=lambda it, name=name: ctx.progress(it, desc=f"fig3.4 spectra {name}"))
        rows = spectrum_summary(spectra)
        with torch.no_grad():  # rank(A_P) up to a ReLU <= its active units: the full-input bound, no SVD needed
            outs = stage_outputs(net, x_eval)
        bound = torch.full((len(x_eval),), float(x_eval[0].numel()), dtype=torch.float64, device=x_eval.device)
        for row, st, out in zip(rows, relu_stages(net), outs, strict=True):
            # rank of a product <= rank of every factor: input size, output sizes, active units so far
            bound = torch.clamp(bound, max=float(out[0].numel()))
            active = None
            if st.kind == "relu":
                active = (out.flatten(1) > 0).sum(1).double()
                bound = torch.minimum(bound, active)
            row["median_active_units"] = float(active.median()) if active is not None else None
            row["full_input_rank_bound"] = float(bound.median())
        results[name] = {"loss": loss, "accuracy": acc, "spectra": spectra, "rows": rows}

    # left: decay of the median singular values of WideCIFAR over layers (conv + ReLU)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, name in zip(axes, results, strict=True):
        relus = [sp for sp in results[name]["spectra"] if sp.kind == "relu"]
        cmap = plt.get_cmap("viridis")
        for i, sp in enumerate(relus):
            s = sp.median_singular_values.cpu().numpy()
            s = s[s > 0]
            ax.semilogy(np.arange(1, len(s) + 1), s, color=cmap(i / max(len(relus) - 1, 1)), label=f"layer {sp.layer}")
        ax.set_xlabel("index of singular value")
        ax.set_ylabel("median singular value (non-zero)")
        ax.set_title(f"{name}: linearization up to conv/dense + ReLU")
        ax.legend(fontsize=8)
    ctx.save_figure(fig, "fig3_4_singular_values")

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    stages = [r["stage"] for r in results["WideCIFAR"]["rows"]]
    for name, color in (("WideCIFAR", "tab:blue"), ("ThinCIFAR", "tab:red")):
        rows = results[name]["rows"]
        axes[0].semilogy(stages, [r["out_features"] for r in rows], "o-", color=color, label=name)
        axes[1].semilogy(stages, [r["median_n_nonzero"] for r in rows], "o-", color=color, label=f"{name} (window)")
        axes[1].semilogy(stages, [r["full_input_rank_bound"] for r in rows], "s--", color=color, alpha=0.6,
                         label=f"{name}: bound for the full input")
        axes[2].semilogy(stages, [r["median_condition"] for r in rows], "o-", color=color, label=name)
    axes[0].set_ylabel("output units")
    axes[1].set_ylabel("# non-zero singular values")
    axes[2].set_ylabel("condition number")
    axes[0].legend()
    axes[1].legend(fontsize=7)
    axes[2].tick_params(axis="x", rotation=60)
    ctx.save_figure(fig, "fig3_4_wide_vs_thin")

    lines = [
        f"Data: **{data_desc}**; {len(xtr)} training images, {cfg['epochs']} epoch(s) Adam (lr {cfg['lr']}, batch "
        f"{cfg['batch']}); spectra: median over {len(x_eval)} test inputs, Jacobian w.r.t. "
        + (f"the centred {w}x{w}x3 input window ({n_cols} columns, so at most {n_cols} singular values)"
           if w else "the full input (3072 columns)") + ".",
        "",
        f"Test accuracy: WideCIFAR {results['WideCIFAR']['accuracy']:.1%}, "
        f"ThinCIFAR {results['ThinCIFAR']['accuracy']:.1%} (on {len(xte)} test images).",
        "",
        "| stage | units W / T | #sv W / T | median #non-zero W / T | median cond W / T "
        "| median sigma_max W / T | median sigma_min W / T |",
        "|---|---|---|---|---|---|---|",
    ]
    for rw, rt in zip(results["WideCIFAR"]["rows"], results["ThinCIFAR"]["rows"], strict=True):
        lines.append(
            f"| {rw['stage']} | {rw['out_features']} / {rt['out_features']} | {rw['n_singular_values']} / "
            f"{rt['n_singular_values']} | {rw['median_n_nonzero']:.0f} / {rt['median_n_nonzero']:.0f} | "
            f"{rw['median_condition']:.3g} / {rt['median_condition']:.3g} | {rw['median_sigma_max']:.3g} / "
            f"{rt['median_sigma_max']:.3g} | {rw['median_sigma_min_nonzero']:.3g} / "
            f"{rt['median_sigma_min_nonzero']:.3g} |"
        )
    lines += [
        "",
        "Active units after each ReLU (median over the same inputs). The full-input linearization up to that "
        "ReLU has at most min(3072, output and active units of every stage so far) non-zero singular values - "
        "the mechanism behind the thesis's ThinCIFAR cut-off in layer 5 (a bound from a forward pass, not an "
        "SVD):",
        "",
        "| ReLU | active units W / T | bound on #non-zero (full input) W / T |",
        "|---|---|---|",
    ]
    for rw, rt in zip(results["WideCIFAR"]["rows"], results["ThinCIFAR"]["rows"], strict=True):
        if rw["kind"] == "relu":
            lines.append(f"| {rw['stage']} | {rw['median_active_units']:.0f} / {rt['median_active_units']:.0f} | "
                         f"{rw['full_input_rank_bound']:.0f} / {rt['full_input_rank_bound']:.0f} |")
    wide_relu = [r for r in results["WideCIFAR"]["rows"] if r["kind"] == "relu" and r["layer"] <= 6]
    smax = [r["median_sigma_max"] for r in wide_relu]
    smin = [r["median_sigma_min_nonzero"] for r in wide_relu]
    lines += [
        "",
        f"WideCIFAR after ReLU, layers 1-6: largest singular value {smax[0]:.3g} -> {smax[-1]:.3g}, smallest "
        f"non-zero {smin[0]:.3g} -> {smin[-1]:.3g} (thesis: largest grows, small ones decrease). "
        "Checkpoints `WideCIFAR.safetensors`, `ThinCIFAR.safetensors`; e.g. "
        "`invertible analyze-relu WideCIFAR.safetensors --data <npz or CIFAR folder> --n 10 --window 8`.",
    ]
    if ctx.quick:
        lines += ["", "Quick mode: tiny training (1024 images, 1 epoch) and 4 inputs with a 4x4 window. Without "
                  "`--quick`: all training images, 8 epochs, 50 test inputs, an 8x8 window on a CPU (roughly 30-60 "
                  "min on 2 cores) or the full 3072-column Jacobian with `--device cuda`."]
    ctx.report("\n".join(lines))
    metrics: dict = {"data": data_desc, "window": w, "n_eval": len(x_eval)}
    for name, res in results.items():
        metrics[name] = {"test_accuracy": res["accuracy"], "final_train_loss": res["loss"], "stages": res["rows"]}
    return metrics
