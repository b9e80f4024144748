"""Table 4.1: test error of i-ResNets with c in {0.9, ..., 0.5}, their vanilla twin and a pre-activation ResNet.

Also home of the helpers the chapter-4 classifier experiments share (:func:`classifier_settings`,
:func:`train_cached`): trained models are cached under ``<out>/_cache/classifiers/<name>-<config hash>`` so that
``table4.1``, ``fig4.2`` and ``fig4.3`` run into the same ``--out`` train each model once.

Quick mode: sklearn digits (8x8), three stages of one bottleneck block each, 5 epochs (well under a minute on
two CPU cores). Full mode: Fashion-MNIST (falls back to MNIST-10k when it is not installed), three stages of four
blocks, 30 epochs - hours on a CPU, minutes on a GPU (``--device cuda``).

Claims (issue 14): every model is trained on ``N_SEEDS = 3`` seeds (``--seed s`` gives s, s+1, s+2) and each
comparison is a paired difference over the seeds with its 95% t-interval and paired t-test. Quick mode keeps
c in {0.9, 0.7, 0.5} (the ends and the middle of the thesis's range; c = 0.8 and 0.6 add nothing to the claims
and 40% to the time). "Competitive" is fixed in advance as at most ``COMPETITIVE_PP = 1`` percentage point more
test error than the vanilla twin (95% upper bound); one test digit of 359 is 0.28 pp.

Quick settings tried for "competitive" on validation data (359 images carved from digits' training part, the
models trained on the other 1079, seeds 10-12; error(c=0.9) - error(vanilla) in pp, 95% t-interval): the quick
settings 1.11 [-0.08, 2.31]; 8 epochs 0.93 [-0.51, 2.37] (1.8x the time); batch 32 1.86 [0.80, 2.91]; lr 0.05
1.11 [-0.27, 2.50]; 2 blocks per stage x 3 epochs 1.58 [-3.33, 6.49]; hidden width 64 1.67 [0.98, 2.36]; 32
channels x 4 epochs 1.67 [-0.16, 3.50]. None brings the upper bound below 1 pp. The c = 0.9 network trails its
twin by about 1 pp in every setting. So the quick settings stay as they were, and the claim reports that it does
not hold at this scale (limited by compute), with the measured cost of the full run.

Budgeted runs (``--budget``) grow the epochs and the blocks per stage (:func:`classifier_settings`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from invertible.experiments.costs import FullCost
from invertible.experiments.registry import RunContext, register
from invertible.experiments.seeds import (
    format_interval,
    paired_difference,
    seed_list,
    slope_interval,
    t_interval,
)
from invertible.io import CHECKPOINT_NAME
from invertible.training.classification import ClassifierConfig, load_classifier, train_classifier
from invertible.training.classifier import ClassificationData, load_classification_data

COEFFS = (0.9, 0.8, 0.7, 0.6, 0.5)
QUICK_COEFFS = (0.9, 0.7, 0.5)  # the ends and the middle of the thesis's range (also used by fig4.2)
N_SEEDS = 3
COMPETITIVE_PP = 1.0  # "competitive": at most 1 percentage point more test error than the vanilla twin


def classifier_settings(ctx: RunContext) -> tuple[str, dict[str, Any], dict[str, Any], str]:
    """``(data, iresnet model kwargs, training kwargs, note)`` for quick, budgeted or full mode.

    The workload settings (``ctx.scaled``): epochs (5 quick, 30 full, power 0.5) and residual blocks per stage
    (1 quick, 4 full, power 0.5); both multiply the training time. A budgeted run keeps the quick data (digits)."""
    epochs = ctx.scaled("epochs", 5, 30, power=0.5)
    depth = ctx.scaled("blocks_per_stage", 1, 4, power=0.5)
    if ctx.quick:
        model = {"blocks": [depth] * 3, "channels": 16, "hidden": [32, 64, 64]}
        train = {"epochs": epochs, "batch_size": 64}
        return "digits", model, train, "sklearn digits (1438 train / 359 test images, 8x8)"
    from invertible.data.images import FASHION_MNIST_DIR

    model = {"blocks": [depth] * 3, "channels": 16, "hidden": [32, 64, 128]}
    train = {"epochs": epochs, "batch_size": 128}
    if FASHION_MNIST_DIR.is_dir():
        return "fashion-mnist", model, train, "Fashion-MNIST (60000 train / 10000 test images, 28x28)"
    return "mnist", model, train, (
        "MNIST-10k (8000 train / 2000 test; Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist`)"
    )


def load_data(ctx: RunContext, data: str) -> ClassificationData:
    return load_classification_data(data)


def train_cached(
    ctx: RunContext, name: str, config: ClassifierConfig, data: ClassificationData
) -> tuple[dict[str, Any], Path]:
    """Train ``config`` into the shared cache (or resume / reuse a finished run there); returns the training
    summary and the run folder."""
    key = hashlib.sha1(json.dumps(config.to_json(), sort_keys=True).encode()).hexdigest()[:10]
    folder = ctx.out.parent / "_cache" / "classifiers" / f"{name}-{key}"
    resume = (folder / CHECKPOINT_NAME).is_file()
    summary = train_classifier(config, folder, resume=resume, progress=ctx.show_progress, data=data)
    return summary, folder


def model_config(base: dict[str, Any], coeff: float | None, norm: str = "actnorm") -> dict[str, Any]:
    return {**base, "coeff": coeff, "norm": norm}


@register(
    "table4.1",
    title="i-ResNet classifiers vs vanilla twin and ResNet: test error and guaranteed inverse",
    thesis="""
