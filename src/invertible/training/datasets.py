"""Resolve a data-set spec (a toy name, an image set name or a path) into training batches and a test set.

The spec is JSON-able and stored in checkpoints, so ``invertible evaluate`` rebuilds the same test set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from invertible.data.images import load_images, train_test_split_indices
from invertible.data.toy2d import TOY_DATASETS, sample_toy
from invertible.training.sources import DataSource, SamplerSource, TensorSource

__all__ = ["DataSpec", "LoadedData", "load_data"]

_SPLIT_FREE = ("digits", "mnist")  # single arrays: split with train_test_split_indices


@dataclass
class DataSpec:
    """``name``: a 2-D toy name, ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10`` or a path (.npz / IDX or
    CIFAR folder). ``root``: where a named image set lives. ``n_test``: held-out samples (toys: fresh draws;
    images: at most this many of the test split). ``test_fraction``: for sets without a split.
    ``subset``: use only the first ``subset`` training images (``None``: all)."""

    name: str
    root: str | None = None
    n_test: int = 10_000
    test_fraction: float = 0.1
    subset: int | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedData:
    spec: DataSpec
    kind: str  # "toy" or "image"
    event_shape: tuple[int, ...]
    train: torch.Tensor | None  # images (uint8) or None for toys
    test: torch.Tensor

    def source(self, batch_size: int, seed: int, dtype: torch.dtype, epoch_steps: int = 100) -> DataSource:
        """Training batches: fresh toy samples per step, or seeded epochs over the image training set."""
        if self.kind == "toy":
            name = self.spec.name
            return SamplerSource(lambda n, g: sample_toy(name, n, g), batch_size, seed, epoch_steps, dtype)
        return TensorSource(self.train, batch_size, seed, discrete=True, dtype=dtype)


def load_data(spec: DataSpec) -> LoadedData:
    """Load the data of ``spec``; raises ``FileNotFoundError`` (with where it looked) for missing image files."""
    if spec.n_test < 1:
        raise ValueError(f"n_test must be >= 1, got {spec.n_test}")
    if spec.name in TOY_DATASETS:
        test = sample_toy(spec.name, spec.n_test, torch.Generator().manual_seed(spec.seed + 10_000),
                          dtype=torch.float64)
        return LoadedData(spec, "toy", (2,), None, test)
    images, _ = load_images(spec.name, "train", root=spec.root)
    if spec.name in _SPLIT_FREE or str(spec.name).endswith(".npz"):
        tr, te = train_test_split_indices(len(images), spec.test_fraction, seed=spec.seed)
        train, test = images[tr], images[te]
    else:
        train = images
        test, _ = load_images(spec.name, "test", root=spec.root)
    # Files may be sorted by class (the MNIST npz is): truncate random, seeded subsets, never the first rows.
    rng = np.random.default_rng(spec.seed + 1)
    if spec.subset is not None:
        train = train[np.sort(rng.permutation(len(train))[: spec.subset])]
    test = test[rng.permutation(len(test))[: spec.n_test]]
    train_t = torch.from_numpy(train.copy())
    test_t = torch.from_numpy(test.copy())
    return LoadedData(spec, "image", tuple(train_t.shape[1:]), train_t, test_t)
