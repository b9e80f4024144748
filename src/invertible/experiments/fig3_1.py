"""Fig. 3.1: prediction, preimage classes and condition of the first layer of a 2-3-2 ReLU MLP (two circles).

A network with one hidden ReLU layer of three neurons is trained to separate two noisy concentric circles.
Over a grid of the plane we show (left) its prediction, (middle) the Theorem 3.3 class of the preimage of
the first-layer activation ``ReLU(W_1 x + b_1)`` - unbounded, compact or a single point - and (right) the
condition number of the layer's linearization ``D_I W_1`` (non-zero singular values only; 0 for the zero
map, 1 when one direction survives). The model is saved as ``toy_mlp.safetensors`` (with ``points.npy``)
so that ``invertible analyze-relu`` can be run on it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from invertible.analysis import condition_numbers, preimage_classes
from invertible.experiments.registry import RunContext, register
from invertible.io import save_checkpoint
from invertible.models.relu_nets import ToyMLP, relu_net_config
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.losses import FunctionObjective
from invertible.training.sources import FullBatchSource

CLASSES = ("unbounded", "compact", "singleton")
AGREE = 0.999  # grid points within rounding of a ReLU hyperplane may fall on either side

THESIS = """\
Fig. 3.1 (qualitative, no numbers): a ReLU network with one hidden layer of 3 neurons trained on two circles.
The plane splits into convex polytopes on which the network is affine. The preimage of the first-layer
activation is *unbounded* (infinite volume), *compact* (finite volume) or a *single point*, and "the regions
with infinite/finite preimages correspond to regions with condition number of one or zero, while singleton
preimages link to condition numbers larger than one"."""


def two_circles(n: int, *, factor: float, noise: float, generator: torch.Generator):
    """``n`` points on two concentric circles (radii 1 and ``factor``) plus Gaussian noise; label 1 inside."""
    y = torch.arange(n) % 2
    angle = 2 * torch.pi * torch.rand(n, generator=generator)
    radius = torch.where(y == 1, torch.tensor(factor), torch.tensor(1.0))
    x = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    return x + noise * torch.randn(n, 2, generator=generator), y


def _train(x, y, *, steps: int, restarts: int, generator: torch.Generator,
           show_progress: bool) -> tuple[ToyMLP, float]:
    """Train ``restarts`` independent 2-3-2 MLPs at once (batched parameters, full-batch Adam) and return
    the one with the lowest final training loss: three ReLUs only just suffice for two circles, so single
    runs often end with a dead unit."""
    R = restarts
    W1 = (torch.randn(R, 3, 2, generator=generator) * 0.7).requires_grad_()
    b1 = (torch.randn(R, 3, generator=generator) * 0.1).requires_grad_()
    W2 = (torch.randn(R, 2, 3, generator=generator) * 0.7).requires_grad_()
    b2 = torch.zeros(R, 2).requires_grad_()
    params = nn.ParameterDict({"W1": W1, "b1": b1, "W2": W2, "b2": b2})

    def losses(p: nn.ParameterDict, batch) -> torch.Tensor:
        x, y = batch
        h = torch.relu(torch.einsum("nd,rhd->rnh", x, p["W1"]) + p["b1"][:, None])
        logits = torch.einsum("rnh,rch->rnc", h, p["W2"]) + p["b2"][:, None]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(R), reduction="none").view(R, -1)

    # full-batch Adam on the sum of the restarts' mean losses, run by the engine (no run folder)
    Trainer(params, FunctionObjective(lambda p, batch: losses(p, batch).mean(1).sum()),
            torch.optim.Adam(params.parameters(), lr=0.05), FullBatchSource((x, y), epoch_steps=steps),
            LoopConfig(steps=steps, log_every=steps, on_nonfinite="stop"), show_progress=show_progress,
            desc="fig3.1 train").fit()
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    with torch.no_grad():
        final = losses(params, (x, y)).mean(1)
    r = int(final.argmin())
    net = ToyMLP()
    with torch.no_grad():
        net[0].weight.copy_(W1[r])
        net[0].bias.copy_(b1[r])
        net[2].weight.copy_(W2[r])
        net[2].bias.copy_(b2[r])
    return net, float(final[r])


def settings(ctx: RunContext) -> dict[str, int]:
    """Workload settings (``ctx.scaled``). The full-batch training costs restarts x steps x points (powers 0.3,
    0.4, 0.3); the preimage grid is an extra cost quadratic in its side (power 0.25)."""
    return dict(n=ctx.scaled("n", 600, 2000, power=0.3), steps=ctx.scaled("steps", 400, 1500, power=0.4),
                restarts=ctx.scaled("restarts", 16, 32, power=0.3), grid=ctx.scaled("grid", 150, 400, power=0.25))


