"""Training image classifiers (i-ResNet, its vanilla / BatchNorm twins, the pre-activation ResNet), Appendix A.1.

Recipe (A.1, scaled to the epoch budget): SGD with momentum 0.9 and weight decay 5e-4, learning rate 0.1
multiplied by 0.2 after 30 %, 60 % and 80 % of the steps (A.1: epochs 60, 120, 160 of 200), random shifts of up
to ``shift`` pixels (A.1: 2 for MNIST) and horizontal flips for colour images (CIFAR). Grayscale inputs are
scaled to [-0.5, 0.5]; colour inputs are standardized with the training set's channel mean and std.

A run folder holds ``config.json``, ``metrics.jsonl`` (one JSON line per epoch), ``checkpoint.safetensors``
(weights, momentum buffers, epoch and step; written atomically after every epoch) and ``report.md``.
The data order and augmentation of epoch ``e`` come from a generator seeded by ``(seed, e)``, so
``resume=True`` continues a killed run exactly: the result equals that of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invertible.lipschitz import converge_spectral_norms
from invertible.training.augment import random_flip, random_shift
from invertible.training.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from invertible.training.denormal import flush_denormals

__all__ = [
    "ClassifierConfig",
    "ClassificationData",
    "build_classifier",
    "load_classification_data",
    "learning_rate",
    "evaluate",
    "train_classifier",
    "load_classifier",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_KIND = "invertible.classifier"
ARCHS = ("iresnet", "resnet")


@dataclass
class ClassifierConfig:
    """Everything that determines a training run (saved as ``config.json``; ``--resume`` requires a match).

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


@dataclass
class ClassificationData:
    """Normalized float32 tensors ``x_* (N, C, H, W)``, int64 labels ``y_* (N,)``, and how inputs were scaled:
    ``x = (pixel / 255 - mean_c) / std_c``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list[float]
    std: list[float]
    n_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel intensities."""
        return denormalize(x, self.mean, self.std)


def denormalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Invert ``(pixel / 255 - mean) / std``: returns intensities in [0, 1] for ``(B, C, H, W)`` input."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x * s + m


