"""Estimators of ``log|det(I + J_g(x))|`` for a contractive residual function g, per sample.

With ``Lip(g) < 1`` the determinant is positive (Lemma 5.4) and (eq. 5.6)

    log det(I + J_g) = tr log(I + J_g) = sum_{k>=1} (-1)^{k+1} tr(J_g^k) / k,

where ``tr(J^k)`` is estimated by Hutchinson's ``v^T J^k v`` with ``E[v v^T] = I`` (Lemma 5.6) using k
vector-Jacobian products (Algorithm 2). Truncating after n terms is biased by at most Theorem 5.8's bound;
the Russian-roulette estimator (Chen et al. 2019) reweights a random number of terms to be unbiased, and the
Neumann-series gradient ``d log det = tr((I + J)^{-1} dJ) = sum_k (-1)^k tr(J^k dJ)`` avoids storing the
graph of every term.

Every estimator is an :class:`AbstractLogDet`, called as ``estimator(g, x) -> (g(x), logdet)`` with ``logdet``
of shape ``(batch,)``. Its *value* is always an estimate of the log-determinant of the kind it names
(``kind``: exact, biased-truncated or unbiased); with ``neumann_gradient=True`` only its *gradient* comes from
the Neumann surrogate. The exact estimators live in :mod:`invertible.logdet_exact` (re-exported here).

The ONE estimator policy is here too: :func:`make_estimator` (the training estimator of a mode),
:func:`evaluation_estimator` (the exact or unbiased estimator a reported likelihood must use),
:func:`override_estimators` (temporarily swap every block's estimator; always restores) and
:func:`set_estimators` (swap permanently).

References: Behrmann et al. (2019); Chen et al. (2019) "Residual Flows for Invertible Generative Modeling";
Hutchinson (1990).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from invertible.checks import check_count, check_estimator_input, check_real
from invertible.logdet_exact import AbstractLogDet, ExactLogDet, ForwardJacobianLogDet, exact_jacobian

__all__ = [
    "MODES",
    "AbstractLogDet",
    "ExactLogDet",
    "ForwardJacobianLogDet",
    "PowerSeriesLogDet",
    "RussianRouletteLogDet",
    "power_series_truncation_bound",
    "logdet_bounds",
    "exact_jacobian",
    "make_estimator",
    "default_mode",
    "evaluation_estimator",
    "estimator_sites",
    "override_estimators",
    "set_estimators",
    "set_recompute",
]

Function = Callable[[torch.Tensor], torch.Tensor]


def power_series_truncation_bound(lipschitz: float, dim: int, n_terms: int) -> float:
    """Theorem 5.8: ``|PS(J_g, n) - log det(I + J_g)| <= -d (log(1 - L) + sum_{k=1}^n L^k / k)``."""
    L = check_real("lipschitz", lipschitz, 0.0)
    if not L < 1:
        raise ValueError(f"Theorem 5.8 needs 0 <= Lip(g) < 1, got {lipschitz}")
    dim, n_terms = check_count("dim", dim, 1), check_count("n_terms", n_terms, 0)
    return -dim * (math.log1p(-L) + sum(L**k / k for k in range(1, n_terms + 1)))


def logdet_bounds(lipschitz: Sequence[float] | float, dim: int) -> tuple[float, float]:
    """Lemma 5.5: ``d sum_t log(1 - L_t) <= log|det J_F(x)| <= d sum_t log(1 + L_t)`` for an i-ResNet."""
    dim = check_count("dim", dim, 1)
    lips = [float(lipschitz)] if isinstance(lipschitz, int | float) else [float(v) for v in lipschitz]
    if any(not 0 <= L < 1 for L in lips):
        raise ValueError(f"Lemma 5.5 needs every Lip(g_t) in [0, 1), got {lips}")
    return dim * sum(math.log1p(-L) for L in lips), dim * sum(math.log1p(L) for L in lips)


def _prepare(x: torch.Tensor) -> torch.Tensor:
    """The input to differentiate through: x itself when it carries a graph, else a detached leaf."""
    if not torch.is_floating_point(x):
        raise ValueError(f"log-det needs a floating point input, got {x.dtype}")
    if x.requires_grad and torch.is_grad_enabled():
        return x
    return x.detach().requires_grad_(True)


def _probe(like: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    if kind == "rademacher":
        r = torch.randint(0, 2, like.shape, device=like.device, generator=generator)
        return (2 * r - 1).to(like.dtype)
    raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {kind!r}")


def _check_generator(generator: torch.Generator | None, x: torch.Tensor) -> torch.Generator | None:
    if generator is not None and generator.device != x.device:
        raise ValueError(f"generator lives on {generator.device} but the input on {x.device}")
    return generator


def _rowwise_dot(w: torch.Tensor, v: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``(w * v).flatten(1).sum(1)`` in ``acc``: a batched dot product (no product tensor) where dtypes allow."""
    if w.dtype == acc == v.dtype and w.is_floating_point():
        b = w.shape[0]
        return torch.bmm(w.reshape(b, 1, -1), v.reshape(b, -1, 1)).reshape(b)
    return (w * v).flatten(1).sum(1, dtype=acc)


