"""Training: the one engine, its recipes' building blocks, honest evaluation, data sources, DDP, the loader.

``from invertible.training import Trainer, LoopConfig, Objective, DensityConfig, density_trainer, load_run``
(and the classification recipe: ``ClassifierConfig, classifier_trainer, train_classifier, load_classifier``)
(imported lazily, so that importing a submodule stays light).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Trainer": "invertible.training.engine",
    "LoopConfig": "invertible.training.engine",
    "StopTraining": "invertible.training.engine",
    "TrainingDiverged": "invertible.training.engine",
    "Objective": "invertible.training.objective",
    "DensityConfig": "invertible.training.density",
    "DensityObjective": "invertible.training.density",
    "density_trainer": "invertible.training.density",
    "ClassifierConfig": "invertible.training.classification",
    "CrossEntropyObjective": "invertible.training.classification",
    "classifier_trainer": "invertible.training.classification",
    "train_classifier": "invertible.training.classification",
    "load_classifier": "invertible.training.classification",
    "load_run": "invertible.training.runs",
    "evaluate_nll": "invertible.training.evaluate",
    "EMA": "invertible.training.ema",
    "SamplerSource": "invertible.training.sources",
    "TensorSource": "invertible.training.sources",
    "ShuffledSource": "invertible.training.sources",
    "RandomIndexSource": "invertible.training.sources",
    "FullBatchSource": "invertible.training.sources",
    "DataSpec": "invertible.training.datasets",
    "load_data": "invertible.training.datasets",
    "make_optimizer": "invertible.training.optim",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'invertible.training' has no attribute {name!r}")
