"""Invertible building blocks; every one is a :class:`Bijection`."""

from invertible.nn.activations import LipSwish
from invertible.nn.actnorm import ActNorm
from invertible.nn.base import Bijection
from invertible.nn.coupling import AdditiveCoupling
from invertible.nn.padding import InjectivePad
from invertible.nn.residual import ResidualBlock
from invertible.nn.sequential import InvertibleSequential
from invertible.nn.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "Bijection",
    "InjectivePad",
    "InvertibleSequential",
    "LipSwish",
    "ResidualBlock",
    "Squeeze",
]
