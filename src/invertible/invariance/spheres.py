"""Adversarial spheres and the two analytic on-manifold attacks of Example 6.6 (thesis Section 6.2.1).

Data (Example 6.5, Gilmer et al. 2018): points on two concentric spheres in ``R^d`` with radii ``R1 < R2``;
the oracle labels a point by its sphere, ``O(x) = 0`` (inner, ``||x|| = R1``) or ``1`` (outer, ``||x|| = R2``).

Mis-aligned classifier (Example 6.6): with ``u(x) = ||x_{1..d-n}||_2`` the norm of the *used* coordinates,

    D(x) = sign(u(x) - b),     b = l + (u_min - l) / 2,
    l = max_{x in T, ||x|| = R1} u(x),   u_min = min_{x in T, ||x|| = R2} u(x),

the max-margin bias on a finite training set T (which must be separable, ``l <= u_min``). The last ``n``
coordinates are ignored. Writing ``x = u * e_u + v * e_v`` with ``e_u`` the unit vector of the used and ``e_v`` of
the unused coordinates (``u^2 + v^2 = ||x||^2``), both attacks move x inside the plane spanned by
``(e_u, e_v)``, which is the l2-closest way to change ``(u, v)``:

* **perturbation attack** (outer sphere, eq. 6.1): rotate on the sphere of x towards the decision boundary,
  ``(u, v) = R (cos t, sin t)``, until ``u`` crosses ``b``. The chord length ``2 R sin(|dt| / 2)`` is the
  l2 cost, so a budget ``eps`` allows ``|dt| <= 2 arcsin(eps / 2R)``. The point never leaves its sphere and
  keeps its oracle label; it fools D iff the crossing is reachable within budget. Impossible on the inner
  sphere when ``b > R1`` (``u <= R1 < b`` everywhere on it).
* **invariance attack** (inner sphere, eq. 6.2): keep the used coordinates and rescale the unused ones to
  land on the *other* sphere, ``v' = sqrt(R_other^2 - u^2)``; cost ``|v' - v|``. D is unchanged (it ignores
  v) while the oracle label flips. All-or-nothing: a partial rescaling would leave both spheres, so a point
  whose cost exceeds the budget is returned unchanged. Impossible on the outer sphere when ``u > R1``.

Accuracy after an attack is ``mean(D(x*) == O(x*))`` with the oracle of the attacked point (Figure 6.3).

References: Gilmer et al. (2018) "Adversarial Spheres"; Jacobsen, Behrmann et al. (2019) "Exploiting excessive
invariance caused by norm-bounded adversarial robustness".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "sample_sphere",
    "sample_spheres",
    "MisalignedSphereClassifier",
    "oracle",
    "perturbation_attack",
    "invariance_attack",
    "attack_accuracy",
    "accuracy_vs_budget",
]

R1_DEFAULT = 1.0
R2_DEFAULT = 1.3


def _check_radii(radii: Sequence[float]) -> tuple[float, float]:
    if len(radii) != 2:
        raise ValueError(f"radii must be a pair (R1, R2), got {radii!r}")
    r1, r2 = float(radii[0]), float(radii[1])
    if not (0 < r1 < r2) or not math.isfinite(r2):
        raise ValueError(f"radii must satisfy 0 < R1 < R2 < inf, got {radii!r}")
    return r1, r2


def sample_sphere(
    n: int, dim: int, radius: float, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``n`` points uniformly on the sphere ``{x in R^dim : ||x||_2 = radius}``: normalized Gaussians, ``(n, dim)``."""
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    g = torch.randn(n, dim, generator=generator, dtype=dtype)
    return radius * g / g.norm(dim=1, keepdim=True)


