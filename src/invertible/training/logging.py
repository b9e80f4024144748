"""Run metrics: ``metrics.jsonl`` (one JSON object per line, appended and flushed) and optional TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from invertible.training.checkpoint import atomic_write_text

__all__ = ["MetricsLogger", "read_metrics"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a run folder or the file); a torn last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsLogger:
    """Append records to ``folder/metrics.jsonl``; ``folder=None`` logs nothing (non-zero ranks, tests).

    ``tensorboard=True`` also writes scalars to ``folder/tb`` when ``torch.utils.tensorboard`` is importable.
    """

    def __init__(self, folder: Path | None, tensorboard: bool = False):
        self.folder = folder
        self.path = None if folder is None else folder / "metrics.jsonl"
        self._tb = None
        if folder is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(folder / "tb"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def reset(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, "")

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (they were logged after the checkpoint a resumed run restarts from)."""
        if self.path is None or not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def log(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        rec = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            split = rec.get("split", "train")
            for k, v in rec.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{split}/{k}", v, rec.get("step", 0))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
