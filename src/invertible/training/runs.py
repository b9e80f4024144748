"""The one loader: ``load_run(folder)`` rebuilds the trained model of any run folder or checkpoint.

The checkpoint (:mod:`invertible.io`) names the model's ``kind`` and stores the run's complete config, whose
``"model"`` entry rebuilds the architecture through the model registry; the weights (the EMA's when asked and
present) are loaded into it and verified against their SHA-256. Checkpoints written before the schema load too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invertible.io import CHECKPOINT_NAME, Checkpoint, load_checkpoint
from invertible.models.registry import build_model

__all__ = ["load_run", "model_config_of"]


def model_config_of(ck: Checkpoint) -> tuple[str, dict[str, Any]]:
    """``(kind, model config)`` of a checkpoint, for the current schema and the older ones."""
    cfg = ck.config
    if ck.kind == "invertible.classifier":  # classifier checkpoints before the schema (their config has "model")
        arch = cfg["arch"]
        return ("iresnet_classifier" if arch == "iresnet" else "preact_resnet"), dict(cfg["model"])
    if isinstance(cfg.get("model"), dict):  # a run: {"model": {...}, "train": {...}, ...}
        model_cfg = dict(cfg["model"])
        return str(model_cfg.pop("kind", None) or ck.kind), model_cfg
    if "kind" in cfg:  # flow checkpoints before the schema stored the model config itself
        model_cfg = dict(cfg)
        return str(model_cfg.pop("kind")), model_cfg
    if ck.kind is None and "name" in cfg and "kwargs" in cfg:  # chapter-3 ReLU networks before the schema
        return "relu_net", dict(cfg)
    raise ValueError(f"{ck.path} does not say which model it holds (no kind and no model config)")


def load_run(path: str | os.PathLike, *, use_ema: bool = True,
             device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """The model of a run folder (or checkpoint file) in eval mode on ``device``, and its :class:`Checkpoint`.

    With ``use_ema`` and an EMA in the checkpoint the averaged parameters are loaded. Raises
    ``FileNotFoundError`` for a missing checkpoint and ``ValueError`` for a corrupt or foreign one.
    """
    path = Path(path)
    ck = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path, device="cpu")
    try:
        kind, model_cfg = model_config_of(ck)
    except (TypeError, KeyError, AttributeError) as exc:  # a crafted config: wrong types or missing entries
        raise ValueError(f"{ck.path}: its config does not name a model ({type(exc).__name__}: {exc})") from exc
    try:
        model = build_model(kind, model_cfg)
    except (TypeError, KeyError, AttributeError, ValueError) as exc:  # wrong types, missing or unknown entries
        raise ValueError(f"{ck.path}: its {kind} model config does not build a model ({exc})") from exc
    state = ck.group("model") or dict(ck.tensors)  # before the schema, ReLU networks stored bare state dicts
    # the recorded dtype; checkpoints that record none (the old classifiers) keep their weights' dtype
    name = ck.config.get("dtype") or ck.meta.get("dtype")
    stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    if name and not isinstance(getattr(torch, str(name), None), torch.dtype):
        raise ValueError(f"{ck.path}: the recorded dtype {name!r} is not a torch dtype")
    dtype = getattr(torch, name) if name else stored
    if use_ema:
        state.update(ck.group("ema"))
    model.to(dtype=dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing / unexpected / mis-shaped tensors
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise ValueError(f"{ck.path}: the stored weights do not fit a {kind} model: {detail}") from exc
    return model.to(device).eval(), ck
