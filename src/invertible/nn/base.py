"""The bijection protocol every invertible building block follows."""

from __future__ import annotations

import torch
from torch import nn

from invertible.checks import check_input, check_like_module, validated_input

__all__ = ["Bijection", "check_input", "check_like_module", "validated_input"]


class Bijection(nn.Module):
    """An invertible map x -> y with a per-sample log|det J|.

    Subclasses implement :meth:`forward_and_logdet` and :meth:`inverse`; :meth:`forward` defaults to the
    first output of :meth:`forward_and_logdet` and is overridden where the log-det has a cost.
    Log-dets are natural logs of shape ``(batch,)``. Direction is a method, never a flag.
    """

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
