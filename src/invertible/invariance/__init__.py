"""Excessive invariance (thesis chapter 6): adversarial spheres, metameric sampling, independence cross-entropy.

* :mod:`~invertible.invariance.spheres`: Example 6.6's mis-aligned classifier and the analytic perturbation and
  invariance attacks (Figure 6.3).
* :mod:`~invertible.invariance.metameric`: metameric samples ``F^{-1}(z_s, z~_n)`` (Definition 6.8, Figure 6.5).
* :mod:`~invertible.invariance.ice`: the independence cross-entropy with nuisance classifier and nuisance
  maximum likelihood (Definition 6.14, eq. 6.13); :mod:`~invertible.invariance.training` is its recipe on the
  training engine.
"""

from invertible.invariance.ice import (
    FactorizedGaussian,
    ICELosses,
    NuisanceClassifier,
    ice_losses,
    ice_metrics,
    ice_round,
    ice_step,
)
from invertible.invariance.metameric import logit_deviation, metameric_sample, nuisance_interpolation
from invertible.invariance.spheres import (
    MisalignedSphereClassifier,
    accuracy_vs_budget,
    attack_accuracy,
    invariance_attack,
    oracle,
    perturbation_attack,
    sample_sphere,
    sample_spheres,
)
from invertible.invariance.training import (
    ICEConfig,
    ICEObjective,
    ICESource,
    TrainResult,
    evaluate_error,
    ice_trainer,
    train_ice,
)

__all__ = [
    "FactorizedGaussian",
    "ICELosses",
    "ICEObjective",
    "ICESource",
    "MisalignedSphereClassifier",
    "NuisanceClassifier",
    "ICEConfig",
    "TrainResult",
    "accuracy_vs_budget",
    "attack_accuracy",
    "evaluate_error",
    "ice_losses",
    "ice_metrics",
    "ice_round",
    "ice_step",
    "ice_trainer",
    "invariance_attack",
    "logit_deviation",
    "metameric_sample",
    "nuisance_interpolation",
    "oracle",
    "perturbation_attack",
    "sample_sphere",
    "sample_spheres",
    "train_ice",
]
