"""The recomputed Neumann gradient of a chain ``g = L_m o phi_{m-1} o L_{m-1} o ... o phi_0 o L_0`` by hand.

For the common residual function - convolutions or linear layers (spectrally normalized or not) with elementwise
activations between them (eq. 4.5) - the forward and backward of :mod:`invertible.logdet_recompute` can be
written with the operators themselves instead of autograd graphs. Notation: ``z_l = L_l(h_{l-1})``,
``h_l = phi_l(z_l)``, ``h_{-1} = x``, ``D_l = phi_l'(z_l)``, ``L_l'`` the linear part of ``L_l`` (no bias),
``L_l'^T`` its adjoint (a transposed convolution). The forward stores ``x`` and, per probe ``v``, the Neumann
vector ``a``; its vector-Jacobian products are ``w -> L_0'^T (D_0 L_1'^T (... D_{m-1} L_m'^T w))``.

Backward, given the upstream ``G = dL/dg(x)`` and per-sample weights ``gamma = dL/d ld / n_probes`` of the
surrogate ``S = sum_probes gamma <a, J v>`` (``J v = L_m' D_{m-1} ... D_0 L_0' v``):

* tangents ``t_0 = L_0' v``, ``p_l = D_l t_l``, ``t_{l+1} = L_{l+1}' p_l``;
* cotangents ``s_m = gamma a``, ``c_l = L_{l+1}'^T s_{l+1}``, ``s_l = D_l c_l``; so ``S = <s_l, t_l>`` for every l;
* ``dS/dW_l = s_l (x) p_{l-1}`` (``p_{-1} = v``), ``dS/dz_l = phi_l''(z_l) c_l t_l`` and for an activation
  parameter ``b``, ``dS/db = sum c_l t_l d phi_l'/d b``;
* the flow path ``<G, g(x)>`` backpropagates as usual, with ``dS/dz_l`` added at every ``z_l``:
  ``e_m = G``, ``e_l = D_l L_{l+1}'^T e_{l+1} + dS/dz_l``, ``dW_l += e_l (x) h_{l-1}``, ``db_l = sum e_l``,
  ``dx = L_0'^T e_0``.

The backward recomputes the pre-activations ``z_0 .. z_{m-1}`` (storing them was not faster), then costs
``m`` convolutions per probe for the tangents and, per layer, one call for the adjoint and weight gradient of the
flow path and one per probe (separate calls: stacked along the batch they ran slower on the CPU, out of cache).
The autograd form instead re-evaluates ``g``, builds the vector-Jacobian product's graph and differentiates it
twice. The weight gradients then go through the spectral normalization (frozen, the operator of the forward) by
autograd. Values and gradients equal those
of the autograd form up to rounding (``tests/test_logdet_chain.py``).

Supported: ``nn.Sequential`` of ``nn.Conv2d`` (zero padding, one group) or ``nn.Linear`` layers alternating with
:class:`~invertible.activations.LipSwish` or ``nn.ELU``; anything else (and autocast) takes the autograd form.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from invertible.activations import LipSwish, elu_kernels, lipswish_kernels
from invertible.lipschitz import frozen_spectral_norm, spectral_norm_of

__all__ = ["cat_chunks", "chain_by_hand", "chain_layers", "chunk_slices", "neumann_chain"]

_BY_HAND: contextvars.ContextVar[bool] = contextvars.ContextVar("invertible_chain_by_hand", default=True)


@contextlib.contextmanager
def chain_by_hand(enabled: bool) -> Iterator[None]:
    """Within this context the recomputed Neumann gradient uses the by-hand chain (``True``, the default) or
    always the autograd form (``False``; tests and benchmarks compare the two)."""
    token = _BY_HAND.set(bool(enabled))
    try:
        yield
    finally:
        _BY_HAND.reset(token)


def chain_layers(g: nn.Module) -> tuple[list[nn.Module], list[nn.Module]] | None:
    """``(linear layers, activations)`` if ``g`` is a supported chain (module docstring), else ``None``."""
    if not isinstance(g, nn.Sequential) or len(g) < 3 or len(g) % 2 == 0:
        return None
    linears, acts = list(g[0::2]), list(g[1::2])
    for m in linears:
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                return None
        elif not isinstance(m, nn.Linear):
            return None
    if not all(type(a) in (LipSwish, nn.ELU) for a in acts):
        return None
    return linears, acts


_FEW = 4  # channels: see _Operator._cpu_adjoint


class _Operator:
    """One linear layer with its (normalized) weight fixed for the call."""

    def __init__(self, module: nn.Module, weight: torch.Tensor):
        self.m, self.w, self.b = module, weight, module.bias
        self.conv = isinstance(module, nn.Conv2d)

    def __call__(self, h: torch.Tensor, bias: bool = True) -> torch.Tensor:
        b = self.b if bias else None
        if self.conv:
            m = self.m
            return F.conv2d(h, self.w, b, m.stride, m.padding, m.dilation)
        return F.linear(h, self.w, b)

    def _backward(self, grad: torch.Tensor, inp: torch.Tensor, mask: tuple[bool, bool]):
        m = self.m
        return torch.ops.aten.convolution_backward(grad, inp, self.w, None, m.stride, m.padding, m.dilation,
                                                   False, [0, 0], 1, (mask[0], mask[1], False))

    def _cpu_adjoint(self, c: torch.Tensor) -> torch.Tensor | None:
        """``L'^T c`` by a faster CPU kernel where one exists, else ``None``. oneDNN's data gradient of a stride-1
        convolution between few channels (<= 4: an image's first and last layer) and many is 4-5x slower than
        either the same map as a convolution with the flipped, transposed kernel (into many channels) or the
        direct transposed convolution (into few channels); measured in ``benchmarks/resflow_images.py``'s
        shapes. Same operator, exact up to rounding; the rule depends on shapes only (deterministic)."""
        m, w = self.m, self.w
        if c.device.type != "cpu" or tuple(m.stride) != (1, 1):
            return None
        c_out, c_in, kh, kw = w.shape
        if c_out <= _FEW < c_in:  # into many channels: flipped kernel as a forward convolution
            pad = (m.dilation[0] * (kh - 1) - m.padding[0], m.dilation[1] * (kw - 1) - m.padding[1])
            if min(pad) < 0:
                return None
            return F.conv2d(c, w.flip(-1, -2).transpose(0, 1), None, 1, pad, m.dilation)
        if c_in <= _FEW < c_out:  # into few channels: the direct (unfolded) transposed convolution
            return torch.ops.aten.slow_conv_transpose2d(c, w, [kh, kw], None, [1, 1], list(m.padding), [0, 0],
                                                        list(m.dilation))
        return None

    def adjoint(self, c: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
        """``L'^T c`` for inputs of ``input_shape``."""
        if not self.conv:
            return c @ self.w
        fast = self._cpu_adjoint(c)
        if fast is not None:
            return fast
        return self._backward(c, c.new_empty(()).expand(input_shape), (True, False))[0]

    def weight_grad(self, grad: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """``sum_samples grad (x) inp``: the weight gradient of ``<grad, L(inp)>``."""
        if not self.conv:
            return grad.flatten(0, -2).t() @ inp.flatten(0, -2)
        return self._backward(grad, inp, (False, True))[1]

    def adjoint_and_weight_grad(self, grad: torch.Tensor, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L'^T grad, sum_samples grad (x) inp)`` in one call."""
        if not self.conv:
            return grad @ self.w, self.weight_grad(grad, inp)
        fast = self._cpu_adjoint(grad)
        if fast is not None:
            return fast, self.weight_grad(grad, inp)
        d_in, d_w, _ = self._backward(grad, inp, (True, True))
        return d_in, d_w

    def bias_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sum(dim=(0, 2, 3)) if self.conv else grad.flatten(0, -2).sum(0)


class _Activation:
    """An activation's kernels: ``(h, D) = slope(z)`` and ``(e, d_param) = backward(z, g, ct)`` with
    ``e = g D + ct phi''`` and ``d_param = sum g d phi/d b + ct d phi'/d b`` (``None`` without a parameter)."""

    def __init__(self, module: nn.Module):
        self.trainable = isinstance(module, LipSwish)  # beta; ELU's alpha is a constant
        if self.trainable:
            self._slope, self._backward = lipswish_kernels()
            self.param: torch.Tensor | float = module.beta.detach()
        else:
            self._slope, self._backward = elu_kernels()
            self.param = float(module.alpha)  # a number, not a host tensor beside device tensors

    def _param(self, z: torch.Tensor):
        return self.param.to(z.dtype) if self.trainable else self.param

    def slope(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._slope(z, self._param(z))

    def backward(self, z: torch.Tensor, g: torch.Tensor, ct: torch.Tensor):
        e, d = self._backward(z, self._param(z), g, ct)
        return e, (d if self.trainable else None)


def chunk_slices(batch: int, chunk: int | None) -> list[slice]:
    """The batch in chunks of ``chunk`` samples (``None``: one chunk), the last one possibly shorter."""
    step = batch if chunk is None else max(1, min(chunk, batch))
    return [slice(i, min(i + step, batch)) for i in range(0, max(batch, 1), step)]


def cat_chunks(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The chunks' results along the batch (no copy for a single chunk)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _add(acc: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
    return t if acc is None else acc + t


def _weights(linears: list[nn.Module]) -> list[torch.Tensor]:
    return [m.weight for m in linears]


def _set_frozen_shapes(linears: list[nn.Module], inputs: list[torch.Size]) -> None:
    # a frozen spectral norm reads the per-sample input shape its last call recorded: record this call's
    for m, shape in zip(linears, inputs, strict=True):
        sn = spectral_norm_of(m)
        if sn is not None and isinstance(m, nn.Conv2d):
            sn.frozen_shape = tuple(shape[1:])


class _ChainNeumann(torch.autograd.Function):
    @staticmethod
    def forward(ctx, est, layers, n, weights, gen, chunk, n_params, x, *params):
        linears, acts = layers
        slices = chunk_slices(x.shape[0], chunk)
        outputs, values, probes = [], [], None
        vectors = [[] for _ in range(est.n_probes)]
        ops: list[_Operator] | None = None
        kernels = [_Activation(a) for a in acts]
        for sl in slices:
            h, slopes = x[sl], []
            first = ops is None
            # the first chunk calls each layer as a module (its power iteration, its input-shape record); the
            # others apply the operators that call left
            with torch.enable_grad() if first else contextlib.nullcontext(), (
                    parametrize.cached() if first else contextlib.nullcontext()):
                for k, m in enumerate(linears):
                    z = m(h).detach() if first else ops[k](h)
                    if k < len(acts):
                        h, d = kernels[k].slope(z)
                        slopes.append(d)
                if first:
                    ops = [_Operator(m, w.detach()) for m, w in zip(linears, _weights(linears), strict=True)]
            gx = z

            def vjp(w, ops=ops, slopes=slopes, shapes=[x[sl].shape] + [s.shape for s in slopes]):
                # w^T J = L_0'^T (D_0 L_1'^T (... D_{m-1} L_m'^T w))
                for k in range(len(ops) - 1, -1, -1):
                    w = ops[k].adjoint(w, shapes[k])
                    if k:
                        w = w.mul_(slopes[k - 1])  # the adjoint's fresh output
                return w

            if probes is None:
                probes = est._draw_probes(gx.new_empty((x.shape[0], *gx.shape[1:])), gen)
            value, vecs = est._series_without_graph(vjp, gx, n, weights, [v[sl] for v in probes])
            outputs.append(gx)
            values.append(value)
            for store, a in zip(vectors, vecs, strict=True):
                store.append(a)
        vectors = [cat_chunks(v) for v in vectors]
        ctx.input_shapes = [x.shape] + [torch.Size((x.shape[0], *s.shape[1:])) for s in slopes]
        ctx.layers, ctx.n_params, ctx.n_probes, ctx.slices = layers, n_params, len(probes), slices
        ctx.bias_index = [next((i for i, q in enumerate(params) if m.bias is not None and q is m.bias), None)
                          for m in linears]
        ctx.save_for_backward(x, *params, *probes, *vectors)
        return cat_chunks(outputs), cat_chunks(values)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_gx, grad_ld):
        linears, acts = ctx.layers
        x, *rest = ctx.saved_tensors
        params, rest = rest[: ctx.n_params], rest[ctx.n_params:]
        probes, vectors = rest[: ctx.n_probes], rest[ctx.n_probes:]
        with torch.enable_grad(), frozen_spectral_norm(), parametrize.cached():
            _set_frozen_shapes(linears, ctx.input_shapes)
            weights = _weights(linears)
            beta_tensors = [a.beta for a in acts if isinstance(a, LipSwish)]
        ops = [_Operator(m, w.detach()) for m, w in zip(linears, weights, strict=True)]
        kernels = [_Activation(a) for a in acts]
        m_last, n_probes = len(ops) - 1, ctx.n_probes
        d_w = [None] * len(ops)
        d_b = [None] * len(ops)
        d_act = [None] * len(acts)
        grad_x = []
        for sl in ctx.slices:
            xs = x[sl]
            gamma = (grad_ld[sl] / n_probes).reshape(-1, *([1] * (xs.dim() - 1)))
            z_chunk, hd, h = [], [], xs  # the pre-activations again (storing them would not be faster)
            for k in range(len(acts)):
                z_chunk.append(ops[k](h))
                hd.append(kernels[k].slope(z_chunk[-1]))
                h = hd[-1][0]
            hs = [xs] + [h for h, _ in hd]
            ds = [d for _, d in hd]
            vs = [v[sl] for v in probes]
            # tangents p_{l-1} (p_{-1} = v) and t_l, per probe
            p = [[v] for v in vs]
            t = [[] for _ in vs]
            for b in range(n_probes):
                for k in range(m_last):
                    tk = ops[k](p[b][-1], bias=False)
                    t[b].append(tk)
                    p[b].append(tk * ds[k])
            e = grad_gx[sl]
            s = [gamma * a[sl] for a in vectors]
            for k in range(m_last, -1, -1):
                # adjoints and weight gradients of the flow path and of every probe's surrogate (one call each;
                # not stacked along the batch, which runs slower on the CPU, out of cache)
                if ops[k].b is not None:
                    d_b[k] = _add(d_b[k], ops[k].bias_grad(e))
                if not k:
                    g_x, dw = ops[0].adjoint_and_weight_grad(e, hs[0])
                    grad_x.append(g_x)
                    d_w[0] = _add(d_w[0], dw)
                    for b in range(n_probes):
                        d_w[0] = d_w[0] + ops[0].weight_grad(s[b], p[b][0])
                    break
                g_h, dw = ops[k].adjoint_and_weight_grad(e, hs[k])
                d_w[k] = _add(d_w[k], dw)
                cs = []
                for b in range(n_probes):
                    c, dw = ops[k].adjoint_and_weight_grad(s[b], p[b][k])
                    cs.append(c)
                    d_w[k] = d_w[k] + dw
                ct = cs[0] * t[0][k - 1]
                for b in range(1, n_probes):
                    ct.addcmul_(cs[b], t[b][k - 1])
                e, d_param = kernels[k - 1].backward(z_chunk[k - 1], g_h, ct)
                if d_param is not None:
                    d_act[k - 1] = _add(d_act[k - 1], d_param)
                s = [c.mul_(ds[k - 1]) for c in cs]  # the adjoints' fresh outputs, no longer needed
        # through the (frozen) spectral normalization and the activations' parametrization, by autograd; the
        # biases are plain leaves
        outs, grads = [], []
        for w, d in zip(weights, d_w, strict=True):
            if w.requires_grad:
                outs.append(w)
                grads.append(d)
        lipswish_grads = [d for d, a in zip(d_act, acts, strict=True) if isinstance(a, LipSwish)]
        for bt, d in zip(beta_tensors, lipswish_grads, strict=True):
            if bt.requires_grad:
                outs.append(bt)
                grads.append(d.reshape(bt.shape))
        grads_params = [None] * len(params)
        if outs and params:
            with torch.enable_grad():
                grads_params = list(torch.autograd.grad(outs, list(params), grads, allow_unused=True))
        for i, d in zip(ctx.bias_index, d_b, strict=True):
            if i is not None and d is not None:
                grads_params[i] = _add(grads_params[i], d)
        return (None,) * 7 + (cat_chunks(grad_x), *grads_params)


def neumann_chain(est, g: nn.Module, x: torch.Tensor, n: int, weights: list[float],
                  gen: torch.Generator | None, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(g(x), log-det estimate)`` as :func:`~invertible.logdet_recompute.neumann_recompute` computes them, for a
    chain ``g`` (module docstring) by hand; ``None`` when ``g`` is not a supported chain or autocast is on."""
    layers = chain_layers(g) if _BY_HAND.get() else None
    if layers is None or torch.is_autocast_enabled(x.device.type):
        return None
    params = [p for p in g.parameters() if p.requires_grad]
    return _ChainNeumann.apply(est, layers, n, weights, gen, chunk, len(params), x, *params)
