"""The bijection protocol every invertible building block follows."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from invertible.checks import check_input, check_like_module, validated_input
from invertible.nn.traits import Capabilities

__all__ = ["Bijection", "check_input", "check_like_module", "validated_input"]


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
