"""Metameric sampling (Definition 6.8): samples keep the source's logits and take the reference's nuisance."""

import pytest
import torch

import invertible as inv
from invertible.invariance.metameric import logit_deviation, metameric_sample, nuisance_interpolation
from invertible.models.firevnet import fi_iresnet, fi_revnet

C = 3


def _revnet():
    torch.manual_seed(0)
    model = fi_revnet((1, 4, 4), C, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=2, dense_hidden=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_metameric_sample_has_source_logits_and_reference_nuisance():
    model = _revnet()
    x, ref = torch.rand(4, 1, 4, 4), torch.rand(4, 1, 4, 4)
    met = metameric_sample(model, x, ref)
    z_s, z_n = model.encode(met)
    torch.testing.assert_close(z_s, model.encode(x)[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(z_n, model.encode(ref)[1], rtol=1e-10, atol=1e-10)
    assert float((met - x).abs().max()) > 1e-2  # it is a different input with the same logits


def test_interpolation_path_keeps_logits_and_ends_at_metamer():
    model = _revnet()
    x, ref = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    path = nuisance_interpolation(model, x, ref, steps=5)
    assert path.shape == (5, 3, 1, 4, 4)
    torch.testing.assert_close(path[0], x, rtol=0, atol=1e-10)
    torch.testing.assert_close(path[-1], metameric_sample(model, x, ref), rtol=0, atol=1e-10)
    with torch.no_grad():
        logits = model.logits(x)
    assert logit_deviation(model, path, logits) < 1e-10
    assert logit_deviation(model, path, logits + 0.5) == pytest.approx(0.5, abs=1e-10)


def test_iresnet_metamers_keep_logits_to_1e_4():
    torch.manual_seed(0)
    model = fi_iresnet((1, 4, 4), C, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8,
                       coeff=0.7, logdet=inv.ExactLogDet(), inverse=inv.FixedPoint(atol=1e-9, max_iter=300))
    x, ref = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    model.train()
    for _ in range(20):
        model(x)
    model.eval()
    path = nuisance_interpolation(model, x, ref, steps=3)
    with torch.no_grad():
        logits = model.logits(x)
    assert logit_deviation(model, path, logits) < 1e-4


def test_bad_inputs_raise():
    model = _revnet()
    with pytest.raises(ValueError, match="differ"):
        metameric_sample(model, torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4))
    with pytest.raises(ValueError, match="expected"):
        metameric_sample(model, torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="steps"):
        nuisance_interpolation(model, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), steps=1)