@register("fig3.1", title="Preimages and condition of a 2-D ReLU layer (two circles)", thesis=THESIS)
def run(ctx: RunContext) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cfg = settings(ctx)
    gen = ctx.generator()
    x, y = two_circles(cfg["n"], factor=0.45, noise=0.06, generator=gen)
    x_test, y_test = two_circles(1000, factor=0.45, noise=0.06, generator=ctx.generator(1))
    net, loss = _train(x, y, steps=cfg["steps"], restarts=cfg["restarts"], generator=gen,
                       show_progress=ctx.show_progress)
    net.eval()
    with torch.no_grad():
        acc = float((net(x_test).argmax(1) == y_test).double().mean())
    save_checkpoint(ctx.out / "toy_mlp.safetensors", {f"model.{k}": v for k, v in net.state_dict().items()},
                    kind="relu_net", config={"model": relu_net_config(net), "experiment": "fig3.1"},
                    meta={"test_accuracy": acc})
    np.save(ctx.out / "points.npy", x_test[:200].numpy())

    G = cfg["grid"]
    lim = 1.6
    ticks = torch.linspace(-lim, lim, G, dtype=torch.float64)
    gx, gy = torch.meshgrid(ticks, ticks, indexing="xy")
    X = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    W = net[0].weight.detach().double()
    b = net[0].bias.detach().double()
    with torch.no_grad():
        prob = torch.softmax(net.double()(X), dim=1)[:, 1]
    kinds = preimage_classes(W.numpy(), b.numpy(), X.numpy())
    code = np.array([CLASSES.index(k) for k in kinds]).reshape(G, G)
    active = (X @ W.T + b > 0).double()
    n_nz, cond = condition_numbers(torch.linalg.svdvals(active[:, :, None] * W))
    cond = cond.reshape(G, G).numpy()
    n_nz = n_nz.reshape(G, G).numpy()

    fractions = {k: float((code == i).mean()) for i, k in enumerate(CLASSES)}
    singleton = code == CLASSES.index("singleton")
    agree = float(((singleton & (cond > 1)) | (~singleton & (cond <= 1))).mean())
    n_regions = len({tuple(r) for r in active.long().tolist()})

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    ext = (-lim, lim, -lim, lim)
    im0 = axes[0].imshow(prob.reshape(G, G).numpy(), origin="lower", extent=ext, cmap="coolwarm", vmin=0, vmax=1)
    sub = x_test[:300]
    axes[0].scatter(sub[:, 0], sub[:, 1], c=y_test[:300], cmap="coolwarm", s=6, edgecolors="k", linewidths=0.2)
    axes[0].set_title(f"two circles: prediction (test acc. {acc:.1%})")
    fig.colorbar(im0, ax=axes[0], fraction=0.046, label="p(inner circle | x)")
    cmap = ListedColormap(["#d9d9d9", "#6baed6", "#de2d26"])
    axes[1].imshow(code, origin="lower", extent=ext, cmap=cmap, vmin=-0.5, vmax=2.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(3)]
    axes[1].legend(handles, ["unbounded (infinite)", "compact (finite)", "singleton"], loc="lower left",
                   fontsize=8, framealpha=0.9)
    axes[1].set_title("preimage of first-layer activation (Thm. 3.3)")
    im2 = axes[2].imshow(cond, origin="lower", extent=ext, cmap="viridis")
    axes[2].set_title("condition number of $D_I W_1$ (non-zero part)")
    fig.colorbar(im2, ax=axes[2], fraction=0.046, label="condition number (dimensionless)")
    t = np.linspace(-lim, lim, 2)
    for ax in axes:
        for (w1, w2), bi in zip(W.numpy(), b.numpy(), strict=True):  # the three ReLU hyperplanes
            if abs(w2) > abs(w1):
                ax.plot(t, -(bi + w1 * t) / w2, "k--", lw=0.8)
            else:
                ax.plot(-(bi + w2 * t) / w1, t, "k--", lw=0.8)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    ctx.save_figure(fig, "fig3_1")

    cond_by_class = {k: sorted({round(float(v), 3) for v in np.unique(cond[code == i])})[:6]
                     for i, k in enumerate(CLASSES) if (code == i).any()}
    rows = "\n".join(f"| {k} | {fractions[k]:.3f} | {', '.join(map(str, cond_by_class.get(k, [])))} |"
                     for k in CLASSES)
    ctx.report(
        f"2-3-2 ReLU MLP, {cfg['n']} training points, best of {cfg['restarts']} full-batch Adam runs of "
        f"{cfg['steps']} steps (train loss {loss:.3f}, test accuracy {acc:.1%}). Grid {G}x{G} on [-{lim}, {lim}]^2, "
        f"{n_regions} activation regions of the first layer.\n\n"
        "| preimage class | fraction of grid | condition numbers seen (first 6) |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Singleton <=> condition number > 1 holds on {agree:.1%} of the grid (thesis: infinite/finite "
        "preimages go with condition 0 or 1, singletons with condition > 1). Checkpoint: `toy_mlp.safetensors`; "
        "try `invertible analyze-relu toy_mlp.safetensors --data points.npy`."
    )
    ctx.claim(
        "singleton preimages go with condition number > 1, unbounded and compact ones with condition 0 or 1",
        agree >= AGREE,
        f"the two partitions of the {G}x{G} grid agree on {agree:.2%} of its points (condition numbers seen: "
        + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in cond_by_class.items()) + ")",
        agreement=agree,
    )
    present = [k for k in CLASSES if fractions[k] > 0]
    ctx.claim(
        "all three preimage classes of Theorem 3.3 (unbounded, compact, singleton) occur in the plane",
        len(present) == len(CLASSES),
        ", ".join(f"{k} {fractions[k]:.1%}" for k in CLASSES) + f" of the grid; {n_regions} activation regions, "
        f"test accuracy {acc:.1%}",
    )
    return {
        "test_accuracy": acc,
        "train_loss": loss,
        "grid": G,
        "n_regions": n_regions,
        **{f"frac_{k}": v for k, v in fractions.items()},
        "singleton_iff_condition_gt_1": agree,
        "frac_rank": {str(r): float((n_nz == r).mean()) for r in range(3)},
    }
