"""Image classifiers' data and models (i-ResNet, its vanilla / BatchNorm twins, the pre-activation ResNet), A.1.

Data as in Appendix A.1: grayscale inputs are scaled to [-0.5, 0.5]; colour inputs are standardized with the
training set's channel mean and std. :func:`build_classifier` makes a model from its keyword arguments and
:func:`evaluate` scores it on held-out data. The training recipe is :mod:`invertible.training.classification`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "ClassificationData",
    "build_classifier",
    "classifier_kind",
    "denormalize",
    "evaluate",
    "load_classification_data",
]

ARCHS = ("iresnet", "resnet")
KINDS = {"iresnet": "iresnet_classifier", "resnet": "preact_resnet"}  # arch -> the checkpoint's model kind


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


def classifier_kind(arch: str) -> str:
    """The checkpoint ``kind`` of an architecture: ``"iresnet_classifier"`` or ``"preact_resnet"``."""
    if arch not in KINDS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return KINDS[arch]


def build_classifier(arch: str, model: dict[str, Any]) -> nn.Module:
    """Instantiate ``"iresnet"`` (IResNetClassifier) or ``"resnet"`` (PreActResNet) from keyword arguments,
    through the model registry: the keywords become the kind's typed config, so an unknown or mistyped keyword
    is a ``ValueError`` naming it, and the model carries ``kind`` and ``config`` for its checkpoint."""
    from invertible.models.registry import build_model

    return build_model(classifier_kind(arch), model)


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
