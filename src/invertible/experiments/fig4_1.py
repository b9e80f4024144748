"""Fig. 4.1: dynamics of a standard ResNet against an i-ResNet on a 2-D toy problem.

Both networks (same layout: residual blocks ``x + W_2 phi(W_1 x + b_1) + b_2`` on R^2 and a linear head) are
trained as classifiers of two concentric circles, for several seeds. The circles cannot be separated linearly
by a homeomorphism of the plane, so a network that separates them must fold it. The paths of test points
through the blocks, linearly interpolated in time, are checked for folds (crossing paths) and collapsing pairs
(:mod:`invertible.analysis.dynamics`); the i-ResNet has neither by Theorem 4.1 and Lemma 4.6.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from invertible.analysis.dynamics import bi_lipschitz_floor, path_events
from invertible.experiments.fig3_1 import two_circles
from invertible.experiments.registry import RunContext, register
from invertible.models.toy_resnet import VectorResidualClassifier, vector_residual_features
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.losses import FunctionObjective
from invertible.training.sources import FullBatchSource

THESIS = """\
Fig. 4.1 (qualitative): "Invertible ResNets describe a bijective continuous dynamic while regular ResNets result
in crossing and collapsing paths (circled in white) which correspond to non-bijective continuous dynamics. Due to
collapsing paths, standard ResNets are not a valid density model." Lemma 4.6: each i-ResNet block is
bi-Lipschitz, Lip(F) <= 1 + L, Lip(F^-1) <= 1 / (1 - L)."""

MODELS = {"ResNet": None, "i-ResNet": 0.9}
EPS = 0.01  # a pair "collapses" when its distance falls below EPS times its initial distance


def _train(coeff: float | None, x, y, *, steps: int, n_blocks: int, hidden: int, seed: int, show_progress: bool):
    torch.manual_seed(seed)
    model = VectorResidualClassifier(vector_residual_features(2, n_blocks, hidden, coeff), dim=2).double()
    loss = nn.CrossEntropyLoss()
    objective = FunctionObjective(lambda m, batch: loss(m(batch[0]), batch[1]))
    Trainer(model, objective, torch.optim.Adam(model.parameters(), lr=0.01), FullBatchSource((x, y), epoch_steps=steps),
            LoopConfig(steps=steps, log_every=steps), show_progress=show_progress,
            desc=f"fig4.1 {'ResNet' if coeff is None else 'i-ResNet'} seed {seed}").fit()
    model.eval()
    return model, float(objective.last_loss)


def settings(ctx: RunContext) -> dict[str, int]:
    """Workload settings (``ctx.scaled``): the full-batch training costs steps x points (powers 0.5, 0.25); the
    path checks an extra cost in the test paths (pairs: quadratic, power 0.25). The architecture (blocks, width)
    and the number of seeds keep their quick values in a budgeted run."""
    fixed = dict(seeds=3, n_blocks=4, hidden=32) if ctx.quick else dict(seeds=5, n_blocks=8, hidden=64)
    return dict(n_train=ctx.scaled("n_train", 400, 2000, power=0.25),
                n_paths=ctx.scaled("n_paths", 200, 500, power=0.25),
                steps=ctx.scaled("steps", 400, 2000, power=0.5), **fixed)


@register("fig4.1", title="Dynamics of a ResNet vs an i-ResNet on 2-D data: crossing and collapsing paths",
          thesis=THESIS)
def run(ctx: RunContext) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = settings(ctx)
    results: dict[str, list[dict]] = {name: [] for name in MODELS}
    drawn = {}
    for s in range(cfg["seeds"]):
        seed = ctx.seed + s
        x, y = two_circles(cfg["n_train"], factor=0.45, noise=0.05, generator=torch.Generator().manual_seed(seed))
        xt, yt = two_circles(cfg["n_paths"], factor=0.45, noise=0.05,
                             generator=torch.Generator().manual_seed(10_000 + seed))
        x, xt = x.double(), xt.double()
        for name, coeff in MODELS.items():
            model, train_loss = _train(coeff, x, y, steps=cfg["steps"], n_blocks=cfg["n_blocks"],
                                       hidden=cfg["hidden"], seed=seed, show_progress=ctx.show_progress)
            blocks = list(model.features)
            lips = [b.certify() for b in blocks]
            traj, ev = path_events(blocks, xt, EPS)
            with torch.no_grad():
                acc = float((model(xt).argmax(1) == yt).double().mean())
            rec = {"seed": seed, "train_loss": train_loss, "test_accuracy": acc, "fold_paths": ev.n_fold_paths,
                   "collapsing_pairs": ev.n_collapsing_pairs, "min_distance_ratio": ev.min_ratio,
                   "max_lipschitz": max(lips), "lemma_4_6_floor": bi_lipschitz_floor(lips)}
            results[name].append(rec)
            ctx.log({"model": name, **rec})
            if s == 0:
                drawn[name] = (traj, ev, yt)

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (name, (traj, ev, yt)) in zip(axes, drawn.items(), strict=True):
        tr = traj.numpy()
        for n in range(tr.shape[1]):
            ax.plot(tr[:, n, 0], tr[:, n, 1], "-", lw=0.5, alpha=0.6, color="tab:red" if yt[n] else "tab:blue")
        ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=4, c=["tab:red" if v else "tab:blue" for v in yt.tolist()])
        t_idx, n_idx = torch.nonzero(ev.folds, as_tuple=True)
        if len(n_idx):
            pts = tr[t_idx.numpy(), n_idx.numpy()]
            ax.scatter(pts[:, 0], pts[:, 1], s=60, facecolors="none", edgecolors="k", lw=0.8, label="fold (crossing)")
        if ev.n_collapsing_pairs:
            i = ev.pairs[:, 0].numpy()
            ax.scatter(tr[-1, i, 0], tr[-1, i, 1], s=90, marker="s", facecolors="none", edgecolors="tab:green",
                       lw=0.8, label=f"collapsing pair (< {EPS} x start distance)")
        ax.set_title(f"{name}: {ev.n_fold_paths} folding paths, {ev.n_collapsing_pairs} collapsing pairs")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_aspect("equal")
        if len(n_idx) or ev.n_collapsing_pairs:
            ax.legend(fontsize=7, loc="lower left")
    ctx.save_figure(fig, "fig4_1_dynamics")

    def summary(name: str, key: str) -> str:
        vals = [r[key] for r in results[name]]
        return ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in vals)

    rows = ["| model | test accuracy | folding paths | collapsing pairs | min distance ratio | max Lip(g_t) | "
            "Lemma 4.6 floor |", "|---|---|---|---|---|---|---|"]
    for name in MODELS:
        rows.append(f"| {name} | {summary(name, 'test_accuracy')} | {summary(name, 'fold_paths')} | "
                    f"{summary(name, 'collapsing_pairs')} | {summary(name, 'min_distance_ratio')} | "
                    f"{summary(name, 'max_lipschitz')} | {summary(name, 'lemma_4_6_floor')} |")
    ctx.report(
        f"Two concentric circles (radii 1 and 0.45, noise 0.05), {cfg['n_train']} training points; "
        f"{cfg['n_blocks']} residual blocks (2-{cfg['hidden']}-2 MLP, ELU) and a linear head, {cfg['steps']} "
        f"full-batch Adam steps; i-ResNet: spectral normalization c = {MODELS['i-ResNet']}. Paths of "
        f"{cfg['n_paths']} test points, linearly interpolated in time. A *fold* is a block whose interpolated map "
        "x + s g(x) has a vanishing Jacobian determinant on the path (a real eigenvalue of J_g <= -1: neighbouring "
        f"paths cross); a *collapsing pair* comes closer than {EPS} times its starting distance. One value per "
        f"seed ({cfg['seeds']} seeds):\n\n" + "\n".join(rows)
    )
    res, ires = results["ResNet"], results["i-ResNet"]
    res_events = [r["fold_paths"] + r["collapsing_pairs"] for r in res]
    ctx.claim("the standard ResNet has crossing or collapsing paths (every seed)", all(e > 0 for e in res_events),
              f"folding paths + collapsing pairs per seed: {res_events}", events=res_events)
    ctx.claim("the i-ResNet has no crossing or collapsing paths (Theorem 4.1, Lemma 4.6)",
              all(r["fold_paths"] == 0 and r["collapsing_pairs"] == 0 for r in ires),
              f"folding paths per seed {[r['fold_paths'] for r in ires]}, collapsing pairs "
              f"{[r['collapsing_pairs'] for r in ires]}; min distance ratio "
              f"{min(r['min_distance_ratio'] for r in ires):.3g} >= Lemma 4.6 floor "
              f"{min(r['lemma_4_6_floor'] for r in ires):.3g}")
    ctx.claim("the i-ResNet's path distances respect the Lemma 4.6 floor prod (1 - L_t)",
              all(r["min_distance_ratio"] >= r["lemma_4_6_floor"] for r in ires),
              "min distance ratio / floor per seed: "
              + ", ".join(f"{r['min_distance_ratio'] / max(r['lemma_4_6_floor'], 1e-300):.3g}" for r in ires))
    return {"eps": EPS, **cfg, "models": results,
            "resnet_mean_accuracy": statistics.mean(r["test_accuracy"] for r in res),
            "iresnet_mean_accuracy": statistics.mean(r["test_accuracy"] for r in ires)}
