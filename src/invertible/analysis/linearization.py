"""Exact local linearizations of ReLU networks and their spectra (thesis Section 3.4, Definition 3.4).

A ReLU network is piecewise affine: on the polytope ``P`` that contains ``x`` it equals
``F(x') = A_P x' + c_P`` with the matrix chain ``A_P = A_L D_{I_{L-1}} A_{L-1} ... D_{I_1} A_1``, where
``D_I`` zeroes the rows ``I = {i : z_i <= 0}`` of the pre-activation ``z`` (Definition 3.4 (ii)). Forward-
or reverse-mode automatic differentiation at ``x`` returns ``A_P`` exactly (ReLU's derivative at ``0`` is
``0`` in PyTorch, matching ``z_i <= 0 -> i in I``).

:func:`layer_spectra` splits a feed-forward network into stages - every linear/convolutional map and every
ReLU separately - and reports for the linearization up to each stage its singular values, how many are
non-zero and the condition number of the non-zero part (Fig. 3.4). For large inputs a *window* restricts
the Jacobian to some input coordinates (the columns of ``A_P`` for those coordinates; Jacobsen et al. 2018);
its singular values interlace with, and never exceed, the full ones.

References: Behrmann, Dittmer, Fernsel, Maass, "Invariance and inverse stability under ReLU" (2019).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import jacfwd, jacrev, jvp, vmap

__all__ = [
    "LayerSpectrum",
    "Stage",
    "Window",
    "condition_numbers",
    "layer_spectra",
    "local_linear_map",
    "relu_stages",
    "spectrum_summary",
    "stage_outputs",
    "window_indices",
]

Window = tuple[slice | int, ...] | torch.Tensor | None
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASS = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class Stage:
    """One stage of a feed-forward ReLU network: a linear map or a ReLU. ``layer`` counts linear maps
    from 1 (Table 3.1's index); ``modules`` are run in order (pass-through modules such as ``Flatten`` are
    attached to the following linear map)."""

    name: str
    kind: Literal["linear", "relu"]
    layer: int
    modules: tuple[nn.Module, ...]


def _flat_modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        out: list[nn.Module] = []
        for m in model:
            out.extend(_flat_modules(m))
        return out
    return [model]


def relu_stages(model: nn.Module) -> list[Stage]:
    """Split a feed-forward ReLU network (nested ``nn.Sequential`` of Linear/Conv, ReLU, Flatten,
    Identity, Dropout) into stages ``dense1/conv1, relu1, conv2, relu2, ...``.

    Raises ``ValueError`` for any other module (pooling, normalization, residual blocks), since the analysis
    of Section 3.4 assumes the network is a chain of affine maps and ReLUs.
    """
    stages: list[Stage] = []
    pending: list[nn.Module] = []
    layer = 0
    for m in _flat_modules(model):
        if isinstance(m, _PASS):
            pending.append(m)
        elif isinstance(m, _LINEAR):
            layer += 1
            kind = "dense" if isinstance(m, nn.Linear) else "conv"
            stages.append(Stage(f"{kind}{layer}", "linear", layer, (*pending, m)))
            pending = []
        elif isinstance(m, nn.ReLU):
            if layer == 0:
                raise ValueError("the network starts with a ReLU; expected a linear map first")
            stages.append(Stage(f"relu{layer}", "relu", layer, (*pending, m)))
            pending = []
        else:
            raise ValueError(
                f"unsupported module {type(m).__name__}: the ReLU analysis needs a chain of Linear/Conv, "
                "ReLU, Flatten, Identity and Dropout modules (nested nn.Sequential)"
            )
    if not stages:
        raise ValueError("the model has no Linear/Conv layer to analyze")
    if pending:  # trailing Flatten etc.: attach to the last stage
        last = stages[-1]
        stages[-1] = Stage(last.name, last.kind, last.layer, (*last.modules, *pending))
    return stages


def _run(modules: Iterable[nn.Module], h: torch.Tensor) -> torch.Tensor:
    for m in modules:
        h = m(h)
    return h


def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs after every stage of :func:`relu_stages` for a batch ``x`` (``(B, *input_shape)``)."""
    outs = []
    h = x
    for st in relu_stages(model):
        h = _run(st.modules, h)
        outs.append(h)
    return outs


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (batch, *input_shape), got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (batch, *input_shape), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")


