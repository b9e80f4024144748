"""``invertible train-conditional``: a conditional residual flow ``p(x | c)`` on a 2-D conditional data set.

    invertible train-conditional --data rotated-8gaussians --out runs/c     # p(x | angle)
    invertible train-conditional --data two-moons-sbi --out runs/sbi        # posterior p(theta | y)

Writes the run folder (config.json, metrics.jsonl, checkpoint.safetensors, metrics.json, report.md with the test
NLL next to the true density's and the certificate for a fixed context, figures/samples.png); ``--resume``
continues a killed run exactly. ``load_run(OUT)`` rebuilds the model.
"""

from __future__ import annotations

import argparse
import math

from invertible.commands._options import (
    add_out,
    add_progress,
    add_resume,
    add_seed,
    add_threads,
    at_least_two,
    positive_float,
    positive_int,
    positive_int_list,
)


def add_parser(sub) -> None:
    from invertible.data.conditional2d import CONDITIONAL_DATASETS

    p = sub.add_parser("train-conditional", help="train a conditional residual flow p(x | c) on 2-D data",
                       description="Maximum likelihood of a conditional residual flow (contractive in x for every "
                       "context) on a conditional 2-D data set; exact test NLL against the true density.")
    p.add_argument("--data", choices=CONDITIONAL_DATASETS, required=True)
    add_out(p, required=True)
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--blocks", type=positive_int, default=4, help="conditional residual blocks")
    p.add_argument("--hidden", type=positive_int_list, default=[64, 64], help="x-path hidden widths, e.g. 64,64")
    p.add_argument("--embed-hidden", type=positive_int_list, default=[64], help="context embedding hidden widths")
    p.add_argument("--coeff", type=float, default=0.9, help="spectral-norm bound c in (0, 1)")
    p.add_argument("--n-test", type=at_least_two, default=5000, help="test pairs (>= 2, for a standard error)")
    p.add_argument("--eval-every", type=positive_int, default=None, help="validate every N steps (default: each epoch)")
    add_seed(p)
    add_threads(p)
    add_resume(p, help="continue from OUT/checkpoint.safetensors")
    add_progress(p)
    p.set_defaults(func=train_conditional)


def train_conditional(args: argparse.Namespace) -> int:
    import torch

    from invertible.data.conditional2d import conditional_context_dim, conditional_log_prob, sample_conditional
    from invertible.io import RunFolder
    from invertible.models.certify import certify_conditional
    from invertible.models.conditional import conditional_residual_flow
    from invertible.training.conditional import conditional_density_trainer
    from invertible.training.density import DensityConfig
    from invertible.training.sources import SamplerSource

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = conditional_residual_flow(2, conditional_context_dim(args.data), n_blocks=args.blocks,
                                      hidden=args.hidden, embed_hidden=args.embed_hidden, coeff=args.coeff)
    test = sample_conditional(args.data, args.n_test, torch.Generator().manual_seed(10_000 + args.seed))
    source = SamplerSource(lambda n, g: sample_conditional(args.data, n, g), args.batch_size, seed=args.seed)
    cfg = DensityConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                        eval_samples=args.n_test, seed=args.seed)
    run = RunFolder(args.out)
    trainer = conditional_density_trainer(model, source, cfg, run, val=test, show_progress=not args.no_progress,
                                          meta={"data": {"name": args.data, "n_test": args.n_test}})
    result = trainer.fit(resume=args.resume)
    val = result.get("val") or {}
    true_nll = float(-conditional_log_prob(args.data, test[0].double(), test[1].double()).mean())
    context = test[1][0]
    cert = certify_conditional(model, context, test[0][:512])
    lines = [f"test NLL {val.get('nll', math.nan):.4f} +- {val.get('se', math.nan):.4f} nats "
             f"({val.get('estimator')}, {val.get('n')} pairs)",
             f"true density on the same pairs: {true_nll:.4f} nats"]
    print("\n".join(lines), flush=True)
    _plot(model, args.data, run)
    run.write_summary({"steps": trainer.step, "train_seconds": trainer.seconds, "val": val, "true_nll": true_nll,
                       "certificate": cert.to_dict()})
    n_params = sum(p.numel() for p in model.parameters())
    run.report(f"train-conditional: {args.data}", {
        "Run": [f"model: conditional_resflow, {n_params} parameters, {args.blocks} blocks",
                f"steps: {trainer.step}, batch {args.batch_size}, adam lr {args.lr}, {trainer.seconds:.1f} s"],
        "Result": "  \n".join(lines),
        "Certificate": f"for the context c = {[round(float(v), 4) for v in context]}\n\n```\n{cert.format()}\n```",
    })
    print(f"run folder: {args.out}")
    return 0


def _plot(model, data: str, run) -> None:
    """Samples of ``p(. | c)`` for four contexts of the data set, beside the true conditional samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from invertible.data.conditional2d import sample_conditional, sample_given_context

    _, contexts = sample_conditional(data, 4, torch.Generator().manual_seed(7))
    fig, axes = plt.subplots(2, 4, figsize=(12, 6), squeeze=False)
    for j, c in enumerate(contexts):
        ours = model.sample(1000, c, generator=torch.Generator().manual_seed(j)).numpy()
        true = sample_given_context(data, c, 1000, torch.Generator().manual_seed(100 + j)).numpy()
        for i, (pts, name) in enumerate(((true, "true"), (ours, "model"))):
            ax = axes[i][j]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
            ax.set_title(f"{name}, c = ({float(c[0]):.2f}, {float(c[1]):.2f})", fontsize=8)
            ax.set_aspect("equal")
    fig.tight_layout()
    run.save_figure(fig, "samples")
    plt.close(fig)
