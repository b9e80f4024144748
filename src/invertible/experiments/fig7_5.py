"""Fig. 7.5: ROC/LDA vs ResidualNet vs IsotopeNet under 4-fold TMA-level cross-validation.

Synthetic TMA measurements (``adsq-like``; full mode also ``lp-like``) are written as imzML + annotation CSV,
read back through the imzML reader, baseline-corrected (rolling minimum, 20 Da) and TIC-normalised, and
classified with the three methods on the same
randomized TMA-level folds. Networks: Table A.2 settings, repeated runs, median and IQR of the pooled
balanced accuracy; ROC/LDA: worst and best K in 5..100. Box plot of per-fold spot-level balanced accuracy.

Quick mode: the ``adsq-like`` physics on 1024 bins (800..897 Da) with 384 spectra in 64 cores (8 TMAs x 8),
3 runs per network with the Table A.2 settings except the epochs and batch (IsotopeNet 10 epochs, ResidualNet 1,
batch 64: the same small share of both networks' budgets is out of reach - a ResidualNet step costs ~8x an
IsotopeNet step here), one CPU thread. Claims are paired comparisons over the 3 runs (each run pools the 4
folds' out-of-fold predictions; ROC/LDA's best K is deterministic), with Student-t intervals
(:mod:`invertible.experiments.stats`). What was tried before fixing this setting (4-fold CV, seed 0/1, not a
search on the test folds): on 192 spectra / 32 cores IsotopeNet (30 epochs) stayed at or below chance with
Table A.2's L2 0.05 (0.41) and with L2 0.001 (0.46), ROC/LDA 0.57-0.66; on 768 spectra / 96 cores with effect
1.0 (15 epochs, L2 0.001, 22 s CPU per run) IsotopeNet reached 0.79 spot / 0.88 core against ROC/LDA
0.82-0.87 spot, and with the class signal put near the noise floor (discriminative peptides at 2% abundance,
``discriminative_scale=0.02``) 0.55 against 0.65-0.73. So at a quick budget the networks do not beat the
baseline on this generator; the report says so and costs the full run from the measured step times
(CPU time per step, scaled by multiply-adds for 27286 bins and the batch ratio). Full mode: the ``adsq-like``
(4672 x 27286) and ``lp-like`` (27475 x 27286) presets with the epochs of Table A.2 and 4 runs.
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


QUICK_DATA = {"n_spectra": 384, "cores_per_tma": 8}
QUICK_EPOCHS = {"isotopenet": 10, "residualnet": 1}


def run_task(ctx: RunContext, task: str, *, quick: bool) -> tuple[dict, dict]:
    """Generate, write, read and cross-validate one task; returns ``(metrics per model, MethodResults)``."""
    import time

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

    cfg = preset(task, quick=quick, **(QUICK_DATA if quick else {}))
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
    repeats = 3 if quick else 4
    key = "adsq" if task.startswith("adsq") else "lp"
    timing = {}
    for model in ("residualnet", "isotopenet"):
        tc = TRAIN_CONFIGS[key, model]
        if quick:
            tc = replace(tc, epochs=QUICK_EPOCHS[model], batch_size=64)
        runs = []
        start = time.process_time()
        for r in ctx.progress(range(repeats), desc=f"{task} {NAMES[model]}", total=repeats):
            runs.append(cross_validate_net(ds, folds, model, tc, seed=ctx.seed * 1000 + r, device=ctx.device))
        steps = repeats * sum(tc.epochs * -(-int((~t).sum()) // tc.batch_size) for t in folds)
        timing[model] = {"cpu_seconds_per_step": (time.process_time() - start) / steps, "batch": tc.batch_size,
                         "n_bins": ds.X.shape[1], "steps": steps}
        results[NAMES[model]] = MethodResult(NAMES[model], runs)
    metrics = {m: method_metrics(results[NAMES[m]]) for m in MODELS}
    metrics["n_spectra"], metrics["n_bins"], metrics["n_cores"] = len(ds.y), ds.X.shape[1], int(ds.core.max() + 1)
    metrics["timing"] = timing
    return metrics, results


@register("fig7.5", title="ROC/LDA vs ResidualNet vs IsotopeNet, TMA-level CV (Fig. 7.5)", thesis=THESIS)
def run(ctx: RunContext) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invertible.ims.evaluate import fig7_5_table
    from invertible.ims.plots import fig7_5_boxplot

    tasks = ("adsq-like",) if ctx.quick else ("adsq-like", "lp-like")
    all_metrics, all_results, tables = {}, {}, []
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        metrics, results = run_task(ctx, task, quick=ctx.quick)
        all_metrics[task] = metrics
        all_results[task] = results
        tables.append(f"**{task}{' (quick)' if ctx.quick else ''}**: {metrics['n_spectra']} spectra, "
                      f"{metrics['n_bins']} bins, {metrics['n_cores']} cores, 8 TMAs\n\n"
                      + fig7_5_table(results, task))
        fig7_5_boxplot(results, f"task {task}", ax=ax)
    for ax in axes[0]:
        ax.set_xlabel("method")
    ctx.save_figure(fig, "fig7_5_boxplot")
    ctx.report("\n\n".join(tables))
    first = all_metrics[tasks[0]]
    _claims(ctx, tasks[0], all_results[tasks[0]], first["timing"])
    return {**{m: first[m] for m in MODELS}, "task": tasks[0],
            "tasks": {t: {k: v for k, v in m.items()} for t, m in all_metrics.items()}}


def _full_costs(ctx: RunContext, timing: dict) -> object:
    """Cost of the full Fig. 7.5 (both tasks, Table A.2 epochs, 4 runs x 4 folds) from the measured step times."""
    import torch

    from invertible.experiments.costs import multiply_adds
    from invertible.ims.models import IsotopeNet, ResidualNet
    from invertible.ims.synthetic import preset
    from invertible.ims.training import TRAIN_CONFIGS

    total = None
    for model, t in timing.items():
        d = t["n_bins"]
        make = (lambda n: IsotopeNet(n)) if model == "isotopenet" else (lambda n: ResidualNet())
        ratio = multiply_adds(make(27286).eval(), torch.zeros(2, 27286)) / multiply_adds(make(d).eval(),
                                                                                         torch.zeros(2, d))
        for task, key in (("adsq-like", "adsq"), ("lp-like", "lp")):
            tc = TRAIN_CONFIGS[key, model]
            n_train = preset(task).n_spectra * 3 / 4
            steps = 4 * 4 * tc.epochs * -(-int(n_train) // tc.batch_size)
            cost = ctx.full_cost(t["cpu_seconds_per_step"], steps, scale=ratio * tc.batch_size / t["batch"],
                                 what=f"{NAMES[model]} on {task} (Table A.2: {tc.epochs} epochs, batch "
                                      f"{tc.batch_size}, 4 runs x 4 folds)",
                                 basis=f"quick {NAMES[model]} CPU step on {d} bins x multiply-adds 27286/{d} bins "
                                       f"{ratio:.3g} x batch {tc.batch_size}/{t['batch']}")
            total = cost.seconds + (total or 0.0)
    return total


def _claims(ctx: RunContext, task: str, results: dict, timing: dict) -> None:
    from invertible.experiments.costs import format_duration, machine
    from invertible.experiments.stats import paired_ci

    total = _full_costs(ctx, timing)
    full = f"about {format_duration(total)} of CPU for both networks on both tasks on {machine(ctx.device)}"
    roc = max(r.spot for r in results["ROC/LDA"].runs)
    iso = [r.spot for r in results["IsotopeNet"].runs]
    res = [r.spot for r in results["ResidualNet"].runs]
    why = ("the networks train for a few epochs on 384 spectra (the thesis: 300 IsotopeNet / 100 ResidualNet "
           "epochs on 4672); a larger trial (768 spectra, 15 IsotopeNet epochs) still trailed ROC/LDA (0.79 vs "
           "0.82-0.87), so whether this synthetic data favours IsotopeNet at full scale is open without the real "
           "ADSQ/LP data")
    for name, a, b, thesis in (
        ("IsotopeNet beats ROC/LDA (best K) per spot", iso, [roc] * len(iso), "0.845 vs 0.787 (ADSQ)"),
        ("IsotopeNet beats ResidualNet per spot", iso, res, "0.845 vs 0.824 (ADSQ)"),
        ("ResidualNet beats ROC/LDA (best K) per spot", res, [roc] * len(res), "0.824 vs 0.787 (ADSQ)"),
    ):
        ci = paired_ci(a, b)
        holds = ci.above_zero
        ctx.claim(name, holds, f"{task}: spot balanced accuracy difference over {len(a)} runs: {ci.text()}"
                  + ("" if holds else f"; {why}"), thesis=thesis,
                  ours=f"{sum(a) / len(a):.3f} vs {sum(b) / len(b):.3f}",
                  limited_by=None if holds else "compute", full_cost=None if holds else full, **ci.as_dict())
