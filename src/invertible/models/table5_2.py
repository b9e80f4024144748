"""The library's stand-ins for the methods compared in thesis Table 5.2, as small model instances.

Each entry builds the library's own model of that kind (the cells of the table are then *derived* from the
instances by :func:`invertible.nn.capabilities.model_capabilities`, never written down):

* ResNet: :func:`~invertible.models.toy_resnet.vector_residual_features` with ``coeff=None`` (no Lipschitz control).
* NICE / i-RevNet: :func:`~invertible.models.firevnet.fi_revnet` (additive couplings, ActNorm, squeezes).
* Real-NVP: :func:`~invertible.models.coupling_baseline.coupling_flow` (affine couplings and ActNorm; with ActNorm
  this is also Glow without its invertible 1x1 convolutions).
* i-ResNet: :func:`~invertible.models.resflow.vector_residual_flow`, ``mode="iresnet"`` (truncated power series).
* Residual Flow: the same, ``mode="resflow"`` (Russian roulette, Chen et al. 2019).

Methods of the table the library does not implement are listed in :data:`NOT_IMPLEMENTED` with the reason; they
get no column.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from invertible.models.coupling_baseline import coupling_flow
from invertible.models.firevnet import fi_revnet
from invertible.models.resflow import vector_residual_flow
from invertible.models.toy_resnet import vector_residual_features

__all__ = ["NOT_IMPLEMENTED", "THESIS_NAMES", "table5_2_models"]

# thesis column -> library builder of a small instance
_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "ResNet": lambda: vector_residual_features(2, n_blocks=2, hidden=8, coeff=None),
    "NICE / i-RevNet (fi-RevNet)": lambda: fi_revnet((1, 4, 4), 2, n_squeeze=1, conv_blocks=1, hidden=4,
                                                     dense_blocks=1, dense_hidden=8, head_hidden=0),
    "Real-NVP (affine coupling)": lambda: coupling_flow(2, n_blocks=2, hidden=(8,)),
    "i-ResNet": lambda: vector_residual_flow(2, n_blocks=2, hidden=(8,), mode="iresnet"),
    "Residual Flow": lambda: vector_residual_flow(2, n_blocks=2, hidden=(8,), mode="resflow"),
}

# the thesis's name of the method each column stands for (for comparing with its table)
THESIS_NAMES: dict[str, str] = {
    "ResNet": "ResNet", "NICE / i-RevNet (fi-RevNet)": "NICE", "Real-NVP (affine coupling)": "Real-NVP",
    "i-ResNet": "i-ResNet", "Residual Flow": "Residual Flow",
}

NOT_IMPLEMENTED: dict[str, str] = {
    "Glow": "needs invertible 1x1 convolutions (inverted numerically), which the library does not implement",
    "FFJORD": "a continuous-time flow (Neural ODE solved adaptively); the library has no ODE solver",
}


def table5_2_models() -> dict[str, nn.Module]:
    """A fresh small instance of every implemented Table 5.2 method, keyed by column name."""
    return {name: build() for name, build in _BUILDERS.items()}