def sample_spheres(
    n_per_sphere: int,
    dim: int,
    radii: Sequence[float] = (R1_DEFAULT, R2_DEFAULT),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced adversarial-spheres data (Example 6.5): ``x (2n, dim)`` and labels ``y (2n,)``, 0 = inner, 1 = outer."""
    r1, r2 = _check_radii(radii)
    inner = sample_sphere(n_per_sphere, dim, r1, generator=generator, dtype=dtype)
    outer = sample_sphere(n_per_sphere, dim, r2, generator=generator, dtype=dtype)
    y = torch.cat([torch.zeros(n_per_sphere, dtype=torch.long), torch.ones(n_per_sphere, dtype=torch.long)])
    return torch.cat([inner, outer]), y


def oracle(x: torch.Tensor, radii: Sequence[float] = (R1_DEFAULT, R2_DEFAULT), atol: float = 1e-6) -> torch.Tensor:
    """The true label ``O(x)`` of points on the spheres: 0 if ``||x|| = R1``, 1 if ``||x|| = R2`` (within ``atol``).

    Raises ``ValueError`` for a point on neither sphere: the task (and thus an adversarial example) is only
    defined on the data manifold.
    """
    r1, r2 = _check_radii(radii)
    norm = x.norm(dim=-1)
    on1, on2 = (norm - r1).abs() <= atol * max(1.0, r1), (norm - r2).abs() <= atol * max(1.0, r2)
    if not bool((on1 | on2).all()):
        bad = norm[~(on1 | on2)][:3].tolist()
        raise ValueError(f"oracle: points off both spheres (norms {bad}, radii {r1}, {r2})")
    return on2.long()


@dataclass(frozen=True)
class MisalignedSphereClassifier:
    """Example 6.6: ``D(x) = sign(||x_{1..d-n}||_2 - b)`` using only the first ``d - n`` coordinates.

    ``predict`` returns 0 (inner, ``D = -1``) or 1 (outer, ``D = +1``); a point exactly on the boundary counts as
    inner. Build it with :meth:`fit`, which sets the max-margin bias ``b = l + (u - l) / 2`` from a training set.
    """

    dim: int
    n_unused: int
    bias: float
    lower: float = math.nan  # l: largest used-norm on the inner sphere in the training set
    upper: float = math.nan  # u: smallest used-norm on the outer sphere in the training set

    def __post_init__(self):
        if not 0 <= self.n_unused < self.dim:
            raise ValueError(f"n_unused must lie in [0, dim), got n_unused={self.n_unused}, dim={self.dim}")

    @property
    def n_used(self) -> int:
        return self.dim - self.n_unused

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, n_unused: int) -> MisalignedSphereClassifier:
        """Max-margin bias on the training set ``(x (N, d), y (N,) in {0, 1})`` (Example 6.6)."""
        if x.dim() != 2 or y.shape != (x.shape[0],):
            raise ValueError(f"fit needs x (N, d) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if not bool(((y == 0) | (y == 1)).all()) or not bool((y == 0).any()) or not bool((y == 1).any()):
            raise ValueError("fit needs labels in {0, 1} with both spheres present")
        clf = cls(dim=x.shape[1], n_unused=n_unused, bias=0.0)
        u = clf.used_norm(x)
        lower, upper = float(u[y == 0].max()), float(u[y == 1].min())
        if lower > upper:
            raise ValueError(f"training set not separable by the used coordinates: l = {lower:.4g} > u = {upper:.4g}")
        return cls(dim=x.shape[1], n_unused=n_unused, bias=lower + (upper - lower) / 2, lower=lower, upper=upper)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (N, {self.dim}), got {tuple(x.shape)}")

    def used_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``||x_{1..d-n}||_2`` of shape ``(N,)``."""
        self._check(x)
        return x[:, : self.n_used].norm(dim=1)

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        """``||x_{1..d-n}||_2 - b``, shape ``(N,)``; its sign is D(x)."""
        return self.used_norm(x) - self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """0 (inner) or 1 (outer), shape ``(N,)``."""
        return (self.decision_function(x) > 0).long()


def _split(clf: MisalignedSphereClassifier, x: torch.Tensor):
    """``x = u e_u + v e_v``: norms ``u, v (N,)`` and unit directions ``e_u, e_v (N, d)`` (zero-padded halves).

    A zero half gets a fixed unit direction (first coordinate of that half), so the plane is always defined.
    """
    clf._check(x)
    k = clf.n_used
    xu, xv = x.clone(), x.clone()
    xu[:, k:] = 0
    xv[:, :k] = 0
    u, v = xu.norm(dim=1), xv.norm(dim=1)
    eu = torch.zeros_like(x)
    eu[:, 0] = 1
    eu = torch.where((u > 0)[:, None], xu / u.clamp_min(1e-300)[:, None], eu)
    ev = torch.zeros_like(x)
    if k < clf.dim:
        ev[:, k] = 1
    ev = torch.where((v > 0)[:, None], xv / v.clamp_min(1e-300)[:, None], ev)
    return u, v, eu, ev


def _check_budget(budget: float) -> float:
    b = float(budget)
    if not b >= 0 or not math.isfinite(b):
        raise ValueError(f"the l2 budget must be a finite number >= 0, got {budget!r}")
    return b


def perturbation_attack(
    clf: MisalignedSphereClassifier, x: torch.Tensor, budget: float, *, overshoot: float = 1e-6
) -> torch.Tensor:
    """Analytic perturbation-based attack of Example 6.6 (i)-(ii), within ``||x* - x||_2 <= budget``.

    Each point is rotated on its own sphere (``||x*|| = ||x||``) in the ``(e_u, e_v)`` plane towards the decision
    boundary: outer points (``u > b``) towards smaller ``u``, the used coordinates scaled by ``a = u*/u`` and the
    unused ones by ``c = v*/v`` with ``u*^2 + v*^2 = ||x||^2``; inner points towards larger ``u``. The target is
    ``u* = b (1 -/+ overshoot)``; if its chord distance exceeds the budget the point moves as far as the budget
    allows (still on its sphere, decision unchanged). If the boundary cannot be reached on the sphere at all
    (inner sphere with ``b > R``) the point moves to the closest reachable point. ``x (N, d) -> x* (N, d)``.
    """
    eps = _check_budget(budget)
    u, v, eu, ev = _split(clf, x)
    radius = torch.sqrt(u**2 + v**2)
    theta = torch.atan2(v, u)  # in [0, pi/2]
    outer_side = u > clf.bias
    target_u = torch.where(outer_side, clf.bias * (1 - overshoot), clf.bias * (1 + overshoot))
    theta_target = torch.acos((target_u / radius.clamp_min(1e-300)).clamp(max=1.0))
    # inner side wants theta down to theta_target (or 0 if unreachable); outer side wants it up
    dtheta_wanted = theta_target - theta
    dtheta_wanted = torch.where(outer_side, dtheta_wanted.clamp_min(0), dtheta_wanted.clamp_max(0))
    dtheta_max = 2 * torch.asin((eps / (2 * radius.clamp_min(1e-300))).clamp(max=1.0))
    dtheta = torch.sign(dtheta_wanted) * torch.minimum(dtheta_wanted.abs(), dtheta_max)
    new = theta + dtheta
    rotated = (radius * torch.cos(new))[:, None] * eu + (radius * torch.sin(new))[:, None] * ev
    return torch.where((dtheta == 0)[:, None], x, rotated)  # unmoved points are returned bit for bit


def invariance_attack(
    clf: MisalignedSphereClassifier,
    x: torch.Tensor,
    budget: float,
    radii: Sequence[float] = (R1_DEFAULT, R2_DEFAULT),
) -> torch.Tensor:
    """Analytic invariance-based attack of Example 6.6 (i)-(ii), within ``||x* - x||_2 <= budget``.

    Fix the used coordinates, ``x*_{1..d-n} = x_{1..d-n}``, and scale the unused ones by ``a = v*/v`` with
    ``v* = sqrt(R_other^2 - u^2)`` so that x* lies on the *other* sphere: the oracle label flips while D(x*) =
    D(x). Points for which this is impossible (``u > R_other``) or costs more than the budget (``|v* - v|``)
    are returned unchanged. ``x (N, d) -> x* (N, d)``; every x* lies on one of the two spheres.
    """
    eps = _check_budget(budget)
    r1, r2 = _check_radii(radii)
    label = oracle(x, radii)
    u, v, _, ev = _split(clf, x)
    r_other = torch.where(label == 0, torch.full_like(u, r2), torch.full_like(u, r1))
    feasible = u <= r_other
    v_new = torch.sqrt((r_other**2 - u**2).clamp_min(0))
    success = feasible & ((v_new - v).abs() <= eps)
    if clf.n_unused == 0:
        success = success & (u == r_other)
    moved = x + (v_new - v)[:, None] * ev
    return torch.where(success[:, None], moved, x)


def attack_accuracy(
    clf: MisalignedSphereClassifier,
    x: torch.Tensor,
    attack: str,
    budget: float,
    radii: Sequence[float] = (R1_DEFAULT, R2_DEFAULT),
) -> float:
    """``mean(D(x*) == O(x*))`` after ``attack`` ("perturbation" or "invariance") with an l2 budget."""
    if attack == "perturbation":
        adv = perturbation_attack(clf, x, budget)
    elif attack == "invariance":
        adv = invariance_attack(clf, x, budget, radii)
    else:
        raise ValueError(f"attack must be 'perturbation' or 'invariance', got {attack!r}")
    return float((clf.predict(adv) == oracle(adv, radii)).double().mean())


def accuracy_vs_budget(
    clf: MisalignedSphereClassifier,
    x_inner: torch.Tensor,
    x_outer: torch.Tensor,
    budgets: Sequence[float],
    radii: Sequence[float] = (R1_DEFAULT, R2_DEFAULT),
) -> dict[str, dict[str, list[float]]]:
    """Figure 6.3's curves: ``{"perturbation": {"inner": [...], "outer": [...]}, "invariance": {...}}``,
    one accuracy per budget, for test points of each sphere."""
    out: dict[str, dict[str, list[float]]] = {}
    for attack in ("perturbation", "invariance"):
        out[attack] = {
            name: [attack_accuracy(clf, pts, attack, b, radii) for b in budgets]
            for name, pts in (("inner", x_inner), ("outer", x_outer))
        }
    return out
