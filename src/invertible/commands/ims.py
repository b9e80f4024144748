"""``invertible ims``: synthetic TMA measurements, isotope-pattern design and TMA-level cross-validation.

    invertible ims synth --preset adsq-like [--quick] --out data/
    invertible ims design --imzml data/synthetic.imzML [--out design/]
    invertible ims cv --imzml F --annotations F --model isotopenet|residualnet|roc-lda [--out runs/cv]
    invertible ims explain RUN_FOLDER_OR_CHECKPOINT --imzml F --annotations F [--out runs/explain]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from invertible.commands import ims_explain
from invertible.commands._options import (
    add_device,
    add_out,
    add_progress,
    add_seed,
    add_threads,
    file_stem,
    out_dir,
    positive_float,
    positive_int,
)

MODELS = ("isotopenet", "residualnet", "roc-lda")


def add_parser(sub) -> None:
    p = sub.add_parser("ims", help="imaging mass spectrometry: synthetic data, design, cross-validation",
                       description="Tumour typing from MALDI imzML measurements (thesis chapter 7).")
    ims = p.add_subparsers(dest="ims_command", metavar="SUBCOMMAND")

    s = ims.add_parser("synth", help="write a synthetic TMA measurement (imzML + annotation CSV)")
    s.add_argument("--preset", default="adsq-like", choices=["adsq-like", "lp-like"])
    s.add_argument("--quick", action="store_true", help="small sizes (192 spectra x 1024 bins)")
    s.add_argument("--spectra", type=positive_int, help="override the number of spectra")
    s.add_argument("--bins", type=positive_int, help="override the number of m/z bins")
    s.add_argument("--tmas", type=positive_int, help="override the number of TMAs")
    add_out(s, required=True, help="output folder")
    s.add_argument("--name", type=file_stem, default="synthetic", help="file stem (NAME.imzML, NAME.ibd, NAME.csv)")
    add_seed(s)
    s.set_defaults(func=run_synth)

    d = ims.add_parser("design", help="isotope-pattern size vs receptive field, mean bin width, stride")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--imzml", type=Path, help="take the m/z axis from this measurement")
    src.add_argument("--preset", default="adsq-like", choices=["adsq-like", "lp-like"])
    d.add_argument("--t-iso", type=float, default=0.005, help="isotope threshold (section 7.3.2)")
    d.add_argument("--resolving-power", type=positive_float, default=3000.0, help="m / FWHM of a peak")
    d.add_argument("--step", type=positive_float, default=250.0, help="mass step of the table (Da)")
    add_out(d, help="folder for design.png and design.json")
    d.set_defaults(func=run_design)

    c = ims.add_parser("cv", help="4-fold TMA-level cross-validation of one method")
    c.add_argument("--imzml", type=Path, required=True)
    c.add_argument("--annotations", type=Path, required=True, help="CSV with columns x,y,core,tma,label")
    c.add_argument("--model", required=True, choices=MODELS)
    c.add_argument("--task", default="adsq", choices=["adsq", "lp"], help="Table A.2 setting to use")
    c.add_argument("--epochs", type=positive_int, help="override the epochs of Table A.2")
    c.add_argument("--batch-size", type=positive_int, help="override the batch size of Table A.2")
    c.add_argument("--repeats", type=positive_int, default=4, help="runs of a network (median and IQR)")
    c.add_argument("--folds", type=positive_int, default=4, help="number of TMA-level folds (default 4)")
    c.add_argument("--mz-min", type=float)
    c.add_argument("--mz-max", type=float)
    c.add_argument("--baseline-window", type=positive_int, help="remove a rolling-minimum baseline of this many bins")
    c.add_argument("--cache", type=out_dir, help="folder for memory-mapped spectra (large measurements)")
    add_threads(c)
    add_device(c)
    add_seed(c)
    add_out(c, help="folder for metrics.json and the box plot")
    add_progress(c)
    c.set_defaults(func=run_cv)
    ims_explain.add_parser(ims)
    p.set_defaults(func=_no_subcommand)


def _no_subcommand(args: argparse.Namespace) -> int:
    raise ValueError("name a subcommand: synth, design, cv or explain (see `invertible ims --help`)")


def _progress(enabled: bool):
    from tqdm.auto import tqdm

    return lambda it, desc, total: tqdm(it, desc=desc, total=total, disable=not enabled, leave=False)


def run_synth(args: argparse.Namespace) -> int:
    from invertible.ims.synthetic import generate, preset, spectrum_statistics, write_imzml

    over = {k: v for k, v in (("n_spectra", args.spectra), ("n_bins", args.bins), ("n_tmas", args.tmas))
            if v is not None}
    cfg = preset(args.preset, quick=args.quick, **over)
    data = generate(cfg, seed=args.seed)
    imzml, csv = write_imzml(data, args.out, name=args.name, progress=_progress(True))
    stats = spectrum_statistics(data.mz, data.spectra(range(min(16, len(data)))))
    size = (imzml.with_suffix(".ibd").stat().st_size) / 2**20
    print(f"wrote {imzml} (+ .ibd, {size:.1f} MiB) and {csv}")
    print(f"{len(data)} spectra x {len(data.mz)} bins ({data.mz[0]:.1f}-{data.mz[-1]:.1f} Da), "
          f"{cfg.n_tmas} TMAs, {int(data.core.max()) + 1} cores, {len(data.peptide_mz)} peptides "
          f"({len(data.discriminative)} discriminative)")
    print("statistics of 16 spectra: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in stats.items()))
    return 0


def run_design(args: argparse.Namespace) -> int:
    import numpy as np

    from invertible.ims.isotopes import pattern_bins, receptive_field, suggest_stride

    if args.imzml is not None:
        from invertible.ims.imzml import read_imzml

        mz = read_imzml(args.imzml).mz
    else:
        from invertible.ims.synthetic import preset

        mz = preset(args.preset).mz
    if args.step <= 0:
        raise ValueError(f"--step must be positive, got {args.step}")
    if (mz[-1] - mz[0]) / args.step > 10_000:
        raise ValueError(f"--step {args.step} Da makes a table of more than 10000 rows for the m/z axis "
                         f"{mz[0]:.1f}-{mz[-1]:.1f}; expected a step of at least {(mz[-1] - mz[0]) / 10_000:.3g} Da")
    masses = np.arange(np.ceil((mz[0] + 10) / args.step) * args.step, mz[-1] - 10, args.step)
    if len(masses) == 0:
        raise ValueError(f"m/z axis {mz[0]:.1f}-{mz[-1]:.1f} is too short for the design table")
    bins = pattern_bins(mz, masses, t_iso=args.t_iso, resolving_power=args.resolving_power)
    rf = receptive_field()
    st = suggest_stride(mz)
    print(f"m/z axis: {len(mz)} bins, {mz[0]:.1f}-{mz[-1]:.1f} Da")
    print(f"average bin width {st.mean_bin_width:.4f} Da -> {st.bins_per_spacing:.2f} bins per 1 Da "
          f"-> stride {st.stride} (thesis picks one less: {st.conservative_stride})")
    print(f"receptive field of IsotopeNet: {rf} bins")
    print(f"{'m/z':>8} {'bins/pattern':>13}")
    for m, b in zip(masses, bins, strict=True):
        print(f"{m:8.0f} {b:13d}{'  > receptive field' if b > rf else ''}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from invertible.io import atomic_write_text

        args.out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        ax.step(masses, bins, where="mid", label="bins per isotope pattern")
        ax.axhline(rf, color="red", label=f"receptive field ({rf})")
        ax.set_xlabel("m/z (Da)")
        ax.set_ylabel("m/z bins")
        ax.legend()
        fig.savefig(args.out / "design.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        atomic_write_text(args.out / "design.json", json.dumps({
            "masses": masses.tolist(), "pattern_bins": bins.tolist(), "receptive_field": rf,
            "mean_bin_width": st.mean_bin_width, "bins_per_da": st.bins_per_spacing, "stride": st.stride,
        }, indent=2))
        print(f"wrote {args.out / 'design.png'} and design.json")
    return 0


def run_cv(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from invertible.ims.evaluate import (
        MethodResult,
        cross_validate_net,
        cross_validate_roc_lda,
        fig7_5_table,
        load_dataset,
        method_metrics,
        tma_folds,
    )
    from invertible.ims.training import TRAIN_CONFIGS

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    mz_range = None
    if args.mz_min is not None or args.mz_max is not None:
        mz_range = (args.mz_min if args.mz_min is not None else 0.0,
                    args.mz_max if args.mz_max is not None else float("inf"))
    prog = _progress(not args.no_progress)
    ds = load_dataset(args.imzml, args.annotations, mz_range=mz_range, baseline_window=args.baseline_window,
                      cache=args.cache, progress=prog)
    if len(ds.classes) < 2:
        raise ValueError(f"the annotation table has one class only ({ds.classes}); need at least two")
    print(f"{len(ds.y)} annotated spectra x {ds.X.shape[1]} bins, {len(ds.classes)} classes {ds.classes}, "
          f"{int(ds.tma.max()) + 1} TMAs, {int(ds.core.max()) + 1} cores")
    folds = tma_folds(ds.tma, args.folds, seed=args.seed)
    if args.model == "roc-lda":
        if len(ds.classes) != 2:
            raise ValueError("roc-lda needs exactly two classes")
        result = cross_validate_roc_lda(ds, folds)
        name = "ROC/LDA"
    else:
        tc = TRAIN_CONFIGS[args.task, args.model]
        tc = replace(tc, **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size))
                            if v is not None})
        runs = []
        for r in range(args.repeats):
            run = cross_validate_net(ds, folds, args.model, tc, seed=args.seed * 1000 + r, device=args.device,
                                     progress=prog)
            print(f"run {r + 1}/{args.repeats}: balanced accuracy spot {run.spot:.3f}, core {run.core:.3f}")
            runs.append(run)
        name = {"isotopenet": "IsotopeNet", "residualnet": "ResidualNet"}[args.model]
        result = MethodResult(name, runs)
    results = {name: result}
    table = fig7_5_table(results, "this data")
    print(table)
    metrics = method_metrics(result)
    if args.out:
        _write_cv_run(args, ds, result, metrics, table, None if args.model == "roc-lda" else tc)
    return 0


def _write_cv_run(args: argparse.Namespace, ds, result, metrics: dict, table: str, train_config) -> None:
    """The one run folder of ``ims cv``: config.json (every setting, the resolved Table A.2 config), one
    metrics.jsonl record per fold of every run (networks) or every K (ROC/LDA), metrics.json, the box plot
    under figures/, report.md."""
    from dataclasses import asdict

    from invertible.ims.plots import fig7_5_boxplot
    from invertible.io import RunFolder

    run = RunFolder(args.out).make()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    run.write_config({"command": "ims cv", **settings,
                      "train": asdict(train_config) if train_config is not None else None,
                      "data": {"n_spectra": len(ds.y), "n_bins": int(ds.X.shape[1]), "classes": list(ds.classes),
                               "n_tmas": int(ds.tma.max()) + 1, "n_cores": int(ds.core.max()) + 1}})
    run.reset_metrics()
    for i, cv in enumerate(result.runs):
        label = result.labels[i] if result.labels else f"run {i + 1}"
        for f, (spot, core) in enumerate(zip(cv.fold_spot, cv.fold_core, strict=True)):
            record = {"split": "fold", "method": result.name, "run": label, "fold": f,
                      "balanced_accuracy_spot": spot, "balanced_accuracy_core": core}
            if cv.history:
                record["train_loss"] = cv.history[f]
                record["seed"] = args.seed * 1000 + i  # cross_validate_net's run seed (fold f: seed * 100 + f)
            run.log(record)
    run.write_summary({"model": args.model, **metrics})
    run.save_figure(fig7_5_boxplot({result.name: result}), "boxplot")
    setting = [f"{len(ds.y)} spectra x {ds.X.shape[1]} bins, classes {', '.join(map(str, ds.classes))}",
               f"{args.folds}-fold cross-validation on TMA level (seed {args.seed})"]
    if train_config is not None:
        setting.append(f"{args.repeats} runs; Table A.2 ({args.task}): " +
                       ", ".join(f"{k}={v}" for k, v in asdict(train_config).items()))
    run.report(f"ims cv: {result.name}", {"Setting": setting, "Balanced accuracy": table})
    print(f"wrote {run.path}/ (config.json, metrics.jsonl, metrics.json, figures/boxplot.png, report.md)")
