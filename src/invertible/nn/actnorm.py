"""Activation normalization with data-dependent initialization."""

from __future__ import annotations

import math

import torch
from torch import nn

from invertible.checks import check_count, check_real
from invertible.nn.base import Bijection, check_input
from invertible.nn.traits import Capabilities

__all__ = ["ActNorm"]


class ActNorm(Bijection):
    """``y = (x - loc) * exp(log_scale)`` per channel (dim 1), for inputs ``(B, C)``, ``(B, C, L)``, ``(B, C, H, W)``.

    On the first forward in training mode ``loc`` and ``log_scale`` are set so that the batch has zero mean and
    unit variance per channel (Kingma & Dhariwal 2018); channels whose std is below ``eps`` times the largest
    channel std are treated as constant and keep ``log_scale = 0``. The flag ``initialized`` is a *buffer*, so a
    reloaded model keeps its initialization. ``log|det J| = prod(spatial) * sum_c log_scale_c``.
    The initialization refuses an empty batch (``ValueError``) and then leaves the layer untouched.
    """

    CAPABILITIES = Capabilities(free_form=None, analytic_forward=True, analytic_inverse=True,
                                volume_preserving=False, exact_logdet=True, bi_lipschitz=None)

    def __init__(self, n_channels: int, eps: float = 1e-3):
        super().__init__()
        self.n_channels = check_count("n_channels", n_channels, 1)
        self.eps = check_real("eps", eps, 0.0, strict=True)
        self.loc = nn.Parameter(torch.zeros(n_channels))
        self.log_scale = nn.Parameter(torch.zeros(n_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized_host: tuple[tuple[int, int], bool] | None = None  # ((data_ptr, version), value)

    def _is_initialized(self) -> bool:
        """The ``initialized`` buffer, read on the host once per write to it (its storage and version counter
        identify the value): no device sync in a training forward."""
        key = (self.initialized.data_ptr(), self.initialized._version)
        if self._initialized_host is None or self._initialized_host[0] != key:
            self._initialized_host = (key, bool(self.initialized))
        return self._initialized_host[1]

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(self.n_channels, -1)
        std = flat.std(1, unbiased=False)
        # A channel that is (nearly) constant on the first batch (an empty image border, a zero-padded channel)
        # keeps unit scale instead of being blown up by 1/std.
        constant = std <= self.eps * std.max().clamp_min(1e-12) + 1e-12
        self.loc.copy_(flat.mean(1))
        self.log_scale.copy_(torch.where(constant, torch.zeros_like(std), -torch.log(std.clamp_min(1e-12))))
        self.initialized.fill_(True)

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, "ActNorm", n_channels=self.n_channels)
        if not self._is_initialized() and self.training:
            if x.shape[0] == 0:  # checked before any state changes: an empty batch has no statistics
                raise ValueError(f"ActNorm: the data-dependent initialization needs a non-empty batch, got shape "
                                 f"{tuple(x.shape)}")
            self._initialize(x)
        y = (x - self._view(self.loc, x)) * torch.exp(self._view(self.log_scale, x))
        spatial = math.prod(x.shape[2:])
        logdet = (self.log_scale.sum() * spatial).to(x.dtype).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "ActNorm.inverse", n_channels=self.n_channels)
        return y * torch.exp(-self._view(self.log_scale, y)) + self._view(self.loc, y)

    def extra_repr(self) -> str:
        return f"{self.n_channels}, initialized={bool(self.initialized)}"