def window_indices(input_shape: Sequence[int], window: Window) -> torch.Tensor:
    """Flat indices (into one flattened input of ``input_shape``) selected by ``window``.

    ``window`` is ``None`` (all coordinates), a tuple of slices/ints indexing one input (e.g.
    ``(slice(None), slice(12, 20), slice(12, 20))`` for an 8x8 patch of all channels) or a boolean mask
    of shape ``input_shape``.
    """
    numel = 1
    for s in input_shape:
        numel *= int(s)
    flat = torch.arange(numel).view(*input_shape)
    if window is None:
        return flat.flatten()
    if isinstance(window, torch.Tensor):
        if window.dtype != torch.bool or tuple(window.shape) != tuple(input_shape):
            raise ValueError(f"a window mask must be a bool tensor of shape {tuple(input_shape)}, "
                             f"got {window.dtype} {tuple(window.shape)}")
        idx = flat[window.cpu()]
    else:
        try:
            idx = flat[tuple(window)].flatten()
        except (IndexError, TypeError) as exc:
            raise ValueError(f"window {window!r} does not index an input of shape {tuple(input_shape)}") from exc
    if idx.numel() == 0:
        raise ValueError("the window selects no input coordinate")
    return idx


def _analysis_copy(model: nn.Module, like: torch.Tensor, dtype: torch.dtype | None) -> nn.Module:
    m = copy.deepcopy(model).eval().requires_grad_(False)
    return m.to(device=like.device, dtype=dtype or like.dtype)


