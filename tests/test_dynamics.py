"""Fig. 4.1's path analysis: folds of the interpolated dynamics, exact pair distances, the Lemma 4.6 floor."""

import pytest
import torch
from torch import nn

from invertible.analysis.dynamics import (
    bi_lipschitz_floor,
    collapsing_pairs,
    fold_points,
    min_pair_distance_ratio,
    path_events,
    trajectories,
)
from invertible.models.toy_resnet import VectorResidualClassifier, vector_residual_features
from invertible.nn import ResidualBlock


def _linear_block(matrix):
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(matrix, dtype=torch.float64))
    return ResidualBlock(nn.Sequential(lin))


def test_a_block_folds_exactly_when_J_g_has_a_real_eigenvalue_at_most_minus_one():
    x = torch.randn(5, 2)
    for diag, folds in (((-2.0, 0.0), True), ((-1.0, 0.3), True), ((-0.99, 0.5), False), ((3.0, 3.0), False)):
        blocks = [_linear_block(torch.diag(torch.tensor(diag)))]
        assert fold_points(blocks, trajectories(blocks, x)).all() == folds, diag
    rotation = [[-1.0, -1.5], [1.5, -1.0]]  # eigenvalues -1 +- 1.5i: complex, det(I + sJ) > 0 for every s
    blocks = [_linear_block(rotation)]
    assert not fold_points(blocks, trajectories(blocks, x)).any()


def test_pair_distance_minimum_is_exact_inside_a_segment():
    # two points that pass through each other half-way along the block: endpoints are 1 apart, the minimum is 0
    traj = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    ratio = min_pair_distance_ratio(traj)
    assert ratio[0, 1] == pytest.approx(0.0, abs=1e-12) and ratio[0, 0] == float("inf")
    assert collapsing_pairs(traj, 0.01).tolist() == [[0, 1]]
    # a contraction x + g(x) = 0.5 x scales every distance by exactly 0.5 = 1 - Lip(g) (Lemma 4.6 is tight)
    blocks = [_linear_block(-0.5 * torch.eye(2))]
    ratio = min_pair_distance_ratio(trajectories(blocks, torch.randn(6, 2)))
    off = ratio[~torch.eye(6, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, 0.5))
    assert bi_lipschitz_floor([0.5]) == 0.5 and bi_lipschitz_floor([0.5, 1.2]) == 0.0
    with pytest.raises(ValueError, match="eps must lie in"):
        collapsing_pairs(traj, 1.5)


def test_an_i_resnet_never_folds_and_keeps_the_lemma_4_6_floor():
    torch.manual_seed(3)
    model = VectorResidualClassifier(vector_residual_features(2, 3, 16, coeff=0.9), dim=2).double()
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(8, 2))  # power iterations
    model.eval()
    blocks = list(model.features)
    lips = [b.certify() for b in blocks]
    x = torch.randn(60, 2) * 2
    _, ev = path_events(blocks, x, eps=0.01)
    assert ev.n_fold_paths == 0 and ev.min_ratio >= bi_lipschitz_floor(lips) > 0
    with pytest.raises(ValueError, match="coeff must lie"):
        vector_residual_features(coeff=1.5)


def test_fig4_1_is_registered():
    from invertible.experiments.registry import EXPERIMENT_MODULES, experiments

    assert "invertible.experiments.fig4_1" in EXPERIMENT_MODULES and "fig4.1" in experiments()
