"""What a training step minimizes: the abstract base of every recipe (density, classification, iCE, IMS).

An :class:`Objective` maps a batch to ``(loss, metrics)`` (0-dim tensors, kept on the device; the engine reads
them only at logging intervals). It may own extra state that the engine checkpoints with the model (the
nuisance classifier of iCE and its optimizer), initialize the model from the first batch (ActNorm), do work
at epoch starts (iCE's nuisance best response) and validate honestly (an exact or unbiased likelihood, a test
error).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from invertible.training.engine import Trainer

__all__ = ["Batch", "Objective"]

Batch = Any  # a tensor, or a tuple of tensors (inputs, labels)


class Objective(ABC):
    """A recipe's loss. Subclasses implement :meth:`loss`; everything else has a neutral default.

    Attributes:
        loss_name: the name under which the loss is logged (``"nll"`` for density models, ``"loss"`` otherwise).
    """

    loss_name: str = "loss"

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch, trainer: Trainer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(scalar loss to minimize, metrics)`` for one batch, in training mode."""

    def to_device(self, batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
        """Move a batch to the model's device; floating inputs take the model's dtype, labels stay integer."""
        if isinstance(batch, tuple | list):
            return type(batch)(self.to_device(b, device, dtype) for b in batch)
        if torch.is_floating_point(batch):
            return batch.to(device=device, dtype=dtype)
        return batch.to(device)

    def initialize(self, model: nn.Module, batch: Batch) -> None:
        """Data-dependent initialization from the first batch (default: none)."""
        return None

    def on_epoch_start(self, model: nn.Module, epoch: int, trainer: Trainer) -> None:
        """Called before the first step of every epoch (default: nothing)."""
        return None

    def validate(self, model: nn.Module) -> dict[str, Any] | None:
        """Honest held-out metrics, or ``None`` when there is nothing to validate on."""
        return None

    def modules(self) -> dict[str, nn.Module]:
        """Extra modules to checkpoint with the model, by name (default: none)."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Extra optimizers (beside the engine's) to checkpoint, by name (default: none)."""
        return {}

    def progress_metrics(self, means: dict[str, float]) -> dict[str, float]:
        """What the progress bar shows of a logging interval's means (default: the loss)."""
        return {self.loss_name: means[self.loss_name]}
