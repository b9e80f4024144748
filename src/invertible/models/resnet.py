"""Pre-activation bottleneck ResNet: the non-invertible baseline of Table 4.1 (ResNet-164).

ResNet-164 (He et al. 2016b) has three stages of 18 bottleneck blocks each (depth 9 * 18 + 2 = 164), widths
16 / 32 / 64 (x4 expansion), downsampling by stride-2 convolutions at the start of stages 2 and 3:

    x -> conv3x3(C_in, w_0) -> stages -> BN -> ReLU -> global average pool -> Linear(4 w_last, n_classes),
    block(x) = shortcut(x) + conv1x1(ReLU(BN(conv3x3(ReLU(BN(conv1x1(ReLU(BN(x))))), stride))))

with a 1x1 (strided) projection as ``shortcut`` where the shape changes, the identity otherwise. Nothing here is
constrained: strided convolutions and projections make the map non-invertible by construction.

References: He, Zhang, Ren, Sun (2016) "Identity Mappings in Deep Residual Networks".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from invertible.models import registry
from invertible.nn.base import check_input, check_like_module

__all__ = ["PreActResNet", "PreActBottleneck", "PreActResNetConfig"]


@dataclasses.dataclass(frozen=True)
class PreActResNetConfig(registry.ModelConfig):
    """Config of :class:`PreActResNet` (kind ``preact_resnet``); ``widths`` as resolved per stage."""

    input_shape: tuple[int, ...] = (3, 32, 32)
    n_classes: int = 10
    blocks: tuple[int, ...] = (18, 18, 18)
    widths: tuple[int, ...] | None = None


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck ``(B, c_in, H, W) -> (B, 4 planes, H / stride, W / stride)``."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = planes * self.expansion
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(planes), nn.Conv2d(planes, c_out, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Pre-activation bottleneck ResNet classifier.

    Args:
        input_shape: ``(C_in, H, W)``.
        n_classes: classes of the linear head.
        blocks: bottleneck blocks per stage; ``(18, 18, 18)`` is ResNet-164.
        widths: bottleneck widths per stage (outputs are 4x); default ``16 * 2**s``.

    Example:
        >>> PreActResNet((1, 8, 8), blocks=(1, 1))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        n_classes: int = 10,
        *,
        blocks: Sequence[int] = (18, 18, 18),
        widths: Sequence[int] | None = None,
    ):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        blocks = tuple(int(b) for b in blocks)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
        if not blocks or min(blocks) < 1:
            raise ValueError(f"blocks must be a non-empty sequence of positive counts, got {list(blocks)}")
        widths = tuple(int(w) for w in widths) if widths is not None else tuple(16 * 2**s for s in range(len(blocks)))
        if len(widths) != len(blocks):
            raise ValueError(f"widths needs one value per stage ({len(blocks)}), got {list(widths)}")
        self.input_shape = shape
        self.kind = "preact_resnet"
        self.config = PreActResNetConfig(shape, int(n_classes), blocks, widths)
        self.stem = nn.Conv2d(shape[0], widths[0], 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        c = widths[0]
        for s, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            for i in range(n):
                layers.append(PreActBottleneck(c, w, stride=2 if s > 0 and i == 0 else 1))
                c = w * PreActBottleneck.expansion
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` for images ``(B, C_in, H, W)``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.input_shape[0]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"PreActResNet expects (B, {self.input_shape[0]}, H, W) images, got {got}")
        check_input(x, "PreActResNet", min_dim=4)
        check_like_module(x, self, "PreActResNet")
        return self.head(self.stages(self.stem(x)))


@registry.register_model("preact_resnet", PreActResNetConfig)
def _build(config: PreActResNetConfig) -> PreActResNet:
    return PreActResNet(**config.kwargs())
