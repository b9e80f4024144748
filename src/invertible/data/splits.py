"""Seeded train/test subsets of the grey image sets as uint8 tensors (the chapter-6 experiments' inputs).

``load_splits("mnist", n_train=4000, n_test=2000, downsample=True, seed=0)`` draws random subsets of a
training and a test split; ``to_float`` maps uint8 pixels to ``[0, 1]``. MNIST-10k and scikit-learn's digits
have no official split: 20% are held out at random (seeded, :func:`train_test_split_indices`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from invertible.data.images import load_images, train_test_split_indices

__all__ = ["ImageSplits", "load_splits", "quick_dataset", "to_float"]


@dataclass
class ImageSplits:
    """uint8 images ``(N, 1, H, W)`` and int64 labels for training and test, plus the source's name."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def shortfall(self, n_train: int, n_test: int) -> str | None:
        """A one-line notice when the splits hold fewer images than asked for (``load_splits`` takes at most
        what a split has), else ``None``."""
        have = (len(self.x_train), len(self.x_test))
        if have[0] >= n_train and have[1] >= n_test:
            return None
        return (f"{self.name} holds {have[0]} training / {have[1]} test images in this split: using "
                f"{min(have[0], n_train)} / {min(have[1], n_test)} (asked for {n_train} / {n_test})")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def load_splits(dataset: str, *, n_train: int, n_test: int, downsample: bool, seed: int) -> ImageSplits:
    """Random train/test subsets of ``dataset`` ("mnist", "fashion-mnist" or "digits"), optionally average-pooled
    2x2 (28x28 -> 14x14). MNIST-10k has no split: 20% are held out at random (seeded)."""
    rng = np.random.default_rng(seed)
    if dataset == "fashion-mnist":
        xa, ya = load_images(dataset, "train")
        xb, yb = load_images(dataset, "test")
        tr, te = rng.permutation(len(xa))[:n_train], rng.permutation(len(xb))[:n_test]
        x_train, y_train, x_test, y_test = xa[tr], ya[tr], xb[te], yb[te]
    else:
        images, labels = load_images(dataset)
        tr, te = train_test_split_indices(len(images), 0.2, seed=seed)
        tr, te = rng.permutation(tr)[:n_train], rng.permutation(te)[:n_test]
        x_train, y_train, x_test, y_test = images[tr], labels[tr], images[te], labels[te]
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, y_train, x_test, y_test)]
    if downsample and tensors[0].shape[-1] % 2 == 0 and tensors[0].shape[-1] > 8:
        for i in (0, 2):
            tensors[i] = F.avg_pool2d(tensors[i].float(), 2).round().to(torch.uint8)
    return ImageSplits(dataset, *tensors)


def quick_dataset() -> str:
    """MNIST-10k when its npz is present, else scikit-learn's digits (always available)."""
    try:
        load_images("mnist")
        return "mnist"
    except FileNotFoundError:
        return "digits"


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``0..255`` -> float32 in ``[0, 1]``: ``x / 255``."""
    return images.float() / 255.0
