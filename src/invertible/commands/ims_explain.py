"""``invertible ims explain``: sensitivity maps of a trained IMS classifier (thesis Section 7.5).

    invertible ims explain RUN_FOLDER_OR_CHECKPOINT --imzml F --annotations F [--top 10] [--out runs/explain]

Reads the measurement like ``ims cv`` (annotated spots, baseline removal, TIC), scales it with the model's
scaler (``scaler.safetensors`` beside the checkpoint; without one the scaler is fitted on these spectra and a
note says so), and writes the per-class sensitivity maps, their peaks and isotope marks. ``--attribution
measured`` attributes to the measured (pre-TIC) intensities instead (:mod:`invertible.ims.attribution`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from invertible.commands._options import add_device, add_out, add_progress, add_threads, positive_float, positive_int


def add_parser(ims) -> None:
    e = ims.add_parser("explain", help="sensitivity maps of a trained classifier: the peaks that drive each class")
    e.add_argument("run", type=Path, help="run folder (checkpoint.safetensors) or checkpoint file of a trained model")
    e.add_argument("--imzml", "--data", dest="imzml", type=Path, required=True, help="the measurement (imzML)")
    e.add_argument("--annotations", type=Path, required=True, help="CSV with columns x,y,core,tma,label")
    e.add_argument("--baseline-window", type=positive_int,
                   help="rolling-minimum baseline in bins (default: the one the model was trained with)")
    e.add_argument("--mz-min", type=float)
    e.add_argument("--mz-max", type=float)
    e.add_argument("--top", type=positive_int, default=10, help="peaks per class (default 10)")
    e.add_argument("--score", choices=("logit", "log_prob"), default="logit",
                   help="differentiate the centred class logit (default) or the class log-probability")
    e.add_argument("--resolving-power", type=positive_float, default=3000.0,
                   help="peak width m / R of the peak sensitivity (default 3000)")
    e.add_argument("--raw-gradient", action="store_true", help="plain averaged gradients, no peak sensitivity")
    e.add_argument("--attribution", choices=("gradient", "measured"), default="gradient",
                   help="gradient: input gradients of the scaled spectra (default); measured: gradient x (r - mean r) "
                        "in the measured intensities r, through TIC and scaler (removes the TIC artefact)")
    e.add_argument("--steps", type=positive_int, default=8,
                   help="integrated-gradient steps of --attribution measured (default 8; 1: gradient x input)")
    add_threads(e)
    add_device(e)
    add_out(e, help="folder for the maps (figures/sensitivity.png, metrics.json, report.md)")
    add_progress(e)
    e.set_defaults(func=run_explain)


def _progress(enabled: bool):
    from tqdm.auto import tqdm

    return lambda it, desc, total: tqdm(it, desc=desc, total=total, disable=not enabled, leave=False)


def _scaler_for(run: Path):
    from invertible.ims.preprocess import SCALER_NAME, load_scaler

    path = (run if run.is_dir() else run.parent) / SCALER_NAME
    return load_scaler(path) if path.is_file() else (None, {})


def run_explain(args: argparse.Namespace) -> int:
    import torch

    from invertible.ims.evaluate import load_dataset
    from invertible.ims.explain import explain
    from invertible.ims.preprocess import StdScaler
    from invertible.training.runs import load_run

    if args.threads:
        torch.set_num_threads(args.threads)
    model, ck = load_run(args.run, device=args.device)
    scaler, settings = _scaler_for(args.run)
    window = args.baseline_window or settings.get("baseline_window")
    mz_range = None
    if args.mz_min is not None or args.mz_max is not None:
        mz_range = (args.mz_min if args.mz_min is not None else 0.0,
                    args.mz_max if args.mz_max is not None else float("inf"))
    ds = load_dataset(args.imzml, args.annotations, mz_range=mz_range, baseline_window=window,
                      progress=_progress(not args.no_progress))
    if scaler is None:
        print("note: no scaler.safetensors beside the checkpoint; fitting the m/z scaler on these spectra")
        scaler = StdScaler().fit(ds.X)
    if len(scaler.scale_) != ds.X.shape[1]:
        raise ValueError(f"the model's scaler has {len(scaler.scale_)} m/z bins, the measurement {ds.X.shape[1]} "
                         "(after --mz-min/--mz-max); give the m/z range the model was trained on")
    n_bins = getattr(model, "n_bins", None)
    if n_bins is not None and n_bins != ds.X.shape[1]:
        raise ValueError(f"the model takes spectra of {n_bins} bins, the measurement has {ds.X.shape[1]}")
    X = scaler.transform(ds.X)
    with torch.no_grad():
        p = next(model.parameters())
        n_out = model(torch.as_tensor(X[:2], device=p.device, dtype=p.dtype)).shape[1]
    if n_out != len(ds.classes):
        raise ValueError(f"the model has {n_out} outputs but the annotations name {len(ds.classes)} classes "
                         f"({', '.join(ds.classes)})")
    resolving_power = None if args.raw_gradient else args.resolving_power
    if args.attribution == "measured":
        from invertible.ims.attribution import explain_measured, spectrum_tic

        if args.score != "logit":
            raise ValueError("--attribution measured differentiates the centred logit; drop --score log_prob")
        tic = spectrum_tic(args.imzml, args.annotations, mz_range=mz_range, baseline_window=window)
        smap = explain_measured(model, ds.X, tic, ds.y, ds.mz, ds.classes, scale=scaler.scale_, steps=args.steps,
                                top=args.top, resolving_power=resolving_power)
    else:
        smap = explain(model, X, ds.y, ds.mz, ds.classes, top=args.top, score=args.score,
                       resolving_power=resolving_power)
    table = smap.table()
    print(f"{len(ds.y)} spectra x {ds.X.shape[1]} bins ({ds.mz[0]:.1f}-{ds.mz[-1]:.1f} Da), classes "
          f"{', '.join(ds.classes)}; model {ck.kind}")
    print(table)
    if args.out:
        _write(args, ds, smap, table, ck.kind, window)
    return 0


def _write(args: argparse.Namespace, ds, smap, table: str, kind: str | None, window) -> None:
    from dataclasses import asdict

    from invertible.ims.plots import sensitivity_figure
    from invertible.io import RunFolder

    run = RunFolder(args.out).make()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    run.write_config({"command": "ims explain", **settings, "baseline_window": window, "model_kind": kind})
    run.reset_metrics()
    for c, peaks in enumerate(smap.peaks):
        for r, p in enumerate(peaks, 1):
            run.log({"split": "peak", "class": smap.classes[c], "rank": r, **asdict(p)})
    run.write_summary({"classes": smap.classes, "n_spectra": [int(n) for n in smap.counts],
                       "peaks": {smap.classes[c]: [p.mz for p in ps] for c, ps in enumerate(smap.peaks)}})
    run.save_figure(sensitivity_figure(smap), "sensitivity")
    run.report("ims explain: sensitivity maps", {
        "Setting": [f"model {args.run} ({kind})", f"{len(ds.y)} spectra x {ds.X.shape[1]} bins from {args.imzml}",
                    f"score {smap.score}, {smap.method} attribution, " + ("raw maps" if smap.resolving_power is None
                                               else f"peak sensitivity at R = {smap.resolving_power:.0f}")],
        "Peaks per class": table})
    print(f"wrote {run.path}/ (config.json, metrics.jsonl, metrics.json, figures/sensitivity.png, report.md)")
