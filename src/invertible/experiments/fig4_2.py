"""Figure 4.2: the largest singular value of every convolution of trained ResNets.

Left: the vanilla twin and the BatchNorm variant (no Lipschitz control); right: i-ResNets with
c in {0.3, 0.5, 0.7, 0.9}. Each value is ``||A_i||_2`` of the convolution *operator* on the layer's input grid
(exact for small operators; power iteration to convergence plus a certified FFT upper bound for large ones;
Remark 4.9).
Models come from the cache shared with ``table4.1`` / ``fig4.3`` (see :mod:`invertible.experiments.table4_1`).

Claims: the thesis's two statements about the norms, measured on the models of ``--seed`` (these are measured
properties of one trained network each, not a comparison of noisy scores; the i-ResNet bound holds by construction
for every seed and its certificate is recomputed here from the operators).
"""

from __future__ import annotations

from typing import Any

from invertible.experiments.registry import RunContext, register
from invertible.experiments.table4_1 import (
    classifier_settings,
    load_data,
    model_config,
    train_cached,
)
from invertible.training.classification import ClassifierConfig, load_classifier

FIG_COEFFS = (0.3, 0.5, 0.7, 0.9)
NORM_RTOL = 1e-3  # power iteration to convergence: the normalized weights' exact norm matches c to this tolerance


@register(
    "fig4.2",
    title="Largest singular value of each convolution: vanilla / BatchNorm ResNets vs i-ResNets",
    thesis="""
Figure 4.2 (CIFAR10): the vanilla and BatchNorm ResNets have roughly two thirds of their layers with singular
values fairly above one, so their blocks are likely non-contractive; the four spectrally normalized ResNets
(c = 0.3, 0.5, 0.7, 0.9) have every singular value below 1 and roughly equal to c - every block is a contraction.
""",
)
def run(ctx: RunContext) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invertible.models.certify import certify_classifier

    data_name, base, train_kw, note = classifier_settings(ctx)
    models = [("vanilla", model_config(base, None)), ("batchnorm", model_config(base, None, "batchnorm"))]
    models += [(f"c={c}", model_config(base, c)) for c in FIG_COEFFS]
    norms: dict[str, list[float]] = {}
    certified: dict[str, bool] = {}
    max_lip: dict[str, float] = {}
    errors: dict[str, float] = {}
    data = load_data(ctx, data_name)
    for label, model in ctx.progress(models, desc="fig4.2 models"):
        cfg = ClassifierConfig(data=data_name, model=model, seed=ctx.seed, device=ctx.device, **train_kw)
        summary, folder = train_cached(ctx, label.replace("=", ""), cfg, data)
        net, _ = load_classifier(folder, device=ctx.device)
        cert = certify_classifier(net, exact=False)
        norms[label] = cert.conv_norms()
        certified[label] = cert.certified
        max_lip[label] = cert.max_lipschitz
        errors[label] = summary["test_error"]

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    markers = {"vanilla": "o", "batchnorm": "s"}
    for ax, group in ((axes[0], ["vanilla", "batchnorm"]), (axes[1], [f"c={c}" for c in FIG_COEFFS])):
        for label in group:
            vals = norms[label]
            ax.plot(range(len(vals)), vals, markers.get(label, "."), ms=5, label=label, alpha=0.8)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("convolution index (3 per residual block)")
        ax.set_ylabel(r"largest singular value $\|A_i\|_2$")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"{data_name}: no Lipschitz control", fontsize=9)
    axes[1].set_title(f"{data_name}: spectral normalization (i-ResNet)", fontsize=9)
    ctx.save_figure(fig, "fig4_2_singular_values")

    frac_above = {k: sum(v > 1 for v in vals) / max(len(vals), 1) for k, vals in norms.items()}
    rows = [
        f"| {k} | {min(v):.3f} | {max(v):.3f} | {frac_above[k]:.0%} | {max_lip[k]:.3f} | "
        f"{'yes' if certified[k] else 'no'} | {errors[k]:.2f} |"
        for k, v in norms.items()
    ]
    ctx.report(
        "\n".join([
            f"Data: {note}; {len(base['blocks'])} stages x {base['blocks']} blocks, {train_kw['epochs']} epochs.",
            "",
            "| model | min norm | max norm | convs with norm > 1 | max_t Lip(g_t) <= | certified | test error (%) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Norms are of the zero-padded convolution operators on each layer's input grid: exact (1x1 convolutions "
            "from their weight matrix, small operators from the top eigenvalue of their Gram matrix) or, for large "
            "operators, power iteration to convergence with certified FFT upper bounds entering Lip(g_t). For the "
            "BatchNorm variant Lip(g_t) includes the eval-mode BatchNorm scales.",
        ])
    )
    unconstrained = ["vanilla", "batchnorm"]
    ctx.claim(
        "without Lipschitz control most convolutions have a largest singular value above 1 "
        "(thesis: about two thirds)",
        all(frac_above[k] >= 0.5 for k in unconstrained),
        ", ".join(f"{k}: {frac_above[k]:.0%} of {len(norms[k])} convolutions above 1 (max {max(norms[k]):.2f})"
                  for k in unconstrained) + f" (seed {ctx.seed})",
        **{f"fraction_above_one_{k}": frac_above[k] for k in unconstrained},
    )
    constrained = [f"c={c}" for c in FIG_COEFFS]
    within = {k: max(norms[k]) <= float(k[2:]) * (1 + NORM_RTOL) and min(norms[k]) >= 0.9 * float(k[2:])
              for k in constrained}
    ctx.claim(
        "with spectral normalization every convolution's largest singular value is below 1 and close to c "
        f"(within [0.9 c, c (1 + {NORM_RTOL:g})])",
        all(within.values()) and all(certified[k] for k in constrained),
        ", ".join(f"{k}: [{min(norms[k]):.4f}, {max(norms[k]):.4f}]" for k in constrained)
        + f"; all certified: {all(certified[k] for k in constrained)} (seed {ctx.seed})",
    )
    return {"conv_norms": norms, "certified": certified, "max_lipschitz": max_lip, "fraction_above_one": frac_above,
            "test_error": errors, "data": data_name}
