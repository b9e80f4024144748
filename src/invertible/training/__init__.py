"""Training infrastructure: loops, atomic checkpoints, metrics logging, honest evaluation, DDP.

``from invertible.training import Trainer, TrainConfig, load_model, evaluate_nll`` (imported lazily, so that
``invertible.training.checkpoint`` stays light for the experiment registry).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Trainer": "invertible.training.loop",
    "TrainConfig": "invertible.training.loop",
    "StopTraining": "invertible.training.loop",
    "load_model": "invertible.training.loop",
    "evaluate_nll": "invertible.training.evaluate",
    "EMA": "invertible.training.ema",
    "SamplerSource": "invertible.training.sources",
    "TensorSource": "invertible.training.sources",
    "DataSpec": "invertible.training.datasets",
    "load_data": "invertible.training.datasets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'invertible.training' has no attribute {name!r}")
