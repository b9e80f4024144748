"""Files on disk: atomic writes, the one checkpoint schema, and the one run folder. A leaf: imports only torch.

**Atomic.** Every file is written to a temporary file beside its target and renamed over it
(:func:`os.replace`), so a killed process leaves either the old file or the new one, never a torn file and
never a stray temporary file.

**Checkpoint schema** (``checkpoint.safetensors``; weights via safetensors, never a pickle). Its metadata holds

* ``format``: ``"invertible-checkpoint"`` and ``format_version``;
* ``kind``: what the tensors are (a model kind of :mod:`invertible.models.registry`, or a training run's kind);
* ``config``: the complete JSON config that rebuilds it (typed dataclasses serialized to dicts);
* ``library_version``: the ``invertible`` version that wrote it;
* ``sha256``: one SHA-256 per tensor over its raw bytes, verified on load, so a flipped byte is a clear
  :class:`ValueError` naming the tensor instead of a silently worse model;
* ``meta``: everything else that is JSON (step, optimizer scalars, metrics).

Files from before this schema (no ``format`` key) still load, without checksums.

**Run folder** (:class:`RunFolder`): ``config.json`` (enough to rerun), ``metrics.jsonl`` (one record per logged
step), ``metrics.json`` (the summary), ``figures/*.png``, ``report.md`` and ``checkpoint.safetensors``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "Checkpoint",
    "RunFolder",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "config_differences",
    "jsonable",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "tensor_sha256",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "invertible-checkpoint"
FORMAT_VERSION = 2


# -- atomic writes ------------------------------------------------------------------------------------------------
def _atomic_replace(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path, started)


def _remove_stale_temporaries(path: Path, before: float) -> None:
    """Delete the temporary files of ``path`` that a killed process (``kill -9`` mid-write, which runs no cleanup)
    left behind: those older than this write (a concurrent writer's newer one is kept)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if stale.stat().st_mtime < before:
                stale.unlink()
        except OSError:  # already gone, or not ours to remove
            pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    _atomic_replace(Path(path), lambda p: p.write_text(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    _atomic_replace(Path(path), lambda p: p.write_bytes(data))


def jsonable(obj: Any) -> Any:
    """``obj`` with tensors, numpy scalars and tuples turned into JSON types; non-finite floats become ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if not isinstance(obj, bool | int | float | str) and obj is not None and hasattr(obj, "item"):
        obj = obj.item()  # numpy scalars
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (see :func:`jsonable`) atomically."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def config_differences(saved: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys in which two JSON configs differ (``[]`` when equal), for "cannot resume" messages."""
    if isinstance(saved, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(saved) | set(new), key=str):
            key = f"{prefix}{k}"
            if k not in saved or k not in new:
                out.append(key)
            else:
                out += config_differences(saved[k], new[k], key + ".")
        return out
    return [] if jsonable(saved) == jsonable(new) else [prefix.rstrip(".") or "<root>"]


# -- checkpoints --------------------------------------------------------------------------------------------------
def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (dtype and shape are checked by safetensors itself)."""
    flat = t.detach().contiguous().cpu().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("invertible")
    except Exception:  # not installed (a source checkout on PYTHONPATH)
        return "unknown"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors`` (name -> tensor), ``kind``, ``config``, ``meta``, ``library_version``."""

    tensors: dict[str, torch.Tensor]
    kind: str | None
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    library_version: str = "unknown"
    path: Path | None = None

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors named ``prefix.<rest>``, keyed by ``<rest>`` (e.g. ``group("model")`` is a state dict)."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: str,
    config: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Save ``tensors`` (flat name -> tensor) with the schema of the module docstring, atomically."""
    from safetensors.torch import save_file

    if not isinstance(kind, str) or not kind:
        raise ValueError(f"a checkpoint needs a non-empty kind, got {kind!r}")
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": kind,
        "config": json.dumps(jsonable(config)),
        "library_version": _library_version(),
        "sha256": json.dumps({k: tensor_sha256(v) for k, v in flat.items()}),
        "meta": json.dumps(jsonable(dict(meta or {}))),
    }
    _atomic_replace(Path(path), lambda p: save_file(flat, str(p), metadata=header))


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (or a folder holding ``checkpoint.safetensors``).

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is not a valid safetensors file or
    a tensor's SHA-256 differs from the one recorded (``verify=False`` skips that check).
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a valid invertible checkpoint (safetensors): {exc}") from exc
    try:
        if header.get("format") == FORMAT:
            kind, config = header["kind"], json.loads(header["config"])
            meta, sums = json.loads(header["meta"]), json.loads(header["sha256"])
            version = header.get("library_version", "unknown")
        else:  # written before the schema: {"meta": json} only; config under "config" or "model"
            meta = json.loads(header.get("meta", "{}"))
            _check_header(path, None, {}, meta, {})
            kind = meta.get("kind")
            config = meta.get("config") or meta.get("model") or {}
            sums, version = {}, "unknown"
    except (KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} has a damaged checkpoint header: {exc}") from exc
    _check_header(path, kind, config, meta, sums)
    if verify and sums:
        if set(sums) != set(tensors):
            raise ValueError(f"{path}: tensors {sorted(set(sums) ^ set(tensors))[:5]} differ from the recorded list")
        bad = [k for k, v in tensors.items() if tensor_sha256(v) != sums[k]]
        if bad:
            raise ValueError(f"{path} is corrupt: SHA-256 mismatch in tensor(s) {', '.join(bad[:5])}")
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return Checkpoint(tensors, kind, config, meta, version, path)


def _check_header(path: Path, kind: Any, config: Any, meta: Any, sums: Any) -> None:
    """Refuse a header whose JSON parsed into the wrong types (crafted or foreign), naming the entry."""
    expected = {"kind": (kind, (str, type(None)), "a string"), "config": (config, dict, "a JSON object"),
                "meta": (meta, dict, "a JSON object"), "sha256": (sums, dict, "a JSON object")}
    for name, (value, types, what) in expected.items():
        if not isinstance(value, types):
            raise ValueError(f"{path} has a damaged checkpoint header: {name} should be {what}, "
                             f"got {type(value).__name__}")
    if not all(isinstance(v, str) for v in sums.values()):
        raise ValueError(f"{path} has a damaged checkpoint header: sha256 should map tensor names to hex digests")


# -- run folders --------------------------------------------------------------------------------------------------
def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
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


class RunFolder:
    """The one run folder every command and reproduction writes::

        config.json   metrics.jsonl   metrics.json   figures/*.png   report.md   checkpoint.safetensors

    ``writer=False`` (DDP ranks other than 0) makes every write a no-op, so callers need not branch.
    ``tensorboard=True`` mirrors numeric metrics to ``tb/`` when ``torch.utils.tensorboard`` is importable.
    """

    def __init__(self, path: str | os.PathLike, *, writer: bool = True, tensorboard: bool = False):
        self.path = Path(path)
        self.writer = bool(writer)
        self._tb = None
        if self.writer and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path / "tb"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def report_path(self) -> Path:
        return self.path / "report.md"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def make(self) -> RunFolder:
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
        return self

    # config and summary
    def write_config(self, config: Mapping[str, Any]) -> None:
        if self.writer:
            atomic_write_json(self.config_path, config)

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"no config.json in {self.path}")
        return json.loads(self.config_path.read_text())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.writer:
            atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_path.is_file():
            raise FileNotFoundError(f"no metrics.json in {self.path}")
        return json.loads(self.summary_path.read_text())

    def write_report(self, markdown: str) -> Path:
        if self.writer:
            atomic_write_text(self.report_path, markdown.rstrip() + "\n")
        return self.report_path

    def report(self, title: str, sections: Mapping[str, str | list[str]]) -> Path:
        """Write ``report.md``: ``# title``, then one ``## heading`` per section (a paragraph or bullet
        lines), then every PNG of ``figures/`` embedded."""
        lines = [f"# {title}", ""]
        for heading, body in sections.items():
            lines += [f"## {heading}", ""]
            lines += [f"- {b}" for b in body] if isinstance(body, list) else [body.rstrip()]
            lines.append("")
        figs = self.figures()
        if figs:
            lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figs] + [""]
        return self.write_report("\n".join(lines))

    # metrics.jsonl
    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record (a line of JSON, flushed at once)."""
        if not self.writer:
            return
        rec = jsonable(record)
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            split = rec.get("split", "train")
            for k, v in rec.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{split}/{k}", v, rec.get("step", 0))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path) if self.metrics_path.is_file() else []

    def reset_metrics(self) -> None:
        if self.writer:
            atomic_write_text(self.metrics_path, "")

    def truncate_metrics(self, step: int) -> None:
        """Drop records after ``step`` (logged after the checkpoint that a resumed run restarts from)."""
        if not self.writer or not self.metrics_path.is_file():
            return
        keep = [r for r in read_metrics(self.metrics_path) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    # figures
    def figure_path(self, name: str) -> Path:
        return self.figures_dir / (name if name.endswith(".png") else f"{name}.png")

    def save_figure(self, fig, name: str, dpi: int = 120) -> Path:
        """Save a matplotlib figure as ``figures/<name>.png`` atomically and close it."""
        import matplotlib.pyplot as plt

        path = self.figure_path(name)
        if self.writer:
            _atomic_replace(path, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))
        plt.close(fig)
        return path

    def figures(self) -> list[Path]:
        return sorted(self.figures_dir.glob("*.png")) if self.figures_dir.is_dir() else []

    # checkpoints
    def save_checkpoint(self, tensors: Mapping[str, torch.Tensor], *, kind: str, config: Mapping[str, Any],
                        meta: Mapping[str, Any] | None = None) -> None:
        if self.writer:
            save_checkpoint(self.checkpoint_path, tensors, kind=kind, config=config, meta=meta)

    def load_checkpoint(self, device: str | torch.device = "cpu") -> Checkpoint:
        return load_checkpoint(self.checkpoint_path, device=device)
