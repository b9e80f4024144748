"""The classification recipe (Appendix A.1) on the engine: cross-entropy, SGD with momentum, step decay, shifts.

Objective: ``L(theta) = (1/B) sum_i -log softmax(f_theta(x_i))_{y_i}`` on a batch of ``B`` images
``x (B, C, H, W)`` with labels ``y (B,)``; the train accuracy ``(1/B) sum_i 1[argmax f(x_i) = y_i]`` is logged
beside it. Validation (every epoch, after the power iterations have converged, Remark 4.9) is the mean
cross-entropy and the error in % on the held-out set (:func:`~invertible.training.classifier.evaluate`).

Recipe (A.1, scaled to the epoch budget): SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.1
multiplied by ``gamma = 0.2`` after 30 %, 60 % and 80 % of the steps (A.1: epochs 60, 120, 160 of 200;
:func:`~invertible.training.optim.milestones`), random shifts of up to ``shift`` pixels (A.1: 2 for MNIST) and
horizontal flips for colour images (CIFAR). Epoch ``e`` draws its order and augmentation from
``Generator().manual_seed(seed * 1_000_003 + e)`` (a permutation, then shifts and flips batch after batch), so
``resume=True`` continues a killed run exactly. A non-finite loss ends the run (``diverged: True``, test error
at chance level).

The run folder (:class:`~invertible.io.RunFolder`) holds ``config.json`` (the complete config: the
:class:`ClassifierConfig` fields, ``model`` with its ``kind``, the data ``scaling``), ``metrics.jsonl`` (one
``train`` and one ``val`` record per epoch), ``checkpoint.safetensors``, ``metrics.json`` (the summary),
``figures/training_curves.png`` and ``report.md``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from invertible.io import CHECKPOINT_NAME, RunFolder
from invertible.training.augment import Augmentation
from invertible.training.classifier import (
    ARCHS,
    KINDS,
    ClassificationData,
    build_classifier,
    classifier_kind,
    evaluate,
    load_classification_data,
)
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.objective import Objective
from invertible.training.optim import make_optimizer, milestones
from invertible.training.sources import ShuffledSource

__all__ = [
    "ClassifierConfig",
    "CrossEntropyObjective",
    "classification_source",
    "classifier_trainer",
    "load_classifier",
    "train_classifier",
]

_RUN_KEYS = ("recipe", "scaling", "dtype", "loop", "world_size")  # config.json keys beside ClassifierConfig's


@dataclass
class ClassifierConfig:
    """Everything that determines a training run (part of ``config.json``; ``--resume`` requires a match).

    Attributes:
        data: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or a path (see
            :func:`invertible.data.images.load_images`).
        data_root: folder / file of the named data set (``None``: its default location).
        arch: ``"iresnet"`` (:class:`~invertible.models.iresnet.IResNetClassifier`, with ``coeff=None`` the
            vanilla twin) or ``"resnet"`` (:class:`~invertible.models.resnet.PreActResNet`).
        model: keyword arguments of the model (``input_shape`` and ``n_classes`` are filled in from the data).
        epochs, batch_size, lr, momentum, weight_decay: SGD settings (A.1: 200, 128, 0.1, 0.9, 5e-4).
        milestones, gamma: the learning rate is multiplied by ``gamma`` after each fraction of all steps.
        shift: maximal random shift in pixels (``None``: A.1's 2 pixels at 28x28 scaled to the image size,
            ``2 * min(H, W) // 28``: 2 for MNIST and CIFAR, 0 for 8x8 digits).
        flip: random horizontal flips (``None``: only for colour images).
        train_subset, test_subset: use a seeded random subset of this many images (``None``: all).
        test_fraction: held-out fraction for data sets without a test split (digits, the MNIST npz).
        seed: seeds initialization, data order and augmentation.
        device: ``"cpu"`` or ``"cuda"``.
        ema_decay: parameter EMA used for validation (``None``: off, as in A.1).
    """

    data: str = "digits"
    data_root: str | None = None
    arch: str = "iresnet"
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = 0.2
    shift: int | None = None
    flip: bool | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    ema_decay: float | None = None

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0 and 0 < self.gamma <= 1):
            raise ValueError(
                f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0, 0 < gamma <= 1; got lr={self.lr}, "
                f"momentum={self.momentum}, weight_decay={self.weight_decay}, gamma={self.gamma}"
            )
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the run in (0, 1), got {list(self.milestones)}")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def resolve(self, data: ClassificationData) -> ClassifierConfig:
        """Fill the data-dependent defaults (input shape, classes, shift, flip) so that config.json is explicit."""
        model = dict(self.model)
        model.setdefault("input_shape", list(data.input_shape))
        model.setdefault("n_classes", data.n_classes)
        model["input_shape"] = list(model["input_shape"])
        if "blocks" in model:
            model["blocks"] = list(model["blocks"])
        # A.1 shifts 28x28 MNIST by up to 2 pixels; scale that to the image size (8x8 digits: no shift).
        shift = self.shift if self.shift is not None else (2 * min(data.input_shape[1:])) // 28
        if not 0 <= shift < min(data.input_shape[1:]):
            raise ValueError(f"shift must lie in [0, {min(data.input_shape[1:])}) pixels for images of shape "
                             f"{tuple(data.input_shape)}, got {shift}")
        flip = self.flip if self.flip is not None else data.input_shape[0] == 3
        return ClassifierConfig(**{**asdict(self), "model": model, "shift": shift, "flip": flip})


class CrossEntropyObjective(Objective):
    """``(mean cross-entropy of model(x) (B, K) against y (B,), {"acc": train accuracy})``; validation on
    ``(x_test (N, C, H, W), y_test (N,))``: ``{"test_loss", "test_error" (%)}`` (``None`` without test data).

    ``last_loss`` keeps the latest batch loss as a device tensor (read it after training; no host sync)."""

    loss_name = "loss"

    def __init__(self, x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                 eval_batch: int = 500):
        self.x_test, self.y_test, self.eval_batch = x_test, y_test, int(eval_batch)
        self.last_loss: torch.Tensor | None = None

    def loss(self, model, batch, trainer):
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        self.last_loss = loss.detach()
        return loss, {"acc": (logits.detach().argmax(1) == y).to(torch.float64).mean()}

    def initialize(self, model, batch) -> None:
        """Under DDP every rank must start from the same data-dependent state (ActNorm's first-batch
        statistics): one forward in training mode, without gradients, on the common first batch. A single
        process skips it, so that its first step initializes on its own first batch as the classic loop did."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return
        was = model.training
        model.train()
        with torch.no_grad():
            model(batch[0])
        model.train(was)

    def validate(self, model) -> dict[str, Any] | None:
        if self.x_test is None or self.y_test is None:
            return None
        test_loss, test_error = evaluate(model, self.x_test, self.y_test, self.eval_batch)
        return {"test_loss": test_loss, "test_error": test_error}

    def progress_metrics(self, means: dict[str, float]) -> dict[str, float]:
        return {k: means[k] for k in ("loss", "acc") if k in means}


def classification_source(x: torch.Tensor, y: torch.Tensor, cfg: ClassifierConfig) -> ShuffledSource:
    """A.1's batches of a resolved config: epoch ``e`` from ``Generator().manual_seed(seed * 1_000_003 + e)``,
    batch ``min(batch_size, N)``, the ragged last batch dropped (BatchNorm needs more than one sample)."""
    seed = int(cfg.seed)
    return ShuffledSource((x, y), min(cfg.batch_size, len(x)),
                          lambda epoch: torch.Generator().manual_seed(seed * 1_000_003 + epoch),
                          augment=Augmentation(int(cfg.shift or 0), bool(cfg.flip)), drop_last=True)


def classifier_trainer(
    model: nn.Module,
    cfg: ClassifierConfig,
    data: ClassificationData,
    run: RunFolder | None = None,
    *,
    show_progress: bool = True,
) -> Trainer:
    """The engine set up for the A.1 recipe with a resolved ``cfg`` (:meth:`ClassifierConfig.resolve`): one
    ``train`` and one ``val`` record and a checkpoint per epoch; ``config.json`` as in the module docstring."""
    source = classification_source(data.x_train, data.y_train, cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    spe = source.steps_per_epoch(world)
    total = spe * cfg.epochs
    kind = classifier_kind(cfg.arch)
    p = next(model.parameters())
    config = {"recipe": "classification", **cfg.to_json(), "model": {"kind": kind, **cfg.model},
              "scaling": {"mean": list(data.mean), "std": list(data.std)},
              "dtype": str(p.dtype).replace("torch.", "")}
    optimizer = make_optimizer("sgd", model.parameters(), cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum)
    loop = LoopConfig(steps=total, log_every=spe, eval_every=spe, on_nonfinite="stop", ema_decay=cfg.ema_decay)
    return Trainer(model, CrossEntropyObjective(data.x_test, data.y_test), optimizer, source, loop, run,
                   schedule=milestones(cfg.lr, total, cfg.milestones, cfg.gamma), kind=kind, config=config,
                   resume_may_change=(), show_progress=show_progress, desc=f"train {cfg.arch}")


def train_classifier(
    config: ClassifierConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    data: ClassificationData | None = None,
) -> dict[str, Any]:
    """Train a classifier into the run folder ``out`` (see the module docstring) and return its summary:
    ``test_error`` (%), ``test_loss``, ``train_loss``, ``train_acc``, ``epochs``, ``seconds_per_epoch``,
    ``diverged`` and ``checkpoint``. Runs unchanged under ``torchrun`` (only rank 0 writes).

    Args:
        resume: continue from ``out/checkpoint.safetensors`` (an already finished run returns at once); a
            missing checkpoint is a ``FileNotFoundError``, a changed config a ``ValueError`` naming the keys.
            Without it an existing checkpoint is an error, so no run is overwritten by accident.
        data: pre-loaded data (must match ``config``'s data settings); loaded from ``config`` when ``None``.

    The model is built under ``torch.manual_seed(seed)`` inside a forked RNG, so the caller's global RNG is
    untouched.
    """
    from invertible.training.plots_classifier import plot_training_curves

    config.validate()
    if data is None:
        data = load_classification_data(
            config.data, config.data_root, train_subset=config.train_subset, test_subset=config.test_subset,
            test_fraction=config.test_fraction,
        )
    cfg = config.resolve(data)
    run = RunFolder(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg.arch, cfg.model).to(torch.device(cfg.device))
        trainer = classifier_trainer(model, cfg, data, run, show_progress=progress)
        result = trainer.fit(resume=resume)
    run = trainer.run
    summary = summarize(run.read_metrics(), bool(result.get("diverged")), data.n_classes, run.checkpoint_path)
    run.write_summary(summary)
    run.save_figure(plot_training_curves(run.read_metrics()), "training_curves")
    _write_report(run, cfg, summary)
    return summary


def summarize(records: list[dict[str, Any]], diverged: bool, n_classes: int, checkpoint: Path) -> dict[str, Any]:
    """The run's summary from its ``metrics.jsonl`` records (the last finite epoch's train numbers; a diverged
    run's test error is chance level, ``100 (1 - 1/K)`` %). A non-finite loss is stored as ``null``."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    finite = [r for r in train if isinstance(r.get("loss"), int | float) and math.isfinite(r["loss"])]
    last = finite[-1] if finite else {}
    return {
        "test_error": 100.0 * (1 - 1 / n_classes) if diverged else (val[-1]["test_error"] if val else None),
        "test_loss": val[-1]["test_loss"] if val else None,
        "train_loss": last.get("loss"),
        "train_acc": last.get("acc"),
        "epochs": len(train),
        "seconds_per_epoch": last["seconds"] / len(finite) if finite else None,
        "diverged": bool(diverged),
        "checkpoint": str(checkpoint),
    }


def _write_report(run: RunFolder, cfg: ClassifierConfig, summary: dict[str, Any]) -> None:
    model = cfg.model
    kind = cfg.arch if cfg.arch == "resnet" else (
        "vanilla i-ResNet twin" if model.get("coeff") is None else f"i-ResNet (c = {model.get('coeff')})"
    )
    spe = summary["seconds_per_epoch"]
    run.report(f"Classifier run: {kind} on {cfg.data}", {
        "Settings": [
            f"epochs: {summary['epochs']} of {cfg.epochs}, batch {cfg.batch_size}, SGD lr {cfg.lr} (x{cfg.gamma} at "
            f"{', '.join(f'{m:.0%}' for m in cfg.milestones)} of the steps), momentum {cfg.momentum}, weight decay "
            f"{cfg.weight_decay}, seed {cfg.seed}",
            f"augmentation: shifts up to {cfg.shift} px{', horizontal flips' if cfg.flip else ''}",
        ],
        "Result": [
            f"test error: {summary['test_error']:.2f} %" if summary["test_error"] is not None else "test error: n/a",
            f"seconds per epoch: {spe:.2f}" if spe is not None else "seconds per epoch: n/a",
            f"diverged: {summary['diverged']}",
            f"checkpoint: `{CHECKPOINT_NAME}` (certify with `invertible certify {run.path / CHECKPOINT_NAME}`)",
        ],
    })


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained classifier from a run folder or checkpoint (:func:`~invertible.training.runs.load_run`), in eval
    mode, and ``info``: ``config`` (the :class:`ClassifierConfig` fields; ``model`` without ``kind``),
    ``epoch``, ``metrics`` (``test_error``, ``test_loss``; ``diverged``), ``mean`` and ``std`` (the scaling).
    Checkpoints written before the engine (kind ``"invertible.classifier"``) load too."""
    from invertible.training.runs import load_run

    model, ck = load_run(path, device=device)
    if ck.kind == "invertible.classifier":  # before the engine: the old meta has it all
        meta = ck.meta
        return model, {"config": ck.config, "epoch": int(meta["epoch"]), "metrics": dict(meta.get("metrics", {})),
                       "mean": meta["mean"], "std": meta["std"], "kind": classifier_kind(ck.config["arch"])}
    if ck.kind not in KINDS.values():
        raise ValueError(f"{ck.path} is not a classifier checkpoint (kind {ck.kind!r}, expected one of "
                         f"{sorted(KINDS.values())})")
    cfg = {k: v for k, v in ck.config.items() if k not in _RUN_KEYS}
    cfg["model"] = {k: v for k, v in cfg["model"].items() if k != "kind"}
    metrics = dict(ck.meta.get("last_val") or {})
    if ck.meta.get("diverged"):
        metrics.update(diverged=True, test_error=100.0 * (1 - 1 / int(cfg["model"]["n_classes"])))
    epoch = int(ck.meta["step"]) // int(ck.config["loop"]["log_every"])
    return model, {"config": cfg, "epoch": epoch, "metrics": metrics, "mean": ck.config["scaling"]["mean"],
                   "std": ck.config["scaling"]["std"], "kind": ck.kind}
