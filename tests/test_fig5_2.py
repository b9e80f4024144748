"""Fig. 5.2's pieces: the 2-D toy residual flow (library defaults chosen on validation data) has an exact,
normalized log-density, and the reproduction's trainer decays its learning rate on a cosine to 0."""

import math

import torch

from invertible.experiments import fig5_2
from invertible.experiments.registry import RunContext
from invertible.lipschitz import converge_spectral_norms
from invertible.models.resflow import TOY2D_COEFF, residual_blocks, toy_residual_flow


def test_toy_residual_flow_defaults_are_the_validated_ones():
    model = toy_residual_flow()
    cfg = model.config
    assert (cfg.dim, cfg.n_blocks, cfg.hidden, cfg.coeff) == (2, 8, (32, 32), TOY2D_COEFF) == (2, 8, (32, 32), 0.98)
    assert (cfg.mode, cfg.preact, cfg.beta) == ("exact", False, 16.0)
    ctx = RunContext(out=None, quick=True)
    s = fig5_2.settings(ctx)
    assert (s["blocks"], s["hidden"], s["coeff"]) == (cfg.n_blocks, cfg.hidden, cfg.coeff)


def test_toy_residual_flow_log_prob_is_the_change_of_variables_with_the_autograd_jacobian():
    torch.manual_seed(0)
    model = toy_residual_flow(n_blocks=3, hidden=(16, 16)).double()
    x = torch.randn(64, 2, dtype=torch.float64) * 2
    model.initialize(x)
    for p in model.parameters():  # move off the identity so that the Jacobian is not trivial
        p.data.add_(0.3 * torch.randn_like(p))
    converge_spectral_norms(model)  # the power iterations catch up with the moved weights, as after training
    model.eval()
    lp = model.log_prob(x[:5])
    f = model.bijection
    for i in range(5):
        xi = x[i : i + 1]
        z = f(xi)
        jac = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0))[0], xi[0])
        expected = -0.5 * (z**2).sum() - math.log(2 * math.pi) + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(lp[i], expected, atol=1e-8, rtol=1e-8)
    for block in residual_blocks(model):  # invertible (Lip(g) < 1), so p is a normalized density
        bound = block.a_priori_lipschitz()
        assert bound < 1 and block.certify() <= bound * (1 + 1e-4)


def test_train_toy_uses_a_cosine_schedule_to_zero(monkeypatch):
    seen = []
    real = fig5_2.cosine

    def spy(lr, steps, *a, **k):
        sched = real(lr, steps, *a, **k)
        seen.append((lr, steps, sched(0), sched(steps)))
        return sched

    monkeypatch.setattr(fig5_2, "cosine", spy)
    s = {**fig5_2.QUICK, "steps": 3, "blocks": 2, "hidden": (8, 8), "batch": 16, "lr": dict(fig5_2.QUICK_LR)}
    model = fig5_2.train_toy("8gaussians", "resflow", s, seed=0, show_progress=False)
    assert seen == [(1e-2, 3, 1e-2, 0.0)]
    assert torch.isfinite(model.log_prob(torch.zeros(4, 2))).all()
