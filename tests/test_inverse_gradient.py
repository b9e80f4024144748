"""Gradients of the fixed-point inverse: the implicit (adjoint) gradient against unrolled differentiation and
against the inverse function theorem, its memory, its failure mode, and Flow.rsample's use of it."""

import pytest
import torch

import invertible as inv
from helpers import autograd_jacobian, conv_g, mlp_g, warm_up
from invertible.inverse_gradient import (
    AdjointNotConverged,
    ImplicitAdjoint,
    implicit_inverse,
    inverse_gradient,
    unrolled_inverse,
)
from invertible.models.resflow import vector_residual_flow

TIGHT = inv.FixedPoint(atol=1e-13, max_iter=1000)  # the solution to round-off (double precision)


def _block(g, x):
    block = inv.ResidualBlock(g, logdet=inv.ExactLogDet(), inverse=TIGHT)
    warm_up(block, x)
    return block


def _grads(fn, z, params, weight):
    """d/d(z, params) of sum(weight * sin(fn(z))) (a loss whose upstream gradient differs per coordinate)."""
    z = z.detach().requires_grad_(True)
    loss = (weight * fn(z).sin()).sum()
    return torch.autograd.grad(loss, [z, *params])


def _assert_close(got, want, atol=1e-6):
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=atol, rtol=0), float((a - b).abs().max())


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_implicit_gradient_of_one_block_matches_unrolled_differentiation(kind):
    torch.manual_seed(0)
    g, x = (mlp_g(3, 16), torch.randn(6, 3)) if kind == "mlp" else (conv_g(2, 4), torch.randn(3, 2, 4, 4))
    block = _block(g, x)
    y = block(x).detach()
    weight = torch.randn_like(y)
    params = list(block.parameters())
    with inverse_gradient("implicit"):
        implicit = _grads(block.inverse, y, params, weight)
    with inverse_gradient("unrolled"):
        unrolled = _grads(block.inverse, y, params, weight)
    assert int(block.last_inverse.iterations.max()) > 10  # unrolled through many steps
    _assert_close(implicit, unrolled)
    assert all(float(t.abs().max()) > 1e-3 for t in implicit)  # the comparison is not between zeros


