"""Independence cross-entropy (Definition 6.14, eq. 6.13): the terms, who gets which gradient, and with what sign."""

import math

import pytest
import torch
import torch.nn.functional as F

from invertible.invariance.ice import (
    FactorizedGaussian,
    NuisanceClassifier,
    adversarial_nuisance_loss,
    ice_losses,
    ice_step,
)
from invertible.invariance.training import ICEConfig, train_ice
from invertible.models.firevnet import fi_revnet

C = 3


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = fi_revnet((1, 4, 4), C, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    nuisance = NuisanceClassifier(16 - C, C, hidden=8)
    prior = FactorizedGaussian(16 - C)
    with torch.no_grad():
        prior.mean.add_(0.1 * torch.randn(16 - C))
        prior.log_scale.add_(0.1 * torch.randn(16 - C))
    x = torch.rand(12, 1, 4, 4)
    y = torch.arange(12) % C
    return model, nuisance, prior, x, y


def _grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def test_factorized_gaussian_matches_torch_normal():
    prior = FactorizedGaussian(4)
    with torch.no_grad():
        prior.mean.copy_(torch.tensor([0.0, 1.0, -2.0, 0.5]))
        prior.log_scale.copy_(torch.tensor([0.0, -1.0, 0.3, 1.0]))
    z = torch.randn(5, 4)
    ref = torch.distributions.Normal(prior.mean, prior.log_scale.exp()).log_prob(z).sum(1)
    torch.testing.assert_close(prior.log_prob(z), ref.detach())


def test_terms_of_eq_6_13():
    model, nuisance, prior, x, y = _setup()
    t = ice_losses(model, nuisance, prior, x, y, nuisance_weight=0.7, mle_weight=0.4)
    z, logdet = model.forward_and_logdet(x)
    z_s, z_n = z[:, :C], z[:, C:]
    assert float(logdet.detach().abs().min()) > 1e-3  # the MLE term really contains log|det J|
    torch.testing.assert_close(t.semantic_ce, F.cross_entropy(z_s, y))
    torch.testing.assert_close(t.nuisance_ce, F.cross_entropy(nuisance(z_n), y))
    torch.testing.assert_close(t.mle, -(prior.log_prob(z_n) + logdet).mean() / 16)
    torch.testing.assert_close(t.model_loss, t.semantic_ce - 0.7 * t.nuisance_ce + 0.4 * t.mle)
    torch.testing.assert_close(t.nuisance_loss, t.nuisance_ce)


def test_gradients_reach_both_players_with_opposite_signs():
    model, nuisance, prior, x, y = _setup()
    t = ice_losses(model, nuisance, prior, x, y, nuisance_weight=1.0, mle_weight=1.0)
    theta, theta_nc = list(model.parameters()), list(nuisance.parameters())
    # the nuisance player's loss only reaches theta_nc
    assert all(g is None for g in _grads(t.nuisance_loss, theta))
    g_nc = _grads(t.nuisance_loss, theta_nc)
    assert all(g is not None and float(g.abs().sum()) > 0 for g in g_nc)
    # the network's loss: d/dtheta [L_sCE + L_MLE] MINUS d/dtheta CE(D_nc(z_n), y)
    g_model = _grads(t.model_loss, theta)
    g_s = _grads(t.semantic_ce + t.mle, theta)
    g_n = _grads(t.nuisance_ce, theta)
    for gm, gs, gn in zip(g_model, g_s, g_n, strict=True):
        torch.testing.assert_close(gm, (gs if gs is not None else 0) - (gn if gn is not None else 0))
    assert sum(float(g.abs().sum()) for g in g_n if g is not None) > 0  # the nuisance term does reach theta
    # and through the network's loss theta_nc sees the opposite of its own gradient (min-max)
    for g_own, g_other in zip(g_nc, _grads(t.model_loss, theta_nc), strict=True):
        torch.testing.assert_close(g_other, -g_own)


def test_each_player_improves_its_own_objective():
    model, nuisance, prior, x, y = _setup()
    z_n = model.encode(x)[1].detach()
    with torch.no_grad():
        before = float(F.cross_entropy(nuisance(z_n), y))
    # nuisance player: a small descent step on its CE lowers it (ascent on L_nCE)
    opt_nc = torch.optim.SGD(nuisance.parameters(), lr=1e-2)
    ice_losses(model, nuisance, prior, x, y).nuisance_loss.backward()
    opt_nc.step()
    after_nc = float(F.cross_entropy(nuisance(z_n), y).detach())
    assert after_nc < before
    # network: a small descent step on the nuisance term alone raises the nuisance classifier's CE
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    t = ice_losses(model, nuisance, None, x, y, nuisance_weight=1.0, mle_weight=0.0)
    (t.model_loss - t.semantic_ce).backward()
    opt.step()
    with torch.no_grad():
        after_model = float(F.cross_entropy(nuisance(model.encode(x)[1]), y))
    assert after_model > after_nc


@pytest.mark.parametrize("form", ["minimax", "nonsaturating"])
def test_adversarial_term_lowers_the_true_class_probability(form):
    logits = torch.tensor([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [-3.0, 1.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 0, 2])
    (grad,) = torch.autograd.grad(adversarial_nuisance_loss(logits, y, form), logits)
    true = grad.gather(1, y[:, None])[:, 0]
    assert bool((true > 0).all())  # descent on it lowers the nuisance classifier's true-class logit
    torch.testing.assert_close(grad.sum(1), torch.zeros(3), rtol=0, atol=1e-12)
    if form == "minimax":  # == -CE; saturates when the classifier is confident (row 1)
        torch.testing.assert_close(adversarial_nuisance_loss(logits, y, form), -F.cross_entropy(logits, y))
        assert float(true[1]) < 1e-3
    else:
        assert float(true[1]) > 0.3


def test_ice_step_updates_both_players_and_clears_stray_grads():
    model, nuisance, prior, x, y = _setup()
    opt = torch.optim.Adam([*model.parameters(), *prior.parameters()], lr=1e-3)
    opt_nc = torch.optim.Adam(nuisance.parameters(), lr=1e-3)
    m0 = [p.detach().clone() for p in model.parameters()]
    n0 = [p.detach().clone() for p in nuisance.parameters()]
    stats = ice_step(model, nuisance, prior, opt, opt_nc, x, y, nuisance_steps=2)
    assert set(stats) == {"loss", "ce", "nuisance_ce", "mle", "acc"} and all(math.isfinite(v) for v in stats.values())
    assert all(not torch.equal(a, b) for a, b in zip(m0, model.parameters(), strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(n0, nuisance.parameters(), strict=True))
    assert all(p.grad is None for p in nuisance.parameters())


def test_bad_arguments_raise():
    model, nuisance, prior, x, y = _setup()
    with pytest.raises(ValueError, match="int64"):
        ice_losses(model, nuisance, prior, x, y.float())
    with pytest.raises(ValueError, match="prior"):
        ice_losses(model, nuisance, None, x, y, mle_weight=1.0)
    with pytest.raises(ValueError, match="form"):
        ice_losses(model, nuisance, prior, x, y, form="gan")
    with pytest.raises(ValueError, match="objective"):
        ICEConfig(objective="mse")
    with pytest.raises(ValueError, match="expects"):
        nuisance(torch.randn(2, 5))


def test_training_resumes_exactly(tmp_path):
    _, _, _, x, y = _setup()
    x, y = x.repeat(3, 1, 1, 1), y.repeat(3)
    cfg = ICEConfig(objective="ice", epochs=2, batch_size=16, nuisance_hidden=8, seed=3)

    def fresh():
        torch.manual_seed(5)
        return fi_revnet((1, 4, 4), C, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8)

    straight = train_ice(fresh(), x, y, cfg, run_dir=tmp_path / "a", show_progress=False)
    half = ICEConfig(**{**cfg.__dict__, "epochs": 1})
    train_ice(fresh(), x, y, half, run_dir=tmp_path / "b", show_progress=False)  # "killed" after epoch 1
    resumed = train_ice(fresh(), x, y, cfg, run_dir=tmp_path / "b", resume=True, show_progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(straight.nuisance.parameters(), resumed.nuisance.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history == straight.history
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    other = ICEConfig(**{**cfg.__dict__, "lr": 0.1})
    with pytest.raises(ValueError, match="differs in train.lr"):
        train_ice(fresh(), x, y, other, run_dir=tmp_path / "b", resume=True, show_progress=False)
    with pytest.raises(FileNotFoundError):
        train_ice(fresh(), x, y, cfg, run_dir=tmp_path / "c", resume=True, show_progress=False)


def test_confusion_term_is_zero_exactly_at_the_uniform_prediction_and_ignores_labels():
    uniform = torch.zeros(4, C, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    loss = adversarial_nuisance_loss(uniform, y, "confusion")
    torch.testing.assert_close(loss, torch.zeros(()), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, uniform)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)
    # confidently right and confidently wrong are penalized alike: relabelling z_n does not remove information
    right = torch.tensor([[6.0, 0.0, 0.0]])
    wrong = torch.tensor([[0.0, 6.0, 0.0]])
    y0 = torch.tensor([0])
    torch.testing.assert_close(adversarial_nuisance_loss(right, y0, "confusion"),
                               adversarial_nuisance_loss(wrong, y0, "confusion"))
    assert float(adversarial_nuisance_loss(right, y0, "confusion")) > 1.0
    # while the label-based forms reward the confidently wrong classifier
    for form in ("minimax", "nonsaturating"):
        assert float(adversarial_nuisance_loss(wrong, y0, form)) < float(adversarial_nuisance_loss(right, y0, form))


def test_standardized_nuisance_classifier_is_scale_invariant():
    torch.manual_seed(0)
    nc = NuisanceClassifier(5, C, hidden=0, standardize=True)
    z = torch.randn(32, 5)
    scaled = z * torch.tensor([0.1, 1.0, 1e3, 3.0, 0.3]) + 7.0
    torch.testing.assert_close(nc(z), nc(scaled), rtol=1e-3, atol=1e-3)
    assert not any(p.requires_grad for p in nc.net[0].buffers())


def test_refit_gives_a_best_responding_nuisance_classifier():
    from invertible.invariance.training import _refit_nuisance

    torch.manual_seed(0)
    model = fi_revnet((1, 4, 4), C, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8)
    x = torch.rand(60, 1, 4, 4)
    y = torch.arange(60) % C
    x[:, 0, 3, :C] = 3.0 * F.one_hot(y, C)  # the label is linearly readable from z_n (the logits are untrained)
    nc = NuisanceClassifier(16 - C, C, hidden=0, standardize=True)
    opt = torch.optim.Adam(nc.parameters(), lr=3e-2)
    _refit_nuisance(model, nc, opt, x, y, steps=300, batch_size=16)
    with torch.no_grad():
        acc = float((nc(model.encode(x)[1]).argmax(1) == y).double().mean())
    assert acc > 0.95
    assert all(p.grad is None for p in nc.parameters())


def test_training_with_refits_and_probe(tmp_path):
    from invertible.invariance.training import nuisance_probe_accuracy

    _, _, _, x, y = _setup()
    x, y = x.repeat(3, 1, 1, 1), y.repeat(3)
    cfg = ICEConfig(objective="ice", epochs=2, batch_size=16, nuisance_standardize=True, nuisance_refit_steps=5,
                      form="confusion", seed=1)
    torch.manual_seed(5)
    model = fi_revnet((1, 4, 4), C, n_squeeze=1, conv_blocks=1, hidden=4, dense_blocks=1, dense_hidden=8)
    res = train_ice(model, x, y, cfg, run_dir=tmp_path / "r", show_progress=False)
    assert len(res.history) == 2 and all(math.isfinite(v) for h in res.history for v in h.values())
    assert 0.0 <= nuisance_probe_accuracy(model, x, y, x, y) <= 1.0