class _SeriesEstimator(AbstractLogDet):
    stochastic = True  # Hutchinson probes (Lemma 5.6)
    scalable = True  # one vector-Jacobian product per term and probe
    #: Neumann gradient only: keep no graph between forward and backward (:mod:`invertible.logdet_recompute`).
    recompute: bool = False
    #: With ``recompute``: samples per chunk of the forward series and of the recomputed backward (None: the
    #: whole batch at once). Values and gradients do not depend on it; peak memory falls about in proportion.
    recompute_chunk: int | None = None

    def __init__(self, n_probes: int, probe: str, generator: torch.Generator | None):
        n_probes = check_count("n_probes", n_probes, 1)
        if probe not in ("gaussian", "rademacher"):
            raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
        self.n_probes, self.probe, self.generator = int(n_probes), probe, generator

    def _n_terms_and_weights(self, x: torch.Tensor) -> tuple[int, list[float]]:
        raise NotImplementedError

    def _check_chunk(self, chunk: int | None) -> int | None:
        if chunk is None:
            return None
        chunk = check_count("recompute_chunk", chunk, 1)
        if not self.recompute:
            raise ValueError("recompute_chunk needs recompute=True (it chunks the recomputed Neumann gradient)")
        return int(chunk)

    def __call__(self, g: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_estimator_input(g, x, f"{type(self).__name__}: x")
        if torch.is_inference_mode_enabled():
            # The series needs vector-Jacobian products, which inference mode forbids: leave it for the call and
            # work on a normal copy of x; the value is the one no_grad gives, returned without a graph.
            with torch.inference_mode(False), torch.no_grad():
                gx, logdet = self._estimate(g, x.clone())
            return gx, logdet
        return self._estimate(g, x)

    def _estimate(self, g: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outer_grad = torch.is_grad_enabled()
        gen = _check_generator(self.generator, x)
        n, weights = self._n_terms_and_weights(x)
        if self._neumann and outer_grad and self.recompute and isinstance(g, nn.Module):
            from invertible.logdet_recompute import neumann_recompute

            return neumann_recompute(self, g, x, n, weights, gen, self.recompute_chunk)
        with torch.enable_grad():
            xin = _prepare(x)
            gx = g(xin)
            value, surrogate = self._series(gx, xin, n, weights, gen, outer_grad)
            if surrogate is not None:
                logdet = value.detach() + (surrogate - surrogate.detach())
            else:
                logdet = value
        if not outer_grad:
            return gx.detach(), logdet.detach()
        return gx, logdet

    def _series(
        self, gx: torch.Tensor, xin: torch.Tensor, n: int, weights: list[float], gen: torch.Generator | None,
        outer_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The probe-averaged estimate ``sum_k (-1)^(k+1) c_k v^T J^k v / k`` (``c_k = weights[k-1]``) and, for
        the Neumann gradient with an outer graph, the surrogate ``<sum_{k<n} (-1)^k c_{k+1} v^T J^k, J v>``
        (a graph whose gradient is the Neumann series' gradient of log det; else ``None``).

        With the surrogate, ``v^T J^n v`` is not computed by an n-th vector-Jacobian product: the surrogate's
        value is ``s = sum_{k=0}^{n-1} (-1)^k c_{k+1} t_{k+1}`` with ``t_j = v^T J^j v``, so the last term of the
        series, ``(-1)^(n+1) c_n t_n / n``, equals ``(s - sum_{k=0}^{n-2} (-1)^k c_{k+1} t_{k+1}) / n`` exactly
        (the same number up to rounding; one vjp fewer per probe)."""
        neumann_graph = self._neumann and outer_grad
        create_graph = outer_grad and not self._neumann
        batch = gx.shape[0]
        acc = torch.promote_types(gx.dtype, torch.float32)  # bf16/fp16 autocast: accumulate in float32
        value = torch.zeros(batch, dtype=acc, device=gx.device)
        surrogate = torch.zeros(batch, dtype=acc, device=gx.device) if neumann_graph else None
        for _ in range(self.n_probes):
            v = _probe(gx, self.probe, gen)
            w = v
            neumann = v * weights[0]  # sum_k (-1)^k c_{k+1} v^T J^k, k = 0..n-1, for the gradient
            partial = torch.zeros_like(value)  # sum_{k<n} (-1)^(k-1) c_k t_k: the surrogate's value without t_n
            for k in range(1, n if neumann_graph else n + 1):
                (w,) = torch.autograd.grad(gx, xin, w, retain_graph=True, create_graph=create_graph)
                t = (w * v).flatten(1).sum(1, dtype=acc)
                term = t * ((-1) ** (k + 1) / k) * weights[k - 1]
                value = value + (term if create_graph else term.detach())
                if self._neumann and k < n:
                    neumann = neumann + ((-1) ** k * weights[k]) * w.detach()
                    partial = partial + ((-1) ** (k - 1) * weights[k - 1]) * t.detach()
            if neumann_graph:
                # d/dtheta of <neumann, J v> is sum_k (-1)^k c_{k+1} v^T J^k (dJ) v: the gradient of log det.
                (jv,) = torch.autograd.grad(gx, xin, neumann, retain_graph=True, create_graph=True)
                s = (jv * v).flatten(1).sum(1, dtype=acc)
                surrogate = surrogate + s
                value = value + (s.detach() - partial) / n  # the n-th term, from the surrogate's value
        value = value / self.n_probes
        if surrogate is not None:
            surrogate = surrogate / self.n_probes
        return value, surrogate

    def _series_without_graph(
        self, vjp, like: torch.Tensor, n: int, weights: list[float], probes: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The estimate of :meth:`_series` (same terms) without any graph, with ``vjp(w) = w^T J`` and the given
        probes ``v`` (drawn by the caller, so that a chunked batch sees the draws of the whole batch; ``like``:
        ``g(x)``, for the batch size and dtype), with the Neumann vectors ``sum_{k<n} (-1)^k c_{k+1} v^T J^k`` it
        used (for :mod:`invertible.logdet_recompute` and :mod:`invertible.logdet_chain`)."""
        acc = torch.promote_types(like.dtype, torch.float32)
        value = torch.zeros(like.shape[0], dtype=acc, device=like.device)
        vectors = []
        for v in probes:
            w, neumann = v, v * weights[0]
            for k in range(1, n + 1):
                w = vjp(w)
                value = value + _rowwise_dot(w, v, acc) * ((-1) ** (k + 1) / k) * weights[k - 1]
                if k < n:
                    neumann = neumann.add_(w, alpha=(-1) ** k * weights[k])
            vectors.append(neumann)
        return value / len(probes), vectors

    def _draw_probes(self, like: torch.Tensor, gen: torch.Generator | None) -> list[torch.Tensor]:
        """``n_probes`` probes shaped like ``like``, in the order :meth:`_series` draws them."""
        return [_probe(like, self.probe, gen) for _ in range(self.n_probes)]


class PowerSeriesLogDet(_SeriesEstimator):
    """Truncated power series with Hutchinson probes (Algorithm 2; eq. 5.12): biased by at most
    :func:`power_series_truncation_bound`. Gradients by backpropagation through all ``n_terms`` (the i-ResNet
    estimator), or with ``neumann_gradient=True`` from the truncated Neumann series of ``(I + J)^{-1}``.

    Args:
        n_terms: series terms n. n_probes: Hutchinson vectors averaged per sample.
        probe: ``"gaussian"`` or ``"rademacher"``. generator: torch RNG for the probes.
        recompute: with the Neumann gradient, keep no graph from forward to backward (the backward recomputes
            ``g``; :mod:`invertible.logdet_recompute`): the same values and gradients in far less memory.
        recompute_chunk: with ``recompute``, run the series and the recomputed backward on chunks of this many
            samples (None: the whole batch); the same values and gradients, peak memory about
            ``recompute_chunk / batch`` of the whole-batch recompute's.
    """

    kind = "biased"

    def __init__(
        self,
        n_terms: int = 5,
        n_probes: int = 1,
        probe: str = "gaussian",
        generator: torch.Generator | None = None,
        neumann_gradient: bool = False,
        recompute: bool = False,
        recompute_chunk: int | None = None,
    ):
        super().__init__(n_probes, probe, generator)
        self.n_terms = check_count("n_terms", n_terms, 1)
        self.neumann_gradient, self.recompute = bool(neumann_gradient), bool(recompute)
        self.recompute_chunk = self._check_chunk(recompute_chunk)

    @property
    def _neumann(self) -> bool:
        return self.neumann_gradient

    def _n_terms_and_weights(self, x):
        return self.n_terms, [1.0] * (self.n_terms + 1)

    def __repr__(self) -> str:
        extra = ", neumann_gradient=True" if self.neumann_gradient else ""
        return f"PowerSeriesLogDet(n_terms={self.n_terms}, n_probes={self.n_probes}, probe={self.probe!r}{extra})"


class RussianRouletteLogDet(_SeriesEstimator):
    """Unbiased log-det: ``n_exact`` terms always, then a random number M of further terms, term k weighted
    by ``1 / P(N >= k)`` with ``N = max(n_exact + M, 1)`` (Residual Flows, eq. 6 of Chen et al. 2019):

        estimate = sum_{k=1}^N (-1)^{k+1} v^T J^k v / (k P(N >= k)),
        P(N >= k) = 1 for k <= max(n_exact, 1),   P(N >= k) = P(M >= k - n_exact) otherwise.

    Term k enters iff ``N >= k``, so its expected weight is 1 and ``E[estimate] = log det(I + J_g)`` exactly (for
    ``Lip(g) < 1``; Lemma 5.6 for the probes, eq. 5.6 for the series), for every ``n_exact >= 0``. With
    ``n_exact = 0`` the first term is still always computed (it carries ``g(x)`` and the gradient), hence with
    weight 1, not ``1 / P(M >= 1)``. The Neumann gradient term ``(-1)^k v^T J^k dJ v`` belongs to term k + 1 and
    carries its weight. One M is drawn per call (per batch).
    The variance is finite only if the reweighted terms decay: ``Lip(g)^2 < 1 - p`` for the geometric
    distribution; otherwise estimates are heavy-tailed (raise ``n_exact`` or lower ``p``).

    The gradient is unbiased too, for every ``n_exact``, ``p`` and probe law with ``E[v v^T] = I`` drawn
    independently of N (Gaussian, or Rademacher: independent signs): with ``c_k = 1 / P(N >= k)``,
    ``E[sum_{k=0}^{N-1} (-1)^k c_{k+1} v^T J^k dJ v] = sum_{k>=0} (-1)^k tr(J^k dJ) = tr((I + J)^{-1} dJ)``,
    which is ``d log det(I + J)`` (Jacobi's formula); the sums may be swapped (Fubini) because
    ``sum_k E|v^T J^k dJ v| <= sum_k E|v|^2 Lip(g)^k ||dJ||_2 < inf``. Variance: one N per batch makes the
    roulette error common to every sample, so it does not average out over the batch while the probe error does;
    on a trained conv block (``benchmarks/logdet_gradient_variance.py``) the third Neumann term's roulette
    error dominates the default's gradient variance, and ``n_exact=4, probe="rademacher"`` (Rademacher:
    ``Var(v^T A v) = 2||A_s||_F^2 - 2 sum_i A_ii^2``, Gaussian: ``2||A_s||_F^2``, ``A_s = (A + A^T) / 2``) gives
    several times less variance per CPU second. Antithetic pairs ``(v, -v)`` cannot help: ``v^T A v`` is even
    in v, so the pair returns one draw twice.

    Args:
        n_exact: terms always computed, an integer ``>= 0``. p: geometric success probability in ``(0, 1)``,
            ``P(M >= j) = (1 - p)^j``.
        dist: ``"geometric"`` or ``"poisson"`` (M ~ Poisson(lam)).
        neumann_gradient: gradient from the Neumann series surrogate (memory O(1) in the number of terms);
            the returned value is still the unbiased log-det estimate.
        max_terms: hard cap on the number of terms, ``>= max(n_exact, 1)`` (a cap introduces a bias below
            ``(1-p)^(max_terms-n_exact)``).
        recompute: with the Neumann gradient, keep no graph from forward to backward (the backward recomputes
            ``g``; :mod:`invertible.logdet_recompute`): the same values and gradients in far less memory.
        recompute_chunk: with ``recompute``, run the series and the recomputed backward on chunks of this many
            samples (None: the whole batch); the same values and gradients, peak memory about
            ``recompute_chunk / batch`` of the whole-batch recompute's.
    """

    kind = "unbiased"

    def __init__(
        self,
        n_exact: int = 2,
        p: float = 0.5,
        dist: str = "geometric",
        lam: float = 2.0,
        neumann_gradient: bool = True,
        n_probes: int = 1,
        probe: str = "gaussian",
        max_terms: int = 100,
        generator: torch.Generator | None = None,
        recompute: bool = False,
        recompute_chunk: int | None = None,
    ):
        super().__init__(n_probes, probe, generator)
        self.recompute = bool(recompute)
        self.recompute_chunk = self._check_chunk(recompute_chunk)
        n_exact = check_count("n_exact", n_exact, 0)
        if dist not in ("geometric", "poisson"):
            raise ValueError(f"dist must be 'geometric' or 'poisson', got {dist!r}")
        if dist == "geometric" and not 0 < p < 1:
            raise ValueError(f"p must lie in (0, 1), got p={p}")
        lam = check_real("lam", lam, 0.0, strict=True)
        max_terms = check_count("max_terms", max_terms, 1)
        if max_terms < n_exact:
            raise ValueError(f"max_terms must be >= n_exact={n_exact} (those terms are always computed), "
                             f"got max_terms={max_terms}")
        self.n_exact, self.p, self.dist, self.lam = n_exact, float(p), dist, float(lam)
        self.neumann_gradient, self.max_terms = bool(neumann_gradient), max_terms

    @property
    def _neumann(self) -> bool:
        return self.neumann_gradient

    def tail_probability(self, j: int) -> float:
        """``P(M >= j)`` for the number M of extra terms."""
        if j <= 0:
            return 1.0
        if self.dist == "geometric":
            return (1 - self.p) ** j
        cdf = sum(math.exp(-self.lam) * self.lam**i / math.factorial(i) for i in range(j))
        return max(1.0 - cdf, 1e-300)

    def _sample_extra(self, device) -> int:
        gen = self.generator
        if self.dist == "geometric":
            u = torch.rand((), generator=gen, device=device if gen is not None else "cpu")
            m = int(math.floor(math.log(max(float(u), 1e-300)) / math.log1p(-self.p)))
        else:
            rate = torch.tensor(self.lam, device=device if gen is not None else "cpu")
            m = int(torch.poisson(rate, generator=gen))
        return m

    def term_weights(self, n: int) -> list[float]:
        """``1 / P(N >= k)`` for ``k = 1, ..., n + 1`` (the class docstring; index ``k - 1``)."""
        forced = max(self.n_exact, 1)
        return [1.0 if k <= forced else 1.0 / self.tail_probability(k - self.n_exact) for k in range(1, n + 2)]

    def _n_terms_and_weights(self, x):
        n = min(self.n_exact + self._sample_extra(x.device), self.max_terms)
        n = max(n, 1)
        return n, self.term_weights(n)

    def __repr__(self) -> str:
        d = f"p={self.p}" if self.dist == "geometric" else f"lam={self.lam}"
        return (
            f"RussianRouletteLogDet(n_exact={self.n_exact}, {d}, dist={self.dist!r}, "
            f"neumann_gradient={self.neumann_gradient}, n_probes={self.n_probes})"
        )


# -- the estimator policy ----------------------------------------------------------------------------------------
MODES: tuple[str, ...] = ("resflow", "iresnet", "exact")


def make_estimator(
    mode: str, *, n_terms: int = 5, n_exact: int = 2, n_probes: int = 1, probe: str = "gaussian"
) -> AbstractLogDet:
    """The *training* estimator of a mode: ``"iresnet"`` -> :class:`PowerSeriesLogDet` (``n_terms``, biased by at
    most Theorem 5.8, backpropagation through all terms), ``"resflow"`` -> :class:`RussianRouletteLogDet`
    (``n_exact``, ``p = 0.5``, Neumann gradient), ``"exact"`` -> :class:`ForwardJacobianLogDet` (exact; falls back
    to :class:`ExactLogDet` for a g that is not an MLP). ``probe``: the Hutchinson vectors of the series modes,
    ``"gaussian"`` or ``"rademacher"`` (both unbiased). ``make_estimator("resflow", n_exact=4,
    probe="rademacher")`` is the same unbiased gradient with several times less variance per second on a
    trained conv block (:class:`RussianRouletteLogDet`; ``benchmarks/logdet_gradient_variance.py``)."""
    if probe not in ("gaussian", "rademacher"):
        raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    n_terms, n_exact = check_count("n_terms", n_terms, 1), check_count("n_exact", n_exact, 0)
    n_probes = check_count("n_probes", n_probes, 1)
    if mode == "iresnet":
        return PowerSeriesLogDet(n_terms=n_terms, n_probes=n_probes, probe=probe)
    if mode == "resflow":
        return RussianRouletteLogDet(n_exact=n_exact, p=0.5, neumann_gradient=True, n_probes=n_probes, probe=probe)
    if mode == "exact":
        return ForwardJacobianLogDet()
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def default_mode(event_shape: Sequence[int]) -> str:
    """The training mode when none is chosen: ``"exact"`` for vector data (event shape ``(d,)``; the exact
    forward-Jacobian log-det is cheap for small d), ``"resflow"`` (unbiased) for images."""
    return "exact" if len(tuple(event_shape)) == 1 else "resflow"


def evaluation_estimator(
    dim: int,
    event_ndim: int = 1,
    *,
    exact_max_dim: int = 64,
    n_exact: int = 8,
    generator: torch.Generator | None = None,
) -> AbstractLogDet:
    """The estimator a *reported* likelihood uses (never a biased series, never the Neumann surrogate's value):

    * ``dim <= exact_max_dim``: exact - :class:`ForwardJacobianLogDet` for vector data (``event_ndim == 1``),
      :class:`ExactLogDet` otherwise;
    * else unbiased :class:`RussianRouletteLogDet` (``n_exact`` fixed terms, ``p = 0.5``, no Neumann gradient,
      probes and truncation from ``generator``).

    ``dim`` is the data dimension ``prod(event_shape)``.
    """
    dim, event_ndim = check_count("dim", dim, 1), check_count("event_ndim", event_ndim, 1)
    exact_max_dim, n_exact = check_count("exact_max_dim", exact_max_dim, 0), check_count("n_exact", n_exact, 0)
    if dim <= exact_max_dim:
        return ForwardJacobianLogDet() if event_ndim == 1 else ExactLogDet()
    return RussianRouletteLogDet(n_exact=n_exact, p=0.5, neumann_gradient=False, generator=generator)


def estimator_sites(module: nn.Module) -> list[nn.Module]:
    """Every submodule (e.g. :class:`~invertible.ResidualBlock`) whose ``logdet`` attribute is an
    :class:`AbstractLogDet`, in ``module.modules()`` order."""
    return [m for m in module.modules() if isinstance(getattr(m, "logdet", None), AbstractLogDet)]


def set_estimators(module: nn.Module, estimator: AbstractLogDet) -> int:
    """Use ``estimator`` from now on for every estimator site of ``module``; returns the number of sites."""
    sites = estimator_sites(module)
    for m in sites:
        m.logdet = estimator
    return len(sites)


def set_recompute(module: nn.Module, chunk: int | None = None) -> int:
    """Train ``module`` with the recomputing Neumann gradient (:mod:`invertible.logdet_recompute`): every series
    estimator with the Neumann gradient keeps no graph from forward to backward and, with ``chunk``, works on
    ``chunk`` samples at a time. Values and gradients stay the same; returns the number of estimator sites
    (blocks) that now recompute (blocks may share one estimator).
    Raises ``ValueError`` when ``module`` has none (e.g. an exact or backprop-through-the-series model)."""
    if chunk is not None:
        chunk = check_count("chunk", chunk, 1)
    sites = [m for m in estimator_sites(module) if isinstance(m.logdet, _SeriesEstimator) and m.logdet._neumann]
    if not sites:
        raise ValueError("set_recompute: the module has no series estimator with the Neumann gradient "
                         "(mode 'resflow', or neumann_gradient=True); nothing to recompute")
    for m in sites:
        m.logdet.recompute, m.logdet.recompute_chunk = True, chunk
    return len(sites)


@contextlib.contextmanager
def override_estimators(module: nn.Module, estimator: AbstractLogDet) -> Iterator[None]:
    """Temporarily use ``estimator`` for the log-det of every estimator site (e.g. an exact or unbiased
    estimator for evaluation, :func:`evaluation_estimator`); the previous estimators are restored afterwards,
    also when the body raises."""
    sites = estimator_sites(module)
    saved = [m.logdet for m in sites]
    try:
        for m in sites:
            m.logdet = estimator
        yield
    finally:
        for m, s in zip(sites, saved, strict=True):
            m.logdet = s
