"""Plain ReLU networks analyzed in thesis chapter 3: the CIFAR CNNs of Table 3.1 and the toy MLP of Fig. 3.1.

All are ``nn.Sequential`` chains of Linear/Conv2d and ReLU (no pooling, no normalization, no residual
connections), so that :func:`invertible.analysis.relu_stages` splits them into the layers of the thesis and
the linearization is the matrix chain of Definition 3.4. Build one from a JSON-able config with
:func:`build_relu_net`; :func:`relu_net_config` gives the config of a model built here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from invertible.models import registry

__all__ = ["ReLUMLP", "ReluNetConfig", "ThinCIFAR", "ToyMLP", "WideCIFAR", "build_relu_net", "relu_net_config"]


@dataclasses.dataclass(frozen=True)
class ReluNetConfig(registry.ModelConfig):
    """Config of a network of this module (kind ``relu_net``): its class ``name``, the constructor ``kwargs`` and
    the per-sample ``input_shape`` (informational)."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

#: Table 3.1: (stride, feature maps) of conv layers 1-6 for WideCIFAR / ThinCIFAR; kernel 3x3 throughout.
WIDE_CONVS: tuple[tuple[int, int], ...] = ((1, 32), (2, 64), (1, 64), (1, 32), (1, 32), (2, 64))
THIN_CONVS: tuple[tuple[int, int], ...] = ((1, 32), (2, 32), (1, 16), (1, 16), (1, 16), (2, 32))


def _set_config(model: nn.Module, kwargs: dict[str, Any]) -> None:
    model.kind = "relu_net"
    model.config = ReluNetConfig(type(model).__name__, kwargs, tuple(model.input_shape))


class _CIFARNet(nn.Sequential):
    """Six 3x3 convolutions ("same" padding 1, strides of Table 3.1) with ReLU, then Flatten, Dense(512) +
    ReLU and Dense(n_classes) (logits; the softmax lives in the loss). Input ``(B, in_channels, 32, 32)``.
    """

    convs: tuple[tuple[int, int], ...] = ()

    def __init__(self, in_channels: int = 3, n_classes: int = 10, image_size: int = 32, hidden: int = 512):
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two stride-2 layers), got {image_size}")
        layers: list[nn.Module] = []
        c = in_channels
        for stride, width in self.convs:
            layers += [nn.Conv2d(c, width, 3, stride=stride, padding=1), nn.ReLU()]
            c = width
        side = image_size // 4
        layers += [nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)]
        super().__init__(*layers)
        self.input_shape = (in_channels, image_size, image_size)
        _set_config(self, {"in_channels": in_channels, "n_classes": n_classes, "image_size": image_size,
                          "hidden": hidden})


class WideCIFAR(_CIFARNet):
    """WideCIFAR of Table 3.1: conv feature maps 32, 64 (stride 2), 64, 32, 32, 64 (stride 2); dense 512, 10.

    Output units per layer for 32x32 inputs: 32768, 16384, 16384, 8192, 8192, 4096, 512, 10.
    """

    convs = WIDE_CONVS


class ThinCIFAR(_CIFARNet):
    """ThinCIFAR of Table 3.1: conv feature maps 32, 32 (stride 2), 16, 16, 16, 32 (stride 2); dense 512, 10.

    Output units per layer for 32x32 inputs: 32768, 8192, 4096, 4096, 4096, 2048, 512, 10.
    """

    convs = THIN_CONVS


class ReLUMLP(nn.Sequential):
    """``Linear(sizes[0], sizes[1]) -> ReLU -> ... -> Linear(sizes[-2], sizes[-1])`` (last layer linear)."""

    def __init__(self, sizes: Sequence[int]):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least two positive layer widths, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.input_shape = (sizes[0],)
        _set_config(self, {"sizes": sizes})


class ToyMLP(ReLUMLP):
    """The network of Fig. 3.1: 2-D input, one hidden ReLU layer of ``hidden = 3`` neurons, 2 logits."""

    def __init__(self, hidden: int = 3, n_classes: int = 2):
        super().__init__([2, hidden, n_classes])
        _set_config(self, {"hidden": hidden, "n_classes": n_classes})


_MODELS = {"WideCIFAR": WideCIFAR, "ThinCIFAR": ThinCIFAR, "ReLUMLP": ReLUMLP, "ToyMLP": ToyMLP}


def relu_net_config(model: nn.Module) -> dict:
    """``{"name": class name, "kwargs": {...}, "input_shape": [...]}`` for a model from this module."""
    name = type(model).__name__
    if name not in _MODELS or not isinstance(getattr(model, "config", None), ReluNetConfig):
        raise ValueError(f"{name} is not a network of invertible.models.relu_nets")
    return registry.config_to_dict(model.config)


def build_relu_net(config: Mapping[str, Any] | ReluNetConfig) -> nn.Module:
    """Rebuild a network from :func:`relu_net_config`'s dict (e.g. a checkpoint's metadata) or its config."""
    if isinstance(config, ReluNetConfig):
        config = registry.config_to_dict(config)
    name = config.get("name") if isinstance(config, Mapping) else None
    if name not in _MODELS:
        raise ValueError(f"unknown ReLU network {name!r}; expected one of {', '.join(_MODELS)}")
    return _MODELS[name](**config.get("kwargs", {}))


@registry.register_model("relu_net", ReluNetConfig)
def _build(config: ReluNetConfig) -> nn.Module:
    return build_relu_net(config)
