"""Input validation at the library's boundaries: a leaf every layer may use.

:func:`check_input` names what is wrong with a batch (type, dims, channels, dtype, NaN/inf, range);
:func:`check_like_module` names a dtype or device that does not match a module's; :func:`validated_input` lets a
composition test finiteness once at its boundary instead of in every layer (each test is a device-to-host sync).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

__all__ = [
    "check_count",
    "check_real",
    "check_input",
    "check_like_module",
    "check_estimator_input",
    "sync_free_step",
    "validated_input",
    "values_validated",
]

_VALIDATED: ContextVar[bool] = ContextVar("invertible_input_validated", default=False)
_SYNC_FREE: ContextVar[bool] = ContextVar("invertible_sync_free_step", default=False)


@contextmanager
def validated_input() -> Iterator[None]:
    """Inside, :func:`check_input` skips its finiteness test (shape and dtype checks stay).

    A composition checks ``isfinite`` once at its boundary and runs its layers inside this context: the test is a
    full reduction plus a device-to-host sync, which on a GPU would stall every one of dozens of blocks."""
    token = _VALIDATED.set(True)
    try:
        yield
    finally:
        _VALIDATED.reset(token)


@contextmanager
def sync_free_step() -> Iterator[None]:
    """A training step without device-to-host syncs: :func:`validated_input`, and :func:`check_input` skips its
    ``bounds`` test as well. The engine enters it on accelerators; a bad batch then shows up in the loss, which the
    log interval checks."""
    token = _SYNC_FREE.set(True)
    try:
        with validated_input():
            yield
    finally:
        _SYNC_FREE.reset(token)


def values_validated() -> bool:
    """True inside :func:`validated_input`: the enclosing composition has tested the values already."""
    return _VALIDATED.get()


def _autocasting() -> bool:
    return any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))


def check_input(
    x: torch.Tensor,
    name: str,
    min_dim: int = 2,
    n_channels: int | None = None,
    bounds: tuple[float, float] | None = None,
) -> None:
    """Validate at the boundary: a floating tensor with a batch dimension, finite, the right channels, and with
    ``bounds = (lo, hi)`` every value in ``[lo, hi]``.

    The finiteness test is skipped inside :func:`validated_input` (the enclosing composition has done it): it is a
    full reduction plus a device-to-host sync. A ``bounds`` test runs inside it too (a composition tests finiteness
    only); only :func:`sync_free_step` skips it.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name}: expected a batch of shape (batch, ...) with >= {min_dim} dims, got {tuple(x.shape)}")
    if n_channels is not None and x.shape[1] != n_channels:
        raise ValueError(f"{name}: expected {n_channels} channels in dim 1, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name}: expected a floating point tensor, got {x.dtype}")
    if not _VALIDATED.get() and not torch.isfinite(x).all():
        raise ValueError(f"{name}: input contains NaN or inf")
    if bounds is not None and x.numel() and not _SYNC_FREE.get() \
            and bool(((x < bounds[0]) | (x > bounds[1])).any()):
        raise ValueError(f"{name}: expects values in [{bounds[0]:g}, {bounds[1]:g}], got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")


def check_like_module(x: torch.Tensor, module: nn.Module, name: str) -> None:
    """A tensor the module can take: same floating dtype and device as the module's first parameter or buffer.

    Names both sides (``x.double()`` into a float32 model would otherwise fail deep inside a layer with torch's
    "mat1 and mat2 must have the same dtype"). A module without parameters or buffers accepts any dtype."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    ref = next(module.parameters(), None)
    if ref is None:
        ref = next((b for b in module.buffers() if torch.is_floating_point(b)), None)
    if ref is None:
        return
    if x.dtype != ref.dtype and not _autocasting():
        raise ValueError(f"{name}: input dtype {x.dtype} does not match the model's {ref.dtype} "
                         f"(convert the input with .to({ref.dtype}) or the model with .to(dtype))")
    if x.device != ref.device:
        raise ValueError(f"{name}: input on {x.device} but the model on {ref.device} (move one with .to(device))")


def check_estimator_input(g, x: torch.Tensor, name: str) -> None:
    """The input of a log-det estimator or inverse solver for ``g``: :func:`check_input` on ``x`` and, when ``g`` is
    a module, :func:`check_like_module` (a float64 batch into a float32 ``g`` is named here, not deep in a layer)."""
    check_input(x, name)
    if isinstance(g, nn.Module):
        check_like_module(x, g, name)


def check_count(name: str, value, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (an integral float such as ``3.0`` passes; ``True``, ``2.5``, ``"3"``, NaN, inf do
    not), returned as ``int``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        ok = isinstance(value, float) and math.isfinite(value) and value == int(value)
        if not ok:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}") from None
        v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(v)


def check_real(name: str, value, minimum: float | None = None, *, strict: bool = False,
               maximum: float | None = None) -> float:
    """A finite real number (not NaN, not inf, not a bool or a string) ``>= minimum`` (``> minimum`` when
    ``strict``) and ``<= maximum``, returned as ``float``."""
    bound = "" if minimum is None else (f" > {minimum:g}" if strict else f" >= {minimum:g}")
    bound += "" if maximum is None else f" and <= {maximum:g}"
    try:
        v = float(value) if not isinstance(value, bool | str) else math.nan
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or (minimum is not None and (v <= minimum if strict else v < minimum)) \
            or (maximum is not None and v > maximum):
        raise ValueError(f"{name} must be a finite number{bound}, got {name}={value!r}")
    return v
