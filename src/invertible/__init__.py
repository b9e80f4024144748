"""invertible: invertible neural networks after Behrmann's thesis.

i-ResNets (spectral normalization, fixed-point inverses), residual flows (log-det estimators, Flow),
invertibility analysis of ReLU networks, excessive invariance and IMS tumour typing.
"""

from invertible.activations import CLipSwish, LipSwish
from invertible.dense import DenseLayer
from invertible.distributions import Flow, FlowModel, StandardNormal, standard_normal
from invertible.inverse import (
    AbstractSolver,
    Anderson,
    FixedPoint,
    InverseNotConverged,
    InverseResult,
    NotConvergedWarning,
)
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
    AbstractLogDet,
    ExactLogDet,
    ForwardJacobianLogDet,
    PowerSeriesLogDet,
    RussianRouletteLogDet,
    evaluation_estimator,
    exact_jacobian,
    logdet_bounds,
    make_estimator,
    override_estimators,
    power_series_truncation_bound,
    set_estimators,
)
from invertible.nn import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Bijection,
    Flatten,
    InjectivePad,
    InvertibleSequential,
    LogitTransform,
    MultiScale,
    PreThen,
    ResidualBlock,
    Squeeze,
)

__version__ = "0.1.0"

__all__ = [
    "AbstractLogDet",
    "AbstractSolver",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Anderson",
    "Bijection",
    "ExactLogDet",
    "FixedPoint",
    "Flatten",
    "Flow",
    "FlowModel",
    "ForwardJacobianLogDet",
    "InjectivePad",
    "InverseNotConverged",
    "InverseResult",
    "InvertibleSequential",
    "LipSwish",
    "CLipSwish",
    "DenseLayer",
    "LogitTransform",
    "MultiScale",
    "NotConvergedWarning",
    "PowerSeriesLogDet",
    "PreThen",
    "ResidualBlock",
    "RussianRouletteLogDet",
    "SpectralNorm",
    "Squeeze",
    "StandardNormal",
    "converge_spectral_norms",
    "evaluation_estimator",
    "exact_jacobian",
    "frozen_spectral_norm",
    "lipschitz_constant",
    "local_lipschitz",
    "logdet_bounds",
    "make_estimator",
    "operator_norm",
    "operator_norm_upper_bound",
    "override_estimators",
    "power_series_truncation_bound",
    "set_estimators",
    "spectral_norm",
    "standard_normal",
]
