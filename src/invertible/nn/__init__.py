"""Invertible building blocks; every one is a :class:`Bijection`."""

from invertible.activations import LipSwish
from invertible.nn.actnorm import ActNorm
from invertible.nn.base import Bijection
from invertible.nn.conditional import (
    ConditionalBijection,
    ConditionalResidualBlock,
    ConditionalSequential,
    Conditioned,
)
from invertible.nn.coupling import AdditiveCoupling, AffineCoupling
from invertible.nn.flatten import Flatten
from invertible.nn.logit import LogitTransform
from invertible.nn.multiscale import MultiScale, PreThen
from invertible.nn.padding import InjectivePad
from invertible.nn.residual import ResidualBlock
from invertible.nn.sequential import InvertibleSequential
from invertible.nn.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Bijection",
    "ConditionalBijection",
    "ConditionalResidualBlock",
    "ConditionalSequential",
    "Conditioned",
    "Flatten",
    "InjectivePad",
    "InvertibleSequential",
    "LipSwish",
    "LogitTransform",
    "MultiScale",
    "PreThen",
    "ResidualBlock",
    "Squeeze",
]
