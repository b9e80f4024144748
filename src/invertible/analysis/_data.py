"""Small private image loaders for the chapter-3 experiments (MNIST npz, CIFAR-10 pickles, raw arrays).

CIFAR-10's python batches are pickles; they are read with a restricted unpickler that only rebuilds
dicts, lists, strings, numbers and numpy arrays - never arbitrary objects.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_cifar10", "load_images", "load_mnist_npz", "to_rgb32"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise ValueError(f"refusing to unpickle {module}.{name}: not a plain CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (expected a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path} lacks 'data'/'labels'; keys: {sorted(d)}")
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(d["labels"], dtype=np.int64)


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
            parts = [_read_cifar_batch(f) for f in files]
            x = torch.from_numpy(np.concatenate([p[0] for p in parts])).float() / 255.0
            out[split] = (x, torch.from_numpy(np.concatenate([p[1] for p in parts])))
    return out


def load_mnist_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-style npz with ``images`` (N, 28, 28) uint8 and ``labels`` (N,): returns ``x`` float32 in
    ``[0, 1]`` of shape ``(N, 1, 28, 28)`` and ``y`` int64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    with np.load(path, allow_pickle=False) as d:
        if "images" not in d.files or "labels" not in d.files:
            raise ValueError(f"{path}: expected arrays 'images' and 'labels', found {d.files}")
        images, labels = d["images"], d["labels"]
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: expected images (N, H, W) and labels (N,), got {images.shape}, {labels.shape}")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    x = torch.from_numpy(images.astype(np.float32) / scale).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def to_rgb32(x: torch.Tensor) -> torch.Tensor:
    """Grey ``(N, 1, 28, 28)`` images to CIFAR's shape ``(N, 3, 32, 32)``: zero-pad 2 pixels, copy channels."""
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] > 32 or x.shape[3] > 32:
        raise ValueError(f"expected grey images (N, 1, H<=32, W<=32), got {tuple(x.shape)}")
    ph, pw = 32 - x.shape[2], 32 - x.shape[3]
    x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x.expand(-1, 3, -1, -1).contiguous()


def load_images(path: str | Path, input_shape: tuple[int, ...]) -> torch.Tensor:
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
