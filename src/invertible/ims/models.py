"""IsotopeNet (thesis Table 7.2) and ResidualNet (Table A.1) for 1-d mass spectra; trained by ims/training.py.

Both are stacks of residual layers of depth 2 in pre-activation order (He et al. 2016)::

    h = BN(conv_k,stride(ReLU(BN(conv_k,1(ReLU(x))))))  +  shortcut(x)

with convolutions without bias, ``padding = k // 2`` and a 1x1 strided convolution as shortcut where the
number of channels or the length changes (identity otherwise). Length after a conv of stride ``s``:
``L' = floor((L - 1) / s) + 1``; for IsotopeNet on 27286 bins: 27286 -> 5458 -> 1820.

IsotopeNet = 4 residual layers (channels 8-8-8-1, strides 1-5-1-3, kernel 3), ReLU, dropout, a locally
connected layer (kernel 3, unshared weights per position, :class:`LocallyConnected1d`), BatchNorm, ReLU and a
dense softmax layer. ResidualNet = 12 residual layers with kernel 5 up to 256 maps, global average pooling and
a dense softmax layer.

References: Behrmann, Etmann, Boskamp, Casadonte, Kriegsmann, Maass (2018), Bioinformatics 34(7).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invertible.models import registry

__all__ = [
    "IsotopeNet",
    "LocallyConnected1d",
    "ResidualLayer1d",
    "ResidualNet",
    "count_parameters",
    "IsotopeNetConfig",
    "ResidualNetConfig",
    "predict_proba",
]


def _out_len(length: int, stride: int) -> int:
    return (length - 1) // stride + 1


class ResidualLayer1d(nn.Module):
    """Residual layer of depth 2 (pre-activation). Input (B, C_in, L) -> (B, C_out, floor((L-1)/s)+1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        p = kernel_size // 2
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size, padding=p, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, stride=stride, padding=p, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.shortcut: nn.Module = (
            nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False)
            if in_channels != out_channels or stride != 1 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn1(self.conv1(F.relu(x)))
        h = self.bn2(self.conv2(F.relu(h)))
        return h + self.shortcut(x)


class LocallyConnected1d(nn.Module):
    """1-d locally connected layer: a convolution whose weights are not shared over positions.

    ``y[b, o, l] = bias[o, l] + sum_{c, j} W[l, o, c, j] * x_pad[b, c, l*s + j]``, with ``x_pad`` padded by
    ``padding`` zeros on both sides. Vectorised over positions: for each of the ``k`` kernel offsets ``j`` the
    strided slice ``x_pad[..., j::s]`` (the ``j``-th column of ``unfold``) is contracted with ``W[..., j]`` by
    one ``einsum``; that is ``unfold`` + ``einsum`` without materialising the patches, whose backward (a
    scatter) is 3x slower on CPU. :meth:`forward_unfold` keeps the patch version, :meth:`forward_naive` the
    loop over positions. Input (B, C_in, L) with ``L == length`` -> (B, C_out, L_out).
    """

    def __init__(self, length: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, bias: bool = True):
        super().__init__()
        self.length, self.kernel_size, self.stride = length, kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.out_length = (length + 2 * self.padding - kernel_size) // stride + 1
        if self.out_length < 1:
            raise ValueError(f"input length {length} too short for kernel {kernel_size}")
        self.weight = nn.Parameter(torch.empty(self.out_length, out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels, self.out_length)) if bias else None
        bound = 1 / math.sqrt(in_channels * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.length:
            raise ValueError(f"expected length {self.length}, got {x.shape[-1]}")
        x = F.pad(x, (self.padding, self.padding))
        end = self.stride * (self.out_length - 1) + 1
        y = torch.einsum("bcl,loc->bol", x[..., 0:end:self.stride], self.weight[..., 0])
        for j in range(1, self.kernel_size):
            y = y + torch.einsum("bcl,loc->bol", x[..., j:j + end:self.stride], self.weight[..., j])
        return y if self.bias is None else y + self.bias

    def forward_unfold(self, x: torch.Tensor) -> torch.Tensor:
        """Same map via ``unfold`` patches (B, C_in, L_out, k) and one einsum."""
        x = F.pad(x, (self.padding, self.padding))
        patches = x.unfold(-1, self.kernel_size, self.stride)
        y = torch.einsum("bclk,lock->bol", patches, self.weight)
        return y if self.bias is None else y + self.bias

    def forward_naive(self, x: torch.Tensor) -> torch.Tensor:
        """Reference implementation: a loop over output positions (for tests and the benchmark)."""
        x = F.pad(x, (self.padding, self.padding))
        cols = []
        for pos in range(self.out_length):
            seg = x[..., pos * self.stride: pos * self.stride + self.kernel_size]  # (B, C_in, k)
            cols.append(torch.einsum("bck,ock->bo", seg, self.weight[pos]))
        y = torch.stack(cols, -1)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        o, c = self.weight.shape[1], self.weight.shape[2]
        return f"length={self.length}, in={c}, out={o}, kernel_size={self.kernel_size}, stride={self.stride}"


class IsotopeNet(nn.Module):
    """IsotopeNet (thesis Table 7.2). Input (B, d) or (B, 1, d) spectra -> (B, n_classes) logits.

    Args:
        n_bins: spectrum length ``d`` (the locally connected layer has one weight set per position).
        n_classes: number of classes (softmax outputs).
        dropout: dropout probability after the convolutional part (Table A.2: 30 %).
        channels, strides, kernel_size: the residual layers (default 8-8-8-1, 1-5-1-3, 3).
    """

    def __init__(self, n_bins: int, n_classes: int = 2, *, dropout: float = 0.3,
                 channels: Sequence[int] = (8, 8, 8, 1), strides: Sequence[int] = (1, 5, 1, 3),
                 kernel_size: int = 3):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("channels and strides must have the same length")
        layers, c_in, length = [], 1, n_bins
        for c, s in zip(channels, strides, strict=True):
            layers.append(ResidualLayer1d(c_in, c, kernel_size, s))
            c_in, length = c, _out_len(length, s)
        self.features = nn.Sequential(*layers)
        self.lengths = [n_bins]
        for s in strides:
            if s > 1:
                self.lengths.append(_out_len(self.lengths[-1], s))
        self.dropout = nn.Dropout(dropout)
        self.local = LocallyConnected1d(length, c_in, 1, kernel_size=3)
        self.bn = nn.BatchNorm1d(1)
        self.fc = nn.Linear(length, n_classes)
        self.n_bins = n_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        h = self.dropout(F.relu(self.features(x)))
        h = F.relu(self.bn(self.local(h)))
        return self.fc(h.flatten(1))


#: Table A.1: (feature maps, stride) of the 12 residual layers; "Residual layer (5x) 3/1" alternates 3, 1.
RESIDUALNET_LAYERS: tuple[tuple[int, int], ...] = (
    (16, 1), (32, 3), (32, 1), (64, 3), (64, 1),
    (128, 3), (128, 1), (128, 3), (128, 1), (128, 3),
    (128, 3), (256, 3),
)


class ResidualNet(nn.Module):
    """ResidualNet (thesis Table A.1): residual layers of kernel 5 (:data:`RESIDUALNET_LAYERS`), ReLU,
    global average pooling over positions, dense softmax layer. Input (B, d) or (B, 1, d) -> (B, n_classes).
    Works for any length ``d``."""

    def __init__(self, n_classes: int = 2, *, layers: Sequence[tuple[int, int]] = RESIDUALNET_LAYERS,
                 kernel_size: int = 5):
        super().__init__()
        mods, c_in = [], 1
        for c, s in layers:
            mods.append(ResidualLayer1d(c_in, c, kernel_size, s))
            c_in = c
        self.features = nn.Sequential(*mods)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        h = F.relu(self.features(x))
        return self.fc(h.mean(-1))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (n, n_classes) in evaluation mode (dropout off, BatchNorm running stats)."""
    model.eval()
    dev, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    out = []
    for s in range(0, len(X), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(X[s:s + batch_size])).to(dev, dtype)
        out.append(torch.softmax(model(xb), -1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


@dataclasses.dataclass(frozen=True)
class IsotopeNetConfig(registry.ModelConfig):
    """Config of :class:`IsotopeNet` (kind ``isotopenet``): its constructor arguments."""

    n_bins: int
    n_classes: int = 2
    dropout: float = 0.3
    channels: tuple[int, ...] = (8, 8, 8, 1)
    strides: tuple[int, ...] = (1, 5, 1, 3)
    kernel_size: int = 3


@dataclasses.dataclass(frozen=True)
class ResidualNetConfig(registry.ModelConfig):
    """Config of :class:`ResidualNet` (kind ``residualnet``): its constructor arguments."""

    n_classes: int = 2
    layers: tuple[tuple[int, int], ...] = RESIDUALNET_LAYERS
    kernel_size: int = 5


@registry.register_model("isotopenet", IsotopeNetConfig)
def _build_isotopenet(config: IsotopeNetConfig) -> IsotopeNet:
    return IsotopeNet(**config.kwargs())


@registry.register_model("residualnet", ResidualNetConfig)
def _build_residualnet(config: ResidualNetConfig) -> ResidualNet:
    kw = config.kwargs()
    kw["layers"] = tuple(tuple(layer) for layer in kw["layers"])
    return ResidualNet(**kw)
