"""What a bijection can do (the rows of thesis Table 5.2), declared by each bijection class, combined per model.

Every field is tri-state: ``True``/``False``, or ``None`` where it does not apply (a fixed layer such as a
squeeze has no learnable function to be free-form; a closed-form log-det is not stochastic; an unconstrained
residual block is no bijection at all, so only its forward is described).

* ``free_form``: the learnable function may be any architecture (no dimension splitting), e.g. ``x + g(x)``.
* ``analytic_forward`` / ``analytic_inverse``: computed in closed form (not by an iterative or ODE solver).
* ``volume_preserving``: ``log|det J| = 0`` for every input.
* ``exact_logdet``: the change of variables (eq. 5.4) is computed exactly, at a cost that scales with the
  dimension (a closed form; an ``O(d^3)`` Jacobian determinant does not count).
* ``unbiased_logdet``: for a stochastic log-det estimate, whether it is unbiased (Section 5.2.2).
* ``bi_lipschitz``: Lipschitz bounds on forward and inverse hold by construction (Lemma 4.6); ``None`` for a
  fixed layer whose constants are its own exact ones (ActNorm's scales, a permutation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Capabilities", "ROWS", "combine", "logdet_rows"]


@dataclass(frozen=True)
class Capabilities:
    free_form: bool | None = None
    analytic_forward: bool | None = None
    analytic_inverse: bool | None = None
    volume_preserving: bool | None = None
    exact_logdet: bool | None = None
    unbiased_logdet: bool | None = None
    bi_lipschitz: bool | None = None


# (row label of Table 5.2, field, how layers combine: "all" of the applicable ones, or "any not" of the learnable)
ROWS: tuple[tuple[str, str, str], ...] = (
    ("Free-form", "free_form", "all"),
    ("Analytic forward", "analytic_forward", "all"),
    ("Analytic inverse", "analytic_inverse", "all"),
    ("Non-volume preserving", "volume_preserving", "any not"),
    ("Exact likelihood", "exact_logdet", "all"),
    ("Unbiased stoch. log-det est.", "unbiased_logdet", "all"),
    ("Lipschitz bounds forward and inverse", "bi_lipschitz", "all"),
)


def logdet_rows(estimator) -> Capabilities:
    """The two log-det rows an estimator (class or instance of ``AbstractLogDet``: its ``kind``, ``stochastic`` and
    ``scalable``) gives a residual block: exact likelihood only for an exact estimator that scales, and for a
    stochastic one whether it is unbiased."""
    return Capabilities(exact_logdet=bool(estimator.kind == "exact" and estimator.scalable),
                        unbiased_logdet=(estimator.kind == "unbiased") if estimator.stochastic else None)


def row_value(caps: Capabilities, name: str, rule: str) -> bool | None:
    """One layer's value in a row: the field, negated for an ``"any not"`` row (non-volume preserving)."""
    v = getattr(caps, name)
    return v if rule == "all" or v is None else not v


def combine(layers: list[Capabilities]) -> dict[str, bool | None]:
    """A composition's row values from its layers' (rule per :data:`ROWS`):

    * ``"all"``: ``None`` if no layer has the row, else whether every layer that has it says ``True``;
    * ``"any not"`` (non-volume preserving): whether some layer with a learnable function (``free_form`` not
      ``None``) changes volume; fixed layers (ActNorm, squeezes) do not make a volume-preserving model NVP.
    """
    names = {f.name for f in fields(Capabilities)}
    out: dict[str, bool | None] = {}
    for _, name, rule in ROWS:
        assert name in names
        if rule == "all":
            vals = [getattr(c, name) for c in layers if getattr(c, name) is not None]
            out[name] = None if not vals else all(vals)
        else:
            vals = [getattr(c, name) for c in layers if c.free_form is not None and getattr(c, name) is not None]
            out[name] = None if not vals else any(not v for v in vals)
    return out