def load_classification_data(
    data: str,
    root: str | None = None,
    *,
    train_subset: int | None = None,
    test_subset: int | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> ClassificationData:
    """Load an image data set and normalize it as in A.1.

    Data sets without a test split (digits, an MNIST ``.npz``) are split with a seeded permutation
    (``split_seed``, independent of the training seed so every model is scored on the same images).
    Raises ``FileNotFoundError`` with installation hints when the files are missing.
    """
    from invertible.data.images import load_images, train_test_split_indices

    images, labels = load_images(data, "train", root)
    has_split = data in ("fashion-mnist", "cifar10") or (Path(data).is_dir() and data not in ("digits", "mnist"))
    if data == "mnist" and root is not None and Path(root).is_dir():
        has_split = True
    if has_split:
        test_images, test_labels = load_images(data, "test", root)
    else:
        tr, te = train_test_split_indices(len(images), test_fraction, seed=split_seed)
        images, labels, test_images, test_labels = images[tr], labels[tr], images[te], labels[te]
    rng = np.random.default_rng(split_seed)
    if train_subset is not None and train_subset < len(images):
        keep = np.sort(rng.permutation(len(images))[:train_subset])
        images, labels = images[keep], labels[keep]
    if test_subset is not None and test_subset < len(test_images):
        keep = np.sort(rng.permutation(len(test_images))[:test_subset])
        test_images, test_labels = test_images[keep], test_labels[keep]
    x_train = torch.from_numpy(np.array(images, copy=True)).float() / 255.0
    x_test = torch.from_numpy(np.array(test_images, copy=True)).float() / 255.0
    if x_train.shape[1] == 1:  # grayscale: [-0.5, 0.5] (A.1)
        mean, std = [0.5], [1.0]
    else:  # colour: standardize with the training set's statistics (A.1)
        mean = x_train.mean(dim=(0, 2, 3)).tolist()
        std = x_train.std(dim=(0, 2, 3)).tolist()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    n_classes = int(max(labels.max(), test_labels.max())) + 1
    return ClassificationData(
        (x_train - m) / s, torch.from_numpy(labels), (x_test - m) / s, torch.from_numpy(test_labels),
        mean, std, n_classes, str(data),
    )


def build_classifier(arch: str, model: dict[str, Any]) -> nn.Module:
    """Instantiate ``"iresnet"`` (IResNetClassifier) or ``"resnet"`` (PreActResNet) from keyword arguments."""
    from invertible.models.iresnet import IResNetClassifier
    from invertible.models.resnet import PreActResNet

    if arch == "iresnet":
        return IResNetClassifier(**model)
    if arch == "resnet":
        return PreActResNet(**model)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def learning_rate(step: int, total_steps: int, lr: float, milestones=(0.3, 0.6, 0.8), gamma: float = 0.2) -> float:
    """Step schedule of A.1 on a step budget: ``lr * gamma ** #{m : step >= m * total_steps}``."""
    passed = sum(step >= math.ceil(m * total_steps) for m in milestones)
    return lr * gamma**passed


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    """``(mean cross-entropy, error in %)`` of ``model`` in eval mode; non-finite logits count as errors."""
    was_training = model.training
    model.eval()
    device, dtype = _device_of(model), _dtype_of(model)
    loss, wrong = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device=device, dtype=dtype)).float()
        target = y[i : i + batch_size].to(device)
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        ok = (logits.argmax(1) == target) & torch.isfinite(logits).all(1)
        wrong += int((~ok).sum())
    model.train(was_training)
    return loss / len(x), 100.0 * wrong / len(x)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _dtype_of(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.get_default_dtype()


def _resolve(cfg: ClassifierConfig, data: ClassificationData) -> ClassifierConfig:
    """Fill the data-dependent defaults (input shape, classes, shift, flip) so config.json is explicit."""
    model = dict(cfg.model)
    model.setdefault("input_shape", list(data.input_shape))
    model.setdefault("n_classes", data.n_classes)
    model["input_shape"] = list(model["input_shape"])
    if "blocks" in model:
        model["blocks"] = list(model["blocks"])
    # A.1 shifts 28x28 MNIST by up to 2 pixels; scale that to the image size (8x8 digits: no shift).
    shift = cfg.shift if cfg.shift is not None else (2 * min(data.input_shape[1:])) // 28
    flip = cfg.flip if cfg.flip is not None else data.input_shape[0] == 3
    return ClassifierConfig(**{**asdict(cfg), "model": model, "shift": shift, "flip": flip})


def _state_tensors(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}.momentum_buffer"] = buf
    return tensors


def _restore(model: nn.Module, opt: torch.optim.Optimizer | None, tensors: dict[str, torch.Tensor]) -> None:
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state)
    if opt is None:
        return
    params = opt.param_groups[0]["params"]
    for k, v in tensors.items():
        if k.startswith("optim."):
            i = int(k.split(".")[1])
            opt.state[params[i]]["momentum_buffer"] = v.to(params[i].device).clone()


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained classifier from a run folder or its ``checkpoint.safetensors``; returns
    ``(model in eval mode, meta)`` where ``meta`` holds ``config``, ``epoch``, ``metrics`` and the data scaling."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, meta = load_checkpoint(path, device="cpu")
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError(
            f"{path} is not a classifier checkpoint (kind {meta.get('kind')!r}, expected {CHECKPOINT_KIND!r})"
        )
    cfg = meta["config"]
    model = build_classifier(cfg["arch"], cfg["model"])
    _restore(model, None, tensors)
    return model.to(device).eval(), meta


