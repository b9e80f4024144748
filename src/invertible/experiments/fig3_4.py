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

Claims (issue 14): the WideCIFAR statements (largest singular value grows, small ones fall) on the first seed's
spectra; "ThinCIFAR has more invariant directions after layer 5" as the paired difference of the full-input rank
bound after relu5 over ``N_SEEDS = 3`` trainings (a forward pass each, no SVD); and the condition-number cut-off,
which a windowed Jacobian with fewer columns than the rank bound cannot show and MNIST cannot stand in for, so it
is reported as not holding with the reason and the full run's cost (the measured time per input of the windowed
spectra x (3072 / columns)^2, the SVD's cost ratio).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from invertible.analysis import layer_spectra, relu_stages, spectrum_summary, stage_outputs
from invertible.data.arrays import load_cifar10, load_mnist_npz, to_rgb32
from invertible.data.images import default_mnist_npz
from invertible.data.images import load_images as load_image_set
from invertible.experiments.registry import RunContext, register
from invertible.experiments.seeds import full_cost, paired_difference
from invertible.io import save_checkpoint
from invertible.models.relu_nets import ThinCIFAR, WideCIFAR, relu_net_config
from invertible.training.classification import CrossEntropyObjective
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.sources import ShuffledSource

N_SEEDS = 3  # seeds of the Wide/Thin rank comparison (spectra: the first seed only)

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


def _train(net, x, y, *, epochs: int, batch: int, lr: float, ctx: RunContext, name: str, device,
           offset: int = 0) -> float:
    """Adam on the cross-entropy, a permutation per epoch from one generator (``ctx.generator(11 + offset)``),
    the short last batch kept; run by the engine (no run folder). Returns the last batch loss."""
    source = ShuffledSource((x, y), batch, ctx.generator(11 + offset), drop_last=False)
    objective = CrossEntropyObjective()
    steps = epochs * source.steps_per_epoch()
    Trainer(net.to(device), objective, torch.optim.Adam(net.parameters(), lr=lr), source,
            LoopConfig(steps=steps, log_every=source.steps_per_epoch(), on_nonfinite="stop"),
            show_progress=ctx.show_progress, desc=f"fig3.4 train {name}").fit()
    net.eval()
    return float(objective.last_loss)


def _accuracy(net, x, y, device) -> float:
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(x), 256)])
    return float((pred == y).double().mean())


def _rank_bounds(net, x_eval) -> list[tuple[float | None, float]]:
    """Per stage ``(median active units or None, median bound on rank A_P)``: the rank of the linearization up to
    a stage is at most the input size, every output size and every ReLU's active units so far (the rank of a
    product is at most that of each factor) - the full-input bound from a forward pass, no SVD."""
    with torch.no_grad():
        outs = stage_outputs(net, x_eval)
    bound = torch.full((len(x_eval),), float(x_eval[0].numel()), dtype=torch.float64, device=x_eval.device)
    result = []
    for st, out in zip(relu_stages(net), outs, strict=True):
        bound = torch.clamp(bound, max=float(out[0].numel()))
        active = None
        if st.kind == "relu":
            active = (out.flatten(1) > 0).sum(1).double()
            bound = torch.minimum(bound, active)
        result.append((float(active.median()) if active is not None else None, float(bound.median())))
    return result


def _claims(ctx: RunContext, results: dict, relu5: dict[str, list[float]], spectra_seconds: dict[str, float],
            n_cols: int, data_desc: str, cfg: dict, train_per_image: float) -> None:
    """The thesis's four statements about Fig. 3.4 as claims (see the module docstring)."""
    wide = [r for r in results["WideCIFAR"]["rows"] if r["kind"] == "relu" and r["layer"] <= 6]
    smax = [r["median_sigma_max"] for r in wide]
    smin = [r["median_sigma_min_nonzero"] for r in wide]
    ctx.claim("WideCIFAR: the largest singular value grows over layers 1-5 (after ReLU)", max(smax[1:5]) > smax[0],
              f"median sigma_max after ReLU, layers 1-6: {', '.join(f'{v:.3g}' for v in smax)} (seed {ctx.seed})")
    ctx.claim("WideCIFAR: the small singular values decrease significantly (layer 6 below a tenth of layer 1)",
              smin[-1] < smin[0] / 10,
              f"median smallest non-zero singular value after ReLU, layers 1-6: "
              f"{', '.join(f'{v:.3g}' for v in smin)} (seed {ctx.seed})")
    diff = paired_difference(relu5["ThinCIFAR"], relu5["WideCIFAR"])
    ctx.claim(
        "ThinCIFAR has more invariant directions after layer 5 (fewer possible non-zero singular values)",
        diff["hi"] < 0,
        f"bound on rank A_P after relu5 (full input, from the active units): ThinCIFAR "
        f"{', '.join(f'{v:.0f}' for v in relu5['ThinCIFAR'])} vs WideCIFAR "
        f"{', '.join(f'{v:.0f}' for v in relu5['WideCIFAR'])} over {N_SEEDS} seeds; Thin - Wide "
        f"{diff['mean']:.0f} [{diff['lo']:.0f}, {diff['hi']:.0f}] (95% t-interval), paired t-test p = {diff['p']:.3g}"
        + ("" if diff["hi"] < 0 else
           f"; does not hold at this scale because {cfg['epochs']} epoch(s) on {cfg['n_train']} images leave the "
           f"seed-to-seed spread of the active units larger than the difference; full training (8 epochs x 50000 "
           f"images x 2 nets x {N_SEEDS} seeds): "
           + full_cost(train_per_image, 8 * 50_000 * 2 * N_SEEDS, unit="image-epoch")),
        difference=diff["mean"], ci95=[diff["lo"], diff["hi"]], p_value=diff["p"],
    )
    cond = {n: next(r["median_condition"] for r in results[n]["rows"] if r["stage"] == "relu5") for n in results}
    full_input = n_cols >= 3072 and data_desc.startswith("CIFAR")
    lower = cond["ThinCIFAR"] < cond["WideCIFAR"]
    # the SVD of an (units x columns) Jacobian costs ~ units x columns^2: scale the measured time per input
    per_input = sum(spectra_seconds.values()) * (3072 / n_cols) ** 2
    cost = full_cost(per_input, 50, unit="input", what="(both nets, 3072-column Jacobians)")
    reasons = []
    if not data_desc.startswith("CIFAR"):
        reasons.append(f"the data are {data_desc.split(' (')[0]}, not CIFAR-10 (set INVERTIBLE_CIFAR10)")
    if n_cols < 3072:
        reasons.append(f"the Jacobian has {n_cols} columns (a centred window), fewer than the rank bound after "
                       f"relu5 ({min(relu5['ThinCIFAR']):.0f}), so the cut-off of the smallest singular values "
                       "cannot appear in its spectrum")
    if not reasons:
        reasons.append(f"with {cfg['epochs']} epoch(s) of training and {cfg['n_eval']} inputs the measured "
                       "condition numbers do not order as in the thesis")
    ctx.claim(
        "ThinCIFAR's cut-off in layer 5 gives it a lower condition number than WideCIFAR",
        lower and full_input,
        f"median condition number after relu5: ThinCIFAR {cond['ThinCIFAR']:.3g}, WideCIFAR {cond['WideCIFAR']:.3g}"
        + ("" if lower and full_input else "; does not hold at this scale because " + " and ".join(reasons)
           + f"; full run (CIFAR-10, full input, 50 inputs): {cost}"),
        condition_thin=cond["ThinCIFAR"], condition_wide=cond["WideCIFAR"],
    )


