"""The Neumann-gradient log-det without a stored graph: the forward keeps three tensors of the input's size per
block, the backward recomputes ``g(x)`` and the surrogate and runs ONE backward pass for both the flow path
``y = x + g(x)`` and the log-det.

What a block of a residual flow needs for its backward (``L`` the loss, ``ld`` the log-det estimate, ``v`` the
Hutchinson probe, ``a = sum_{k<n} (-1)^k c_{k+1} v^T J^k`` the Neumann vector, :mod:`invertible.logdet`):

    dL/dtheta = (dL/dy)^T dg/dtheta + sum_b (dL/d ld_b) d/dtheta <a_b, J_b v_b>,

and likewise for ``x``. Both terms are first derivatives of functions of ``(x, theta)`` given ``a`` and ``v``,
so the forward stores only ``x``, ``v`` and ``a`` (one of each per probe) and frees ``g``'s graph and the series'
vector-Jacobian products at once. The backward recomputes ``g(x)`` with the spectral norm frozen (the
same operator: the power iteration ran in the forward; activations store only their inputs), the vjp
``a^T J`` with a graph, and differentiates ``<dL/dy, g(x)> + sum_b (dL/d ld_b) <a_b^T J_b, v_b>``: exact for any
upstream gradient (no assumption that all samples weigh the same), at the cost of one more evaluation of
``g`` and one more vector-Jacobian product per block. The log-det value (the estimate, not the surrogate) and
the probes are those of the ordinary path, draw for draw.

Memory: the peak of a training step is one block's double-backward graph plus ``(2 n_probes + 1)`` input-sized
tensors per block, instead of every block's graph at once (Chen et al. 2019 compute the gradient inside the
forward for the same reason). With ``recompute_chunk = c`` the series of the forward and the recomputed backward
run ``c`` samples at a time (the probes are drawn for the whole batch first, in the ordinary order; the first
chunk runs the power iteration, the others use the operator it left), so that graph is ``c / batch`` of its
size: every term of the estimate is per sample (``g`` has no batch statistics), so the values are the same and
the parameter gradient is the sum of the chunks' gradients.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from invertible.activations import lean_activations
from invertible.lipschitz import frozen_spectral_norm
from invertible.logdet_chain import cat_chunks, chunk_slices, neumann_chain

__all__ = ["neumann_recompute"]


@contextlib.contextmanager
def _parameters_constant(g: nn.Module):
    """Within this context ``g``'s parameters do not require grad: the forward's series needs vector-Jacobian
    products with respect to ``x`` only (the parameter gradient comes from the recomputed backward), so no
    operation records or prepares a derivative for a parameter (LipSwish's ``d/d beta``, for instance)."""
    params = [p for p in g.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class _RecomputedNeumann(torch.autograd.Function):
    @staticmethod
    def forward(ctx, est, g, n, weights, gen, n_params, chunk, x, *params):
        outputs, values, probes, vectors = [], [], None, [[] for _ in range(est.n_probes)]
        slices = chunk_slices(x.shape[0], chunk)
        for i, sl in enumerate(slices):
            # the first chunk runs the power iteration (if any); the others use the operator it left
            with torch.enable_grad(), _parameters_constant(g), (
                    frozen_spectral_norm() if i else contextlib.nullcontext()):
                xin = x[sl].detach().requires_grad_(True)
                gx = g(xin)
                if probes is None:  # the whole batch's probes, drawn as the stored-graph path draws them
                    probes = est._draw_probes(gx.new_empty((x.shape[0], *gx.shape[1:])), gen)

                def vjp(w, gx=gx, xin=xin):
                    return torch.autograd.grad(gx, xin, w, retain_graph=True)[0]

                value, vecs = est._series_without_graph(vjp, gx, n, weights, [v[sl] for v in probes])
            outputs.append(gx.detach())
            values.append(value)
            for store, a in zip(vectors, vecs, strict=True):
                store.append(a)
        vectors = [cat_chunks(v) for v in vectors]
        ctx.g, ctx.n_params, ctx.n_probes, ctx.slices = g, n_params, len(probes), slices
        ctx.save_for_backward(x, *params, *probes, *vectors)
        return cat_chunks(outputs), cat_chunks(values)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_gx, grad_ld):
        x, *rest = ctx.saved_tensors
        params, tensors = rest[: ctx.n_params], rest[ctx.n_params:]
        probes, vectors = tensors[: ctx.n_probes], tensors[ctx.n_probes:]
        grad_x, grad_params = [], [None] * len(params)
        for sl in ctx.slices:
            with torch.enable_grad(), frozen_spectral_norm(), lean_activations():
                xin = x[sl].detach().requires_grad_(True)
                gx = ctx.g(xin)
                total = (gx * grad_gx[sl]).sum()
                surrogate = torch.zeros_like(grad_ld[sl])
                for v, a in zip(probes, vectors, strict=True):
                    (jv,) = torch.autograd.grad(gx, xin, a[sl], retain_graph=True, create_graph=True)
                    surrogate = surrogate + (jv * v[sl]).flatten(1).sum(1, dtype=surrogate.dtype)
                total = total + (surrogate * grad_ld[sl]).sum() / ctx.n_probes
                gx_in, *gp = torch.autograd.grad(total, [xin, *params], allow_unused=True)
            grad_x.append(gx_in)
            grad_params = [q if p is None else (p if q is None else p + q)
                           for p, q in zip(grad_params, gp, strict=True)]
        return (None, None, None, None, None, None, None, cat_chunks(grad_x), *grad_params)


def neumann_recompute(est, g: nn.Module, x: torch.Tensor, n: int, weights: list[float],
                      gen: torch.Generator | None, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g(x), log-det estimate)`` of the series estimator ``est`` (Neumann gradient) with ``n`` terms and
    Russian-roulette ``weights``, differentiable as in the module docstring; ``g`` must be an ``nn.Module`` whose
    output depends on ``x`` and its parameters only, sample by sample (no batch statistics), so that ``chunk``
    samples at a time (None: the whole batch) give the same values and gradients."""
    by_hand = neumann_chain(est, g, x, n, weights, gen, chunk)
    if by_hand is not None:
        return by_hand
    params = [p for p in g.parameters() if p.requires_grad]
    return _RecomputedNeumann.apply(est, g, n, weights, gen, len(params), chunk, x, *params)
