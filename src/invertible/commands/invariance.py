"""``invertible spheres`` and ``invertible train-ice``: chapter 6 from the command line.

* ``invertible spheres --dim 500 --unused 10`` prints accuracy vs l2 budget for the perturbation and invariance
  attacks of Example 6.6 on both spheres (the table behind Fig. 6.3).
* ``invertible train-ice --data mnist --objective ice --epochs 10 --out runs/ice`` trains a fi-RevNet (or
  ``--backbone iresnet``) with CE or iCE (Definition 6.14, eq. 6.13) on shiftMNIST-style data, with a progress
  bar, the one run folder (config.json with data, model and recipe; metrics.jsonl per epoch; metrics.json with
  the test errors; figures/training_curves.png; report.md; the checkpoint) and ``--resume`` (refused, naming
  the keys, when any setting but ``--epochs`` differs); it prints the test errors on the in-distribution,
  shifted and clean test sets.
"""

from __future__ import annotations

import argparse
import json

from invertible.commands._options import (
    add_device,
    add_json,
    add_out,
    add_progress,
    add_resume,
    add_seed,
    data_name,
    float_list,
    float_pair,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)


def add_parser(sub) -> None:
    p = sub.add_parser("spheres", help="accuracy vs l2 budget of the two analytic attacks (Example 6.6)",
                       description="Adversarial spheres: perturbation vs invariance attacks, mis-aligned classifier.")
    p.add_argument("--dim", type=positive_int, default=500, help="dimension d (default 500)")
    p.add_argument("--unused", type=positive_int, default=10,
                   help="n >= 1, coordinates the classifier ignores (default 10; the invariance attack moves them)")
    p.add_argument("--radii", type=float_pair, default=(1.0, 1.3), metavar="R1,R2",
                   help="radii of the inner and outer sphere (default 1.0,1.3)")
    p.add_argument("--n-train", type=positive_int, default=2000, help="training points per sphere (sets the bias)")
    p.add_argument("--n-test", type=positive_int, default=1000, help="test points per sphere")
    p.add_argument("--budgets", type=float_list, default=[0.1 * i for i in range(13)],
                   help="l2 budgets, e.g. 0,0.1,0.2 (default 0,0.1,...,1.2)")
    add_seed(p)
    add_json(p, help="also write the curves to this JSON file")
    p.set_defaults(func=run_spheres)

    t = sub.add_parser("train-ice", help="train a fully invertible classifier with CE or iCE on shifted data",
                       description="Train a fi-RevNet / fi-i-ResNet with cross-entropy or independence cross-entropy.")
    t.add_argument("--data", type=data_name, default="mnist",
                   help="mnist, fashion-mnist, digits or an .npz / IDX folder")
    t.add_argument("--objective", choices=("ce", "ice"), default="ice")
    t.add_argument("--backbone", choices=("revnet", "iresnet"), default="revnet")
    t.add_argument("--epochs", type=positive_int, default=10)
    t.add_argument("--n-train", type=positive_int, default=8000)
    t.add_argument("--n-test", type=positive_int, default=2000)
    t.add_argument("--downsample", action="store_true", help="average-pool 28x28 images to 14x14")
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--lr", type=positive_float, default=1e-3)
    t.add_argument("--nuisance-steps", type=nonnegative_int, default=2)
    t.add_argument("--nuisance-hidden", type=nonnegative_int, default=0, help="0: linear nuisance classifier")
    t.add_argument("--nuisance-lr", type=positive_float, default=3e-3)
    t.add_argument("--nuisance-weight", type=nonnegative_float, default=1.0, help="weight of L_nCE (eq. 6.13)")
    t.add_argument("--mle-weight", type=nonnegative_float, default=1.0, help="weight of the MLE term (eq. 6.13)")
    t.add_argument("--form", choices=("minimax", "nonsaturating"), default="nonsaturating",
                   help="network's nuisance term: minimax = Definition 6.14 literally")
    add_seed(t)
    add_device(t)
    add_out(t, required=True)
    add_resume(t, help="continue from the run folder's checkpoint")
    add_progress(t)
    t.set_defaults(func=run_train)


def run_spheres(args: argparse.Namespace) -> int:
    import torch

    from invertible.invariance.spheres import (
        MisalignedSphereClassifier,
        accuracy_vs_budget,
        sample_sphere,
        sample_spheres,
    )

    if args.n_train < 1 or args.n_test < 1:
        raise ValueError("--n-train and --n-test must be >= 1")
    g = torch.Generator().manual_seed(args.seed)
    x, y = sample_spheres(args.n_train, args.dim, args.radii, generator=g, dtype=torch.float64)
    clf = MisalignedSphereClassifier.fit(x, y, args.unused)
    inner = sample_sphere(args.n_test, args.dim, args.radii[0], generator=g, dtype=torch.float64)
    outer = sample_sphere(args.n_test, args.dim, args.radii[1], generator=g, dtype=torch.float64)
    curves = accuracy_vs_budget(clf, inner, outer, args.budgets, args.radii)
    print(f"d={args.dim}, n={args.unused} unused, radii {args.radii[0]}/{args.radii[1]}: "
          f"l={clf.lower:.4f} u={clf.upper:.4f} b={clf.bias:.4f}")
    print(f"{'budget':>7} {'pert/inner':>10} {'pert/outer':>10} {'inv/inner':>10} {'inv/outer':>10}")
    for i, b in enumerate(args.budgets):
        vals = [curves[a][s][i] for a in ("perturbation", "invariance") for s in ("inner", "outer")]
        print(f"{b:7.3f} " + " ".join(f"{v:10.3f}" for v in vals))
    if args.json:
        from invertible.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"budgets": list(args.budgets), **curves}, indent=2))
    return 0


