"""The fast paths of the series estimators compute the same numbers: the recomputing Neumann gradient
(:mod:`invertible.logdet_recompute`), the last term taken from the surrogate, LipSwish's stored derivatives."""

import copy
import gc
import weakref

import pytest
import torch

import invertible as inv
from invertible.models.blocks import lipschitz_convnet


def _block(recompute: bool, seed: int, activation: str = "lipswish", **kw) -> inv.ResidualBlock:
    if not recompute:
        kw.pop("recompute_chunk", None)
    torch.manual_seed(0)
    g = lipschitz_convnet(2, 8, 0.9, activation)
    est = inv.RussianRouletteLogDet(n_exact=2, p=0.5, neumann_gradient=True, recompute=recompute,
                                    generator=torch.Generator().manual_seed(seed), **kw)
    return inv.ResidualBlock(g, logdet=est)


def _grads(block: inv.ResidualBlock, x: torch.Tensor, weights: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y, ld = block.forward_and_logdet(x)
    loss = (y.square().flatten(1).sum(1) * weights).sum() - (ld * weights.flip(0)).sum()
    loss.backward()
    return ld.detach(), x.grad, [p.grad.clone() for p in block.parameters()]


@pytest.mark.parametrize("activation", ["lipswish", "elu"])
@pytest.mark.parametrize("n_probes", [1, 2])
@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_recomputed_neumann_gradient_equals_the_stored_graph(activation, n_probes, chunk):
    """Same probes, same terms: the value and every gradient (input and parameters) agree with the ordinary
    Neumann path, also when the samples weigh differently in the loss (no uniform-upstream assumption), and
    when the recompute runs in chunks of 1 or 2 of the 3 samples (uneven chunks); the power iteration runs once
    per call either way (the spectral-norm buffers end up the same)."""
    x = torch.rand(3, 2, 6, 6)
    weights = torch.tensor([0.3, 1.0, 2.5])
    for seed in range(3):
        a = _block(False, seed, activation, n_probes=n_probes)
        b = _block(True, seed, activation, n_probes=n_probes, recompute_chunk=chunk)
        a.g(x)  # power-iteration vectors (drawn from the global RNG), then the same state in both
        b.load_state_dict(a.state_dict())
        ld_a, gx_a, gp_a = _grads(a, x, weights)
        ld_b, gx_b, gp_b = _grads(b, x, weights)
        torch.testing.assert_close(ld_b, ld_a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gx_b, gx_a, rtol=1e-9, atol=1e-12)
        for p, q in zip(gp_b, gp_a, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        sn = {k: v for k, v in a.state_dict().items() if "parametrizations" in k}
        assert sn and all(torch.equal(v, b.state_dict()[k]) for k, v in sn.items())


def test_recompute_chunk_is_validated():
    with pytest.raises(ValueError, match="recompute_chunk needs recompute=True"):
        inv.RussianRouletteLogDet(recompute_chunk=8)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="recompute_chunk"):
            inv.PowerSeriesLogDet(neumann_gradient=True, recompute=True, recompute_chunk=bad)


def test_last_term_from_the_surrogate_equals_the_vjp():
    """With the Neumann gradient the n-th term comes from the surrogate's value; it equals the value of the
    same draw computed by backpropagation through every term (which evaluates v^T J^n v directly)."""
    torch.manual_seed(0)
    g = lipschitz_convnet(2, 8, 0.9)
    x = torch.rand(4, 2, 5, 5)
    g(x)
    g.eval()  # no power iteration between the two estimates: the same operator
    for n in (1, 2, 5):
        values = []
        for neumann in (True, False):
            est = inv.PowerSeriesLogDet(n_terms=n, neumann_gradient=neumann, generator=torch.Generator().manual_seed(n))
            _, ld = est(g, x)
            values.append(ld.detach())
        torch.testing.assert_close(values[0], values[1], rtol=1e-11, atol=1e-13)


def test_recompute_keeps_less_of_the_graph():
    """After the forward, the recomputing path keeps x, the probe and the Neumann vector per block (input-sized),
    not g's graph of hidden activations (8 channels against the input's 2)."""
    torch.manual_seed(0)
    x = torch.rand(5, 2, 8, 8)  # batch 5: no weight tensor has 5 rows
    alive = {}
    for recompute in (False, True):
        block = _block(recompute, 0)
        block.g(x)
        refs = []

        def pack(t, refs=refs):
            if t.dim() == 4 and t.shape[0] == x.shape[0]:  # per-sample activations, not weights
                refs.append(weakref.ref(t))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, ld = block.forward_and_logdet(x)
        gc.collect()
        live = {r().data_ptr(): r().numel() for r in refs if r() is not None}
        alive[recompute] = sum(live.values())
        (y.sum() + ld.sum()).backward()
    assert alive[True] <= 3 * x.numel() < alive[False] / 3


def test_lipswish_function_matches_the_composite_to_second_order():
    m = inv.LipSwish(1.7)
    x = torch.randn(5, 3, requires_grad=True)
    composite = copy.deepcopy(m)
    composite.forward = lambda t: t * torch.sigmoid(t * composite.beta) / 1.1
    for mod in (m, composite):
        y = mod(x)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (ggx, ggb) = torch.autograd.grad(gx.sin().sum(), [x, mod.raw_beta])
        mod.result = (y.detach(), gx.detach(), ggx, ggb)
    for a, b in zip(m.result, composite.result, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_set_recompute_switches_every_neumann_estimator_and_keeps_the_gradient():
    """set_recompute on a multi-scale image flow: the same loss and parameter gradients as the stored graph
    (chunks of 2 of 3 samples), and a clear error for a model without a Neumann-gradient estimator."""
    from invertible.models.resflow import image_residual_flow, residual_blocks

    x = torch.rand(3, 1, 8, 8) * 0.9 + 0.05

    def run(chunk):
        torch.manual_seed(0)
        model = image_residual_flow((1, 8, 8), n_scales=2, n_blocks=1, hidden=4)
        model.initialize(x)
        for b in residual_blocks(model):  # the blocks share one estimator: one seeded generator
            b.logdet.generator = torch.Generator().manual_seed(0)
        if chunk != "stored":
            assert inv.set_recompute(model, chunk) == len(residual_blocks(model))
        loss = -model(x).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ref_loss, ref = run("stored")
    for chunk in (None, 2):
        loss, grads = run(chunk)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
        for a, b in zip(grads, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    exact = inv.ResidualBlock(lipschitz_convnet(2, 4, 0.9), logdet=inv.PowerSeriesLogDet(n_terms=3))
    with pytest.raises(ValueError, match="no series estimator with the Neumann gradient"):
        inv.set_recompute(exact)
