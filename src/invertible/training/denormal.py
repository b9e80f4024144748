"""Flush subnormal floats to zero while training on a CPU.

ELU and LipSwish evaluate ``exp`` of large negative pre-activations; the results and their gradients land in the
subnormal range (below ~1.2e-38 in float32), which x86 CPUs process in slow microcode. Training an
unconstrained (vanilla) i-ResNet twin on Fashion-MNIST ran 0.6 s/step instead of 0.075 s/step for this reason,
with bit-identical losses when subnormals are flushed (they are far below every tolerance that matters here).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

__all__ = ["flush_denormals"]

_ACTIVE: ContextVar[bool] = ContextVar("invertible_flush_denormals", default=False)


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``torch.set_flush_denormal(True)`` (where the CPU supports it); afterwards it is set back
    to PyTorch's default, ``False``. Nested uses leave it on until the outermost one ends. A no-op with
    ``enabled=False``."""
    if not enabled or _ACTIVE.get():
        yield
        return
    supported = torch.set_flush_denormal(True)
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        if supported:
            torch.set_flush_denormal(False)
