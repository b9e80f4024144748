"""Image files as float tensors ``[0, 1]`` shaped for a model: MNIST npz, CIFAR-10 pickles, raw ``.npy`` arrays.

Used by the chapter-3 analysis (``invertible analyze-relu``, Fig. 3.4).

The file formats themselves are read by :mod:`invertible.data.images` (CIFAR-10 pickles through a restricted
unpickler that never rebuilds arbitrary objects).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from invertible.data.images import load_images as load_image_set
from invertible.data.images import read_cifar_batch

__all__ = ["load_cifar10", "load_mnist_npz", "load_model_inputs", "to_rgb32"]


def load_cifar10(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-10 from the python pickles: a folder with ``data_batch_1..5`` and ``test_batch`` (either may
    be missing) or one batch file. Returns ``{"train": (x, y), "test": (x, y)}`` with ``x`` float32 in
    ``[0, 1]`` of shape ``(N, 3, 32, 32)`` and ``y`` int64 (a single file is returned as ``"test"``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 path not found: {path}")
    if path.is_file():
        groups = {"test": [path]}
    else:
        groups = {"train": sorted(path.glob("data_batch_*")), "test": sorted(path.glob("test_batch*"))}
        if not any(groups.values()):
            raise FileNotFoundError(f"no data_batch_* or test_batch in {path}")
    out = {}
    for split, files in groups.items():
        if files:
            parts = [read_cifar_batch(f) for f in files]
            x = torch.from_numpy(np.concatenate([p[0] for p in parts])).float() / 255.0
            out[split] = (x, torch.from_numpy(np.concatenate([p[1] for p in parts])))
    return out


def load_mnist_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-style npz with ``images`` (N, 28, 28) uint8 and ``labels`` (N,): returns ``x`` float32 in
    ``[0, 1]`` of shape ``(N, 1, 28, 28)`` and ``y`` int64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    images, labels = load_image_set(path)
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels)


def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """Grey ``(N, 1, 28, 28)`` images to CIFAR's shape ``(N, 3, 32, 32)``: zero-pad 2 pixels, copy channels."""
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] > 32 or x.shape[3] > 32:
        raise ValueError(f"expected grey images (N, 1, H<=32, W<=32), got {tuple(x.shape)}")
    ph, pw = 32 - x.shape[2], 32 - x.shape[3]
    x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x.expand(-1, 3, -1, -1).contiguous()


def load_model_inputs(path: str | Path, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Inputs for a model with per-sample ``input_shape`` from ``.npy`` (raw array ``(N, *input_shape)``),
    an MNIST-style ``.npz`` (padded to 3x32x32 if the model wants that) or CIFAR-10 pickles (test split
    preferred). Returns float32 ``(N, *input_shape)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    input_shape = tuple(int(s) for s in input_shape)
    if path.suffix == ".npy":
        x = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
    elif path.suffix == ".npz":
        x, _ = load_mnist_npz(path)
        if input_shape == (3, 32, 32):
            x = to_rgb32(x)
    else:
        splits = load_cifar10(path)
        x = (splits.get("test") or splits["train"])[0]
    if tuple(x.shape[1:]) != input_shape:
        raise ValueError(f"{path}: inputs have shape {tuple(x.shape[1:])}, the model expects {input_shape}")
    return x
