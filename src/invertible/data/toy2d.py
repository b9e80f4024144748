"""Two-dimensional toy densities (FFJORD's set), sampled with torch generators, with their log-densities.

Every data set is a distribution on R^2 that can be sampled without limit, so held-out test sets are free and
the *best achievable* negative log-likelihood ``E[-log p(x)]`` (the differential entropy) can be printed beside
a model's. Log-densities are closed form for ``8gaussians`` (Gaussian mixture), ``checkerboard`` (uniform on
8 squares), ``rings`` and ``circles`` (circles blurred by a Gaussian, via the Bessel function ``I0``), and a
numerical quadrature over the curve parameter for ``moons``, ``swissroll`` and ``2spirals`` (a Gaussian or
box-blurred curve; 4096 midpoints, accurate far below the Monte-Carlo error of a 10k test set).
``pinwheel`` has no log-density here (:func:`toy_log_prob` returns ``None``).

The samplers follow Grathwohl et al. (2019, FFJORD ``toy_data.py``) but draw curve positions at random
(instead of on an even grid) so that the stated densities are exact for the samples.

References: Grathwohl et al. (2019) "FFJORD"; Behrmann et al. (2019) Fig. 5.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from invertible.checks import check_count

__all__ = ["TOY_DATASETS", "sample_toy", "toy_log_prob", "has_toy_log_prob", "best_possible_nll"]

TOY_DATASETS: tuple[str, ...] = (
    "8gaussians", "checkerboard", "2spirals", "pinwheel", "rings", "moons", "circles", "swissroll",
)
_N_QUAD = 4096
_LOG2PI = math.log(2 * math.pi)


def _check_name(name: str) -> str:
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown 2-D toy data set {name!r}; known: {', '.join(TOY_DATASETS)}")
    return name


def _rand(n: int, gen, dtype, *shape) -> torch.Tensor:
    return torch.rand((n, *shape), generator=gen, dtype=dtype)


def _randn(n: int, gen, dtype, *shape) -> torch.Tensor:
    return torch.randn((n, *shape), generator=gen, dtype=dtype)


def _eight_centres(dtype) -> torch.Tensor:
    s = 1 / math.sqrt(2)
    c = torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)], dtype=dtype)
    return c * 4.0 / 1.414


def _moons_curve(t: torch.Tensor, upper: bool) -> torch.Tensor:
    """sklearn ``make_moons`` curves for ``t in [0, pi]``, then ``* 2 + (-1, -0.2)``."""
    if upper:
        pts = torch.stack([torch.cos(t), torch.sin(t)], -1)
    else:
        pts = torch.stack([1 - torch.cos(t), 1 - torch.sin(t) - 0.5], -1)
    return pts * 2 + torch.tensor([-1.0, -0.2], dtype=t.dtype)


def _swiss_curve(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], -1) / 5


def _spiral_curve(n: torch.Tensor) -> torch.Tensor:
    return torch.stack([-torch.cos(n) * n, torch.sin(n) * n], -1) / 3


_SPIRAL_MAX = 540 * 2 * math.pi / 360  # 3 pi


def sample_toy(
    name: str, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Draw ``n`` samples of shape ``(n, 2)`` from the toy density ``name`` (see :data:`TOY_DATASETS`).

    * ``8gaussians``: centres ``4 * (+-1, 0), (0, +-1), (+-1/sqrt2, +-1/sqrt2)``, std 0.5, all divided by 1.414.
    * ``checkerboard``: uniform on 8 of the 16 squares of side 2 in ``[-4, 4]^2``.
    * ``rings``: 4 circles of radii 3, 2.25, 1.5, 0.75 (equal weight) + N(0, 0.08^2).
    * ``circles``: radii 3 and 1.5 + N(0, 0.24^2) (sklearn ``make_circles(factor=0.5, noise=0.08) * 3``).
    * ``moons``: sklearn ``make_moons(noise=0.1) * 2 + (-1, -0.2)``.
    * ``swissroll``: ``(t cos t, t sin t) / 5 + N(0, 0.2^2)``, ``t ~ U[1.5 pi, 4.5 pi]``.
    * ``2spirals``: two arms ``+-((-n cos n, n sin n) + U[0, .5]^2) / 3 + N(0, 0.1^2)``, ``n = 3 pi sqrt(U)``.
    * ``pinwheel``: 5 arms of a Gaussian bent by ``exp`` (radial std 0.3, tangential 0.1, rate 0.25) times 2.
    """
    _check_name(name)
    n = check_count("n", n, 1)
    g, dt = generator, torch.float64
    if name == "8gaussians":
        idx = torch.randint(0, 8, (n,), generator=g)
        x = _randn(n, g, dt, 2) * (0.5 / 1.414) + _eight_centres(dt)[idx]
    elif name == "checkerboard":
        x1 = _rand(n, g, dt) * 4 - 2
        x2 = _rand(n, g, dt) - torch.randint(0, 2, (n,), generator=g).to(dt) * 2
        x2 = x2 + torch.floor(x1) % 2
        x = torch.stack([x1, x2], 1) * 2
    elif name in ("rings", "circles"):
        radii, sigma = _RING_PARAMS[name]
        r = torch.tensor(radii, dtype=dt)[torch.randint(0, len(radii), (n,), generator=g)]
        theta = _rand(n, g, dt) * 2 * math.pi
        x = torch.stack([torch.cos(theta), torch.sin(theta)], 1) * r[:, None] + _randn(n, g, dt, 2) * sigma
    elif name == "moons":
        upper = torch.randint(0, 2, (n,), generator=g).bool()
        t = _rand(n, g, dt) * math.pi
        x = torch.where(upper[:, None], _moons_curve(t, True), _moons_curve(t, False))
        x = x + _randn(n, g, dt, 2) * 0.2
    elif name == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * _rand(n, g, dt))
        x = _swiss_curve(t) + _randn(n, g, dt, 2) * 0.2
    elif name == "2spirals":
        m = torch.sqrt(_rand(n, g, dt)) * _SPIRAL_MAX
        arm = _spiral_curve(m) + _rand(n, g, dt, 2) * (0.5 / 3)
        sign = torch.where(torch.randint(0, 2, (n,), generator=g).bool(), 1.0, -1.0).to(dt)
        x = arm * sign[:, None] + _randn(n, g, dt, 2) * 0.1
    else:  # pinwheel
        k, per = 5, n
        labels = torch.randint(0, k, (per,), generator=g)
        feats = _randn(per, g, dt, 2) * torch.tensor([0.3, 0.1], dtype=dt)
        feats[:, 0] += 1.0
        angles = labels.to(dt) * (2 * math.pi / k) + 0.25 * torch.exp(feats[:, 0])
        c, s = torch.cos(angles), torch.sin(angles)
        x = 2 * torch.stack([feats[:, 0] * c + feats[:, 1] * s, -feats[:, 0] * s + feats[:, 1] * c], 1)
    return x.to(dtype)


