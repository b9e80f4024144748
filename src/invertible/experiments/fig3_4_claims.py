"""The thesis's statements about Fig. 3.4 as claims over seeds (see :mod:`invertible.experiments.fig3_4`).

Per seed and net the input is one row per stage of :func:`invertible.analysis.spectrum_summary` (plus
``full_input_rank_bound``). Comparisons are paired over the seeds (both nets trained on the same seed) with a 95%
t-interval and the paired t-test (:func:`invertible.experiments.seeds.paired_difference`); condition numbers are
compared on a log10 scale (they span decades).
"""

from __future__ import annotations

import math

import torch

from invertible.experiments.registry import RunContext
from invertible.experiments.seeds import paired_difference, t_interval

__all__ = ["state_claims"]

FULL_SIDE, FULL_INPUTS, FULL_TRAIN, FULL_EPOCHS = 32, 50, 50_000, 8  # the thesis's setting


def _stage(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["stage"] == name)


def _log_cond(rows: list[dict], stage: str) -> float:
    return math.log10(max(_stage(rows, stage)["median_condition"], 1e-300))


def _median_step(spectra) -> float:
    """Median over the inputs of ``log10 cond(relu5) - log10 cond(conv5)`` (the change the ReLU alone makes)."""
    by_name = {sp.name: sp for sp in spectra}
    change = torch.log10(by_name["relu5"].condition.double()) - torch.log10(by_name["conv5"].condition.double())
    return float(change.median())


def _fmt(values, digits: str = ".3g") -> str:
    return ", ".join(f"{v:{digits}}" for v in values)


def _ci(d: dict, digits: str = ".2f") -> str:
    return (f"{d['mean']:{digits}} [{d['lo']:{digits}}, {d['hi']:{digits}}] (95% t-interval, {d['n']} seeds"
            + (f", paired t-test p = {d['p']:.3g})" if "p" in d else ")"))


