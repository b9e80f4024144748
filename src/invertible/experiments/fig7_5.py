"""Fig. 7.5: ROC/LDA vs ResidualNet vs IsotopeNet under 4-fold TMA-level cross-validation.

Synthetic TMA measurements (``adsq-like``; full mode also ``lp-like``) are written as imzML + annotation CSV,
read back through the imzML reader, baseline-corrected (rolling minimum, 20 Da) and TIC-normalised, and
classified with the three methods on the same
randomized TMA-level folds. Networks: Table A.2 settings, repeated runs, median and IQR of the pooled
balanced accuracy; ROC/LDA: worst and best K in 5..100. Box plot of per-fold spot-level balanced accuracy.

Class signal (both modes, :data:`SIGNAL`): it lives in isotope envelopes, the argument of section 7.3 for
IsotopeNet. Each discriminative peptide exists in a native and a modified form 0.984 Da heavier (deamidation);
the class shifts the log-odds of the modified share by +-1, so the relative intensities of M, M+1, M+2 change,
while the peptide's total abundance carries no class term and varies strongly between patients (extra log-sd 2
on top of the patient/TMA/spot variation of every peptide), so no single m/z bin carries much of the signal.
Noise, baseline and TIC variation stay calibrated on the real TOF spectra (:mod:`invertible.ims.synthetic`).

Quick mode (:func:`settings`): 384 spectra x 1024 bins (800..897 Da) in 64 cores (8 TMAs x 8), 3 runs per
network; IsotopeNet 25 epochs (batch 32, Adam 1e-2, no dropout or L2), ResidualNet 1 epoch (batch 16, Adam
1e-3, no L2): a ResidualNet step costs ~8x an IsotopeNet step; about 60 s of one CPU core on the 2-core
development machine (39 s at the 10 epochs of Adam 3e-3 before). Claims are paired comparisons over the 3 runs
(each pools the 4 folds' out-of-fold predictions; ROC/LDA's best K, picked on the test folds as in the thesis,
is deterministic), Student-t intervals (:mod:`invertible.experiments.stats`).

First round, how the generator and sizes were chosen (validation data sets, generator seeds 101 and 102, never
the reported seed 0; 4-fold TMA CV; spot balanced accuracy, IsotopeNet / ResidualNet / ROC/LDA best K):

* the abundance signal of the presets (log fold change 0.6 on 4 peptides): ROC/LDA 0.80, far ahead of the
  networks at quick epochs (0.55 / 0.50 in the quick run before);
* envelope signal, effect 2, no extra abundance variation: ROC/LDA 0.90 (LDA on the M and M+1 bins reads the
  ratio as a line through the origin); with extra log-sd 2: ROC/LDA 0.73, IsotopeNet 10 epochs at Table A.2's
  Adam 5e-4 / L2 0.05 / dropout 0.3: 0.52 (chance), at 3e-3 without dropout or L2: 0.63, 30 epochs 0.67,
  ResidualNet 2 epochs at batch 16 / 3 at batch 8: 0.65 / 0.72;
* more data: 768 spectra, IsotopeNet 15 epochs / ResidualNet 1 epoch / ROC/LDA: 0.78 / 0.69 / 0.76 (seed 101),
  0.71 / 0.57 / 0.83 (seed 102);
  1152 spectra, IsotopeNet 30 epochs 0.95 vs ROC/LDA 0.84 (seed 101), 10 epochs 0.79 vs 0.88 (seed 102);
  on 512 bins (768 spectra) ROC/LDA gained (0.93 / 0.65 on seeds 101 / 102) and stayed ahead;
* other variants that kept ROC/LDA ahead: 16 discriminative peptides moving together or in random directions,
  a per-spot mass error of 0.15 Da (``spot_shift_sd``), the signal peptides at 30 % abundance.

Second round (validation generator seeds 101-104, never the reported 0-2; 4-fold TMA CV, spot balanced
accuracy; the same generator, preprocessing and CV functions, in memory without the imzML round trip):

* diagnosis: the networks overfit the 48 training patients before they find the envelope signal. IsotopeNet at
  the quick setting before (Adam 3e-3, 10 epochs) reaches a training balanced accuracy of 0.97 while the
  out-of-fold one stays at 0.55 / 0.55 / 0.48 / 0.61 (mean of 3 runs, seeds 101-104; ROC/LDA best K 0.727 /
  0.824 / 0.703 / 0.651), and its first epochs sit *below* chance (0.43-0.46): gradient descent first fits the
  high-variance patient-level abundance of the signal peptides (extra log-sd 2), whose correlation with the label
  over 48 patients is spurious, while LDA's whitening discounts it. The signal itself is linear: an L2 logistic
  regression on all 1024 bins reaches 0.78 / 0.89 / 0.70 (seeds 101-103), one on the four true log ratios
  M+1 / M 1.00 / 0.99 / 0.97;
* step size (chosen here): Adam 1e-2 instead of 3e-3 lets IsotopeNet find the signal before it memorises the
  patients: 15 epochs 0.68 / 0.64 / 0.55 / 0.63, 25 epochs 0.74 / 0.65 / 0.55 / 0.64 (3 runs each), 40 epochs
  0.74 / 0.64 / 0.56 / 0.63 (2 runs: no gain for 60 % more time), 25 epochs with a cosine decay of the step
  size to 0: 0.69 / 0.60 / 0.56 / 0.64 (3 runs: not better), batch 16 for 13 epochs (as many steps, 35 % less
  time) 0.65 / 0.64 / 0.58 / 0.67 and for 20 epochs 0.66 / 0.66 / 0.56 / 0.66 (2 runs: on par); 3e-2 and
  1e-1 (15 epochs, one run) were not better (0.71 / 0.59 / 0.57 and 0.66 / 0.50 / 0.60 on seeds 102 / 103 /
  101). Only on seed 101 does IsotopeNet pass ROC/LDA; ResidualNet at 1 epoch stays at chance (0.49-0.54), with
  Adam 3e-3 too;
* preprocessing applied to all methods alike (ROC/LDA's ranks and LDA are invariant under per-bin affine maps,
  so centring changes only the networks): sqrt or ``log1p(x / c)`` (c = 1, 0.1) intensities, per-bin centring:
  IsotopeNet 0.52-0.59, ROC/LDA 0.71-0.87 (seeds 101 / 102) - no gain; L2 0.05 + dropout 0.3 or L2 0.01 at
  Adam 3e-3, 20 epochs: 0.52-0.59; batch 8 at Adam 1e-3: 0.55 after 10 epochs; 3x the patients (24 cores per
  TMA, same spectra): IsotopeNet 0.62 after 15 epochs;
* mass calibration error (:mod:`invertible.ims.calibration_error`, measured on the 16 real TOF spectra: 273 ppm
  between spectra, 98 ppm between replicates of one sample, 36 ppm per peak; 0.23 / 0.083 Da at 850 Da, i.e. 2.5
  / 0.9 bins, per TMA / per spot): it costs ROC/LDA more than the networks, but all fall (ROC/LDA 0.59 / 0.70 /
  0.66 / 0.63, IsotopeNet 0.52 / 0.55 / 0.47 / 0.60, ResidualNet 0.53 / 0.50 / 0.53 / 0.57 at the quick setting
  before; per-TMA 0.1 / 0.2 Da alone: ROC/LDA 0.70 / 0.77 and 0.60 / 0.67); without the extra abundance
  variation the networks learn (IsotopeNet 15 epochs 0.77 / 0.72, ResidualNet 2 epochs 0.69 / 0.69) but ROC/LDA
  reads the ratio across the training TMAs' range of shifts (0.94 / 0.84); with it at log-sd 1: ROC/LDA 0.82 /
  0.82; signal peptides at 10 % / 3 % abundance with the measured errors: ROC/LDA 0.77 / 0.72 and 0.65 / 0.66,
  IsotopeNet 0.63 / 0.63 and 0.52 / 0.53. At the chosen IsotopeNet setting (Adam 1e-2, 25 epochs, 2 runs,
  seeds 101-104) with the measured errors as ppm (273 per TMA, 98 per spot): ROC/LDA 0.61 / 0.66 / 0.66 / 0.69,
  IsotopeNet 0.68 / 0.60 / 0.57 / 0.67; halved (137 / 49 ppm: a time-offset error moves m by 2 dt / t and a
  reflector roughly doubles t): ROC/LDA 0.73 / 0.75 / 0.68 / 0.73, IsotopeNet 0.63 / 0.68 / 0.60 / 0.67,
  ResidualNet 0.55 / 0.56 / 0.45 / 0.49; 98 / 36 ppm: ROC/LDA 0.81 / 0.78 / 0.71 / 0.69, IsotopeNet 0.68 / 0.70
  / 0.56 / 0.71. The measured errors are those of a linear-mode instrument; the thesis's reflector-mode data are
  presumably better calibrated by a factor we cannot measure, and no size makes IsotopeNet pass ROC/LDA on every
  seed, so they stay off here;
* the quick window at the design point of Table 7.2 (mean bin 0.163 Da, 2450..2616 Da, baseline and peak
  heights scaled to that mass): ROC/LDA 0.66 / 0.64, IsotopeNet 0.57 / 0.59 (one run); with per-TMA errors of
  0.3 / 0.67 Da everything near chance (0.48-0.61).

The earlier budget run (``--budget 15m``: scale 17.5, 1607 spectra, IsotopeNet 42 / ResidualNet 4 epochs, seed
0, at Adam 3e-3) gave IsotopeNet 0.755 +- 0.053, ResidualNet 0.763 +- 0.058 against ROC/LDA 0.591 / 0.678
(worst / best K): both networks ahead on average, paired differences +0.073 [95% CI -0.060, 0.206] and +0.078
[-0.067, 0.222] over 3 runs, IsotopeNet - ResidualNet -0.005 [-0.018, 0.008]. At the current setting the
results page's ``--budget 10m`` (753 spectra, IsotopeNet 65 / ResidualNet 3 epochs, seed 0) gave IsotopeNet
0.777, ResidualNet 0.603, ROC/LDA best K 0.788: IsotopeNet - ResidualNet +0.175 [0.036, 0.313] (holds),
IsotopeNet - ROC/LDA -0.011 [-0.084, 0.062].

Reported seeds 0 / 1 / 2 at this setting (mean of 3 runs; before, at Adam 3e-3 for 10 epochs, IsotopeNet 0.526 /
0.502 / 0.584): IsotopeNet 0.590 / 0.514 / 0.661, ResidualNet 0.513 / 0.490 / 0.525, ROC/LDA best K 0.699 /
0.649 / 0.835; IsotopeNet - ResidualNet +0.077 [95% CI -0.054, 0.208] / +0.025 [-0.052, 0.102] / +0.136 [0.035,
0.238] (holds on seed 2 only), IsotopeNet - ROC/LDA -0.109 / -0.135 / -0.174, ResidualNet - ROC/LDA -0.186 /
-0.160 / -0.310 (intervals below or around 0).

So on this generator the networks overtake ROC/LDA only with several times the quick data and epochs, and not
on every seed; at the quick cost IsotopeNet - ROC/LDA and ResidualNet - ROC/LDA do not hold, IsotopeNet -
ResidualNet holds only where IsotopeNet learns within 25 epochs (ResidualNet's one epoch learns nothing), and the
report says so with the measured intervals and costs the full run from the measured step times (CPU time per
step, scaled by multiply-adds for 27286 bins and the batch ratio). ``--budget`` grows the spectra and epochs
(``ctx.scaled``). Full mode: the ``adsq-like`` (4672 x 27286) and ``lp-like`` (27475 x 27286) presets with the
envelope signal on 8 peptides, Table A.2's training settings and 4 runs.
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


#: Where the class signal lives (both modes): in the isotope envelopes of 4 (quick) / 8 (full) peptides, as the
#: share of a modified form 0.984 Da heavier (deamidation), log-odds shifted by +-1 between the classes, while the
#: peptides' total abundance varies strongly between patients (extra log-sd 2), so no single bin carries much.
SIGNAL = {"signal": "envelope", "effect": 2.0, "signal_abundance_sd": 2.0}
#: Quick/budget training settings, chosen on the validation seeds 101-104 (module docstring).
QUICK_TRAIN = {"isotopenet": {"lr": 1e-2, "batch_size": 32, "weight_decay": 0.0, "dropout": 0.0},
               "residualnet": {"lr": 1e-3, "batch_size": 16, "weight_decay": 0.0}}


def settings(ctx: RunContext) -> dict[str, int]:
    """The workload of one run, declared with :meth:`RunContext.scaled` (quick value, full value, power): the
    spectra (data, power 0.5) and the epochs of both networks (steps, power 0.5); the bins stay at the quick
    axis in a budgeted run (power 0: a longer axis would change the task, not only its size)."""
    return {
        "n_spectra": ctx.scaled("n_spectra", 384, 4672, power=0.5),
        "n_bins": ctx.scaled("n_bins", 1024, 27286, power=0.0),
        "isotopenet_epochs": ctx.scaled("isotopenet_epochs", 25, 300, power=0.5),
        "residualnet_epochs": ctx.scaled("residualnet_epochs", 1, 100, power=0.5),
    }


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

    size = settings(ctx) if task.startswith("adsq") else {}
    if quick:
        cfg = preset(task, quick=True, n_spectra=size["n_spectra"], n_bins=size["n_bins"], cores_per_tma=8, **SIGNAL)
    else:
        cfg = preset(task, **SIGNAL, n_discriminative=8)
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
            tc = replace(tc, epochs=size[f"{model}_epochs"], **QUICK_TRAIN[model])
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
    size = {k: v.value for k, v in ctx.settings.items()}
    why = (f"the networks train {size['isotopenet_epochs']} / {size['residualnet_epochs']} epochs on "
           f"{size['n_spectra'] * 3 // 4} spectra per fold (the thesis: 300 / 100 on ~3500) "
           "and at this size overfit the 48 training patients before they find the envelope signal (validation "
           "seeds 101-104 at this setting: IsotopeNet 0.74 / 0.65 / 0.55 / 0.64 against ROC/LDA 0.73 / 0.82 / 0.70 "
           "/ 0.65, ResidualNet at chance after 1 epoch); on validation data sets IsotopeNet overtook ROC/LDA only "
           "with 2-3x the quick spectra (768 spectra, 15 epochs at Adam 3e-3: 0.78 vs 0.76; 1152 spectra, 30 "
           "epochs: 0.95 vs 0.84) and not on every seed (0.71 vs 0.83; 0.79 vs 0.88); a 10-minute budget run "
           "(753 spectra, 65 / 3 epochs) brought IsotopeNet level with ROC/LDA (0.777 vs 0.788, difference "
           "-0.011 [-0.084, 0.062]) and ahead of ResidualNet (0.603)")
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
