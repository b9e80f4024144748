"""invertible: invertible neural networks after Behrmann's thesis.

i-ResNets (spectral normalization, fixed-point inverses), residual flows (log-det estimators, Flow),
invertibility analysis of ReLU networks, excessive invariance and IMS tumour typing.
"""

from invertible.distributions import Flow, standard_normal
from invertible.inverse import Anderson, FixedPoint, InverseNotConverged, InverseResult, NotConvergedWarning
from invertible.lipschitz import (
    SpectralNorm,
    converge_spectral_norms,
    frozen_spectral_norm,
    lipschitz_constant,
    local_lipschitz,
    operator_norm,
    operator_norm_upper_bound,
    spectral_norm,
)
from invertible.logdet import (
    ExactLogDet,
    PowerSeriesLogDet,
    RussianRouletteLogDet,
    exact_jacobian,
    logdet_bounds,
    power_series_truncation_bound,
)
from invertible.nn import (
    ActNorm,
    AdditiveCoupling,
    Bijection,
    InjectivePad,
    InvertibleSequential,
    LipSwish,
    ResidualBlock,
    Squeeze,
)

__version__ = "0.1.0"

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "Anderson",
    "Bijection",
    "ExactLogDet",
    "FixedPoint",
    "Flow",
    "InjectivePad",
    "InverseNotConverged",
    "InverseResult",
    "InvertibleSequential",
    "LipSwish",
    "NotConvergedWarning",
    "PowerSeriesLogDet",
    "ResidualBlock",
    "RussianRouletteLogDet",
    "SpectralNorm",
    "Squeeze",
    "converge_spectral_norms",
    "exact_jacobian",
    "frozen_spectral_norm",
    "lipschitz_constant",
    "local_lipschitz",
    "logdet_bounds",
    "operator_norm",
    "operator_norm_upper_bound",
    "power_series_truncation_bound",
    "spectral_norm",
    "standard_normal",
]
