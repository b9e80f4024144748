"""Full-mode costs from measurement: the measured seconds per step of *this* run, scaled by the full settings.

A reproduction's quick mode runs a few steps of (a part of) its full-mode workload; the full run's cost is then

    seconds = seconds_per_step * full_steps * scale,

where ``seconds_per_step`` is measured here (CPU time of a single-threaded step, so that other jobs on a shared
machine do not inflate it) (:func:`time_steps` or the wall time of a training divided by its
steps), ``full_steps`` is the number of such steps the full settings take, and ``scale`` the ratio of work per
step when the measured step is not the full one (e.g. a smaller batch: ``scale = full_batch / quick_batch``).
Every estimate names the machine it was measured on (:func:`machine`), because a CPU-hour here is not one on a
GPU. Use it through :meth:`invertible.experiments.registry.RunContext.full_cost`, which also lists the estimate in
``metrics.json["full_costs"]`` and the reports.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["FullCost", "format_duration", "machine", "multiply_adds", "time_steps"]

_UNITS = (("weeks", 7 * 86400.0), ("days", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0))


def format_duration(seconds: float) -> str:
    """``"41 s"``, ``"3.2 min"``, ``"5.1 h"``, ``"2.3 days"``, ``"1.4 weeks"``: the largest unit reaching 1
    (weeks from 2 weeks on, so that "10 days" stays in days)."""
    if not seconds >= 0:
        raise ValueError(f"a duration must be a non-negative number of seconds, got {seconds!r}")
    for unit, size in _UNITS:
        if seconds >= (2 * size if unit == "weeks" else size):
            return f"{seconds / size:.2g} {unit}" if seconds / size < 10 else f"{seconds / size:.0f} {unit}"
    return f"{seconds:.2g} s"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """The machine a step time was measured on, in words: the CPU (cores, its load average - other jobs slow a
    shared machine down -, intra-op threads in use) or the GPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return (f"{_cpu_name()}, {os.cpu_count()} cores{load}, {torch.get_num_threads()} torch thread(s) "
            f"(torch {torch.__version__}, {platform.system()})")


def time_steps(step: Callable[[], object], n_steps: int, *, warmup: int = 1, cpu: bool = True) -> float:
    """Seconds per call of ``step()``: the mean over ``n_steps`` calls after ``warmup`` untimed ones. ``cpu=True``
    (default) measures process CPU time, which on a shared machine is what an idle core would take for a
    single-threaded step (wall time grows with the other jobs' load); ``cpu=False`` measures wall time (use it
    for multi-threaded or GPU steps)."""
    if n_steps < 1 or warmup < 0:
        raise ValueError(f"time_steps needs n_steps >= 1 and warmup >= 0, got {n_steps}, {warmup}")
    for _ in range(warmup):
        step()
    clock = time.process_time if cpu else time.perf_counter
    start = clock()
    for _ in range(n_steps):
        step()
    return (clock() - start) / n_steps


@dataclass(frozen=True)
class FullCost:
    """``seconds = seconds_per_step * full_steps * scale`` for ``what``, measured on ``machine``."""

    what: str
    seconds_per_step: float
    full_steps: float
    scale: float
    machine: str
    basis: str = ""

    def __post_init__(self):
        for name in ("seconds_per_step", "full_steps", "scale"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v >= 0 and v == v and v != float("inf")):
                raise ValueError(f"FullCost.{name} must be a finite number >= 0, got {v!r}")

    @property
    def seconds(self) -> float:
        return self.seconds_per_step * self.full_steps * self.scale

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    @property
    def days(self) -> float:
        return self.seconds / 86400.0

    @property
    def text(self) -> str:
        """E.g. ``"about 2.3 days on <machine> (0.41 s/step measured x 20000 steps x 24; <basis>)"``."""
        factor = f" x {self.scale:.3g}" if self.scale != 1 else ""
        basis = f"; {self.basis}" if self.basis else ""
        return (f"about {format_duration(self.seconds)} on {self.machine} ({self.seconds_per_step:.3g} s/step "
                f"measured x {self.full_steps:.6g} steps{factor}{basis})")

    def as_dict(self) -> dict:
        return {"what": self.what, "seconds": self.seconds, "hours": self.hours, "days": self.days,
                "seconds_per_step": self.seconds_per_step, "full_steps": self.full_steps, "scale": self.scale,
                "machine": self.machine, "basis": self.basis, "text": self.text}


def multiply_adds(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of the convolutions and linear layers in one forward pass of ``model(example)`` (counted by
    forward hooks on ``Conv1d/2d`` and ``Linear``: ``out.numel() * in_features_per_output``). The ratio of two
    models' counts scales a step time measured on one to the other (the estimator's terms scale alike)."""
    total = 0

    def hook(mod, inputs, out):
        nonlocal total
        if isinstance(mod, torch.nn.Linear):
            total += out.numel() * mod.in_features
        else:
            k = 1
            for s in mod.kernel_size:
                k *= s
            total += out.numel() * (mod.in_channels // mod.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Linear)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total
