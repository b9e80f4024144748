"""Fig. 7.5: ROC/LDA vs ResidualNet vs IsotopeNet under 4-fold TMA-level cross-validation.

Synthetic TMA measurements (``adsq-like``; full mode also ``lp-like``) are written as imzML + annotation CSV,
read back through the imzML reader, baseline-corrected (rolling minimum, 20 Da) and TIC-normalised, and
classified with the three methods on the same
randomized TMA-level folds. Networks: Table A.2 settings, repeated runs, median and IQR of the pooled
balanced accuracy; ROC/LDA: worst and best K in 5..100. Box plot of per-fold spot-level balanced accuracy.

Quick mode: 192 spectra x 1024 bins, 2 runs, 10 IsotopeNet epochs and 1 ResidualNet epoch (batch 16),
one CPU thread: a smoke test of the pipeline whose numbers say little about the methods. Full mode: the
``adsq-like`` (4672 x 27286) and ``lp-like`` (27475 x 27286) presets with the epochs of Table A.2 and 4 runs -
days of CPU time; run it on a GPU (``--device cuda``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from invertible.experiments.registry import RunContext, register

THESIS = """\
| Method | ADSQ spot | ADSQ core | LP spot | LP core |
|---|---|---|---|---|
| ROC/LDA (worst / best K) | 0.758 / 0.787 | 0.788 / 0.860 | 0.794 / 0.840 | 0.876 / 0.918 |
| ResidualNet (median ± IQR) | 0.824 ± 0.016 | 0.870 ± 0.008 | 0.921 ± 0.014 | 0.973 ± 0.13 |
| IsotopeNet (median ± IQR) | 0.845 ± 0.007 | 0.885 ± 0.020 | 0.962 ± 0.009 | 1.000 ± 0.002 |

IsotopeNet is best on both tasks; 4 runs per network; box plot over folds (spot level).
"""

MODELS = ("roc-lda", "residualnet", "isotopenet")
NAMES = {"roc-lda": "ROC/LDA", "residualnet": "ResidualNet", "isotopenet": "IsotopeNet"}


def run_task(ctx: RunContext, task: str, *, quick: bool) -> tuple[dict, dict]:
    """Generate, write, read and cross-validate one task; returns ``(metrics per model, MethodResults)``."""
    from invertible.ims.evaluate import (
        MethodResult,
        cross_validate_net,
        cross_validate_roc_lda,
        load_dataset,
        method_metrics,
        tma_folds,
    )
    from invertible.ims.synthetic import generate, preset, write_imzml
    from invertible.ims.training import TRAIN_CONFIGS

    cfg = preset(task, quick=quick)
    data = generate(cfg, seed=ctx.seed)
    imzml, csv = write_imzml(data, ctx.out / "data", name=task,
                             progress=lambda it, desc, total: ctx.progress(it, desc, total))
    # baseline removal with a rolling window of ~20 Da (wider than any isotope pattern), then TIC
    window = int(20.0 / float(np.mean(np.diff(data.mz)))) | 1
    ds = load_dataset(imzml, csv, baseline_window=window,
                      cache=None if quick else ctx.out / "data" / f"{task}_cache")
    folds = tma_folds(ds.tma, 4, seed=ctx.seed)
    results: dict[str, MethodResult] = {}
    results["ROC/LDA"] = cross_validate_roc_lda(ds, folds)
    repeats = 2 if quick else 4
    key = "adsq" if task.startswith("adsq") else "lp"
    for model in ("residualnet", "isotopenet"):
        tc = TRAIN_CONFIGS[key, model]
        if quick:
            tc = replace(tc, epochs=10 if model == "isotopenet" else 1, batch_size=16)
        runs = []
        for r in ctx.progress(range(repeats), desc=f"{task} {NAMES[model]}", total=repeats):
            runs.append(cross_validate_net(ds, folds, model, tc, seed=ctx.seed * 1000 + r, device=ctx.device))
        results[NAMES[model]] = MethodResult(NAMES[model], runs)
    metrics = {m: method_metrics(results[NAMES[m]]) for m in MODELS}
    metrics["n_spectra"], metrics["n_bins"], metrics["n_cores"] = len(ds.y), ds.X.shape[1], int(ds.core.max() + 1)
    return metrics, results


@register("fig7.5", title="ROC/LDA vs ResidualNet vs IsotopeNet, TMA-level CV (Fig. 7.5)", thesis=THESIS)
def run(ctx: RunContext) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invertible.ims.evaluate import fig7_5_table
    from invertible.ims.plots import fig7_5_boxplot

    tasks = ("adsq-like",) if ctx.quick else ("adsq-like", "lp-like")
    all_metrics, tables = {}, []
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        metrics, results = run_task(ctx, task, quick=ctx.quick)
        all_metrics[task] = metrics
        tables.append(f"**{task}{' (quick)' if ctx.quick else ''}**: {metrics['n_spectra']} spectra, "
                      f"{metrics['n_bins']} bins, {metrics['n_cores']} cores, 8 TMAs\n\n"
                      + fig7_5_table(results, task))
        fig7_5_boxplot(results, f"task {task}", ax=ax)
    ctx.save_figure(fig, "fig7_5_boxplot")
    ctx.report("\n\n".join(tables))
    if ctx.quick:
        ctx.report("Quick mode trains for a few dozen steps only (the thesis: 300 IsotopeNet / 100 ResidualNet "
                   "epochs), so the networks' numbers are a smoke test of the pipeline, not a comparison.")
    first = all_metrics[tasks[0]]
    return {**{m: first[m] for m in MODELS}, "task": tasks[0], "tasks": all_metrics}
