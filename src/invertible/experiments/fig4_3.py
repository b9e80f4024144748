"""Figure 4.3: originals, i-ResNet (c = 0.9) reconstructions and vanilla reconstructions.

The feature map up to the head is inverted with 100 fixed-point iterations per block (Algorithm 1), in float64.
A second figure shows the error against the number of iterations for fixed point and Anderson on the same
trained weights (Fig. 4.4's trade-off on the classifier). Models come from the cache shared with ``table4.1``
and ``fig4.2``.
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

STEPS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100)


@register(
    "fig4.3",
    title="Reconstructions through the inverse: i-ResNet (c = 0.9) vs vanilla ResNet",
    thesis="""
Figure 4.3 (100 fixed-point iterations per block): on CIFAR10 the i-ResNet reconstructions are qualitatively and
quantitatively exact while the vanilla ResNet's fail completely; on MNIST both are close to exact - the vanilla
network happens to be invertible there, without any guarantee.
""",
)
def run(ctx: RunContext) -> dict[str, Any]:
    from invertible.models.certify import certify_classifier
    from invertible.models.reconstruct import (
        error_vs_iterations,
        plot_error_vs_iterations,
        plot_reconstructions,
        reconstruct,
    )

    data_name, base, train_kw, note = classifier_settings(ctx)
    n_images = 10
    rows = {}
    curves: dict[str, dict[str, list[float]]] = {}
    result: dict[str, dict[str, Any]] = {}
    data = load_data(ctx, data_name)
    x = data.x_test[:n_images]
    rows["original"] = data.denormalize(x)
    for label, coeff in (("c=0.9", 0.9), ("vanilla", None)):
        cfg = ClassifierConfig(data=data_name, model=model_config(base, coeff), seed=ctx.seed, device=ctx.device,
                               **train_kw)
        summary, folder = train_cached(ctx, label.replace("=", ""), cfg, data)
        net, _ = load_classifier(folder, device=ctx.device)
        cert = certify_classifier(net, exact=False)
        rec = reconstruct(net, x.to(ctx.device), iterations=100, lipschitz=[b.lipschitz for b in cert.blocks])
        rows[f"{label} recons."] = data.denormalize(rec.x_hat.float().cpu())
        curves[label] = error_vs_iterations(net, x.to(ctx.device), STEPS)
        result[label] = {
            "max_abs_error": rec.max_abs_error,
            "max_rel_error": float(rec.rel_error.max()),
            "error_bound": float(rec.error_bound.max()),
            "padding_residual": rec.padding_residual,
            "diverged": rec.diverged,
            "certified": cert.certified,
            "max_lipschitz": cert.max_lipschitz,
            "test_error": summary["test_error"],
        }
    ctx.save_figure(
        plot_reconstructions(rows, "top: originals; then reconstructions with 100 fixed-point iterations per block"),
        "fig4_3_reconstructions",
    )
    ctx.save_figure(plot_error_vs_iterations(curves, STEPS), "fig4_3_error_vs_iterations")

    def fmt(v: float) -> str:
        return f"{v:.2e}"

    lines = [
        f"Data: {note}; {len(base['blocks'])} stages x {base['blocks']} blocks, {train_kw['epochs']} epochs; "
        f"{n_images} test images, inversion in float64.",
        "",
        "| model | certified | max_t Lip(g_t) <= | max abs error | max rel. error | Lemma 4.5 bound (last block) "
        "| padded channels max |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in result.items():
        lines.append(
            f"| {label} | {'yes' if r['certified'] else 'no'} | {r['max_lipschitz']:.3f} | {fmt(r['max_abs_error'])} | "
            f"{fmt(r['max_rel_error'])} | {fmt(r['error_bound'])} | {fmt(r['padding_residual'])} |"
        )
    lines += [
        "",
        "Max abs error after k iterations per block (fixed point / Anderson):",
        "",
        "| k | " + " | ".join(f"{lab} FP | {lab} AA" for lab in curves) + " |",
        "|---|" + "---|---|" * len(curves),
    ]
    for i, k in enumerate(STEPS):
        cells = []
        for lab in curves:
            cells += [fmt(curves[lab]["fixed-point"][i]), fmt(curves[lab]["anderson"][i])]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    ctx.report("\n".join(lines))
    return {"reconstruction": result, "error_vs_iterations": curves, "iterations": list(STEPS), "data": data_name}