def run_train(args: argparse.Namespace) -> int:
    import torch

    from invertible.data.shifted import shift_images
    from invertible.data.splits import load_splits, to_float
    from invertible.invariance.plots import training_curves
    from invertible.invariance.training import ICEConfig, evaluate_error, train_ice
    from invertible.io import RunFolder, atomic_write_json
    from invertible.models.firevnet import fi_iresnet, fi_revnet
    from invertible.training.distributed import is_main

    splits = load_splits(args.data, n_train=args.n_train, n_test=args.n_test, downsample=args.downsample,
                         seed=args.seed)
    if (note := splits.shortfall(args.n_train, args.n_test)) is not None:
        print(note, flush=True)
    shape = splits.shape
    patch = 1 if shape[-1] <= 8 else 2
    n_squeeze = 2 if shape[1] % 4 == 0 and shape[1] >= 16 else 1
    build = fi_revnet if args.backbone == "revnet" else fi_iresnet
    torch.manual_seed(args.seed)
    model = build(shape, 10, n_squeeze=n_squeeze)
    device, dtype = torch.device(args.device), next(model.parameters()).dtype
    x_train = to_float(shift_images(splits.x_train, splits.y_train, "train", patch_size=patch)).to(device, dtype)
    config = ICEConfig(objective=args.objective, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         nuisance_lr=args.nuisance_lr, nuisance_weight=args.nuisance_weight,
                         mle_weight=args.mle_weight, nuisance_steps=args.nuisance_steps, form=args.form,
                         nuisance_hidden=args.nuisance_hidden, seed=args.seed)
    # everything that rebuilds the run: the model (builder + sizes), the data set and its shift, the recipe
    model_config = {"kind": "fi_revnet" if args.backbone == "revnet" else "fi_iresnet", "input_shape": list(shape),
                    "n_classes": 10, "n_squeeze": n_squeeze}
    data = {"name": str(args.data), "n_train": args.n_train, "n_test": args.n_test, "downsample": args.downsample,
            "split_seed": args.seed, "shift": "patch = label (train), random patch (shifted)", "patch_size": patch,
            "shape": list(shape), "n_train_used": len(splits.y_train)}
    res = train_ice(model, x_train, splits.y_train.to(device), config, run_dir=args.out, resume=args.resume,
                           show_progress=not args.no_progress, desc=f"train-ice {args.objective}",
                           model_config=model_config, meta={"data": data, "backbone": args.backbone})
    g = torch.Generator().manual_seed(args.seed + 2)
    errors = {}
    for mode in ("train", "shifted", "clean"):
        x = to_float(shift_images(splits.x_test, splits.y_test, mode, patch_size=patch, generator=g))
        errors[mode] = evaluate_error(model, x.to(device, dtype), splits.y_test.to(device))
    print(f"test error ({args.objective}, {splits.name} {shape[1]}x{shape[2]}): in-distribution {errors['train']:.3f}, "
          f"shifted {errors['shifted']:.3f}, clean {errors['clean']:.3f}")
    if not is_main():
        return 0
    run = RunFolder(args.out)
    last = res.history[-1] if res.history else {}
    run.write_summary({"objective": args.objective, "backbone": args.backbone, "data": splits.name,
                       "epochs": len(res.history), "test_error": errors, "final_epoch": last})
    atomic_write_json(run.path / "test_errors.json", errors)
    if res.history:
        run.save_figure(training_curves(res.history, f"{args.objective.upper()} on {splits.name} (fi-{args.backbone})"),
                        "training_curves")
    settings = [f"{k} = {v}" for k, v in vars(config).items()]
    table = ["| test set | error |", "|---|---|"] + [f"| {m} | {e:.3f} |" for m, e in errors.items()]
    run.report(f"train-ice: {args.objective.upper()}, fi-{args.backbone} on {splits.name}", {
        "Setting": [f"data {args.data}: {len(splits.y_train)} training / {len(splits.y_test)} test images "
                    f"{shape[1]}x{shape[2]}, the label planted as a {patch}x{patch} patch during training",
                    f"model fi-{args.backbone}, {n_squeeze} squeeze stage(s)", *settings],
        "Test error": "\n".join(table) + "\n\n'train': patch = label as in training; 'shifted': the patch at a "
                      "random position (the shortcut is gone); 'clean': no patch.",
        "Training (last epoch)": [f"{k} = {v:.4g}" for k, v in last.items() if k != "epoch"] or "no epochs run",
    })
    print(f"wrote {run.path}/ (config.json, metrics.jsonl, metrics.json, figures/, report.md, checkpoint)")
    return 0