def state_claims(ctx: RunContext, runs: dict[str, list[dict]], cfg: dict, data_desc: str, n_cols: int,
                 seconds: dict[str, float], *, n_seeds: int) -> None:
    """State the five claims of Fig. 3.4 from ``runs[name][seed]["rows"]`` (see the module docstring)."""
    wide, thin = [r["rows"] for r in runs["WideCIFAR"]], [r["rows"] for r in runs["ThinCIFAR"]]
    full_input = cfg["window"] is None
    cifar = data_desc.startswith("CIFAR")
    # the full run's cost from this run's step times: SVD of an (out x columns) Jacobian costs out x columns^2 and
    # both grow with the input area; training costs grow with the area (convolutions)
    spectra_cost = ctx.full_cost(
        seconds["spectra_per_input"], FULL_INPUTS * 2 * n_seeds, scale=(3 * FULL_SIDE ** 2 / n_cols) ** 3,
        what="fig3.4 spectra (CIFAR-10 32x32, 3072-column Jacobians, 50 inputs x 2 nets x seeds)",
        basis=f"per input and net at {n_cols} columns x ({3 * FULL_SIDE ** 2}/{n_cols})^3")
    train_cost = ctx.full_cost(
        seconds["train_per_image"], FULL_TRAIN * FULL_EPOCHS * 2 * n_seeds, scale=(FULL_SIDE / cfg["image_size"]) ** 2,
        what="fig3.4 training (50000 images x 8 epochs x 2 nets x seeds at 32x32)",
        basis=f"per image-epoch at {cfg['image_size']}x{cfg['image_size']} x (32/{cfg['image_size']})^2")
    full_text = f"spectra {spectra_cost.text}; training {train_cost.text}"

    def relu_layers(rows, key):
        return [r[key] for r in rows if r["kind"] == "relu" and r["layer"] <= 6]

    grows = [max(relu_layers(w, "median_sigma_max")[1:5]) / relu_layers(w, "median_sigma_max")[0] for w in wide]
    ctx.claim("WideCIFAR: the largest singular value grows over layers 1-5 (after ReLU)", min(grows) > 1,
              f"median sigma_max after ReLU, layers 1-6 (seed {ctx.seed}): "
              f"{_fmt(relu_layers(wide[0], 'median_sigma_max'))}; max over layers 2-5 / layer 1 per seed: "
              f"{_fmt(grows)}", growth_per_seed=grows)
    falls = [relu_layers(w, "median_sigma_min_nonzero")[-1] / relu_layers(w, "median_sigma_min_nonzero")[0]
             for w in wide]
    ctx.claim("WideCIFAR: the small singular values decrease significantly (layer 6 below a tenth of layer 1)",
              max(falls) < 0.1,
              f"median smallest non-zero singular value after ReLU, layers 1-6 (seed {ctx.seed}): "
              f"{_fmt(relu_layers(wide[0], 'median_sigma_min_nonzero'))}; layer 6 / layer 1 per seed: "
              f"{_fmt(falls, '.2g')}", ratio_per_seed=falls)

    key = "median_n_nonzero" if full_input else "full_input_rank_bound"
    rank = {"ThinCIFAR": [_stage(t, "relu5")[key] for t in thin], "WideCIFAR": [_stage(w, "relu5")[key] for w in wide]}
    d_rank = paired_difference(rank["ThinCIFAR"], rank["WideCIFAR"])
    what = (f"non-zero singular values of the full {n_cols}-column Jacobian after relu5" if full_input else
            "bound on rank A_P after relu5 (full input, from the active units)")
    more = d_rank["hi"] < 0
    ctx.claim(
        "ThinCIFAR has more invariant directions after layer 5 (fewer non-zero singular values)", more,
        f"{what}: ThinCIFAR {_fmt(rank['ThinCIFAR'], '.0f')} vs WideCIFAR {_fmt(rank['WideCIFAR'], '.0f')} of "
        f"{n_cols} possible; Thin - Wide {_ci(d_rank, '.1f')}"
        + ("" if more else f"; with {cfg['epochs']} epoch(s) on {cfg['n_train']} images the seed-to-seed spread "
                           "is larger than the difference"),
        limited_by=None if more else "compute", full_cost=None if more else full_text,
        difference=d_rank["mean"], ci95=[d_rank["lo"], d_rank["hi"]], p_value=d_rank["p"], measure=key)

    # the cut-off: the change of log10 cond from conv5 to relu5 (the ReLU alone) at each input, its median per seed
    step = {n: [_median_step(r["spectra"]) for r in runs[n]] for n in ("ThinCIFAR", "WideCIFAR")}
    thin_step, d_step = t_interval(step["ThinCIFAR"]), paired_difference(step["ThinCIFAR"], step["WideCIFAR"])
    smin_up = [_stage(t, "relu5")["median_sigma_min_nonzero"] / _stage(t, "conv5")["median_sigma_min_nonzero"]
               for t in thin]
    cut = full_input and thin_step["hi"] < 0 and d_step["hi"] < 0
    why = ("" if cut else "; does not show at this scale because " + (
        f"the Jacobian has {n_cols} columns (a centred window), fewer than the rank after relu5, so no singular "
        "value is cut off" if not full_input else f"{sum(v >= 0 for v in step['ThinCIFAR'])} of {n_seeds} seeds go the "
        f"other way: the seed-to-seed spread of the medians over {cfg['n_eval']} inputs is larger than the change"))
    ctx.claim(
        "ThinCIFAR's cut-off in layer 5 lowers its condition number (relu5 vs conv5), WideCIFAR's ReLU does not",
        cut,
        "median over inputs of the change of log10 cond from conv5 to relu5, per seed: ThinCIFAR "
        f"{_fmt(step['ThinCIFAR'], '+.2f')}, "
        f"WideCIFAR {_fmt(step['WideCIFAR'], '+.2f')}; ThinCIFAR {_ci(thin_step)} decades; Thin - Wide "
        f"{_ci(d_step)}; ThinCIFAR's smallest non-zero singular value grows {_fmt(smin_up, '.3g')}x at relu5 (the "
        f"cut-off removes the smallest){why}",
        limited_by=None if cut else "compute", full_cost=None if cut else full_text,
        thin_change=thin_step["mean"], thin_ci95=[thin_step["lo"], thin_step["hi"]], difference=d_step["mean"],
        ci95=[d_step["lo"], d_step["hi"]], p_value=d_step["p"])

    logc = {n: [_log_cond(r, "relu5") for r in rows] for n, rows in (("ThinCIFAR", thin), ("WideCIFAR", wide))}
    d_cond = paired_difference(logc["ThinCIFAR"], logc["WideCIFAR"])
    d_conv5 = paired_difference([_log_cond(t, "conv5") for t in thin], [_log_cond(w, "conv5") for w in wide])
    d_relu6 = paired_difference([_log_cond(t, "relu6") for t in thin], [_log_cond(w, "relu6") for w in wide])
    lower = d_cond["hi"] < 0 and full_input
    if lower:
        why, limit = "", None
    elif not full_input:
        why, limit = f"; the window's {n_cols} columns cannot show the cut-off", "compute"
    else:
        why = (f"; does not hold at this scale: ThinCIFAR reaches conv5 {d_conv5['mean']:+.2f} decades above "
               f"WideCIFAR (Thin - Wide {_ci(d_conv5)}) and its ReLU changes it by {thin_step['mean']:+.2f}, "
               f"which does not bring it below; {'CIFAR-10 at 32x32' if not cifar else '32x32 inputs'} (the "
               "thesis's setting) would tell whether it does there")
        limit = "data" if not cifar else "compute"
    ctx.claim(
        "ThinCIFAR's cut-off in layer 5 gives it a lower condition number than WideCIFAR", lower,
        f"log10 cond after relu5 per seed: ThinCIFAR {_fmt(logc['ThinCIFAR'], '.2f')}, WideCIFAR "
        f"{_fmt(logc['WideCIFAR'], '.2f')}; Thin - Wide {_ci(d_cond)} decades (after relu6: {_ci(d_relu6)})"
        + why, limited_by=limit, full_cost=None if lower else full_text,
        difference=d_cond["mean"], ci95=[d_cond["lo"], d_cond["hi"]], p_value=d_cond["p"],
        relu6_difference=d_relu6["mean"], relu6_ci95=[d_relu6["lo"], d_relu6["hi"]])
