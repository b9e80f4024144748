"""Optimizers and learning-rate schedules of the recipes, and the optimizer state as flat tensors.

Schedules are functions ``step -> lr``: linear warm-up then constant (Residual Flows), the step decay of
Appendix A.1 on a step budget, and cosine decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "cosine",
    "make_optimizer",
    "milestones",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "warmup_constant",
]

OPTIMIZERS = ("adam", "adamax", "sgd")


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, *, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"adam"`` / ``"adamax"`` (the fused kernel where available: same maths, fewer ops) or ``"sgd"`` with
    ``momentum`` (A.1)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = torch.optim.Adam if name == "adam" else torch.optim.Adamax
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=lr, weight_decay=weight_decay)


def warmup_constant(lr: float, warmup_steps: int = 0) -> Callable[[int], float]:
    """``lr * min(1, (t + 1) / warmup_steps)``: linear warm-up, then constant."""
    if warmup_steps <= 0:
        return lambda step: lr
    return lambda step: lr * min(1.0, (step + 1) / warmup_steps)


def milestones(lr: float, total_steps: int, fractions: Sequence[float] = (0.3, 0.6, 0.8),
               gamma: float = 0.2) -> Callable[[int], float]:
    """Appendix A.1 on a step budget: ``lr * gamma ** #{m : t >= ceil(m * total_steps)}``."""
    cuts = [math.ceil(m * total_steps) for m in fractions]
    return lambda step: lr * gamma ** sum(step >= c for c in cuts)


def cosine(lr: float, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """Linear warm-up, then ``lr * (1 + cos(pi t / T)) / 2`` down to 0 at ``total_steps``."""
    def at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        frac = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return at


def optimizer_state_to_tensors(prefix: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's state as flat tensors ``prefix.<param index>.<name>``; scalars (Adam's step counter as
    a Python number) become 0-dim float64 tensors and the param groups' settings are restored from the live
    optimizer on load (they are part of the run's config, and the schedule sets ``lr`` every step)."""
    out: dict[str, torch.Tensor] = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            out[f"{prefix}.{idx}.{name}"] = v if isinstance(v, torch.Tensor) else torch.tensor(float(v),
                                                                                                   dtype=torch.float64)
    return out


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_tensors` (``tensors`` without the prefix), for ``opt.load_state_dict``."""
    live = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": live["param_groups"]}