_RING_PARAMS: dict[str, tuple[tuple[float, ...], float]] = {
    "rings": ((3.0, 2.25, 1.5, 0.75), 0.08),
    "circles": ((3.0, 1.5), 0.24),
}


def _ring_log_prob(x: torch.Tensor, radii: tuple[float, ...], sigma: float) -> torch.Tensor:
    """Mixture of uniform circles blurred by ``N(0, sigma^2 I)``:
    ``p(x) = 1/K sum_r exp(-(|x|^2 + r^2) / (2 sigma^2)) I0(|x| r / sigma^2) / (2 pi sigma^2)``."""
    rho = x.norm(dim=1, keepdim=True)
    r = torch.tensor(radii, dtype=x.dtype)
    z = rho * r / sigma**2
    # log I0(z) = log(i0e(z)) + z, numerically stable for large z.
    log_terms = -((rho - r) ** 2) / (2 * sigma**2) + torch.log(torch.special.i0e(z))
    return torch.logsumexp(log_terms, 1) - math.log(len(radii)) - math.log(2 * math.pi * sigma**2)


def _gauss_curve_log_prob(x: torch.Tensor, curve: torch.Tensor, sigma: float) -> torch.Tensor:
    """``log (1/M) sum_j N(x; curve_j, sigma^2 I)``: midpoint quadrature of a uniformly weighted curve."""
    d2 = torch.cdist(x, curve) ** 2
    return torch.logsumexp(-d2 / (2 * sigma**2), 1) - math.log(curve.shape[0]) - _LOG2PI - 2 * math.log(sigma)


