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
forward for the same reason).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from invertible.activations import lean_activations
from invertible.lipschitz import frozen_spectral_norm

__all__ = ["neumann_recompute"]


class _RecomputedNeumann(torch.autograd.Function):
    @staticmethod
    def forward(ctx, est, g, n, weights, gen, n_params, x, *params):
        with torch.enable_grad():
            xin = x.detach().requires_grad_(True)
            gx = g(xin)
            value, probes, vectors = est._series_without_graph(gx, xin, n, weights, gen)
        ctx.g, ctx.n_params, ctx.n_probes = g, n_params, len(probes)
        ctx.save_for_backward(x, *params, *probes, *vectors)
        return gx.detach(), value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_gx, grad_ld):
        x, *rest = ctx.saved_tensors
        params, tensors = rest[: ctx.n_params], rest[ctx.n_params:]
        probes, vectors = tensors[: ctx.n_probes], tensors[ctx.n_probes:]
        with torch.enable_grad(), frozen_spectral_norm(), lean_activations():
            xin = x.detach().requires_grad_(True)
            gx = ctx.g(xin)
            total = (gx * grad_gx).sum()
            surrogate = torch.zeros_like(grad_ld)
            for v, a in zip(probes, vectors, strict=True):
                (jv,) = torch.autograd.grad(gx, xin, a, retain_graph=True, create_graph=True)
                surrogate = surrogate + (jv * v).flatten(1).sum(1, dtype=surrogate.dtype)
            total = total + (surrogate * grad_ld).sum() / ctx.n_probes
            grads = torch.autograd.grad(total, [xin, *params], allow_unused=True)
        return (None, None, None, None, None, None, *grads)


def neumann_recompute(est, g: nn.Module, x: torch.Tensor, n: int, weights: list[float],
                      gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g(x), log-det estimate)`` of the series estimator ``est`` (Neumann gradient) with ``n`` terms and
    Russian-roulette ``weights``, differentiable as in the module docstring; ``g`` must be an ``nn.Module`` whose
    output depends on ``x`` and its parameters only."""
    params = [p for p in g.parameters() if p.requires_grad]
    return _RecomputedNeumann.apply(est, g, n, weights, gen, len(params), x, *params)
