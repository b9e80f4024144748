"""Multi-scale composition with factor-out (Dinh et al. 2017; Appendix A.2), and a pre-transform in front of it."""

from __future__ import annotations

import torch
from torch import nn

from invertible.nn.base import Bijection, check_input
from invertible.nn.squeeze import Squeeze

__all__ = ["MultiScale", "PreThen"]


class MultiScale(Bijection):
    """Multi-scale composition: stage ``s`` maps its input; between stages the tensor is squeezed
    ``(C, H, W) -> (4C, H/2, W/2)``, and with ``factor_out`` half of its channels leave as latents.

    The order of squeeze and factor-out (``squeeze_before_split``):

    * ``True`` (Residual Flows / Glow order): squeeze, then split: ``4C`` channels, ``2C`` leave, ``2C`` go on -
      works for any ``C >= 1`` (e.g. 1-channel images).
    * ``False`` (legacy, checkpoints written before the option): split ``C`` into ``C // 2`` that go on and the
      rest that leave, then squeeze - needs ``C >= 2``.

    The output is the flat concatenation of all latents (factored-out parts in stage order, then the last stage's
    output), shape ``(B, D)`` with ``D = C H W``; the log-det is the sum of the stages' log-dets (chain rule; the
    squeezes and splits are permutations).
    """

    container = True

    def __init__(
        self,
        stages: list[Bijection],
        input_shape: tuple[int, int, int],
        factor_out: bool,
        squeeze_before_split: bool = False,
    ):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.squeeze = Squeeze()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.factor_out = bool(factor_out)
        self.squeeze_before_split = bool(squeeze_before_split)
        self.shapes: list[tuple[int, int, int]] = []  # input shape of every stage
        self.out_shapes: list[tuple[int, int, int]] = []  # shape of the part factored out after every stage
        c, h, w = self.input_shape
        for i in range(len(stages)):
            self.shapes.append((c, h, w))
            if i < len(stages) - 1:
                if not self.factor_out:
                    c, h, w = 4 * c, h // 2, w // 2
                elif self.squeeze_before_split:
                    c, h, w = 4 * c, h // 2, w // 2
                    self.out_shapes.append((c - c // 2, h, w))
                    c = c // 2
                else:
                    self.out_shapes.append((c - c // 2, h, w))
                    c, h, w = 4 * (c // 2), h // 2, w // 2
                if c < 1:
                    raise ValueError(
                        f"MultiScale: stage {i + 1} would have {c} channels (input {self.input_shape}); "
                        "use squeeze_before_split=True"
                    )

    def _split(self, x: torch.Tensor, latents: list[torch.Tensor]) -> torch.Tensor:
        half = x.shape[1] // 2
        latents.append(x[:, half:].flatten(1))
        return x[:, :half]

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, "MultiScale", min_dim=4)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"MultiScale expects inputs of shape (B, {self.input_shape}), got {tuple(x.shape)}")
        total = x.new_zeros(x.shape[0])
        latents: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            x, ld = stage.forward_and_logdet(x)
            total = total + ld
            if i < len(self.stages) - 1:
                if self.factor_out and self.squeeze_before_split:
                    x = self._split(self.squeeze(x), latents)
                elif self.factor_out:
                    x = self.squeeze(self._split(x, latents))
                else:
                    x = self.squeeze(x)
        latents.append(x.flatten(1))
        return torch.cat(latents, 1), total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_logdet(x)[0]

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, "MultiScale.inverse")
        b = z.shape[0]
        c, h, w = self.shapes[-1]
        sizes = [cc * hh * ww for cc, hh, ww in self.out_shapes] + [c * h * w]
        if z.dim() != 2 or z.shape[1] != sum(sizes):
            raise ValueError(f"MultiScale.inverse expects (B, {sum(sizes)}), got {tuple(z.shape)}")
        parts = list(torch.split(z, sizes, dim=1))
        x = parts[-1].reshape(b, c, h, w)
        x = self.stages[-1].inverse(x)
        for i in range(len(self.stages) - 2, -1, -1):
            if self.factor_out and self.squeeze_before_split:
                x = self.squeeze.inverse(torch.cat([x, parts[i].reshape(b, *self.out_shapes[i])], 1))
            elif self.factor_out:
                x = torch.cat([self.squeeze.inverse(x), parts[i].reshape(b, *self.out_shapes[i])], 1)
            else:
                x = self.squeeze.inverse(x)
            x = self.stages[i].inverse(x)
        return x

    def extra_repr(self) -> str:
        order = ", squeeze_before_split=True" if self.factor_out and self.squeeze_before_split else ""
        return f"input_shape={self.input_shape}, factor_out={self.factor_out}{order}"


class PreThen(Bijection):
    """``ms o pre``: a pre-transform (e.g. :class:`~invertible.nn.LogitTransform`, a squeeze) followed by a
    bijection ``ms`` that returns flat latents (:class:`MultiScale`); ``log|det| = ld_pre + ld_ms`` (chain rule).
    The inverse maps ``(B, D)`` (or any ``(B, ...)`` with ``D`` entries per sample) back through both."""

    container = True

    def __init__(self, pre: Bijection, ms: Bijection):
        super().__init__()
        self.pre, self.ms = pre, ms

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, ld1 = self.pre.forward_and_logdet(x)
        z, ld2 = self.ms.forward_and_logdet(y)
        return z, ld1 + ld2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_logdet(x)[0]

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, "PreThen.inverse")
        return self.pre.inverse(self.ms.inverse(z.flatten(1)))
