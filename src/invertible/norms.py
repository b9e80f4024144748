"""Exact spectral norms ``||A||_2`` of the linear operators of Linear/Conv layers (certificates, Remark 4.9).

For a convolution, ``||A||_2`` is the norm of the *operator* on the input space (shape C x H x W), not of the
reshaped kernel matrix (eq. 4.8). :func:`operator_norm` computes it exactly where it can: the weight matrix's SVD
(Linear, 1x1 convolutions), the FFT-SVD of Sedghi et al. (2019) for circular padding, the materialised operator
when it is small, and otherwise Lanczos to a stated tolerance together with the certified FFT upper bound of
:func:`operator_norm_upper_bound`. :class:`LinearOperator` is ``x -> A x`` and its adjoint ``y -> A^T y``, shared
with the power iteration of :class:`~invertible.SpectralNorm`.

References: Gouk et al. (2018); Sedghi et al. (2019) "The singular values of convolutional layers".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from invertible.checks import check_count, check_real

__all__ = [
    "DENSE_ENTRIES",
    "DENSE_LIMIT",
    "LINEAR_TYPES",
    "LinearOperator",
    "input_shape_of",
    "norm_method",
    "operator_norm",
    "operator_norm_upper_bound",
    "top_singular_triplet",
]

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


class LinearOperator:
    """The linear part x -> A x of a Linear/Conv1d/Conv2d module (bias excluded), with its adjoint."""

    def __init__(self, module: nn.Module):
        if not isinstance(module, LINEAR_TYPES):
            raise TypeError(f"spectral normalization supports nn.Linear, nn.Conv1d, nn.Conv2d; got {type(module)}")
        self.module = module
        self.is_linear = isinstance(module, nn.Linear)
        if not self.is_linear:
            self.dims = 1 if isinstance(module, nn.Conv1d) else 2
            self.conv = F.conv1d if self.dims == 1 else F.conv2d
            self.conv_t = F.conv_transpose1d if self.dims == 1 else F.conv_transpose2d

    def apply(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.is_linear:
            return F.linear(x, weight)
        m = self.module
        if m.padding_mode != "zeros":
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
            padding = 0
        else:
            padding = m.padding
        return self.conv(x, weight, None, m.stride, padding, m.dilation, m.groups)

    def adjoint(self, weight: torch.Tensor, y: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
        """A^T y: a transposed convolution with the output padding that restores ``in_shape``."""
        if self.is_linear:
            return F.linear(y, weight.t())
        m = self.module
        if m.padding_mode == "zeros" and not isinstance(m.padding, str):
            out_pad = []
            for i in range(self.dims):
                full = (y.shape[2 + i] - 1) * m.stride[i] - 2 * m.padding[i] + m.dilation[i] * (
                    weight.shape[2 + i] - 1
                ) + 1
                out_pad.append(in_shape[1 + i] - full)
            return self.conv_t(y, weight, None, m.stride, m.padding, tuple(out_pad), m.groups, m.dilation)
        # Other paddings (circular, reflect, 'same'): the adjoint is the vector-Jacobian product of A.
        with torch.enable_grad():
            x = torch.zeros((y.shape[0], *in_shape), dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.apply(weight.detach(), x), x, y)
        return g


def _recorded_shape(module: nn.Module) -> tuple[int, ...] | None:
    """The per-sample input shape a weight parametrization (spectral normalization) recorded, if any."""
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            shape = getattr(p, "recorded_shape", None)
            if shape:
                return tuple(shape)
    return None


def input_shape_of(module: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``input_shape`` if given, else ``(in_features,)`` for Linear, else the shape a spectral norm recorded."""
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    if isinstance(module, nn.Linear):
        return (module.in_features,)
    shape = _recorded_shape(module)
    if shape is not None:
        return shape
    raise ValueError(
        f"operator norm of {type(module).__name__} depends on the input size: pass input_shape=(C, H, W) "
        "or run a forward pass through a spectrally normalized layer first"
    )


DENSE_LIMIT = 4096  # materialise the operator when the input dimension is at most this
DENSE_ENTRIES = 2**25  # ... and the materialised matrix has at most this many entries (256 MiB in float64)
GRAM_DENSE_LIMIT = 256  # top_singular_triplet: a dense eigh of the Gram matrix up to this side length