def local_linear_map(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    window: Window = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map ``F(x') = A_P v(x') + c_P`` of a piecewise-linear network on the region of each ``x``.

    ``x``: ``(B, *input_shape)``. Returns ``A`` of shape ``(B, out_numel, w)`` and ``c`` of shape
    ``(B, out_numel)``, where ``v(x')`` are the ``w`` input coordinates selected by ``window`` (all ``d``
    by default; the other coordinates are frozen at their values in ``x``). Computed per sample with
    ``torch.func`` (``jacfwd`` when ``w <= out_numel``, else ``jacrev``), vectorized over the batch with
    ``vmap``. Uses the model's parameters as they are (no copy); the dtype is ``x``'s.
    """
    _check_input(x)
    if isinstance(model, nn.Module):
        p = next(iter(model.parameters()), None)
        if p is not None and p.dtype != x.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the model's parameters are {p.dtype}; convert one")
    shape = tuple(x.shape[1:])
    idx = window_indices(shape, window).to(x.device)

    def f(v: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        full = base.flatten().index_put((idx,), v).view(1, *shape)
        return model(full).flatten()

    x_w = x.flatten(1)[:, idx]
    out_numel = model(x[:1]).numel()
    jac = jacfwd if idx.numel() <= out_numel else jacrev
    A = vmap(jac(f, argnums=0))(x_w, x)
    c = vmap(lambda v, base: f(v, base))(x_w, x) - torch.einsum("bij,bj->bi", A, x_w)
    return A, c


def condition_numbers(singular_values: torch.Tensor, rtol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of non-zero singular values and condition number of the non-zero part.

    ``singular_values``: ``(..., r)``, non-negative. A value counts as non-zero if it exceeds
    ``rtol * max`` (default ``rtol = r * eps(dtype)``). The condition number is ``sigma_max / sigma_min``
    over the non-zero values, and ``0`` when all vanish (the thesis's convention in Fig. 3.1: unbounded/
    compact preimages show condition ``0`` or ``1``). Returns ``(n_nonzero (...), condition (...))``.
    """
    s = singular_values
    if s.shape[-1] == 0:
        z = torch.zeros(s.shape[:-1], dtype=s.dtype, device=s.device)
        return z.long(), z
    if rtol is None:
        rtol = s.shape[-1] * torch.finfo(s.dtype).eps
    smax = s.max(dim=-1, keepdim=True).values
    nz = s > rtol * smax
    n_nonzero = nz.sum(dim=-1)
    smin = torch.where(nz, s, torch.full_like(s, float("inf"))).min(dim=-1).values
    cond = torch.where(n_nonzero > 0, smax.squeeze(-1) / smin, torch.zeros_like(smin))
    return n_nonzero, cond


@dataclass
class LayerSpectrum:
    """Spectrum of the linearization up to one stage, for each of ``B`` inputs.

    ``singular_values``: ``(B, r)`` descending, ``r = min(out_features, w)`` (``w`` = window size).
    ``n_nonzero``: ``(B,)``. ``condition``: ``(B,)`` (non-zero part; 0 if all vanish).
    """

    name: str
    kind: Literal["linear", "relu"]
    layer: int
    out_features: int
    singular_values: torch.Tensor
    n_nonzero: torch.Tensor
    condition: torch.Tensor

    @property
    def median_singular_values(self) -> torch.Tensor:
        """Elementwise median over inputs of the sorted spectra, ``(r,)`` (as in Fig. 3.4, left)."""
        return torch.quantile(self.singular_values, 0.5, dim=0)

    @property
    def median_n_nonzero(self) -> float:
        return float(torch.quantile(self.n_nonzero.double(), 0.5))

    @property
    def median_condition(self) -> float:
        return float(torch.quantile(self.condition.double(), 0.5))


def _stage_jacobians_T(
    stages: list[Stage], x0: torch.Tensor, idx: torch.Tensor, chunk_size: int
) -> list[torch.Tensor]:
    """Transposed Jacobians ``J_l^T`` (``(w, out_l)``) of every stage output w.r.t. ``x0``'s window, by
    forward-mode AD: one ``jvp`` per unit tangent, ``vmap``-ed over chunks of tangents."""

    def g(inp: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = inp.unsqueeze(0)
        outs = []
        for st in stages:
            h = _run(st.modules, h)
            outs.append(h.flatten())
        return tuple(outs)

    def push(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return jvp(g, (x0,), (t,))[1]

    pieces: list[list[torch.Tensor]] = [[] for _ in stages]
    d = x0.numel()
    for start in range(0, idx.numel(), chunk_size):
        cols = idx[start:start + chunk_size]
        T = torch.zeros(cols.numel(), d, dtype=x0.dtype, device=x0.device)
        T[torch.arange(cols.numel(), device=x0.device), cols] = 1.0
        outs = vmap(push)(T.view(cols.numel(), *x0.shape))
        for l, o in enumerate(outs):
            pieces[l].append(o)
    return [torch.cat(p, dim=0) for p in pieces]


def _svdvals_tall(JT: torch.Tensor) -> torch.Tensor:
    """Singular values of ``J = JT^T`` (``(out, w)``), skipping its all-zero rows (dead units, outside the
    receptive field of the window); padded with zeros to ``min(out, w)``."""
    w, out = JT.shape
    r = min(out, w)
    keep = JT.abs().amax(dim=0) > 0
    J = JT[:, keep]
    s = torch.linalg.svdvals(J) if J.shape[1] > 0 else JT.new_zeros(0)
    if s.numel() < r:
        s = torch.cat([s, s.new_zeros(r - s.numel())])
    return s[:r]


def layer_spectra(
    model: nn.Module,
    x: torch.Tensor,
    *,
    window: Window = None,
    dtype: torch.dtype | None = torch.float64,
    chunk_size: int = 256,
    rtol: float | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[LayerSpectrum]:
    """Singular values of the linearization ``A_P`` up to every stage (linear map and ReLU separately).

    ``model``: a feed-forward ReLU network (see :func:`relu_stages`); ``x``: ``(B, *input_shape)``; the
    analysis runs on ``x``'s device in ``dtype`` (float64 by default, on a copy of the model) so that small
    singular values are resolved. ``window`` restricts the Jacobian to some input coordinates (see
    :func:`window_indices`) for inputs too large for a full SVD: the cost per input is ``w`` forward-mode
    passes and one SVD of (the non-zero rows of) an ``out_l x w`` matrix per stage.

    For each stage the result holds ``singular_values (B, min(out_l, w))``, ``n_nonzero (B,)`` and
    ``condition (B,)`` as computed by :func:`condition_numbers`, plus medians over the batch.
    """
    _check_input(x)
    relu_stages(model)  # validate before copying
    net = _analysis_copy(model, x, dtype)
    stages = relu_stages(net)
    xx = x.to(dtype) if dtype is not None else x
    idx = window_indices(tuple(x.shape[1:]), window).to(x.device)
    with torch.no_grad():
        out_sizes = [o[0].numel() for o in stage_outputs(net, xx[:1])]
    per_stage: list[list[torch.Tensor]] = [[] for _ in stages]
    rows = range(xx.shape[0])
    for i in (progress(rows) if progress else rows):
        JTs = _stage_jacobians_T(stages, xx[i], idx, chunk_size)
        for l, JT in enumerate(JTs):
            per_stage[l].append(_svdvals_tall(JT))
    result = []
    for st, n_out, svs in zip(stages, out_sizes, per_stage, strict=True):
        S = torch.stack(svs)
        n_nz, cond = condition_numbers(S, rtol)
        result.append(LayerSpectrum(st.name, st.kind, st.layer, n_out, S, n_nz, cond))
    return result


def spectrum_summary(spectra: Sequence[LayerSpectrum]) -> list[dict]:
    """One JSON-able row per stage: name, kind, layer, output units, median #non-zero singular values,
    median condition number, median largest and smallest non-zero singular value."""
    rows = []
    for sp in spectra:
        S = sp.singular_values
        smax = S[:, 0] if S.shape[1] else S.new_zeros(S.shape[0])
        idx = (sp.n_nonzero - 1).clamp(min=0)
        smin = S.gather(1, idx[:, None]).squeeze(1) if S.shape[1] else smax
        smin = torch.where(sp.n_nonzero > 0, smin, torch.zeros_like(smin))
        rows.append({
            "stage": sp.name,
            "kind": sp.kind,
            "layer": sp.layer,
            "out_features": sp.out_features,
            "n_singular_values": int(S.shape[1]),
            "median_n_nonzero": sp.median_n_nonzero,
            "median_condition": sp.median_condition,
            "median_sigma_max": float(torch.quantile(smax.double(), 0.5)),
            "median_sigma_min_nonzero": float(torch.quantile(smin.double(), 0.5)),
        })
    return rows
