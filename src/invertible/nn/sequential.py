"""Composition of bijections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from invertible.nn.base import Bijection, check_input, validated_input

__all__ = ["InvertibleSequential"]


class InvertibleSequential(Bijection):
    """``F = f_T o ... o f_1``; ``log|det J_F(x)| = sum_t log|det J_{f_t}(x_t)|`` (chain rule, Lemma 5.5's proof);
    the inverse applies the inverses in reverse order. A ``ValueError`` raised by a layer is re-raised naming
    its index and type (``"layer 3 (ResidualBlock): ..."``).

    The input is checked (finite, batched) once here; the layers then skip their own finiteness test
    (:func:`~invertible.nn.base.validated_input`)."""

    container = True

    def __init__(self, *bijections: Bijection):
        super().__init__()
        for b in bijections:
            if not all(hasattr(b, m) for m in ("forward_and_logdet", "inverse")):
                raise TypeError(f"{type(b).__name__} is not a bijection (needs forward_and_logdet and inverse)")
        self.layers = nn.ModuleList(bijections)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "InvertibleSequential")
        with validated_input():
            for i, layer in enumerate(self.layers):
                with _naming(i, layer):
                    x = layer(x)
        return x

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, "InvertibleSequential")
        total = x.new_zeros(x.shape[0])
        with validated_input():
            for i, layer in enumerate(self.layers):
                with _naming(i, layer):
                    x, ld = layer.forward_and_logdet(x)
                total = total + ld
        return x, total

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "InvertibleSequential.inverse")
        with validated_input():
            for i in reversed(range(len(self.layers))):
                with _naming(i, self.layers[i]):
                    y = self.layers[i].inverse(y)
        return y


@contextmanager
def _naming(index: int, layer: nn.Module) -> Iterator[None]:
    """A ``ValueError`` of layer ``index`` (bad shape, non-contractive block, ...) says which layer it was."""
    try:
        yield
    except ValueError as err:
        if type(err) is not ValueError:
            raise
        raise ValueError(f"InvertibleSequential layer {index} ({type(layer).__name__}): {err}") from err