@torch.no_grad()
def operator_norm(
    module: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    rtol: float = 1e-6,
    max_iter: int = 5000,
    method: str | None = None,
) -> float:
    """The spectral norm ``||A||_2`` of the linear operator of ``module`` (its current, normalized weight).

    * ``nn.Linear`` and 1x1 stride-1 convolutions: exact SVD of the weight matrix.
    * convolution with circular padding and stride 1: exact, FFT-SVD (Sedghi et al. 2019).
    * other convolutions with input dimension <= ``DENSE_LIMIT`` (and a matrix of at most ``DENSE_ENTRIES``):
      exact, from the materialised matrix (largest eigenvalue of its smaller Gram matrix).
    * otherwise: Lanczos (ARPACK: scipy ``eigsh`` of the Gram operator) on the matrix-free operator to relative
      tolerance ``rtol``;
      see :func:`operator_norm_upper_bound` for a certificate that needs no convergence.

    Args:
        input_shape: per-sample input shape ``(C, L)`` or ``(C, H, W)``; taken from the layer when it has
            seen data.
        method: force a method (see :func:`norm_method`), e.g. ``"lanczos"`` to skip materialising.
    """
    rtol, max_iter = check_real("rtol", rtol, 0.0), check_count("max_iter", max_iter, 1)
    op = LinearOperator(module)
    weight = module.weight.detach().double()
    shape = input_shape_of(module, input_shape)
    if method is None:
        method = norm_method(module, shape)
    elif method not in ("matrix", "fft", "dense", "lanczos"):
        raise ValueError(f"method must be 'matrix', 'fft', 'dense' or 'lanczos', got {method!r}")
    if method == "matrix":
        return float(torch.linalg.matrix_norm(weight.flatten(1), ord=2))
    if method == "fft":
        return _circular_fft_norm(weight, shape[1:], module.dilation)
    n = math.prod(shape)
    if method == "dense":
        eye = torch.eye(n, dtype=torch.float64, device=weight.device).reshape(n, *shape)
        mat = op.apply(weight, eye).reshape(n, -1)
        # sqrt(lambda_max) of the smaller Gram matrix: exact, and far cheaper than a full SVD.
        gram = mat @ mat.T if mat.shape[0] <= mat.shape[1] else mat.T @ mat
        return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0).sqrt())
    return _lanczos_norm(op, weight, shape, rtol, max_iter)


def norm_method(module: nn.Module, input_shape: Sequence[int]) -> str:
    """How :func:`operator_norm` computes ``||A||_2`` for this layer and input shape:

    ``"matrix"`` (Linear, or a 1x1 stride-1 unpadded convolution, which applies the same ``C_out x C_in`` matrix
    at every position: exact), ``"fft"`` (circular padding, stride 1: exact), ``"dense"`` (the materialised
    operator is small: exact), ``"lanczos"`` (matrix-free, to a relative tolerance; not a certificate).
    """
    if isinstance(module, nn.Linear):
        return "matrix"
    unit = all(k == 1 for k in module.kernel_size) and all(s == 1 for s in module.stride)
    unpadded = isinstance(module.padding, tuple) and all(p == 0 for p in module.padding)
    if unit and unpadded and module.groups == 1:
        return "matrix"
    if module.padding_mode == "circular" and all(s == 1 for s in module.stride) and module.groups == 1:
        return "fft"
    n_in = math.prod(input_shape)
    n_out = module.out_channels * n_in // (input_shape[0] * math.prod(module.stride))  # about, for the size test
    return "dense" if n_in <= DENSE_LIMIT and n_in * n_out <= DENSE_ENTRIES else "lanczos"


def _lanczos_norm(op: LinearOperator, weight: torch.Tensor, shape: Sequence[int], rtol: float, max_iter: int) -> float:
    """Largest singular value by ARPACK's implicitly restarted Lanczos (scipy ``eigsh`` of the Gram operator) on the
    matrix-free operator: converges far faster than plain power iteration when the top singular values are close."""
    return top_singular_triplet(op, weight, shape, rtol=rtol, max_iter=max_iter, vectors=False)[0]


