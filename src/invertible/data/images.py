"""Image data sets read from files the user has (nothing is downloaded).

Every loader returns ``(images, labels)``: ``images`` uint8 of shape ``(N, C, H, W)``, ``labels`` int64 ``(N,)``.

* ``"digits"``: scikit-learn's 1797 real 8x8 digits (shipped in its wheel), rescaled from 0..16 to 0..255.
* ``"mnist"``: an ``.npz`` with ``images`` (N, 28, 28) and ``labels`` (default ``../shared/data/mnist_10k.npz``), or a
  folder with the IDX files ``train-images-idx3-ubyte[.gz]`` etc.
* ``"fashion-mnist"``: IDX files (``apt-get install dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist``).
* ``"cifar10"``: the CIFAR-10 python pickles (``data_batch_1..5``, ``test_batch``) in a user folder.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = [
    "load_images", "read_idx", "read_cifar_batch", "DEFAULT_MNIST_NPZ", "default_mnist_npz", "FASHION_MNIST_DIR",
    "train_test_split_indices",
]

DEFAULT_MNIST_NPZ = Path("../shared/data/mnist_10k.npz")  # relative to the project root (or the working directory)


def default_mnist_npz() -> Path:
    """Where ``"mnist"`` is looked for without ``root``: ``$INVERTIBLE_MNIST``, else ``../shared/data/mnist_10k.npz``
    relative to the working directory, else relative to the project checkout that holds this package."""
    env = os.environ.get("INVERTIBLE_MNIST")
    if env:
        return Path(env)
    candidates = [DEFAULT_MNIST_NPZ, Path(__file__).resolve().parents[3] / DEFAULT_MNIST_NPZ]
    return next((c for c in candidates if c.exists()), candidates[0])
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array (LeCun's MNIST format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX data type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({arr.size} values for shape {shape})")
    return arr.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no {stem}[.gz] in {folder}")


def _load_idx_folder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images[:, None], labels.astype(np.int64)


def require_npz_archive(path: str | Path) -> None:
    """A ``ValueError`` unless ``path`` is a zip archive (numpy's own error for a truncated or foreign ``.npz``
    is a ``BadZipFile`` traceback or a misleading one about pickles)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz archive (truncated, or another format; expected a zip of arrays "
                         "'images' and 'labels')")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import zipfile

    require_npz_archive(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f or "labels" not in f:
                raise ValueError(f"{path}: expected arrays 'images' and 'labels', found {list(f.keys())}")
            images, labels = f["images"], f["labels"]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path} is a damaged .npz archive: {exc}") from exc
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8 (N, H, W) or (N, C, H, W), got {images.dtype} {images.shape}")
    return images, labels.astype(np.int64)


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds only dicts, lists, strings, numbers and numpy arrays - never arbitrary objects."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise ValueError(f"refusing to unpickle {module}.{name}: not a plain CIFAR-10 batch")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 pickle {path} not found: pass the folder 'cifar-10-batches-py' of the python version"
        )
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


def _load_cifar(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [read_cifar_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_images(name_or_path: str, split: str = "train", root: str | os.PathLike | None = None):
    """Load an image data set as ``(uint8 images (N, C, H, W), int64 labels (N,))``.

    Args:
        name_or_path: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, or a path to an ``.npz`` file
            or a folder of IDX files / CIFAR pickles.
        split: ``"train"`` or ``"test"`` (digits and the MNIST npz have no split: use
            :func:`train_test_split_indices`).
        root: where to look for the named data set (overrides the default location).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    name = str(name_or_path)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.clip(np.round(d.images * 255.0 / 16.0), 0, 255).astype(np.uint8)[:, None]
        return images, d.target.astype(np.int64)
    if name == "mnist":
        path = Path(root) if root else default_mnist_npz()
        if not path.exists():
            raise FileNotFoundError(
                f"MNIST not found at {path}: pass the path of an .npz (images, labels) or of a folder with the "
                "IDX files train-images-idx3-ubyte[.gz] etc."
            )
        return _load_npz(path) if path.is_file() else _load_idx_folder(path, split)
    if name == "fashion-mnist":
        path = Path(root) if root else FASHION_MNIST_DIR
        if not path.is_dir():
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {path}: run `apt-get install dataset-fashion-mnist` (installs the IDX "
                "files in /usr/share/datasets/fashion-mnist) or pass the folder holding them"
            )
        return _load_idx_folder(path, split)
    if name == "cifar10":
        if root is None:
            raise FileNotFoundError("CIFAR-10 cannot be downloaded here: pass root=<folder of the python pickles>")
        return _load_cifar(Path(root), split)
    path = Path(name)
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path)
    if path.is_dir():
        if (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
            return _load_cifar(path, split)
        return _load_idx_folder(path, split)
    raise FileNotFoundError(
        f"unknown data set {name!r}: use digits, mnist, fashion-mnist, cifar10 or a path to an .npz / IDX folder /"
        " CIFAR folder (looked for a file or folder of that name and found none)"
    )


def train_test_split_indices(n: int, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` into train and test indices (the MNIST npz is sorted by class)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
