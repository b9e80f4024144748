"""Thesis Table 5.2 from the code: what each bijection and each log-det estimator declares, and what a model
built from them can do.

* :func:`bijection_classes`: every layer class (a :class:`~invertible.nn.base.Bijection` subclass that declares
  ``CAPABILITIES``), found by walking the subclass tree, so a new bijection shows up without editing a list.
* :func:`estimator_classes`: every concrete :class:`~invertible.logdet.AbstractLogDet` (``kind``, ``stochastic``,
  ``scalable``).
* :func:`model_capabilities`: a model's Table 5.2 column, combined from the capabilities of its layer instances
  (:func:`invertible.nn.traits.combine`); a residual block's log-det rows follow its estimator.
* :func:`verify_capabilities`: tests the declarations on a model's layer instances (volume, inverse, Lemma 4.6,
  unbiasedness).
* :func:`capability_table`, :func:`layer_table`, :func:`estimator_table`: the markdown tables.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from invertible.logdet import AbstractLogDet
from invertible.nn.base import Bijection
from invertible.nn.traits import ROWS, combine, logdet_rows, row_value

__all__ = ["Check", "bijection_classes", "capability_table", "estimator_classes", "estimator_table", "layer_table",
           "layers_of", "model_capabilities", "undeclared_bijection_classes", "verify_capabilities"]

MARK = {True: "✓", False: "✗", None: "N/A"}


def _subclasses(cls: type) -> list[type]:
    out, stack = [], list(cls.__subclasses__())
    while stack:
        c = stack.pop()
        if c not in out:
            out.append(c)
            stack.extend(c.__subclasses__())
    return sorted(out, key=lambda c: (c.__module__, c.__qualname__))


def bijection_classes() -> list[type[Bijection]]:
    """Every layer class that declares its capabilities (containers, which are described by their layers, and
    classes without a declaration are left out; see :func:`undeclared_bijection_classes`)."""
    return [c for c in _subclasses(Bijection) if c.CAPABILITIES is not None and not c.container]


def undeclared_bijection_classes() -> list[type[Bijection]]:
    """Layer classes (not containers) that declare no capabilities: a model using one has no Table 5.2 column."""
    return [c for c in _subclasses(Bijection) if c.CAPABILITIES is None and not c.container]


def estimator_classes() -> list[type[AbstractLogDet]]:
    """Every concrete log-det estimator class (public name, not abstract)."""
    return [c for c in _subclasses(AbstractLogDet) if not inspect.isabstract(c) and not c.__name__.startswith("_")]


def layers_of(model: nn.Module) -> list[Bijection]:
    """The layer bijections of ``model`` in module order: every Bijection that is not a container."""
    return [m for m in model.modules() if isinstance(m, Bijection) and not m.container]


def model_capabilities(model: nn.Module) -> dict[str, bool | None]:
    """The Table 5.2 column of ``model`` (keyed by :class:`~invertible.nn.traits.Capabilities` field)."""
    layers = layers_of(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no bijection layer, so it has no Table 5.2 column")
    return combine([m.capabilities() for m in layers])


def capability_table(columns: Mapping[str, Mapping[str, bool | None]]) -> str:
    """Markdown table: one row per :data:`~invertible.nn.traits.ROWS` entry, one column per model."""
    names = list(columns)
    lines = ["| Method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, _ in ROWS:
        lines.append(f"| {label} | " + " | ".join(MARK[columns[n][key]] for n in names) + " |")
    return "\n".join(lines)


def _layer_cell(cls: type[Bijection], key: str, rule: str) -> str:
    if getattr(cls, "logdet_from_estimator", False) and key in ("exact_logdet", "unbiased_logdet"):
        return "estimator"
    return MARK[row_value(cls.CAPABILITIES, key, rule)]


def layer_table(classes: list[type[Bijection]] | None = None) -> str:
    """Markdown table of the declared capabilities of every layer class (default: :func:`bijection_classes`);
    the log-det cells of a block whose estimator is pluggable read "estimator" (see :func:`estimator_table`)."""
    classes = bijection_classes() if classes is None else classes
    lines = ["| Layer | " + " | ".join(label for label, _, _ in ROWS) + " |", "|---|" + "---|" * len(ROWS)]
    for cls in classes:
        lines.append(f"| `{cls.__name__}` | " + " | ".join(_layer_cell(cls, key, rule) for _, key, rule in ROWS) + " |")
    return "\n".join(lines)


def estimator_table(classes: list[type[AbstractLogDet]] | None = None) -> str:
    """Markdown table of every log-det estimator: its value kind, whether it is stochastic and scales, and the
    two log-det rows of Table 5.2 it gives a residual block."""
    classes = estimator_classes() if classes is None else classes
    lines = ["| Estimator | value | stochastic | scales to high d | Exact likelihood | Unbiased stoch. log-det est. |",
             "|---|---|---|---|---|---|"]
    for cls in classes:
        rows = logdet_rows(cls)
        lines.append(f"| `{cls.__name__}` | {cls.kind} | {MARK[cls.stochastic]} | {MARK[cls.scalable]} | "
                     f"{MARK[rows.exact_logdet]} | {MARK[rows.unbiased_logdet]} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Check:
    """One declared capability tested on one layer instance: ``value`` against ``limit`` (``ok``)."""

    layer: str
    capability: str
    value: float
    limit: float
    ok: bool


def _top_bijection(model: nn.Module) -> Bijection:
    for m in model.modules():
        if isinstance(m, Bijection):
            return m
    raise ValueError(f"{type(model).__name__} contains no bijection")


@torch.no_grad()
def verify_capabilities(model: nn.Module, x: torch.Tensor, *, n_draws: int = 200, tol: float = 1e-9) -> list[Check]:
    """Test what the layers of ``model`` declare, on their actual inputs when ``x`` (float64 advised) passes
    through the model's outermost bijection:

    * volume preserving: ``max |log|det J|| <= tol``;
    * analytic inverse: ``max |f^{-1}(f(x)) - x| <= tol``;
    * bi-Lipschitz (layers with ``bi_lipschitz_bounds``, Lemma 4.6): the ratios ``|f(a) - f(b)| / |a - b|`` over
      pairs of inputs lie in ``[1 / Lip(f^{-1}), Lip(f)]`` (value: the worst ratio to its bound, limit 1);
    * unbiased stochastic log-det: the mean of ``n_draws`` estimates is within 4 standard errors of the exact
      log-det (``ExactLogDet``; value: the largest ``|z|``, limit 4).

    A first pass in training mode initializes ActNorm and the power iterations; the checks run in eval mode."""
    from invertible.logdet import ExactLogDet

    top = _top_bijection(model)
    inputs: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args: inputs.setdefault(id(mod), args[0]))
               for m in layers_of(top)]
    was = model.training
    try:
        model.train()
        top(x)
        inputs.clear()
        model.eval()
        top(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    checks: list[Check] = []
    for i, layer in enumerate(layers_of(top)):
        xin = inputs.get(id(layer))
        if xin is None:
            continue
        name = f"{i}:{type(layer).__name__}"
        caps = layer.capabilities()
        y, logdet = layer.forward_and_logdet(xin)
        if caps.volume_preserving:
            v = float(logdet.abs().max())
            checks.append(Check(name, "volume preserving", v, tol, v <= tol))
        if caps.analytic_inverse:
            v = float((layer.inverse(y) - xin).abs().max())
            checks.append(Check(name, "analytic inverse", v, tol, v <= tol))
        bounds = layer.bi_lipschitz_bounds() if caps.bi_lipschitz and hasattr(layer, "bi_lipschitz_bounds") else None
        if bounds is not None and xin.shape[0] > 1:
            a, b = xin.flatten(1), xin.roll(1, 0).flatten(1)
            fa, fb = y.flatten(1), y.roll(1, 0).flatten(1)
            ratio = (fa - fb).norm(dim=1) / (a - b).norm(dim=1)
            worst = max(float(ratio.max()) / bounds[0], 1.0 / (float(ratio.min()) * bounds[1]))
            checks.append(Check(name, "Lemma 4.6 bi-Lipschitz", worst, 1.0, worst <= 1.0))
        if caps.unbiased_logdet and hasattr(layer, "g") and hasattr(layer, "logdet"):
            exact = ExactLogDet()(layer.g, xin)[1]
            with torch.enable_grad():
                draws = torch.stack([layer.logdet(layer.g, xin)[1].detach() for _ in range(n_draws)])
            se = draws.std(0) / n_draws ** 0.5
            z = float(((draws.mean(0) - exact).abs() / se.clamp_min(1e-300)).max())
            checks.append(Check(name, "unbiased log-det", z, 4.0, z <= 4.0))
    return checks