def top_singular_triplet(
    op: LinearOperator, weight: torch.Tensor, shape: Sequence[int], *, rtol: float = 1e-6, max_iter: int = 5000,
    vectors: bool = True,
) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """``(sigma_1, u, v)`` of the operator ``A`` of ``op`` with ``weight`` on per-sample inputs of ``shape``:
    ``A u = sigma_1 v``, ``u`` of shape ``(1, *shape)`` (input space), ``v`` of A's output shape, both of unit
    norm, ``sigma_1 = ||A u||``. The top eigenvector of the smaller Gram operator (``A^T A`` or ``A A^T``) by
    ARPACK's implicitly restarted Lanczos (scipy ``eigsh``, to relative tolerance ``rtol`` on ``sigma_1``, in
    float64; vectors returned in ``weight``'s dtype), or by a dense ``eigh`` when that side has at most
    ``GRAM_DENSE_LIMIT`` entries. Deterministic: the start and ARPACK's restart vectors are seeded (scipy's
    ``svds`` draws restart vectors from fresh OS entropy, so a conv with nearly equal top singular values got
    another top pair on every call). ``vectors=False`` returns ``(sigma_1, None, None)``."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator as ScipyOperator
    from scipy.sparse.linalg import eigsh

    w64 = weight.detach().double()
    n = math.prod(shape)
    with torch.no_grad():
        out_shape = op.apply(w64, torch.zeros((1, *shape), dtype=w64.dtype, device=w64.device)).shape
    m = math.prod(out_shape)

    def forward(x: torch.Tensor) -> torch.Tensor:  # (k, n) -> (k, m)
        with torch.no_grad():
            return op.apply(w64, x.reshape(-1, *shape)).reshape(x.shape[0], m)

    def backward(y: torch.Tensor) -> torch.Tensor:  # (k, m) -> (k, n)
        with torch.no_grad():
            return op.adjoint(w64, y.reshape(-1, *out_shape[1:]), shape).reshape(y.shape[0], n)

    input_side = n <= m  # the Gram operator on the smaller side: A^T A on inputs, A A^T on outputs
    first, second = (forward, backward) if input_side else (backward, forward)
    size = n if input_side else m
    if size <= GRAM_DENSE_LIMIT:
        eye = torch.eye(size, dtype=w64.dtype, device=w64.device)
        images = first(eye)  # row i: the image of basis vector i
        top = torch.linalg.eigh(images @ images.T)[1][:, -1]
    else:
        def gram(x):
            t = torch.as_tensor(np.asarray(x).reshape(1, size), dtype=w64.dtype, device=w64.device)
            return second(first(t)).reshape(-1).cpu().numpy()

        linop = ScipyOperator((size, size), matvec=gram, dtype=np.float64)
        rng = np.random.default_rng(0)
        _, vecs = eigsh(linop, k=1, tol=rtol**2, maxiter=max_iter, v0=rng.standard_normal(size), rng=rng)
        top = torch.as_tensor(vecs[:, 0], dtype=w64.dtype, device=w64.device)
    top = top / top.norm()
    image = first(top[None])[0]
    sigma = float(image.norm())
    if not vectors:
        return sigma, None, None
    other = image / max(sigma, 1e-300)
    u, v = (top, other) if input_side else (other, top)
    u = u.reshape(1, *shape).to(weight.dtype)
    v = v.reshape(out_shape).to(weight.dtype)
    return sigma, u, v


def _circular_fft_norm(weight: torch.Tensor, spatial: Sequence[int], dilation: Sequence[int]) -> float:
    """Exact norm of a stride-1 circular convolution on a grid ``spatial``: max singular value over
    frequencies of the (C_out x C_in) transfer matrices (Sedghi et al. 2019, Theorem 6)."""
    c_out, c_in = weight.shape[:2]
    k = weight.shape[2:]
    grid = [int(s) for s in spatial]
    full = torch.zeros((c_out, c_in, *grid), dtype=weight.dtype, device=weight.device)
    for idx in torch.cartesian_prod(*[torch.arange(kk) for kk in k]).reshape(-1, len(k)):
        pos = tuple(int(i) * d % g for i, d, g in zip(idx, dilation, grid, strict=True))
        full[(slice(None), slice(None), *pos)] += weight[(slice(None), slice(None), *idx.tolist())]
    spec = torch.fft.fftn(full, dim=tuple(range(2, 2 + len(grid))))
    mats = spec.permute(*range(2, 2 + len(grid)), 0, 1).reshape(-1, c_out, c_in)
    return float(torch.linalg.matrix_norm(mats, ord=2).max())


@torch.no_grad()
def operator_norm_upper_bound(module: nn.Module, input_shape: Sequence[int] | None = None) -> float:
    """A certified upper bound on ``||A||_2`` that is cheap for large inputs.

    A zero-padded convolution on an ``H x W`` grid is a restriction of the stride-1 circular convolution on
    the grid enlarged by ``dilation * (k - 1)`` (no wrap-around), followed by a subsampling of norm 1 for
    strides > 1, so ``||A|| <= ||C||`` with ``||C||`` exact by FFT-SVD. Exact for Linear and circular layers.
    """
    op = LinearOperator(module)
    weight = module.weight.detach().double()
    if op.is_linear:
        return float(torch.linalg.matrix_norm(weight, ord=2))
    if module.groups != 1:
        raise ValueError("operator_norm_upper_bound supports groups=1 convolutions only")
    shape = input_shape_of(module, input_shape)
    k = weight.shape[2:]
    if module.padding_mode == "circular":
        grid = shape[1:]
    else:
        grid = [s + d * (kk - 1) for s, d, kk in zip(shape[1:], module.dilation, k, strict=True)]
    return _circular_fft_norm(weight, grid, module.dilation)


# Lipschitz constants of elementwise activations; anything not listed is refused by lipschitz_constant.
