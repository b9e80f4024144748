"""Ready-made models and the model registry (:mod:`invertible.models.registry`).

Importing the package imports every model module, so every built-in kind is registered before
:func:`~invertible.models.registry.build_model` is called.
"""

from invertible.models import (  # noqa: F401  (imported for their registrations)
    conditional,
    coupling_baseline,
    firevnet,
    hybrid,
    iresnet,
    relu_nets,
    resflow,
    resnet,
)
from invertible.models.conditional import ConditionalResFlowConfig, conditional_residual_flow
from invertible.models.registry import build_model, config_from_dict, config_to_dict, model_kinds, register_model
from invertible.models.resflow import DensityModel, image_residual_flow, vector_residual_flow

__all__ = [
    "ConditionalResFlowConfig",
    "conditional_residual_flow",
    "DensityModel",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "image_residual_flow",
    "model_kinds",
    "register_model",
    "vector_residual_flow",
]
