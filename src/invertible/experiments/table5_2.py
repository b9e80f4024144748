"""Table 5.2: capabilities of invertible architectures, derived from the library's code.

Every cell comes from the bijection classes' declared ``CAPABILITIES`` and the log-det estimators' ``kind`` /
``stochastic`` / ``scalable`` (:mod:`invertible.nn.capabilities`), combined over the layers of a small instance of
each method the library implements (:mod:`invertible.models.table5_2`). The declarations are then tested on the
instances (volume preservation, analytic inverse, Lemma 4.6, unbiasedness), and each column is compared with the
thesis's. Adding a bijection class adds a row to the per-layer table; a model that uses it changes its column.
"""

from __future__ import annotations

import torch

from invertible.experiments.registry import RunContext, register
from invertible.nn.capabilities import (
    capability_table,
    estimator_table,
    layer_table,
    model_capabilities,
    undeclared_bijection_classes,
    verify_capabilities,
)
from invertible.nn.traits import ROWS

THESIS = """\
| Method | ResNet | NICE | Real-NVP | Glow | FFJORD | i-ResNet |
|---|---|---|---|---|---|---|
| Free-form | ✓ | ✗ | ✗ | ✗ | ✓ | ✓ |
| Analytic Forward | ✓ | ✓ | ✓ | ✓ | ✗ | ✓ |
| Analytic Inverse | N/A | ✓ | ✓ | ✗ | ✗ | ✗ |
| Non-volume Preserving | N/A | ✗ | ✓ | ✓ | ✓ | ✓ |
| Exact Likelihood | N/A | ✓ | ✓ | ✓ | ✗ | ✗ |
| Unbiased Stoch. Log-Det Est. | N/A | N/A | N/A | N/A | ✓ | ✗ |

"The follow-up work (Chen et al., 2019) introduces an unbiased estimator for i-ResNet architectures" (Residual
Flows). "An i-ResNet block has a Lipschitz bound both for forward and inverse (Lemma 4.6), while other approaches
do not have this property by construction."
"""

Y, N, NA = True, False, None
# The thesis's columns (Table 5.2 and the two sentences after it), only to compare our derived cells with.
# Order: free-form, analytic forward, analytic inverse, non-volume preserving, exact likelihood, unbiased, Lipschitz.
THESIS_COLUMNS: dict[str, tuple[bool | None, ...]] = {
    "ResNet": (Y, Y, NA, NA, NA, NA, NA),
    "NICE": (N, Y, Y, N, Y, NA, N),
    "Real-NVP": (N, Y, Y, Y, Y, NA, N),
    "i-ResNet": (Y, Y, N, Y, N, N, Y),
    "Residual Flow": (Y, Y, N, Y, N, Y, Y),
}


def _example_input(model: torch.nn.Module, n: int, generator: torch.Generator) -> torch.Tensor:
    shape = getattr(model, "event_shape", None) or getattr(model, "input_shape", None) or (2,)
    return torch.randn(n, *shape, generator=generator, dtype=torch.float64)


def settings(ctx: RunContext) -> dict[str, int]:
    """Inputs per instance and Monte Carlo draws of the capability checks (16 / 200 quick, 64 / 1000 full); a
    budgeted run (``--budget``) grows both with power 1/2 (the checks cost inputs x draws)."""
    return {"n_inputs": ctx.scaled("n_inputs", 16, 64, power=0.5),
            "n_draws": ctx.scaled("n_draws", 200, 1000, power=0.5)}


@register("table5.2", title="Capabilities of invertible architectures, derived from the code", thesis=THESIS)
def run(ctx: RunContext) -> dict:
    from invertible.models.table5_2 import NOT_IMPLEMENTED, THESIS_NAMES, table5_2_models

    torch.manual_seed(ctx.seed)
    models = {name: m.double() for name, m in table5_2_models().items()}
    columns = {name: model_capabilities(m) for name, m in models.items()}
    st = settings(ctx)
    checks = {name: verify_capabilities(m, _example_input(m, st["n_inputs"], ctx.generator(i)),
                                        n_draws=st["n_draws"])
              for i, (name, m) in enumerate(models.items())}
    ctx.report("Derived from the code (small instances of each method):\n\n" + capability_table(columns))
    ctx.report("Not in the library, hence no column: "
               + "; ".join(f"**{k}** ({v})" for k, v in NOT_IMPLEMENTED.items()) + ".")
    ctx.report("Per layer class (every `Bijection` subclass that declares `CAPABILITIES`):\n\n" + layer_table())
    ctx.report("Per log-det estimator (every concrete `AbstractLogDet`), the two log-det rows it gives a residual "
               "block:\n\n" + estimator_table())
    undeclared = undeclared_bijection_classes()
    if undeclared:
        ctx.report("Layer classes without a declaration: " + ", ".join(c.__name__ for c in undeclared))
    flat = [c for cs in checks.values() for c in cs]
    rows = ["| column | layer | capability | value | limit | holds |", "|---|---|---|---|---|---|"]
    rows += [f"| {name} | {c.layer} | {c.capability} | {c.value:.3g} | {c.limit:.3g} | {'yes' if c.ok else '**no**'} |"
             for name, cs in checks.items() for c in cs]
    ctx.report(f"The declarations tested on the instances ({len(flat)} checks, float64):\n\n" + "\n".join(rows))

    keys = [key for _, key, _ in ROWS]
    labels = {key: label for label, key, _ in ROWS}
    agreement = {}
    for name, col in columns.items():
        thesis = dict(zip(keys, THESIS_COLUMNS[THESIS_NAMES[name]], strict=True))
        diff = [f"{labels[k]}: ours {col[k]}, thesis {thesis[k]}" for k in keys if col[k] != thesis[k]]
        agreement[name] = not diff
        ctx.claim(f"the {name} column agrees with the thesis's {THESIS_NAMES[name]} column", not diff,
                  "all 7 rows agree" if not diff else "; ".join(diff), mismatches=len(diff))
    bad = [f"{name} {c.layer} {c.capability} ({c.value:.3g} > {c.limit:.3g})"
           for name, cs in checks.items() for c in cs if not c.ok]
    ctx.claim("every declared capability holds on the instances (volume, inverse, Lemma 4.6, unbiasedness)",
              not bad, f"{len(flat)} checks, all hold" if not bad else "; ".join(bad), n_checks=len(flat))
    return {"columns": columns, "agrees_with_thesis": agreement, "n_checks": len(flat),
            "failed_checks": bad, "not_implemented": list(NOT_IMPLEMENTED)}
