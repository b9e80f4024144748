"""Elementwise kernels fused by ``torch.compile``, with the eager function as the fallback.

An activation's forward and backward inside a residual block are chains of elementwise operations on the
largest tensors of a training step (for LipSwish's double backward about fifteen of them, each one pass over
memory and one fresh allocation). A :class:`FusedKernel` wraps such a chain, written once as a plain function
of tensors, and runs it compiled (Inductor: one C++/OpenMP loop on the CPU, one Triton kernel on CUDA, no
temporaries) where that pays, and eagerly elsewhere. Both run the same function, so both give the same numbers
up to floating-point rounding (a fused loop rounds fewer intermediates).

Policy (:func:`set_fused_kernels`, or the ``INVERTIBLE_FUSED`` environment variable, read once at import):

* ``"auto"`` (default): compiled for inputs of at least :data:`AUTO_MIN_NUMEL` elements (image-scale activations,
  where the kernels dominate a training step and a one-off compile of a few seconds amortizes), eager for smaller
  ones (tests, 2-D toys, density plots). The choice depends on the input's size only, never on what ran before,
  so that a resumed run computes every step as the uninterrupted run did, bit for bit (a fused loop rounds
  differently from the eager chain);
* ``"on"``: compiled for every size; ``"off"``: always eager.

A kernel is compiled with dynamic shapes, so batch, chunk and feature-map sizes do not trigger recompiles. If
compiling or the first compiled call fails (no C++ compiler, an unsupported platform or device), the kernel
warns once and stays eager for the rest of the process. Kernels are never differentiated through: callers are
``torch.autograd.Function`` forwards and backwards, which run without grad.

Leaf module: imports only torch.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "AUTO_MIN_NUMEL", "FusedKernel", "fused", "fused_kernels", "fused_kernels_mode", "keep_distribution_validation",
    "set_fused_kernels",
]

#: ``"auto"`` compiles a kernel for inputs of at least this many elements (16 x 64 x 16 x 8; a 16-sample chunk of
#: 64 feature maps of 14 x 14 is above, a density plot of 5000 points x 8 hidden units far below).
AUTO_MIN_NUMEL = 1 << 17

_MODES = ("auto", "on", "off")


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"fused kernels: mode must be one of {_MODES}, got {mode!r}")
    return mode


_mode = os.environ.get("INVERTIBLE_FUSED", "auto").strip().lower() or "auto"
if _mode not in _MODES:
    warnings.warn(f"INVERTIBLE_FUSED={_mode!r} is not one of {_MODES}; using 'auto'", RuntimeWarning, stacklevel=1)
    _mode = "auto"


def set_fused_kernels(mode: str) -> None:
    """Set the process-wide policy: ``"auto"``, ``"on"`` or ``"off"`` (module docstring)."""
    global _mode
    _mode = _check_mode(mode)


def fused_kernels_mode() -> str:
    """The current policy."""
    return _mode


@contextlib.contextmanager
def fused_kernels(mode: str) -> Iterator[None]:
    """Within this context the policy is ``mode`` (restored afterwards)."""
    global _mode
    previous, _mode = _mode, _check_mode(mode)
    try:
        yield
    finally:
        _mode = previous


@contextlib.contextmanager
def keep_distribution_validation() -> Iterator[None]:
    """Dynamo switches off argument validation of ``torch.distributions`` process-wide when it compiles; the
    library's distributions rely on it (NaN inputs raise). Around a ``torch.compile`` call, this puts it back."""
    validate = torch.distributions.Distribution._validate_args
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def _inside_transform_or_trace() -> bool:
    """True under torch.func transforms or while Dynamo traces (an outer ``torch.compile`` fuses by itself)."""
    try:
        if torch._C._are_functorch_transforms_active():
            return True
    except AttributeError:
        return True
    return bool(torch.compiler.is_compiling())


class FusedKernel:
    """``fn`` (a function of tensors returning a tensor or a tuple of them), compiled per the policy.

    ``kernel(*args)`` decides by the first argument's size; :attr:`compiled_calls` counts the calls that ran
    compiled (tests and benchmarks read it)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")
        self.__doc__ = fn.__doc__
        self._compiled: Callable[..., Any] | None = None
        self._failed = False
        self.compiled_calls = 0

    def _wanted(self, first: torch.Tensor) -> bool:
        if self._failed or _mode == "off" or (_mode == "auto" and first.numel() < AUTO_MIN_NUMEL):
            return False  # the common case of small tensors: decided before any query of torch's state
        return not _inside_transform_or_trace()

    def __call__(self, *args: Any) -> Any:
        if not self._wanted(args[0]):
            return self.fn(*args)
        try:
            with keep_distribution_validation():
                if self._compiled is None:
                    self._compiled = torch.compile(self.fn, dynamic=True)
                with torch.no_grad():
                    out = self._compiled(*args)
        except Exception as err:  # no compiler, unsupported device or platform: eager from now on
            self._failed = True
            warnings.warn(f"fused kernel {self.__name__}: torch.compile failed ({type(err).__name__}: "
                          f"{str(err)[:200]}); running it eagerly", RuntimeWarning, stacklevel=2)
            return self.fn(*args)
        self.compiled_calls += 1
        return out


def fused(fn: Callable[..., Any]) -> FusedKernel:
    """Decorator: ``fn`` as a :class:`FusedKernel`."""
    return FusedKernel(fn)