def _log_box_gauss(x: torch.Tensor, lo: float, hi: float, sigma: float) -> torch.Tensor:
    """``log of (U[lo, hi] * N(0, sigma^2))(x)`` elementwise: ``(Phi((x - lo)/s) - Phi((x - hi)/s)) / (hi - lo)``."""
    a = torch.special.log_ndtr((x - lo) / sigma)
    b = torch.special.log_ndtr((x - hi) / sigma)
    return a + torch.log1p(-torch.exp((b - a).clamp(max=0)).clamp(max=1 - 1e-300)) - math.log(hi - lo)


def _spirals_log_prob(x: torch.Tensor) -> torch.Tensor:
    m = (torch.arange(_N_QUAD, dtype=x.dtype) + 0.5) / _N_QUAD * _SPIRAL_MAX
    log_w = torch.log(2 * m / _SPIRAL_MAX**2 * (_SPIRAL_MAX / _N_QUAD))  # p(n) dn, p(n) = 2n / N^2
    centre = _spiral_curve(m)  # (M, 2)
    parts = []
    for sign in (1.0, -1.0):
        lo, hi = (0.0, 0.5 / 3) if sign > 0 else (-0.5 / 3, 0.0)
        diff = x[:, None, :] - sign * centre[None]  # (N, M, 2)
        lp = _log_box_gauss(diff, lo, hi, 0.1).sum(-1) + log_w
        parts.append(torch.logsumexp(lp, 1))
    return torch.logsumexp(torch.stack(parts, 1), 1) - math.log(2)


def _log_prob_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    t = (torch.arange(_N_QUAD, dtype=torch.float64) + 0.5) / _N_QUAD
    if name == "8gaussians":
        def f(x):
            c = _eight_centres(x.dtype)
            s = 0.5 / 1.414
            d2 = torch.cdist(x, c) ** 2
            return torch.logsumexp(-d2 / (2 * s * s), 1) - math.log(8) - _LOG2PI - 2 * math.log(s)
        return f
    if name == "checkerboard":
        def f(x):
            inside = (x.abs() <= 4).all(1)
            cell = torch.floor(x / 2)
            on = ((cell[:, 0] + cell[:, 1]) % 2) == 0  # sampled cells have an even index sum
            lp = torch.full_like(x[:, 0], -math.log(32.0))
            return torch.where(inside & on, lp, torch.full_like(lp, -math.inf))
        return f
    if name in _RING_PARAMS:
        radii, sigma = _RING_PARAMS[name]
        return lambda x: _ring_log_prob(x, radii, sigma)
    if name == "moons":
        curve = torch.cat([_moons_curve(t * math.pi, True), _moons_curve(t * math.pi, False)])
        return lambda x: _gauss_curve_log_prob(x, curve.to(x.dtype), 0.2)
    if name == "swissroll":
        curve = _swiss_curve(1.5 * math.pi * (1 + 2 * t))
        return lambda x: _gauss_curve_log_prob(x, curve.to(x.dtype), 0.2)
    if name == "2spirals":
        return _spirals_log_prob
    return None


def has_toy_log_prob(name: str) -> bool:
    """Whether :func:`toy_log_prob` knows the density of ``name``."""
    return _log_prob_fn(_check_name(name)) is not None


def toy_log_prob(name: str, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor | None:
    """The true ``log p(x)`` (natural log) of shape ``(n,)`` for ``x`` of shape ``(n, 2)``; ``None`` if unknown.

    Computed in float64 and returned in ``x.dtype``; ``-inf`` outside the support (checkerboard).
    """
    f = _log_prob_fn(_check_name(name))
    if f is None:
        return None
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"toy_log_prob expects a tensor of shape (n, 2), got {getattr(x, 'shape', type(x))}")
    xd = x.detach().to("cpu", torch.float64)
    out = torch.cat([f(xd[i : i + chunk]) for i in range(0, xd.shape[0], chunk)])
    return out.to(device=x.device, dtype=x.dtype)


def best_possible_nll(name: str, x: torch.Tensor) -> float | None:
    """``mean(-log p_true(x))`` over a test set: the NLL (nats) no model can beat in expectation."""
    lp = toy_log_prob(name, x)
    return None if lp is None else float(-lp.double().mean())
