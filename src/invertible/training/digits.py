"""Short training runs of the small digits i-ResNet (:mod:`invertible.models.conv_iresnet`), on the engine: the
chapter-4/5 core reproductions (Fig. 4.4, Fig. 5.3) and the inverse-solver / log-det benchmarks measure learned,
not random, weights. Data: :func:`invertible.data.digits_tensors`.
"""

from __future__ import annotations

import torch

import invertible as inv
from invertible.logdet import set_estimators
from invertible.models.conv_iresnet import Classifier
from invertible.training.classification import CrossEntropyObjective
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.losses import DequantizedNLLObjective
from invertible.training.sources import RandomIndexSource

__all__ = ["train_digits_classifier", "train_digits_flow"]


def train_digits_classifier(model: Classifier, x: torch.Tensor, y: torch.Tensor, steps: int,
                            generator: torch.Generator, *, lr: float = 2e-3, batch: int = 64, desc: str = "train",
                            show_progress: bool = False) -> float:
    """Adam on the cross-entropy, ``batch`` rows of ``x (N, C, H, W)``, ``y (N,)`` drawn with replacement per step
    from ``generator``, run by the engine (no run folder); the spectral norms are converged at the end
    (Remark 4.9). Returns the last loss."""
    source = RandomIndexSource((x, y), batch, generator, epoch_steps=steps)
    objective = CrossEntropyObjective()
    Trainer(model, objective, torch.optim.Adam(model.parameters(), lr=lr), source,
            LoopConfig(steps=steps, log_every=steps, on_nonfinite="stop"), show_progress=show_progress,
            desc=desc).fit()
    model.eval()
    return float(objective.last_loss)


def train_digits_flow(body, x, steps: int, generator: torch.Generator, lr: float = 1e-3,
                      progress: bool = False) -> float:
    """Maximum likelihood on uniformly dequantized digits (section 5.3) with the i-ResNet estimator (5-term
    power series, as in the thesis), batch 64, Adam, run by the engine (no run folder); then converge the
    spectral norms. ``generator`` drives, step after step, the batch indices, the dequantization noise and the
    estimator's probes. Returns the last NLL/dim."""
    set_estimators(body, inv.PowerSeriesLogDet(n_terms=5, generator=generator))
    flow = inv.Flow(body, event_shape=tuple(body(x[:1]).shape[1:]))
    objective = DequantizedNLLObjective(flow, generator)
    source = RandomIndexSource(x, 64, generator, epoch_steps=steps, replay=False)
    Trainer(body, objective, torch.optim.Adam(body.parameters(), lr=lr), source,
            LoopConfig(steps=steps, log_every=steps, on_nonfinite="stop"), show_progress=progress,
            desc="train flow").fit()
    body.eval()
    return float(objective.last_loss)
