"""Fig. 6.5: metameric interpolations for a CE-trained and an iCE-trained fi-RevNet (Definition 6.8).

Two fi-RevNets with the simplified read-out of Definition 6.7 are trained on clean MNIST-10k (14x14 in quick mode;
8x8 digits when the npz is absent), one with cross-entropy and one with the independence cross-entropy of
Definition 6.14 / eq. 6.13. For source/target pairs of different classes we decode
``x(t) = F^{-1}(z_s(source), (1 - t) z_n(source) + t z_n(target))`` and check that the logits stay those of the
source (to 1e-4). An independent "oracle" (multinomial logistic regression on the clean training pixels) then
says which class the metameric samples ``x(1)`` look like: the target's class means an invariance-based
adversarial example (Definition 6.3), the source's class means the nuisance really is nuisance.
"""

from __future__ import annotations

import torch

from invertible.data.splits import load_splits, quick_dataset, to_float
from invertible.experiments.registry import RunContext, register
from invertible.experiments.shiftmnist import ce_config, ice_config, make_model, model_config
from invertible.invariance.metameric import logit_deviation, nuisance_interpolation
from invertible.invariance.training import evaluate_error, train_ice
from invertible.threads import single_intraop_thread

THESIS = """\
Fig. 6.5 (qualitative): "When training with cross-entropy, virtually any image can be turned into any class without
changing the logits z_s, illustrating strong vulnerability to invariance-based adversaries. Yet, training with
independence cross-entropy solves the problem and interpolations between nuisances z_n and z*_n preserve the
semantic content of the image." Metameric samples share the source's logits exactly (up to the inverse's error)."""

STEPS = 7


def _pairs(y: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (source, target) index pairs with different labels."""
    src = torch.randperm(len(y), generator=generator)[:n]
    tgt = torch.randperm(len(y), generator=generator)[:n]
    same = y[src] == y[tgt]
    tgt[same] = torch.roll(tgt, 1)[same]
    keep = y[src] != y[tgt]
    return src[keep], tgt[keep]


@register("fig6.5", title="Metameric interpolations: CE vs iCE fi-RevNet", thesis=THESIS)
def run(ctx: RunContext) -> dict:
    with single_intraop_thread():
        return _run(ctx)


def _run(ctx: RunContext) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.linear_model import LogisticRegression

    if ctx.quick:
        name, n_train, epochs, downsample = quick_dataset(), 3000, 3, True
    else:
        name, n_train, epochs, downsample = "mnist", 8000, 30, False
    splits = load_splits(name, n_train=n_train, n_test=1000, downsample=downsample, seed=ctx.seed)
    x_train, x_test = to_float(splits.x_train), to_float(splits.x_test)
    oracle = LogisticRegression(max_iter=300, C=0.5).fit(x_train.flatten(1).numpy(), splits.y_train.numpy())
    oracle_err = 1 - oracle.score(x_test.flatten(1).numpy(), splits.y_test.numpy())
    dev = torch.device(ctx.device)
    x_train, x_test, y_train, y_test = x_train.to(dev), x_test.to(dev), splits.y_train.to(dev), splits.y_test.to(dev)

    src, tgt = _pairs(splits.y_test, 300, ctx.generator(3))
    shown = 5
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.5))
    metrics: dict = {"dataset": name, "oracle_test_error": oracle_err}
    rows = ["| model | test error | max logit deviation | oracle says source class | oracle says target class |",
            "|---|---|---|---|---|"]
    for ax, objective, config in zip(
        axes, ("ce", "ice"), (ce_config(epochs, ctx.seed), ice_config(epochs, ctx.seed)), strict=True
    ):
        torch.manual_seed(ctx.seed)
        model = make_model(splits.shape)
        train_ice(model, x_train, y_train, config, run_dir=ctx.out / f"{name}_{objective}",
                         show_progress=ctx.show_progress, desc=f"fig6.5 {objective}",
                         model_config=model_config(splits.shape))
        model.eval()
        xs, xt = x_test[src], x_test[tgt]
        with torch.no_grad():
            logits = model.logits(xs)
        path = nuisance_interpolation(model, xs, xt, steps=STEPS)  # (STEPS, B, 1, H, W)
        dev = logit_deviation(model, path, logits)
        met = path[-1].clamp(0, 1).flatten(1).cpu().numpy()
        said = torch.from_numpy(oracle.predict(met))
        to_source = float((said == splits.y_test[src]).double().mean())
        to_target = float((said == splits.y_test[tgt]).double().mean())
        err = evaluate_error(model, x_test, y_test)
        metrics[objective] = {"test_error": err, "max_logit_deviation": dev, "oracle_source": to_source,
                              "oracle_target": to_target, "pairs": len(src)}
        rows.append(f"| {objective.upper()} | {err:.3f} | {dev:.2e} | {to_source:.3f} | {to_target:.3f} |")

        # grid: columns = pairs, rows = t = 0 .. 1, then the target image
        imgs = torch.cat([path[:, :shown], xt[None, :shown]]).clamp(0, 1)[:, :, 0].cpu()  # (STEPS+1, shown, H, W)
        h, w = imgs.shape[-2:]
        pad = torch.ones(STEPS + 1, shown, h + 2, w + 2)
        pad[:, :, 1:-1, 1:-1] = imgs
        pad[-1, :, 0, :] = 0.5  # separator above the target row
        grid = pad.permute(0, 2, 1, 3).reshape((STEPS + 1) * (h + 2), shown * (w + 2))
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        labels = ", ".join(f"{int(a)}->{int(b)}" for a, b in zip(splits.y_test[src[:shown]], splits.y_test[tgt[:shown]],
                                                               strict=True))
        ax.set_title(f"{objective.upper()}: rows t=0..1, last row = target\n(source->target classes: {labels})\n"
                     f"oracle on x(1): source {to_source:.0%}, target {to_target:.0%}")
        ax.axis("off")
    ctx.save_figure(fig, "fig6_5_metameric")
    table = "\n".join(rows)
    print(table)
    ok = all(metrics[o]["max_logit_deviation"] < 1e-4 for o in ("ce", "ice"))
    metrics["logits_kept_to_1e-4"] = ok
    ctx.report(
        f"{len(src)} source/target pairs of different classes from the {name} test set "
        f"({splits.shape[1]}x{splits.shape[2]}); metameric samples x(1) = F^-1(z_s(source), z_n(target)) judged by a "
        f"logistic-regression oracle (test error {oracle_err:.3f}).\n\n{table}\n\n"
        f"Logits of every interpolated sample equal the source's to 1e-4: {'yes' if ok else 'NO'}."
    )
    return metrics
