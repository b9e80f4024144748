"""Injective zero padding of channels (i-ResNet input layer, Appendix A.1)."""

from __future__ import annotations

import torch

from invertible.checks import check_count, check_real
from invertible.nn.base import Bijection, check_input
from invertible.nn.traits import Capabilities

__all__ = ["InjectivePad"]


class InjectivePad(Bijection):
    """Append ``n_extra_channels`` zero channels: ``x -> (x, 0)``.

    Injective, not surjective: the inverse strips the extra channels and checks that they are ~0 (within
    ``atol``), since any other input has no preimage. The log-det is reported as 0 (the map is an isometry
    onto its image; its Jacobian has orthonormal columns).
    """

    CAPABILITIES = Capabilities(free_form=None, analytic_forward=True, analytic_inverse=True,
                                volume_preserving=True, exact_logdet=True, bi_lipschitz=None)

    def __init__(self, n_extra_channels: int, atol: float = 1e-4, check: bool = True):
        super().__init__()
        self.n_extra_channels = check_count("n_extra_channels", n_extra_channels, 0)
        self.atol, self.check = check_real("atol", atol, 0.0), bool(check)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "InjectivePad")
        zeros = x.new_zeros((x.shape[0], self.n_extra_channels, *x.shape[2:]))
        return torch.cat([x, zeros], dim=1)

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "InjectivePad.inverse")
        keep = y.shape[1] - self.n_extra_channels
        if keep < 1:
            raise ValueError(f"InjectivePad.inverse: {y.shape[1]} channels, cannot strip {self.n_extra_channels}")
        extra = y[:, keep:]
        if self.check and extra.numel() and float(extra.abs().max()) > self.atol:
            raise ValueError(
                f"InjectivePad.inverse: the padded channels are not ~0 (max |value| {float(extra.abs().max()):.3g}"
                f" > atol {self.atol}); this y is not in the image of the padding"
            )
        return y[:, :keep]

    def extra_repr(self) -> str:
        return f"n_extra_channels={self.n_extra_channels}"