Classification error (%) (Table 4.1); i-ResNets have 39 blocks, 200 epochs:

| | ResNet-164 | Vanilla | c = 0.9 | c = 0.8 | c = 0.7 | c = 0.6 | c = 0.5 |
|---|---|---|---|---|---|---|---|
| MNIST | - | 0.38 | 0.40 | 0.42 | 0.40 | 0.42 | 0.86 |
| CIFAR10 | 5.50 | 6.69 | 6.78 | 6.86 | 6.93 | 7.72 | 8.71 |
| CIFAR100 | 24.30 | 23.97 | 24.58 | 24.99 | 25.99 | 27.30 | 29.45 |
| Guaranteed inverse | No | No | Yes | Yes | Yes | Yes | Yes |

For larger c the i-ResNets are competitive with the baselines while provably invertible; small c costs accuracy.
""",
)
def run(ctx: RunContext) -> dict[str, Any]:
    from invertible.models.certify import certify_classifier

    data_name, base, train_kw, note = classifier_settings(ctx)
    seeds = seed_list(ctx.seed, N_SEEDS)
    coeffs = QUICK_COEFFS if ctx.quick else COEFFS
    runs: list[tuple[str, str, dict[str, Any]]] = [
        ("resnet", "resnet", {"blocks": list(base["blocks"])}),
        ("vanilla", "iresnet", model_config(base, None)),
    ] + [(f"c={c}", "iresnet", model_config(base, c)) for c in coeffs]
    errors: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    certified: dict[str, list[bool]] = {label: [] for label, _, _ in runs}
    max_lip: dict[str, list[float]] = {label: [] for label, arch, _ in runs if arch == "iresnet"}
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    data = load_data(ctx, data_name)
    jobs = [(seed, *r) for seed in seeds for r in runs]
    for seed, label, arch, model in ctx.progress(jobs, desc="table4.1 models"):
        cfg = ClassifierConfig(data=data_name, arch=arch, model=model, seed=seed, device=ctx.device, **train_kw)
        summary, folder = train_cached(ctx, label.replace("=", ""), cfg, data)
        errors[label].append(summary["test_error"])
        seconds[label].append(summary["seconds_per_epoch"])
        ctx.log({"split": "model", "model": label, "seed": seed, "test_error": summary["test_error"]})
        if arch == "resnet":
            certified[label].append(False)
            continue
        if seed != seeds[0]:  # the certificate is a property of the construction; one seed shows it (1.5 s each)
            continue
        net, _ = load_classifier(folder, device=ctx.device)
        cert = certify_classifier(net, exact=False)
        certified[label].append(bool(cert.certified))
        max_lip[label].append(cert.max_lipschitz)
    labels = list(errors)
    ci = {k: t_interval(v) for k, v in errors.items()}
    big, small = f"c={max(coeffs)}", f"c={min(coeffs)}"
    vs_vanilla = paired_difference(errors[big], errors["vanilla"])
    cost_of_small_c = paired_difference(errors[small], errors[big])
    trend = slope_interval([c for c in coeffs for _ in seeds], [e for c in coeffs for e in errors[f"c={c}"]])

    ctx.save_figure(_plot(ci, coeffs, data_name), "table4_1_test_error")
    ctx.report(
        "\n".join([
            f"Data: {note}. Models: i-ResNet with {len(base['blocks'])} stages x {base['blocks']} bottleneck blocks "
            f"(hidden {base['hidden']}), {train_kw['epochs']} epochs, batch {train_kw['batch_size']}, SGD 0.1 "
            "(x0.2 at 30/60/80 % of the steps), momentum 0.9, weight decay 5e-4, random shifts of 2 px at 28x28 "
            "scaled to the image size (none at 8x8); ResNet: pre-activation bottleneck ResNet with "
            f"{base['blocks']} blocks. Every model trained with seeds "
            f"{', '.join(map(str, seeds))}; cells are the mean test error and its 95% t-interval over the seeds.",
            "",
            "| | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
            "| test error (%) | " + " | ".join(f"{ci[k]['mean']:.2f} [{ci[k]['lo']:.2f}, {ci[k]['hi']:.2f}]"
                                              for k in labels) + " |",
            f"| max_t Lip(g_t) <= (seed {seeds[0]}) | "
            + " | ".join(f"{max(max_lip[k]):.3f}" if k in max_lip else "-" for k in labels) + " |",
            f"| guaranteed inverse (seed {seeds[0]}) | "
            + " | ".join("Yes" if all(certified[k]) else "No" for k in labels) + " |",
            "| s / epoch | " + " | ".join(f"{sum(seconds[k]) / len(seconds[k]):.2f}" for k in labels) + " |",
            "",
            "'Guaranteed inverse' is the certificate of `invertible certify` (exact norms of every convolution "
            "operator, or certified FFT upper bounds for large ones; eq. 4.6), not the nominal coefficient.",
        ])
    )
    full = _full_cost(ctx, seconds, train_kw, base)
    if ctx.quick:
        ctx.report(f"\nFull mode (`invertible reproduce table4.1`, {len(COEFFS) + 2} models x {N_SEEDS} seeds): "
                   f"{full.text}.")
    ctx.claim(
        "a smaller coefficient costs accuracy (test error falls as c grows)",
        trend["hi"] < 0,
        f"slope of test error on c over c = {', '.join(map(str, coeffs))} x {len(seeds)} seeds: "
        f"{trend['mean']:.2f} pp per unit c, 95% interval [{trend['lo']:.2f}, {trend['hi']:.2f}], p = "
        f"{trend['p']:.3g}; error({small}) - error({big}) = {format_interval(cost_of_small_c, 2, 'pp')} "
        f"(paired t-test p = {cost_of_small_c['p']:.3g})",
        slope_pp_per_c=trend["mean"], slope_ci95=[trend["lo"], trend["hi"]], slope_p=trend["p"],
        **_ci_numbers(cost_of_small_c),
    )
    competitive = vs_vanilla["hi"] <= COMPETITIVE_PP
    digits = len(data.y_test)
    reason = "" if competitive else (
        f"; {len(base['blocks'])} stages x {base['blocks'][0]} Lipschitz-constrained residual block(s) trained "
        f"{train_kw['epochs']} epochs trail their unconstrained twin by more than the margin (one test digit of "
        f"{digits} is {100 / digits:.2f} pp; no cheap quick setting closed it on validation data, see the module "
        "docstring), while the thesis's 39-block networks trained 200 epochs trail by 0.02 pp on MNIST")
    ctx.claim(
        f"{big} is competitive with its vanilla twin (error at most {COMPETITIVE_PP} pp higher, 95% upper bound)",
        competitive,
        f"error({big}) - error(vanilla) = {format_interval(vs_vanilla, 2, 'pp')}, paired t-test "
        f"p = {vs_vanilla['p']:.3g}{reason}",
        limited_by=None if competitive else "compute", full_cost=None if competitive else full,
        **_ci_numbers(vs_vanilla),
    )
    iresnets = [k for k in labels if k.startswith("c=")]
    ctx.claim(
        "only the i-ResNets have a guaranteed inverse (certified Lip(g_t) < 1 in every block)",
        all(all(certified[k]) for k in iresnets) and not any(certified["vanilla"]),
        f"certificate (seed {seeds[0]}): " + ", ".join(f"{k} {'yes' if all(certified[k]) else 'no'}"
                                                             for k in ["vanilla", *iresnets])
        + f"; vanilla max_t Lip(g_t) <= {max(max_lip['vanilla']):.3g}",
    )
    return {"test_error": {k: ci[k]["mean"] for k in labels}, "test_error_per_seed": errors,
            "test_error_ci95": {k: [ci[k]["lo"], ci[k]["hi"]] for k in labels}, "seeds": seeds,
            "certified": {k: all(v) for k, v in certified.items()},
            "max_lipschitz": {k: max(v) for k, v in max_lip.items()},
            "seconds_per_epoch": {k: sum(v) / len(v) for k, v in seconds.items()}, "data": data_name}


def _ci_numbers(ci: dict[str, float]) -> dict[str, float]:
    return {"difference_pp": ci["mean"], "ci95_pp": [ci["lo"], ci["hi"]], "p_value": ci["p"], "n_seeds": ci["n"]}


def _full_cost(ctx: RunContext, seconds: dict[str, list[float]], train_kw: dict[str, Any],
               base: dict[str, Any]) -> FullCost:
    """The full run's training cost from this run's measured seconds per epoch (the mean over models), scaled by
    the full settings: x (full images / quick images) x (full pixels / quick pixels) x (full blocks / quick blocks)
    per model-epoch, times 30 epochs x 7 models x 3 seeds."""
    per_epoch = sum(sum(v) / len(v) for v in seconds.values()) / len(seconds)  # one model, one epoch
    n_models = len(COEFFS) + 2
    if not ctx.quick:
        return ctx.full_cost(per_epoch, train_kw["epochs"] * n_models * N_SEEDS, what="table4.1 (this full run)",
                             basis="seconds per model-epoch measured in this run")
    blocks = sum(base["blocks"])
    scale = (60_000 / 1438) * (28 * 28) / (8 * 8) * (12 / blocks)
    return ctx.full_cost(
        per_epoch, 30 * n_models * N_SEEDS, scale=scale,
        what=f"table4.1 full mode ({n_models} models x {N_SEEDS} seeds x 30 epochs on Fashion-MNIST)",
        basis=f"quick s/model-epoch x 41.7 (images) x 12.25 (pixels) x {12 / blocks:.3g} (blocks)")


def _plot(ci: dict[str, dict[str, float]], coeffs: tuple[float, ...], data_name: str):
    """Test error (%) against c with 95% intervals; the vanilla twin and the ResNet as horizontal bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    cs = sorted(coeffs)
    mean = [ci[f"c={c}"]["mean"] for c in cs]
    err = [[m - ci[f"c={c}"]["lo"] for c, m in zip(cs, mean, strict=True)],
           [ci[f"c={c}"]["hi"] - m for c, m in zip(cs, mean, strict=True)]]
    ax.errorbar(cs, mean, yerr=err, fmt="o-", capsize=3, label="i-ResNet (certified)")
    for key, color in (("vanilla", "tab:red"), ("resnet", "tab:gray")):
        ax.axhline(ci[key]["mean"], color=color, lw=1, label=f"{key} (no guarantee)")
        ax.axhspan(ci[key]["lo"], ci[key]["hi"], color=color, alpha=0.15)
    ax.set_xlabel("spectral normalization coefficient c")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Table 4.1 on {data_name}: mean and 95% t-interval over {ci['vanilla']['n']} seeds", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
