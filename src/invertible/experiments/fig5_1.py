"""Figure 5.1: forward against reverse KL when fitting a low-capacity flow to a multi-modal target (mode covering
against mode seeking; section 5.1, eq. 5.1-5.3).

The same small residual flow (ActNorm - one i-ResNet block with ``Lip(g) <= 0.5`` - ActNorm: bi-Lipschitz with
constants 0.5 and 1.5 up to the ActNorm scales, Lemma 4.6, so nearly a Gaussian - the thesis's "uni-modal model")
is fitted to a three-mode Gaussian mixture twice per seed, by the two recipes of the one engine:

* forward KL = maximum likelihood on target samples (the density recipe, eq. 5.1),
* reverse KL = ``E_q[log q - log p]`` on reparameterized flow samples (the reverse-KL recipe, eq. 5.2-5.3,
  gradients through the fixed-point inverse by implicit differentiation).

Both divergences are then measured in nats for both fits (the target is normalized: exact log-densities, exact
2-D log-determinants), and the fits' mass per mode (model samples assigned to the nearest mode).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from invertible.data.targets2d import GaussianMixture2D, fig5_1_mixture
from invertible.experiments.registry import RunContext, register
from invertible.models.resflow import vector_residual_flow
from invertible.training.density import DensityConfig, density_trainer
from invertible.training.plots_density import density_grid
from invertible.training.sources import SamplerSource
from invertible.training.variational import ReverseKLConfig, reverse_kl_trainer

THESIS = """
Figure 5.1 (from Theis et al., 2016): a uni-modal Gaussian fitted to a multi-modal distribution. Fitted by the
forward KL divergence (maximum likelihood, eq. 5.1) it must cover all modes and so puts mass in low-density regions
between them; fitted by the reverse KL divergence (eq. 5.2-5.3) it covers a single mode well ("mode seeking")
and does not capture the whole data distribution.
"""

OBJECTIVES = ("forward", "reverse")
LABELS = {"forward": "forward KL (maximum likelihood)", "reverse": "reverse KL (reparameterized samples)"}
LIM = 5.0


QUICK = {"seeds": 3, "steps": 200, "batch": 256, "lr": 1e-2, "n_eval": 4000, "grid": 90}
FULL = {"seeds": 10, "steps": 1000, "batch": 256, "lr": 5e-3, "n_eval": 20_000, "grid": 200}


def settings(ctx: RunContext) -> dict[str, Any]:
    """The run's settings: :data:`QUICK` in quick mode, :data:`FULL` in full mode; a budgeted run
    (``--budget``) grows the workload with ``ctx.scale`` - seeds and steps with power 1/2 each (the run time is
    seeds x steps), the evaluation sample with power 1/2 (its cost is seeds x n_eval) - and keeps the quick
    learning rate, batch and figure grid (chosen for the quick step count)."""
    quick = ctx.quick
    return {"seeds": ctx.scaled("seeds", QUICK["seeds"], FULL["seeds"], power=0.5),
            "steps": ctx.scaled("steps", QUICK["steps"], FULL["steps"], power=0.5),
            "batch": QUICK["batch"], "lr": QUICK["lr"] if quick else FULL["lr"],
            "n_eval": ctx.scaled("n_eval", QUICK["n_eval"], FULL["n_eval"], power=0.5),
            "grid": QUICK["grid"] if quick else FULL["grid"]}


def small_flow(seed: int):
    """The low-capacity flow: ActNorm - ResidualBlock(2-16-2 MLP, Lip(g) <= 0.5) - ActNorm, exact log-det."""
    torch.manual_seed(seed)
    return vector_residual_flow(2, n_blocks=1, hidden=(16,), coeff=0.5, mode="exact", inverse_atol=1e-5)


def fit(objective: str, target: GaussianMixture2D, s: dict[str, Any], seed: int):
    """Train one flow on ``target`` by ``objective`` (``"forward"`` or ``"reverse"``); returns the model."""
    model = small_flow(seed)
    if objective == "forward":
        src = SamplerSource(lambda n, g: target.sample(n, g), s["batch"], seed=seed, epoch_steps=s["steps"])
        cfg = DensityConfig(steps=s["steps"], batch_size=s["batch"], lr=s["lr"], log_every=s["steps"], seed=seed)
        density_trainer(model, src, cfg, None, show_progress=False).fit()
    else:
        cfg = ReverseKLConfig(steps=s["steps"], batch_size=s["batch"], lr=s["lr"], log_every=s["steps"], seed=seed)
        reverse_kl_trainer(model, target.log_prob, cfg).fit()
    return model.eval()


@torch.no_grad()
def divergences(model, target: GaussianMixture2D, n: int, seed: int) -> dict[str, Any]:
    """Forward KL ``E_p[log p - log q]`` on fresh target samples, reverse KL ``E_q[log q - log p]`` on model
    samples (nats, Monte Carlo with ``n`` points each), and the model's mass per mode."""
    flow = model.distribution()
    dtype = next(model.parameters()).dtype
    data = target.sample(n, torch.Generator().manual_seed(10_000 + seed), dtype=dtype)
    xs = flow.sample((n,), generator=torch.Generator().manual_seed(20_000 + seed))
    forward = target.log_prob(data.double()) - flow.log_prob(data).double()
    reverse = flow.log_prob(xs).double() - target.log_prob(xs.double())
    mass = target.mode_mass(xs)
    covered = mass >= 0.5 * target.mode_weights()
    return {"forward_kl": float(forward.mean()), "forward_kl_se": float(forward.std() / math.sqrt(n)),
            "reverse_kl": float(reverse.mean()), "reverse_kl_se": float(reverse.std() / math.sqrt(n)),
            "mode_mass": mass.tolist(), "modes_covered": int(covered.sum())}


def interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t confidence interval of the mean over seeds."""
    from scipy.special import stdtrit  # the Student-t quantile (scipy.stats is a slow import)

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stdtrit(n - 1, 0.5 + level / 2)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@register("fig5.1", title="Forward vs reverse KL: mode covering vs mode seeking", thesis=THESIS)
def run(ctx: RunContext) -> dict[str, Any]:
    s = settings(ctx)
    target = fig5_1_mixture()
    seeds = [ctx.seed + i for i in range(s["seeds"])]
    per_seed: dict[str, list[dict[str, Any]]] = {o: [] for o in OBJECTIVES}
    shown: dict[str, Any] = {}
    for seed in ctx.progress(seeds, desc="fig5.1 seeds"):
        for objective in OBJECTIVES:
            model = fit(objective, target, s, seed)
            result = divergences(model, target, s["n_eval"], seed)
            per_seed[objective].append({"seed": seed, **result})
            ctx.log({"objective": objective, "seed": seed, **result})
            if seed == seeds[0]:
                shown[objective] = model
    summary = {o: {k: interval([r[k] for r in per_seed[o]]) for k in ("forward_kl", "reverse_kl", "modes_covered")}
               for o in OBJECTIVES}
    _figure(ctx, target, shown, per_seed, summary, s)
    _report(ctx, target, per_seed, summary, s)

    fwd, rev = per_seed["forward"], per_seed["reverse"]
    k = target.n_modes
    ctx.claim("the forward-KL fit covers every mode (mass >= half the mode's weight), for every seed",
              all(r["modes_covered"] == k for r in fwd),
              f"modes covered per seed: {[r['modes_covered'] for r in fwd]} of {k}",
              modes_covered=[r["modes_covered"] for r in fwd])
    ctx.claim("the reverse-KL fit concentrates on fewer modes than the forward-KL fit, for every seed",
              all(r["modes_covered"] < q["modes_covered"] for r, q in zip(rev, fwd, strict=True)),
              f"modes covered per seed: reverse {[r['modes_covered'] for r in rev]}, "
              f"forward {[r['modes_covered'] for r in fwd]}", modes_covered=[r["modes_covered"] for r in rev])
    f_fwd, f_rev = summary["forward"]["forward_kl"], summary["reverse"]["forward_kl"]
    ctx.claim("mode seeking costs coverage: the reverse-KL fit has the higher forward KL (95% intervals disjoint)",
              f_rev[1] > f_fwd[2],
              f"forward KL {f_rev[0]:.2f} [{f_rev[1]:.2f}, {f_rev[2]:.2f}] nats (reverse fit) vs {f_fwd[0]:.2f} "
              f"[{f_fwd[1]:.2f}, {f_fwd[2]:.2f}] (forward fit), {len(seeds)} seeds",
              reverse_fit=list(f_rev), forward_fit=list(f_fwd))
    r_fwd, r_rev = summary["forward"]["reverse_kl"], summary["reverse"]["reverse_kl"]
    ctx.claim("each fit is best in its own divergence: the reverse-KL fit has the lower reverse KL",
              r_rev[2] < r_fwd[1],
              f"reverse KL {r_rev[0]:.2f} [{r_rev[1]:.2f}, {r_rev[2]:.2f}] nats (reverse fit) vs {r_fwd[0]:.2f} "
              f"[{r_fwd[1]:.2f}, {r_fwd[2]:.2f}] (forward fit)", reverse_fit=list(r_rev), forward_fit=list(r_fwd))
    return {"settings": s, "target": {"means": target.means, "weights": target.weights, "std": target.std},
            "per_seed": per_seed, "summary": summary}


def _figure(ctx, target, shown, per_seed, summary, s) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = s["grid"]
    ax1d = torch.linspace(-LIM, LIM, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax1d, ax1d, indexing="ij")
    true = target.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(n, n)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 1, 1, 1.15]})
    panels = [("target p(x)", true)] + [(f"{LABELS[o]}\nseed {ctx.seed}", density_grid(shown[o], LIM, n)[1])
                                         for o in OBJECTIVES]
    centres = target.centres().numpy()
    for ax, (title, dens) in zip(axes[:3], panels, strict=True):
        ax.imshow(dens.numpy(), origin="lower", extent=(-LIM, LIM, -LIM, LIM), cmap="viridis")
        ax.contour(xx.numpy(), yy.numpy(), true.numpy(), levels=[0.2 * float(true.max())], colors="white",
                   linewidths=0.7)
        ax.scatter(centres[:, 0], centres[:, 1], marker="x", color="red", s=30)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    handles = [Line2D([], [], color="white", lw=0.7, label="target contour"),
               Line2D([], [], color="red", marker="x", ls="", label="target modes")]
    leg = axes[0].legend(handles=handles, fontsize=7, loc="lower right", facecolor="gray", framealpha=0.6)
    for t in leg.get_texts():
        t.set_color("white")
    ax = axes[3]
    colors = {"forward": "tab:blue", "reverse": "tab:orange"}
    for j, metric in enumerate(("forward_kl", "reverse_kl")):
        for i, o in enumerate(OBJECTIVES):
            pos = j + (i - 0.5) * 0.3
            vals = [r[metric] for r in per_seed[o]]
            ax.scatter([pos] * len(vals), vals, color=colors[o], alpha=0.5, s=14)
            mean, lo, hi = summary[o][metric]
            err = [[mean - lo], [hi - mean]] if math.isfinite(lo) else None
            ax.errorbar(pos, mean, yerr=err, fmt="o", color=colors[o], capsize=4,
                        label=f"{o}-KL fit (mean, 95% CI)" if j == 0 else None)
    ax.set_xticks([0, 1], ["forward KL\n$E_p[\\log p - \\log q]$", "reverse KL\n$E_q[\\log q - \\log p]$"])
    ax.set_yscale("log")
    ax.set_ylabel("divergence (nats)")
    ax.set_title(f"divergences over {len(per_seed['forward'])} seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure(fig, "fig5_1_forward_vs_reverse_kl")


def _report(ctx, target, per_seed, summary, s) -> None:
    def cell(v):
        mean, lo, hi = v
        return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = ["| fit | forward KL (nats) | reverse KL (nats) | modes covered (of "
            f"{target.n_modes}) | mass per mode (seed {ctx.seed}) |", "|---|---|---|---|---|"]
    for o in OBJECTIVES:
        sm = summary[o]
        mass = ", ".join(f"{m:.2f}" for m in per_seed[o][0]["mode_mass"])
        rows.append(f"| {LABELS[o]} | {cell(sm['forward_kl'])} | {cell(sm['reverse_kl'])} | "
                    f"{cell(sm['modes_covered'])} | {mass} |")
    weights = ", ".join(f"{w:.2f}" for w in target.mode_weights().tolist())
    ctx.report(
        f"Target: mixture of {target.n_modes} Gaussians (std {target.std}, weights {weights}). Model per fit: "
        "ActNorm - i-ResNet block (2-16-2 LipSwish MLP, spectral coefficient 0.5) - ActNorm, exact log-det; Adam, "
        f"lr {s['lr']}, {s['steps']} steps of {s['batch']} samples (target samples for the forward KL, latents "
        f"for the reverse KL, implicit gradients through the inverse). Divergences: Monte Carlo over "
        f"{s['n_eval']} points, mean and 95% t-interval over {s['seeds']} seeds. A mode is covered when the fit "
        "puts at least half the mode's weight on it (model samples assigned to the nearest mode). The reverse KL "
        "of a fit that sits on mode k alone is about -log w_k.\n\n" + "\n".join(rows)
    )
