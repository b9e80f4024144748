"""Adversarial spheres: Example 6.6's classifier and its two analytic attacks (thesis Section 6.2.1)."""

import math

import pytest
import torch

from invertible.invariance.spheres import (
    MisalignedSphereClassifier,
    accuracy_vs_budget,
    invariance_attack,
    oracle,
    perturbation_attack,
    sample_sphere,
    sample_spheres,
)

D, N, R1, R2 = 200, 5, 1.0, 1.3


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    x, y = sample_spheres(400, D, (R1, R2), generator=g)
    clf = MisalignedSphereClassifier.fit(x, y, N)
    inner = sample_sphere(200, D, R1, generator=g)
    outer = sample_sphere(200, D, R2, generator=g)
    return clf, inner, outer


def test_samples_lie_on_spheres_and_are_reproducible():
    x, y = sample_spheres(50, D, generator=torch.Generator().manual_seed(3))
    x2, _ = sample_spheres(50, D, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    torch.testing.assert_close(x.norm(dim=1), torch.where(y == 1, R2, R1).double(), rtol=0, atol=1e-12)
    assert torch.equal(oracle(x), y)


def test_fit_is_max_margin_on_the_used_coordinates(setup):
    clf, _, _ = setup
    g = torch.Generator().manual_seed(0)
    x, y = sample_spheres(400, D, (R1, R2), generator=g)
    used = x[:, : D - N].norm(dim=1)
    assert clf.lower == pytest.approx(float(used[y == 0].max()))
    assert clf.upper == pytest.approx(float(used[y == 1].min()))
    assert clf.bias == pytest.approx((clf.lower + clf.upper) / 2)
    assert R1 < clf.bias < R2  # needed for Example 6.6's "impossible" statements
    assert torch.equal(clf.predict(x), y)  # separable training set, max margin: all correct
    # the classifier ignores the last n coordinates entirely
    z = x.clone()
    z[:, D - N :] = torch.randn(len(z), N) * 10
    assert torch.equal(clf.predict(z), clf.predict(x))


def test_perturbation_attack_fools_outer_points_on_their_sphere(setup):
    clf, _, outer = setup
    adv = perturbation_attack(clf, outer, budget=10.0)
    torch.testing.assert_close(adv.norm(dim=1), torch.full((len(adv),), R2), rtol=0, atol=1e-10)
    assert torch.equal(oracle(adv), torch.ones(len(adv), dtype=torch.long))  # still the outer sphere
    assert bool((clf.predict(adv) == 0).all())  # but classified as inner: D(x*) != D(x) = O(x)
    # Example 6.6 (i)/(ii): used and unused parts are rescaled by positive factors a, c
    a = adv[:, : D - N].norm(dim=1) / outer[:, : D - N].norm(dim=1)
    torch.testing.assert_close(adv[:, : D - N], a[:, None] * outer[:, : D - N])
    assert bool((a < 1).all())


def test_perturbation_attack_cannot_fool_inner_points(setup):
    clf, inner, _ = setup
    for budget in (0.1, 1.0, 100.0):
        adv = perturbation_attack(clf, inner, budget)
        torch.testing.assert_close(adv.norm(dim=1), torch.full((len(adv),), R1), rtol=0, atol=1e-10)
        assert bool((clf.predict(adv) == 0).all())
        assert bool(((adv - inner).norm(dim=1) <= budget + 1e-12).all())


def test_perturbation_attack_respects_budget_and_is_minimal(setup):
    clf, _, outer = setup
    x = outer[:20]
    # analytic minimal cost: chord on the sphere from angle theta to arccos(b / R2)
    u = x[:, : D - N].norm(dim=1)
    theta, theta_b = torch.acos(u / R2), math.acos(clf.bias / R2)
    cost = 2 * R2 * torch.sin((theta_b - theta) / 2)
    assert torch.equal(perturbation_attack(clf, x, 0.0), x)
    for i in range(len(x)):
        below = perturbation_attack(clf, x[i : i + 1], float(cost[i]) * (1 - 1e-3))
        above = perturbation_attack(clf, x[i : i + 1], float(cost[i]) * (1 + 1e-3))
        assert float((below - x[i]).norm()) <= float(cost[i]) * (1 - 1e-3) + 1e-12
        assert int(clf.predict(below)) == 1 and int(clf.predict(above)) == 0
        assert float((above - x[i]).norm()) <= float(cost[i]) * (1 + 1e-3) + 1e-12


def test_invariance_attack_moves_inner_points_to_outer_sphere_keeping_decision(setup):
    clf, inner, _ = setup
    adv = invariance_attack(clf, inner, budget=10.0)
    torch.testing.assert_close(adv.norm(dim=1), torch.full((len(adv),), R2), rtol=0, atol=1e-10)
    torch.testing.assert_close(adv[:, : D - N], inner[:, : D - N], rtol=0, atol=0)  # used coordinates fixed
    assert torch.equal(clf.predict(adv), clf.predict(inner))  # D(x*) = D(x) = inner ...
    assert bool((oracle(adv) == 1).all())  # ... but the oracle now says outer


def test_invariance_attack_is_all_or_nothing_within_budget(setup):
    clf, inner, _ = setup
    u = inner[:, : D - N].norm(dim=1)
    v = inner[:, D - N :].norm(dim=1)
    cost = torch.sqrt(R2**2 - u**2) - v
    budget = float(cost.median())
    adv = invariance_attack(clf, inner, budget)
    moved = (adv - inner).norm(dim=1) > 0
    assert torch.equal(moved, cost <= budget)
    assert bool(((adv - inner).norm(dim=1) <= budget + 1e-12).all())
    oracle(adv)  # every output is on one of the spheres (raises otherwise)


def test_invariance_attack_cannot_fool_outer_points(setup):
    clf, _, outer = setup
    adv = invariance_attack(clf, outer, budget=100.0)
    assert torch.equal(adv, outer)  # ||x_used|| > R1: no point of the inner sphere shares the used coordinates


def test_accuracy_vs_budget_curves(setup):
    clf, inner, outer = setup
    budgets = [0.0, 0.2, 0.5, 1.0, 2.0]
    curves = accuracy_vs_budget(clf, inner, outer, budgets)
    assert curves["perturbation"]["inner"] == [1.0] * 5
    assert curves["invariance"]["outer"] == [1.0] * 5
    for attack, sphere in (("perturbation", "outer"), ("invariance", "inner")):
        acc = curves[attack][sphere]
        assert acc[0] == 1.0 and acc[-1] == 0.0
        assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))


def test_bad_inputs_raise(setup):
    clf, inner, _ = setup
    with pytest.raises(ValueError, match="budget"):
        perturbation_attack(clf, inner, -1.0)
    with pytest.raises(ValueError, match="off both spheres"):
        oracle(inner * 1.1)
    with pytest.raises(ValueError, match="shape"):
        clf.predict(inner[:, :10])
    with pytest.raises(ValueError, match="n_unused"):
        MisalignedSphereClassifier(dim=5, n_unused=5, bias=1.0)
    with pytest.raises(ValueError, match="radii"):
        sample_spheres(3, 4, (1.3, 1.0))
    x = torch.cat([inner[:5], inner[5:10] * 1.3])
    y = torch.tensor([1] * 5 + [0] * 5)  # swapped labels: not separable
    with pytest.raises(ValueError, match="separable"):
        MisalignedSphereClassifier.fit(x, y, N)
