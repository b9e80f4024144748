"""Lipschitz control of linear operators: spectral normalization and exact norm certificates.

A residual block g = A_3 o phi o A_2 o phi o A_1 (thesis eq. 4.5) with 1-Lipschitz phi satisfies
``Lip(g) <= prod_i ||A_i||_2`` (eq. 4.6). For a convolution, ``||A_i||_2`` is the norm of the *operator* on
the input space (shape C x H x W), not of the reshaped kernel matrix (eq. 4.8), so the power iteration here
runs on A and its adjoint A^T (Gouk et al. 2018), and the weight is rescaled by eq. 4.9:

    W <- W * min(1, c / sigma),   sigma ~ ||A||_2 from below.

Because the power iteration only gives a lower bound, :func:`operator_norm` (:mod:`invertible.norms`, re-exported
here) computes ``||A||_2`` exactly after training (Remark 4.9); :func:`lipschitz_constant` multiplies those norms
with the activations' constants (:mod:`invertible.activations`) into a certificate for ``Lip(g)``.

References: Behrmann et al. (2019) "Invertible Residual Networks"; Miyato et al. (2018); Gouk et al. (2018);
Sedghi et al. (2019) "The singular values of convolutional layers".
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from invertible.activations import activation_lipschitz
from invertible.checks import check_count, check_estimator_input
from invertible.dense import DenseLayer
from invertible.norms import (
    DENSE_ENTRIES,
    DENSE_LIMIT,
    LINEAR_TYPES,
    LinearOperator,
    input_shape_of,
    norm_method,
    operator_norm,
    operator_norm_upper_bound,
    top_singular_triplet,
)

__all__ = [
    "SpectralNorm",
    "spectral_norm",
    "operator_norm",
    "operator_norm_upper_bound",
    "lipschitz_constant",
    "local_lipschitz",
    "advance_spectral_norms",
    "frozen_spectral_norm",
    "converge_spectral_norms",
    "norm_method",
    "spectral_norm_of",
    "LINEAR_TYPES",
    "DENSE_LIMIT",
    "DENSE_ENTRIES",
]

_FROZEN: contextvars.ContextVar[bool] = contextvars.ContextVar("invertible_sn_frozen", default=False)


@contextlib.contextmanager
def frozen_spectral_norm() -> Iterator[None]:
    """Within this context spectral-norm layers use their stored vectors and run no power iteration.

    Used when a block is evaluated many times for one step (fixed-point inverse, Jacobians via torch.func), so
    that the operator stays the same map throughout and buffers are not mutated inside function transforms.
    """
    token = _FROZEN.set(True)
    try:
        yield
    finally:
        _FROZEN.reset(token)


def _check_coeff(coeff: float) -> float:
    try:
        c = float(coeff)
    except (TypeError, ValueError):
        raise ValueError(f"coeff must be a number in (0, 1), got {coeff!r}") from None
    if not (0.0 < c < 1.0):  # also rejects nan
        raise ValueError(f"coeff must lie in the open interval (0, 1) for a contractive block, got {coeff!r}")
    return c


def _check_tolerance(name: str, value) -> float | None:
    if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be None or a finite number >= 0, got {name}={value!r}")
    return None if value is None else float(value)


class SpectralNorm(nn.Module):
    """Parametrization ``W -> W * min(1, coeff / sigma)`` with sigma from power iteration on the operator.

    Buffers (so ``state_dict`` round-trips exactly): ``u`` (a unit vector of the input space, shape
    ``(1, *input_shape)``), ``v`` (unit vector of the output space), ``sigma`` (the last estimate) and
    ``input_shape``. The input shape is taken at the first forward of the module and the vectors are
    re-initialised when it changes.
    """

    def __init__(
        self,
        module: nn.Module,
        coeff: float,
        n_power_iterations: int = 1,
        atol: float | None = None,
        rtol: float | None = None,
        max_power_iterations: int = 1000,
    ):
        super().__init__()
        self.coeff = _check_coeff(coeff)
        self.n_power_iterations = check_count("n_power_iterations", n_power_iterations, 0)
        self.atol, self.rtol = _check_tolerance("atol", atol), _check_tolerance("rtol", rtol)
        self.max_power_iterations = check_count("max_power_iterations", max_power_iterations, 1)
        self._op = LinearOperator(module)
        self.frozen_shape: tuple[int, ...] | None = None  # input size of the last frozen call (not state)
        w = module.weight
        self.register_buffer("u", torch.empty(0, dtype=w.dtype, device=w.device))
        self.register_buffer("v", torch.empty(0, dtype=w.dtype, device=w.device))
        self.register_buffer("sigma", torch.ones((), dtype=w.dtype, device=w.device))
        self.register_buffer("input_shape", torch.empty(0, dtype=torch.long, device=w.device))
        if self._op.is_linear:
            self.input_shape = torch.tensor([module.in_features], device=w.device)
        self._shape_cache: tuple[int, ...] | None = None

    # -- state -----------------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return self.u.numel() > 0

    @property
    def recorded_shape(self) -> tuple[int, ...]:
        """``input_shape`` as a tuple, cached on the host: read on every forward, it must not cost a device sync."""
        if self._shape_cache is None:
            self._shape_cache = tuple(self.input_shape.tolist())
        return self._shape_cache

    def set_input_shape(self, shape: Sequence[int]) -> None:
        shape = tuple(int(s) for s in shape)
        if self.recorded_shape != shape:
            self.input_shape = torch.tensor(shape, dtype=torch.long, device=self.sigma.device)
            self._shape_cache = shape
            self.u = torch.empty(0, dtype=self.u.dtype, device=self.u.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers change shape with the input; adopt the stored shapes before the default loader copies.
        shape, u, v = (state_dict.get(prefix + k) for k in ("input_shape", "u", "v"))
        if shape is not None and u is not None and v is not None and shape.numel() and u.numel():
            expected = (1, *(int(k) for k in shape.tolist()))
            if tuple(u.shape) != expected or v.dim() < 2 or v.shape[0] != 1:
                raise ValueError(f"{prefix}u/v: stored power-iteration vectors of shapes {tuple(u.shape)} and "
                                 f"{tuple(v.shape)} do not fit the stored input shape {expected[1:]} (a crafted "
                                 "or corrupt state dict)")
        for name in ("u", "v", "input_shape"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.sigma.device))
        self._shape_cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- power iteration -------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_vectors(self, weight: torch.Tensor) -> None:
        shape = self.recorded_shape
        if not shape:
            raise RuntimeError("input shape unknown: run a forward pass through the layer first")
        u = torch.randn((1, *shape), dtype=weight.dtype, device=weight.device)
        self.u = u / u.norm()
        v = self._op.apply(weight, self.u)
        self.v = v / v.norm().clamp_min(1e-30)
        # Start from a good estimate: the first steps of training must already be contractive.
        self._iterate(weight, max(20, self.n_power_iterations))

    @torch.no_grad()
    def _iterate(
        self, weight: torch.Tensor, n: int, atol: float | None = None, rtol: float | None = None,
        max_iter: int | None = None,
    ) -> int:
        """At least ``n`` steps; in tolerance mode (the layer's atol/rtol, or the ones given) up to ``max_iter``."""
        u, v, k = self._power_steps(weight, self.u, self.v, n, atol, rtol, max_iter)
        self.u.copy_(u)
        self.v.copy_(v)
        return k

    @torch.no_grad()
    def _power_steps(
        self, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n: int, atol: float | None = None,
        rtol: float | None = None, max_iter: int | None = None, shape: tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Power iteration from ``(u, v)`` without touching the buffers: returns the new ``(u, v)`` and the steps
        (``shape``: the per-sample input shape, default the recorded one)."""
        shape = self.recorded_shape if shape is None else shape
        atol = self.atol if atol is None else atol
        rtol = self.rtol if rtol is None else rtol
        use_tol = atol is not None or rtol is not None
        atol, rtol = atol or 0.0, rtol or 0.0
        limit = (max_iter or self.max_power_iterations) if use_tol else n
        if not use_tol and u.device.type != "cpu":
            return self._power_steps_without_sync(weight, u, v, n, shape)
        if not bool(u.norm() > 0):  # e.g. a zero-initialised weight sent the vectors to 0: start afresh
            u = torch.randn_like(u)
            u = u / u.norm()
        sigma_old = None
        k = 0
        while k < limit:
            av = self._op.apply(weight, u)
            if not bool(av.norm() > 0):
                break  # A u = 0 (e.g. W = 0): keep the random u so later iterations can still find sigma
            v = av / av.norm()
            atv = self._op.adjoint(weight, v, shape)
            sigma = atv.norm()
            if not bool(sigma > 0):
                break
            u = atv / sigma
            k += 1
            if use_tol and k >= n and sigma_old is not None:
                if (sigma - sigma_old).abs() <= atol + rtol * sigma:
                    break
            sigma_old = sigma
        return u, v, k

    def _power_steps_without_sync(
        self, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n: int, shape: tuple[int, ...],
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """:meth:`_power_steps` with a fixed count on an accelerator: the same iteration, with its degenerate
        cases (``u = 0``: restart from a random vector; ``A u = 0`` or ``A^T v = 0``: keep the vectors) decided
        by ``torch.where`` on the device instead of a host test, so a training forward never waits for the device.
        """
        tiny = torch.finfo(u.dtype).tiny
        fresh = torch.randn_like(u)
        u = torch.where(u.norm() > 0, u, fresh / fresh.norm())
        for _ in range(n):
            av = self._op.apply(weight, u)
            av_norm = av.norm()
            v_new = av / av_norm.clamp_min(tiny)
            atv = self._op.adjoint(weight, v_new, shape)
            sigma = atv.norm()
            ok = (av_norm > 0) & (sigma > 0)
            u = torch.where(ok, atv / sigma.clamp_min(tiny), u)
            v = torch.where(ok, v_new, v)
        return u, v, n

    def _stateless_sigma(self, weight: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``sigma`` on inputs of per-sample ``shape`` from a seeded power iteration (as many steps as
        :meth:`_init_vectors`), leaving the buffers alone; differentiable in the weight like :meth:`estimate`."""
        g = torch.Generator(device=weight.device).manual_seed(0)
        u = torch.randn((1, *shape), generator=g, dtype=weight.dtype, device=weight.device)
        u = u / u.norm()
        v = self._op.apply(weight.detach(), u)
        v = v / v.norm().clamp_min(1e-30)
        u, v, _ = self._power_steps(weight.detach(), u, v, max(20, self.n_power_iterations), shape=shape)
        return (v * self._op.apply(weight, u)).sum()

    def estimate(self, weight: torch.Tensor) -> torch.Tensor:
        """sigma = <v, A u> (differentiable in the weight, vectors fixed) - a lower bound on ||A||_2."""
        return (self.v * self._op.apply(weight, self.u)).sum()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # inside torch.func transforms (jvp, vjp, vmap, jacrev) the buffers must not be mutated: act as frozen
        frozen = _FROZEN.get() or _functorch_active()
        shape = self.frozen_shape if frozen else None
        if shape is not None and (not self.initialized or shape != self.recorded_shape):
            # an input size the vectors do not belong to, met while frozen: estimate without storing anything
            return weight / torch.clamp(self._stateless_sigma(weight, shape) / self.coeff, min=1.0)
        if not self.initialized:
            if frozen or not self.input_shape.numel():
                return weight  # called before the first real forward (e.g. by repr or a shape probe)
            self._init_vectors(weight.detach())
        elif self.training and torch.is_grad_enabled() and not frozen:
            self._iterate(weight.detach(), self.n_power_iterations)
        sigma = self.estimate(weight)
        if not frozen:
            with torch.no_grad():
                self.sigma.copy_(sigma.detach())
        return weight / torch.clamp(sigma / self.coeff, min=1.0)

    def normalized_norm_estimate(self) -> float:
        """The estimated norm of the normalized operator, ``min(sigma, coeff)``."""
        return float(min(float(self.sigma), self.coeff))

    def extra_repr(self) -> str:
        tol = f", atol={self.atol}, rtol={self.rtol}" if self.atol or self.rtol else ""
        return f"coeff={self.coeff}, n_power_iterations={self.n_power_iterations}{tol}"


def _functorch_active() -> bool:
    try:
        return bool(torch._C._are_functorch_transforms_active())
    except AttributeError:  # a torch without this query: callers use frozen_spectral_norm() explicitly
        return False


def _record_input_shape(module: nn.Module, args) -> None:
    x = args[0]
    sn = module.parametrizations.weight[0]
    per_sample = tuple(x.shape[1:]) if x.dim() == sn._op.dims + 2 else tuple(x.shape)
    if _FROZEN.get() or _functorch_active():
        sn.frozen_shape = per_sample  # frozen: keep the buffers (and the shape they belong to) as they are
    else:
        sn.frozen_shape = None
        sn.set_input_shape(per_sample)


def spectral_norm(
    module: nn.Module,
    coeff: float = 0.9,
    n_power_iterations: int = 1,
    atol: float | None = None,
    rtol: float | None = None,
    max_power_iterations: int = 1000,
) -> nn.Module:
    """Make ``||A||_2 <= coeff`` (approximately; eq. 4.9) for a Linear/Conv1d/Conv2d module, in place.

    Args:
        module: ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` with any padding, stride and dilation.
        coeff: target norm ``c`` in (0, 1); anything else is a ``ValueError``.
        n_power_iterations: power-iteration steps per training forward (at least this many in tolerance mode).
        atol, rtol: tolerance mode: iterate until ``|sigma_k - sigma_{k-1}| <= atol + rtol * sigma``
            (at most ``max_power_iterations``), as in Residual Flows' adaptive spectral normalization.

    Returns:
        The same module, with ``weight`` parametrized by :class:`SpectralNorm`.

    Example:
        >>> layer = spectral_norm(nn.Conv2d(3, 8, 3, padding=1), coeff=0.9)
        >>> _ = layer(torch.randn(2, 3, 8, 8))
        >>> operator_norm(layer) <= 0.9 * 1.05
        True
    """
    sn = SpectralNorm(module, coeff, n_power_iterations, atol, rtol, max_power_iterations)
    parametrize.register_parametrization(module, "weight", sn)
    if not sn._op.is_linear:
        module.register_forward_pre_hook(_record_input_shape)
    return module


@torch.no_grad()  # no graph to the parameters; torch.func computes its own derivatives regardless
def local_lipschitz(
    g: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_iter: int = 30,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The realized local Lipschitz constant ``||J_g(x_b)||_2`` at every sample ``x_b`` of ``x`` (shape ``(B, ...)``
    -> ``(B,)``), by ``n_iter`` power iterations on ``J^T J`` (torch.func ``jvp`` / ``vjp``).

    Each value is a lower bound on ``Lip(g)`` (the supremum over all points), so it shows how much of the certified
    budget of eq. 4.6 a trained block actually uses on data. ``g`` must treat samples independently (modules in
    eval mode: no batch statistics).
    """
    from torch.func import jvp, vjp

    check_estimator_input(g, x, "local_lipschitz: x")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    x = x.detach()

    def per_sample_normalize(t: torch.Tensor) -> torch.Tensor:
        n = t.flatten(1).norm(dim=1).clamp_min(torch.finfo(t.dtype).tiny)
        return t / n.view(-1, *([1] * (t.dim() - 1)))

    v = per_sample_normalize(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
    with frozen_spectral_norm():
        _, pullback = vjp(g, x)
        for _ in range(n_iter):
            _, jv = jvp(g, (x,), (v,))
            (v,) = pullback(jv)  # J^T J v, sample by sample (J is block-diagonal over the batch)
            v = per_sample_normalize(v)
        _, jv = jvp(g, (x,), (v,))
    return jv.flatten(1).norm(dim=1).detach()


@torch.no_grad()
def converge_spectral_norms(model: nn.Module, rtol: float = 1e-6, max_iter: int = 2000) -> int:
    """Run every spectral-norm power iteration in ``model`` to convergence on the *current* weights.

    During training the vectors lag one optimizer step behind the weights, so after the last step the exact
    ``||A||`` may exceed ``coeff`` slightly (Remark 4.9). Call this after training (or after loading weights)
    and before inverting or certifying: afterwards ``||A|| <= coeff (1 + O(rtol))``. Returns the number of
    normalized layers.
    """
    if not (math.isfinite(float(rtol)) and rtol > 0):
        raise ValueError(f"rtol must be a finite number > 0, got rtol={rtol!r}")
    max_iter = check_count("max_iter", max_iter, 1)
    count = 0
    for sn, weight in _initialized_spectral_norms(model):
        if sn._op.is_linear and weight.numel() <= EXACT_SVD_ENTRIES:
            _exact_singular_vectors(sn, weight)
        else:
            _converge_with_lanczos(sn, weight, rtol, max_iter)
        sn.sigma.copy_(sn.estimate(weight))
        count += 1
    return count


EXACT_SVD_ENTRIES = 1 << 22  # a Linear weight up to this size gets its top singular pair from an SVD


@torch.no_grad()
def _exact_singular_vectors(sn: SpectralNorm, weight: torch.Tensor) -> None:
    """Set ``(u, v)`` to the top singular pair of a Linear weight ``W = U S V^T``: ``sigma = ||W||_2`` exactly.

    A power iteration's stopping rule (the estimate changes by less than ``rtol``) cannot tell convergence from
    a plateau: vectors left near the second singular direction by training stall there, below ``||W||``."""
    U, _, Vh = torch.linalg.svd(weight, full_matrices=False)
    sn.u.copy_(Vh[0].reshape(sn.u.shape))
    sn.v.copy_(U[:, 0].reshape(sn.v.shape))


@torch.no_grad()
def _converge_with_lanczos(sn: SpectralNorm, weight: torch.Tensor, rtol: float, max_iter: int) -> None:
    """Take the top singular pair by Lanczos (ARPACK, from a seeded start,
    :func:`~invertible.norms.top_singular_triplet`) unless the current vectors give a larger ``<v, A u>``;
    where ARPACK does not converge, run the power iteration from the current vectors instead.

    Power iteration alone cannot tell convergence from a plateau: vectors that training left near a lower
    singular direction, or top singular values closer than ``rtol`` per step, stall it below ``||A||``
    (trained convolutions stayed up to 0.2 % short). Lanczos converges in far fewer operator applications when
    the top singular values are close, so the power iteration is only the fallback."""
    from scipy.sparse.linalg import ArpackNoConvergence

    try:
        _, u, v = top_singular_triplet(sn._op, weight, sn.recorded_shape, rtol=min(rtol, 1e-8), max_iter=max_iter)
    except ArpackNoConvergence:
        sn._iterate(weight, 1, atol=0.0, rtol=rtol, max_iter=max_iter)
        return
    u, v = u.to(sn.u.dtype), v.to(sn.v.dtype)
    if float((v * sn._op.apply(weight, u)).sum()) > float(sn.estimate(weight)):
        sn.u.copy_(u.reshape(sn.u.shape))
        sn.v.copy_(v.reshape(sn.v.shape))


def _initialized_spectral_norms(model: nn.Module) -> Iterator[tuple[SpectralNorm, torch.Tensor]]:
    """``(parametrization, its unnormalized weight)`` for every spectral-norm layer of ``model`` that has seen
    data (its power-iteration vectors exist)."""
    for m in model.modules():
        sn = spectral_norm_of(m)
        if sn is not None and sn.initialized:
            yield sn, m.parametrizations.weight.original.detach()


@torch.no_grad()
def advance_spectral_norms(model: nn.Module) -> int:
    """Advance every initialized power iteration in ``model`` as one training forward would (the layer's
    ``n_power_iterations`` steps, or its tolerance rule) and refresh ``sigma``, without evaluating the model.

    For a step that evaluates the model several times and must see one operator throughout (a reparameterized
    sample ``F^{-1}(z)`` and then ``log p`` at it): advance once, then run the step under
    :func:`frozen_spectral_norm`. Returns the number of normalized layers."""
    count = 0
    for sn, weight in _initialized_spectral_norms(model):
        sn._iterate(weight, sn.n_power_iterations)
        sn.sigma.copy_(sn.estimate(weight))
        count += 1
    return count


def spectral_norm_of(module: nn.Module) -> SpectralNorm | None:
    """The :class:`SpectralNorm` parametrization of ``module.weight``, or ``None``."""
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, SpectralNorm):
                return p
    return None


def lipschitz_constant(g: nn.Module, input_shape: Sequence[int] | None = None) -> float:
    """Certified upper bound on ``Lip(g)`` in the l2 norm (eq. 4.6): product of the exact norms of the
    linear operators times the Lipschitz constants of the activations, for a ``g`` that is an
    ``nn.Sequential`` of Linear/Conv layers, activations and i-DenseNet :class:`~invertible.dense.DenseLayer` s
    (each bounded by ``sqrt(eta_1^2 + eta_2^2 Lip(f)^2)``, its ``f`` bounded recursively), or a single layer.

    Exact norms come from :func:`operator_norm` where it is exact and from
    :func:`operator_norm_upper_bound` otherwise, so the result is an upper bound in all cases.

    Args:
        input_shape: per-sample input shape of ``g``; needed for convolutions that have not seen data
            (e.g. an unnormalized twin). Shapes of later layers are propagated by a forward pass.
    """
    return _chain_bound(_flatten(g), None if input_shape is None else tuple(input_shape), _dtype_of(g))


def _chain_bound(layers: list[nn.Module], input_shape: tuple[int, ...] | None, dtype: torch.dtype) -> float:
    shapes: list[tuple[int, ...] | None] = [None] * len(layers)
    if input_shape is not None:
        x = torch.zeros((1, *input_shape), dtype=dtype)
        with torch.no_grad(), frozen_spectral_norm():
            for i, m in enumerate(layers):
                shapes[i] = tuple(x.shape[1:])
                x = m(x)
    bound = 1.0
    for m, shape in zip(layers, shapes, strict=True):
        if isinstance(m, LINEAR_TYPES):
            bound *= _certified_norm(m, input_shape_of(m, shape))
        elif isinstance(m, DenseLayer):
            bound *= m.lipschitz_from(_chain_bound(_flatten(m.f), shape, dtype))
        else:
            c = activation_lipschitz(m)
            if c is None:
                raise ValueError(
                    f"cannot certify the Lipschitz constant of {type(m).__name__}; known: Linear/Conv layers, "
                    "dense layers and elementwise activations (ReLU, ELU, LeakyReLU, Tanh, Softplus, Sigmoid, "
                    "LipSwish, CLipSwish)"
                )
            bound *= c
    return bound


def _flatten(g: nn.Module) -> list[nn.Module]:
    if isinstance(g, nn.Sequential):
        return [m for child in g for m in _flatten(child)]
    return [g]


def _dtype_of(g: nn.Module) -> torch.dtype:
    for p in g.parameters():
        return p.dtype
    return torch.get_default_dtype()


def _certified_norm(m: nn.Module, shape: Sequence[int]) -> float:
    if norm_method(m, shape) != "lanczos":
        return operator_norm(m, shape)
    return operator_norm_upper_bound(m, shape)
