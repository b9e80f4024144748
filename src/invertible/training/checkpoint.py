"""Atomic, safe checkpoints: tensors via safetensors, everything else as JSON. Never unpickles."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_replace(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    _atomic_replace(Path(path), lambda p: p.write_text(text))


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Save ``tensors`` (a flat name -> tensor dict) and JSON-able ``meta`` atomically as safetensors."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_replace(Path(path), lambda p: save_file(flat, str(p), metadata={"meta": json.dumps(meta)}))


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`: returns ``(tensors, meta)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a valid invertible checkpoint (safetensors): {exc}") from exc
    return tensors, meta