def _append_metrics(path: Path, line: dict[str, Any], keep_until: int | None = None) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    if keep_until is not None:
        lines = [s for s in lines if s.strip() and json.loads(s).get("epoch", 0) <= keep_until]
    if line:
        lines.append(json.dumps(line))
    atomic_write_text(path, "".join(s + "\n" for s in lines))


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
    ``diverged`` and ``checkpoint``.

    Args:
        resume: continue from ``out/checkpoint.safetensors`` (an already finished run returns at once). Without
            it an existing checkpoint is an error, so no run is overwritten by accident.
        data: pre-loaded data (must match ``config``'s data settings); loaded from ``config`` when ``None``.

    On a CPU, subnormal floats are flushed to zero while training (:mod:`invertible.training.denormal`).
    """
    with flush_denormals(torch.device(config.device).type == "cpu"):
        return _train_classifier(config, out, resume=resume, progress=progress, data=data)


def _train_classifier(
    config: ClassifierConfig, out: str | Path, *, resume: bool, progress: bool, data: ClassificationData | None
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    config.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "classifier training does not support torchrun/DDP yet (every rank would write the same run folder); "
            "run it as a single process"
        )
    out = Path(out)
    ckpt_path = out / CHECKPOINT_NAME
    if data is None:
        data = load_classification_data(
            config.data, config.data_root, train_subset=config.train_subset, test_subset=config.test_subset,
            test_fraction=config.test_fraction,
        )
    cfg = _resolve(config, data)
    cfg_json = cfg.to_json()
    device = torch.device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg.arch, cfg.model).to(device)
        dtype = _dtype_of(model)  # the default dtype at construction (float64 in the tests)
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        start_epoch, step, last = 0, 0, {}
        if ckpt_path.exists():
            if not resume:
                raise ValueError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or another out")
            tensors, meta = load_checkpoint(ckpt_path, device="cpu")
            if meta.get("config") != cfg_json:
                diff = sorted(k for k in cfg_json if meta.get("config", {}).get(k) != cfg_json[k])
                raise ValueError(f"cannot resume {ckpt_path}: its config differs in {diff}")
            _restore(model, opt, tensors)
            start_epoch, step, last = int(meta["epoch"]), int(meta["step"]), meta.get("metrics", {})
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg_json, indent=2))
        metrics_path = out / "metrics.jsonl"
        _append_metrics(metrics_path, {}, keep_until=start_epoch)
        n = len(data.x_train)
        bs = min(cfg.batch_size, n)
        steps_per_epoch = n // bs  # drop the ragged last batch: BatchNorm needs more than one sample
        total_steps = steps_per_epoch * cfg.epochs
        if last.get("diverged"):
            start_epoch = cfg.epochs
        for epoch in range(start_epoch, cfg.epochs):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=gen)
            model.train()
            t0 = time.perf_counter()
            tot_loss, tot_ok, seen, diverged = 0.0, 0, 0, False
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                       leave=False)
            for i in bar:
                idx = perm[i * bs : (i + 1) * bs]
                xb = random_shift(data.x_train[idx], cfg.shift, gen)
                if cfg.flip:
                    xb = random_flip(xb, gen)
                xb, yb = xb.to(device=device, dtype=dtype), data.y_train[idx].to(device)
                lr = learning_rate(step, total_steps, cfg.lr, cfg.milestones, cfg.gamma)
                for group in opt.param_groups:
                    group["lr"] = lr
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if not torch.isfinite(loss):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                tot_loss += float(loss.detach()) * len(yb)
                tot_ok += int((logits.argmax(1) == yb).sum())
                seen += len(yb)
                bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_ok / seen:.3f}", lr=f"{lr:.3g}")
            bar.close()
            seconds = time.perf_counter() - t0
            if diverged:
                last = {**last, "epoch": epoch + 1, "diverged": True, "test_error": 100.0 * (1 - 1 / data.n_classes)}
                _append_metrics(metrics_path, last)
                break
            converge_spectral_norms(model)  # power-iteration vectors for this epoch's final weights (Remark 4.9)
            test_loss, test_error = evaluate(model, data.x_test, data.y_test)
            last = {
                "epoch": epoch + 1, "step": step, "lr": lr, "train_loss": tot_loss / max(seen, 1),
                "train_acc": tot_ok / max(seen, 1), "test_loss": test_loss, "test_error": test_error,
                "seconds": seconds, "diverged": False,
            }
            _append_metrics(metrics_path, last)
            meta = {
                "kind": CHECKPOINT_KIND, "version": 1, "config": cfg_json, "epoch": epoch + 1, "step": step,
                "metrics": last, "mean": data.mean, "std": data.std,
            }
            save_checkpoint(ckpt_path, _state_tensors(model, opt), meta)
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}/{cfg.epochs}: train loss {last['train_loss']:.4f}, acc "
                    f"{last['train_acc']:.4f}, test error {test_error:.2f} %, {seconds:.1f} s"
                )
    history = [json.loads(s) for s in metrics_path.read_text().splitlines() if s.strip()]
    times = [h["seconds"] for h in history if "seconds" in h and not h.get("diverged")]
    summary = {
        "test_error": last.get("test_error"),
        "test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "epochs": last.get("epoch", 0),
        "seconds_per_epoch": float(np.mean(times)) if times else None,
        "diverged": bool(last.get("diverged", False)),
        "checkpoint": str(ckpt_path),
    }
    _write_report(out, cfg, summary)
    return summary


def _write_report(out: Path, cfg: ClassifierConfig, summary: dict[str, Any]) -> None:
    model = cfg.model
    kind = cfg.arch if cfg.arch == "resnet" else (
        "vanilla i-ResNet twin" if model.get("coeff") is None else f"i-ResNet (c = {model.get('coeff')})"
    )
    spe = summary["seconds_per_epoch"]
    lines = [
        f"# Classifier run: {kind} on {cfg.data}",
        "",
        f"- epochs: {summary['epochs']} of {cfg.epochs}, batch {cfg.batch_size}, SGD lr {cfg.lr} (x{cfg.gamma} at "
        f"{', '.join(f'{m:.0%}' for m in cfg.milestones)}), momentum {cfg.momentum}, weight decay {cfg.weight_decay}",
        f"- augmentation: shifts up to {cfg.shift} px{', horizontal flips' if cfg.flip else ''}",
        f"- test error: {summary['test_error']:.2f} %" if summary["test_error"] is not None else "- test error: n/a",
        f"- seconds per epoch: {spe:.2f}" if spe is not None else "- seconds per epoch: n/a",
        f"- diverged: {summary['diverged']}",
        f"- checkpoint: `{CHECKPOINT_NAME}` (certify with `invertible certify {out / CHECKPOINT_NAME}`)",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