def _relu5_bound(rows: list[dict]) -> float:
    return next(r["full_input_rank_bound"] for r in rows if r["stage"] == "relu5")


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
    spectra_seconds: dict[str, float] = {}
    train_seconds: list[float] = []  # seconds per training image and epoch, one per extra-seed model
    short = data_desc.split(" (")[0].split(";")[0]
    for k, cls in enumerate((WideCIFAR, ThinCIFAR)):
        name = cls.__name__
        torch.manual_seed(ctx.seed + k)
        net = cls().to(device)
        loss = _train(net, xtr, ytr, epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"], ctx=ctx,
                      name=name, device=device)
        acc = _accuracy(net, xte, yte, device)
        save_checkpoint(ctx.out / f"{name}.safetensors", {f"model.{k}": v for k, v in net.state_dict().items()},
                        kind="relu_net", config={"model": relu_net_config(net), "experiment": "fig3.4",
                                                 "data": data_desc}, meta={"test_accuracy": acc})
        start = time.perf_counter()
        spectra = layer_spectra(net, x_eval, window=window,
                                progress=lambda it, name=name: ctx.progress(it, desc=f"fig3.4 spectra {name}"))
        spectra_seconds[name] = (time.perf_counter() - start) / len(x_eval)
        rows = spectrum_summary(spectra)
        for row, (active, bound) in zip(rows, _rank_bounds(net, x_eval), strict=True):
            row["median_active_units"] = active
            row["full_input_rank_bound"] = bound
        results[name] = {"loss": loss, "accuracy": acc, "spectra": spectra, "rows": rows}
    # the Wide/Thin rank comparison over more seeds (training and a forward pass only; no SVD)
    relu5 = {name: [_relu5_bound(res["rows"])] for name, res in results.items()}
    for seed_k in range(1, N_SEEDS):
        for k, cls in enumerate((WideCIFAR, ThinCIFAR)):
            torch.manual_seed(ctx.seed + 100 * seed_k + k)
            net = cls().to(device)
            start = time.perf_counter()
            _train(net, xtr, ytr, epochs=cfg["epochs"], batch=cfg["batch"], lr=cfg["lr"], ctx=ctx,
                   name=f"{cls.__name__} seed +{seed_k}", device=device, offset=100 * seed_k)
            train_seconds.append((time.perf_counter() - start) / (cfg["epochs"] * len(xtr)))
            rows = [{"stage": st.name} for st in relu_stages(net)]
            for row, (_, bound) in zip(rows, _rank_bounds(net, x_eval), strict=True):
                row["full_input_rank_bound"] = bound
            relu5[cls.__name__].append(_relu5_bound(rows))

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
        ax.set_title(f"{name} on {short}: linearization up to conv/dense + ReLU", fontsize=9)
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
    axes[0].set_title(f"WideCIFAR vs ThinCIFAR on {short} (median over {len(x_eval)} test inputs)", fontsize=9)
    axes[0].set_ylabel("output units")
    axes[1].set_ylabel("# non-zero singular values")
    axes[2].set_ylabel("condition number\n(non-zero part, window)")
    axes[2].set_xlabel("stage (linear map or ReLU)")
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
    per_image = sum(train_seconds) / max(len(train_seconds), 1)
    _claims(ctx, results, relu5, spectra_seconds, n_cols, data_desc, cfg, per_image)
    metrics: dict = {"data": data_desc, "window": w, "n_eval": len(x_eval), "relu5_rank_bound": relu5}
    for name, res in results.items():
        metrics[name] = {"test_accuracy": res["accuracy"], "final_train_loss": res["loss"], "stages": res["rows"]}
    return metrics
