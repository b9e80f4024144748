"""The bijection protocol every invertible building block follows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch
from torch import nn

from invertible.nn.traits import Capabilities

__all__ = ["Bijection", "check_input", "validated_input"]

_VALIDATED: ContextVar[bool] = ContextVar("invertible_input_validated", default=False)


@contextmanager
def validated_input() -> Iterator[None]:
    """Inside, :func:`check_input` skips its finiteness test (shape and dtype checks stay).

    A composition checks ``isfinite`` once at its boundary and runs its layers inside this context: the test is a
    full reduction plus a device-to-host sync, which on a GPU would stall every one of dozens of blocks."""
    token = _VALIDATED.set(True)
    try:
        yield
    finally:
        _VALIDATED.reset(token)


def check_input(x: torch.Tensor, name: str, min_dim: int = 2, n_channels: int | None = None) -> None:
    """Validate at the boundary: a floating tensor with a batch dimension, finite, the right channels.

    The finiteness test is skipped inside :func:`validated_input` (the enclosing composition has done it)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name}: expected a batch of shape (batch, ...) with >= {min_dim} dims, got {tuple(x.shape)}")
    if n_channels is not None and x.shape[1] != n_channels:
        raise ValueError(f"{name}: expected {n_channels} channels in dim 1, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name}: expected a floating point tensor, got {x.dtype}")
    if not _VALIDATED.get() and not torch.isfinite(x).all():
        raise ValueError(f"{name}: input contains NaN or inf")


class Bijection(nn.Module):
    """An invertible map x -> y with a per-sample log|det J|.

    Subclasses implement :meth:`forward_and_logdet` and :meth:`inverse`; :meth:`forward` defaults to the
    first output of :meth:`forward_and_logdet` and is overridden where the log-det has a cost.
    Log-dets are natural logs of shape ``(batch,)``. Direction is a method, never a flag.

    A layer class declares what it can do in ``CAPABILITIES`` (:class:`~invertible.nn.traits.Capabilities`, the
    rows of Table 5.2); a composition of bijections sets ``container = True`` and is described by its layers
    (:func:`invertible.nn.capabilities.model_capabilities`).
    """

    CAPABILITIES: ClassVar[Capabilities | None] = None
    container: ClassVar[bool] = False

    def capabilities(self) -> Capabilities:
        """This layer's :class:`~invertible.nn.traits.Capabilities` (the class's declaration; a layer whose
        capabilities depend on its configuration, like a residual block's estimator, overrides this)."""
        if self.CAPABILITIES is None:
            kind = "a container: describe its layers" if self.container else "it declares no CAPABILITIES"
            raise ValueError(f"{type(self).__name__}: no capabilities ({kind})")
        return self.CAPABILITIES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_logdet(x)[0]

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse_and_logdet(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = f^{-1}(y)`` and ``log|det J_{f^{-1}}(y)| = -log|det J_f(x)|``."""
        x = self.inverse(y)
        _, ld = self.forward_and_logdet(x)
        return x, -ld