def test_implicit_gradient_in_y_is_the_inverse_function_theorem():
    """dx/dy = (I + J_g(x))^{-1}: the vector-Jacobian product u^T (I + J_g)^{-1} by a dense solve."""
    torch.manual_seed(1)
    x = torch.randn(5, 3)
    block = _block(mlp_g(3, 16, coeff=0.95), x)
    y = block(x).detach().requires_grad_(True)
    u = torch.randn_like(x)
    (grad_y,) = torch.autograd.grad((block.inverse(y) * u).sum(), y)
    jac = autograd_jacobian(block, x.detach())  # I + J_g(x), (B, 3, 3)
    expected = torch.linalg.solve(jac.transpose(1, 2), u.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(grad_y, expected, atol=1e-10)


def test_implicit_gradient_depends_only_on_the_solution_not_the_solver():
    """Anderson's iterates differ from Algorithm 1's, its solution does not: neither does the implicit gradient."""
    torch.manual_seed(2)
    x = torch.randn(4, 3)
    block = _block(mlp_g(3, 16), x)
    y = block(x).detach()
    weight = torch.randn_like(y)
    params = list(block.parameters())
    fixed = _grads(block.inverse, y, params, weight)
    block.solver = inv.Anderson(atol=1e-13, max_iter=200)
    anderson = _grads(block.inverse, y, params, weight)
    assert int(block.last_inverse.iterations.max()) < int(TIGHT.max_iter)
    _assert_close(anderson, fixed, atol=1e-9)


def test_rsample_gradients_of_a_multi_block_flow_match_unrolled():
    """ActNorm - (residual block - ActNorm) x 3: implicit and unrolled rsample give the same parameter gradients."""
    torch.manual_seed(3)
    model = vector_residual_flow(2, n_blocks=3, hidden=(16,), coeff=0.9, inverse_atol=1e-13)
    for b in model.modules():
        if isinstance(b, inv.ResidualBlock):
            b.solver = TIGHT
    model.initialize(torch.randn(128, 2) * 2 + 1)
    warm_up(model, torch.randn(64, 2))
    with torch.no_grad():  # non-trivial ActNorms between the blocks
        for m in model.modules():
            if isinstance(m, inv.ActNorm):
                m.log_scale.add_(0.3 * torch.randn_like(m.log_scale))
                m.loc.add_(0.3 * torch.randn_like(m.loc))
    flow = model.distribution()
    z = torch.randn(16, 2)
    weight = torch.randn(16, 2)
    params = list(model.parameters())
    implicit = _grads(lambda t: flow.reparameterize(t, gradient="implicit"), z, params, weight)
    unrolled = _grads(lambda t: flow.reparameterize(t, gradient="unrolled"), z, params, weight)
    _assert_close(implicit, unrolled)
    assert sum(float(t.abs().sum()) for t in implicit[1:]) > 1e-2
    # rsample is reparameterize of the base draw, the default mode implicit
    torch.manual_seed(4)
    xs = flow.rsample((3, 2))
    assert xs.shape == (3, 2, 2) and xs.requires_grad
    torch.manual_seed(4)
    assert torch.equal(xs.detach(), flow.reparameterize(torch.randn(6, 2)).detach().reshape(3, 2, 2))
    # detached: the fixed points are constants, only the ActNorms' analytic inverses carry gradients
    x = flow.rsample((4,), gradient="detached")
    grads = torch.autograd.grad(x.sum(), params, allow_unused=True)
    blocks = {id(p) for b in model.modules() if isinstance(b, inv.ResidualBlock) for p in b.parameters()}
    assert all(gr is None for p, gr in zip(params, grads, strict=True) if id(p) in blocks)
    assert any(gr is not None for p, gr in zip(params, grads, strict=True) if id(p) not in blocks)
    assert not flow.sample((4,)).requires_grad


def test_reverse_kl_gradient_of_a_flow_matches_unrolled():
    """The VI loss E_q[log q(x) - log p(x)], x = F^{-1}(z): log q evaluated at the sample, both paths agree."""
    torch.manual_seed(5)
    model = vector_residual_flow(2, n_blocks=2, hidden=(16,), coeff=0.9)
    for b in model.modules():
        if isinstance(b, inv.ResidualBlock):
            b.solver = TIGHT
    model.initialize(torch.randn(64, 2))
    warm_up(model, torch.randn(64, 2))
    flow = model.distribution()
    z = torch.randn(32, 2)

    def grads(mode):
        x = flow.reparameterize(z, gradient=mode)
        loss = (flow.log_prob(x) + 0.5 * (x - 1).square().sum(1)).mean()
        return torch.autograd.grad(loss, list(model.parameters()))

    with inv.frozen_spectral_norm():
        _assert_close(grads("implicit"), grads("unrolled"))


@pytest.mark.cpu_only
def test_implicit_memory_is_flat_in_the_iterations_unrolled_grows():
    torch.manual_seed(6)
    x = torch.randn(32, 4)
    block = _block(mlp_g(4, 64), x)
    y = block(x).detach()

    def saved_bytes(mode, k):
        block.solver = inv.FixedPoint(atol=0.0, rtol=1e-300, max_iter=k, on_failure="ignore")
        seen, held = {}, []

        def pack(t):  # storages held to the end: a freed address is not reused and counted once for two
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            held.append(t.untyped_storage())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), inverse_gradient(mode):
            out = block.inverse(y.clone().requires_grad_(True))
        out.sum().backward()
        assert int(block.last_inverse.iterations.max()) == k
        return sum(seen.values())

    assert saved_bytes("implicit", 5) == saved_bytes("implicit", 40)
    assert saved_bytes("unrolled", 40) > 5 * saved_bytes("unrolled", 5)


def test_adjoint_that_cannot_converge_raises_a_clear_error():
    torch.manual_seed(7)
    x = torch.randn(4, 3)
    block = _block(mlp_g(3, 16), x)
    y = block(x).detach().requires_grad_(True)
    with inverse_gradient("implicit", ImplicitAdjoint(rtol=1e-15, max_iter=2)):
        out = block.inverse(y)
    with pytest.raises(AdjointNotConverged, match="adjoint iteration a = u - J_g"):
        out.sum().backward()
    assert issubclass(AdjointNotConverged, inv.InverseNotConverged)


def test_bad_gradient_settings_are_value_errors():
    flow = inv.Flow(inv.InvertibleSequential(inv.ActNorm(2)), event_shape=(2,))
    with pytest.raises(ValueError, match="gradient must be one of"):
        flow.rsample((2,), gradient="backprop")
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        ImplicitAdjoint(max_iter=0)
    with pytest.raises(ValueError, match="rtol must be a finite number"):
        ImplicitAdjoint(rtol=float("nan"))
    with pytest.raises(ValueError, match="cannot both be 0"):
        ImplicitAdjoint(atol=0.0, rtol=0.0)
    with pytest.raises(ValueError, match="adjoint must be an ImplicitAdjoint"):
        with inverse_gradient("implicit", adjoint={"rtol": 1e-6}):
            pass
    with pytest.raises(ValueError, match="n_iter must be >= 1"):
        unrolled_inverse(lambda t: 0 * t, torch.zeros(1, 2), 0)


def test_functional_forms_agree_with_the_block():
    torch.manual_seed(8)
    x = torch.randn(3, 3)
    block = _block(mlp_g(3, 8), x)
    y = block(x).detach().requires_grad_(True)
    with torch.no_grad():
        x_star = block.inverse(y)
    out = implicit_inverse(block.g, y, x_star)
    assert torch.equal(out.detach(), x_star) and out.requires_grad
    (gy,) = torch.autograd.grad(out.sum(), y)
    (gu,) = torch.autograd.grad(unrolled_inverse(block.g, y, 200).sum(), y)
    assert torch.allclose(gy, gu, atol=1e-10)
