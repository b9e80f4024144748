"""Two-dimensional *conditional* densities ``p(x | c)``: samples of pairs ``(x, c)`` and exact log-densities.

* ``rotated-8gaussians``: an angle ``a ~ U[0, 2 pi)``, context ``c = (cos a, sin a)``, and ``x = R(a) x_0`` with
  ``x_0`` from ``8gaussians`` (:mod:`invertible.data.toy2d`). A rotation keeps volume, so
  ``log p(x | c) = log p_8g(R(a)^T x)`` exactly.
* ``two-moons-sbi``: the two-moons simulator of simulation-based inference (Greenberg et al. 2019; sbibm) as a
  posterior-estimation task: parameters ``theta ~ U[-1, 1]^2``, observation ``y = p + (-|theta_1 + theta_2|,
  -theta_1 + theta_2) / sqrt 2`` with ``p = (r cos phi + 0.25, r sin phi)``, ``phi ~ U(-pi/2, pi/2)``,
  ``r ~ N(0.1, ring_std^2)``. The modelled variable is ``x = theta``, the context ``c = y``: the target is the
  posterior ``p(theta | y)``, bimodal (``|theta_1 + theta_2|``) and crescent-shaped. Its likelihood is known,
  ``p(y | theta) = N(rho; 0.1, ring_std) / (pi rho) [q_1 > 0]`` for ``q = y - mu(theta) - (0.25, 0)``,
  ``rho = |q|``, and so is the evidence by a quadrature over the ring (:func:`two_moons_log_evidence`), hence
  the exact posterior ``log p(theta | y) = log p(y | theta) + log 1/4 - log p(y)``.

Every function draws from the ``torch.Generator`` it is given (the global RNG is untouched), computes in float64
and returns ``dtype``.
"""

from __future__ import annotations

import math

import torch

from invertible.checks import check_count
from invertible.data.toy2d import sample_toy, toy_log_prob

__all__ = [
    "CONDITIONAL_DATASETS",
    "conditional_context_dim",
    "conditional_log_prob",
    "sample_conditional",
    "sample_given_context",
    "two_moons_log_evidence",
    "two_moons_log_likelihood",
]

CONDITIONAL_DATASETS: tuple[str, ...] = ("rotated-8gaussians", "two-moons-sbi")
RING_STD = 0.01  # sbibm's two moons


def _check_name(name: str) -> str:
    if name not in CONDITIONAL_DATASETS:
        raise ValueError(f"unknown conditional data set {name!r}; known: {', '.join(CONDITIONAL_DATASETS)}")
    return name


def conditional_context_dim(name: str) -> int:
    """``d_c`` of the data set's context (2 for both)."""
    _check_name(name)
    return 2


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return torch.stack([cos * x[:, 0] - sin * x[:, 1], sin * x[:, 0] + cos * x[:, 1]], 1)


def _two_moons_mean(theta: torch.Tensor) -> torch.Tensor:
    s = math.sqrt(2.0)
    return torch.stack([-(theta[:, 0] + theta[:, 1]).abs() / s, (-theta[:, 0] + theta[:, 1]) / s], 1)


def sample_conditional(
    name: str, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
    ring_std: float = RING_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs ``(x (n, 2), c (n, 2))`` of the data set ``name`` (module docstring)."""
    _check_name(name)
    n = check_count("n", n, 1)
    g, dt = generator, torch.float64
    if name == "rotated-8gaussians":
        angle = torch.rand(n, generator=g, dtype=dt) * 2 * math.pi
        x0 = sample_toy("8gaussians", n, g, dt)
        cos, sin = torch.cos(angle), torch.sin(angle)
        return _rotate(x0, cos, sin).to(dtype), torch.stack([cos, sin], 1).to(dtype)
    theta = torch.rand(n, 2, generator=g, dtype=dt) * 2 - 1
    phi = (torch.rand(n, generator=g, dtype=dt) - 0.5) * math.pi
    r = 0.1 + ring_std * torch.randn(n, generator=g, dtype=dt)
    p = torch.stack([r * torch.cos(phi) + 0.25, r * torch.sin(phi)], 1)
    return theta.to(dtype), (p + _two_moons_mean(theta)).to(dtype)


def sample_given_context(name: str, c: torch.Tensor, n: int, generator: torch.Generator | None = None,
                         ring_std: float = RING_STD, n_prior: int = 400_000) -> torch.Tensor:
    """``n`` samples of ``p(x | c)`` for one context ``c (2,)``, float64: exact for ``rotated-8gaussians``; for
    ``two-moons-sbi`` the posterior by importance resampling of ``n_prior`` prior draws with the exact likelihood
    (approximate; for figures)."""
    _check_name(name)
    cd = c.detach().double().cpu().reshape(-1)
    if name == "rotated-8gaussians":
        angle = torch.atan2(cd[1], cd[0])
        return _rotate(sample_toy("8gaussians", n, generator, torch.float64), torch.cos(angle), torch.sin(angle))
    theta = torch.rand(n_prior, 2, generator=generator, dtype=torch.float64) * 2 - 1
    w = two_moons_log_likelihood(cd.expand(n_prior, 2), theta, ring_std).exp()
    if not w.sum() > 0:
        raise ValueError(f"sample_given_context: the observation {cd.tolist()} has no prior draw of positive "
                         "likelihood")
    return theta[torch.multinomial(w, n, replacement=True, generator=generator)]


def two_moons_log_likelihood(y: torch.Tensor, theta: torch.Tensor, ring_std: float = RING_STD) -> torch.Tensor:
    """``log p(y | theta)`` of the two-moons simulator, per pair, shape ``(n,)`` (``-inf`` off the half ring)."""
    yd, td = y.detach().double(), theta.detach().double()
    q = yd - _two_moons_mean(td) - torch.tensor([0.25, 0.0], dtype=torch.float64)
    rho = q.norm(dim=1)
    log_r = -0.5 * ((rho - 0.1) / ring_std) ** 2 - math.log(ring_std) - 0.5 * math.log(2 * math.pi)
    out = torch.where(q[:, 0] > 0, log_r - math.log(math.pi) - torch.log(rho), torch.full_like(rho, -math.inf))
    return out.to(y.dtype)


def two_moons_log_evidence(y: torch.Tensor, ring_std: float = RING_STD, n_phi: int = 256,
                           n_r: int = 96, chunk: int = 256) -> torch.Tensor:
    """``log p(y) = log int p(y | theta) p(theta) d theta`` of two moons, per observation ``y (n, 2)``.

    With ``u = (theta_1 + theta_2) / sqrt 2``, ``v = (theta_2 - theta_1) / sqrt 2`` (a rotation) the map
    ``(u, v) -> q = (y_1 + |u| - 0.25, y_2 - v)`` is two-to-one with unit Jacobian, so
    ``p(y) = 1/4 sum_{u = +-s} P_q[s >= 0, theta(u, v) in [-1, 1]^2]``, ``s = q_1 - y_1 + 0.25``, ``v = y_2 - q_2``,
    with ``q`` distributed as the half ring (angle uniform on ``(-pi/2, pi/2)``, radius ``N(0.1, ring_std^2)``).
    The probability is a midpoint quadrature over angle and radius (``n_phi x n_r`` nodes, radius within 8 std).
    """
    phi = ((torch.arange(n_phi, dtype=torch.float64) + 0.5) / n_phi - 0.5) * math.pi
    t = ((torch.arange(n_r, dtype=torch.float64) + 0.5) / n_r) * 16 - 8  # standardized radius in [-8, 8]
    w_r = torch.exp(-0.5 * t * t) * (16 / n_r) / math.sqrt(2 * math.pi)  # Gaussian weights, sum ~ 1
    r = 0.1 + ring_std * t
    q1 = (r[None, :] * torch.cos(phi)[:, None]).reshape(-1)
    q2 = (r[None, :] * torch.sin(phi)[:, None]).reshape(-1)
    w = (w_r[None, :] / n_phi).expand(n_phi, n_r).reshape(-1)
    yd = y.detach().double()
    out = []
    s2 = math.sqrt(2.0)
    for i in range(0, yd.shape[0], chunk):
        yc = yd[i : i + chunk]
        s = q1[None, :] - yc[:, :1] + 0.25
        v = yc[:, 1:] - q2[None, :]
        mass = torch.zeros(yc.shape[0], dtype=torch.float64)
        for u in (s, -s):
            th1, th2 = (u - v) / s2, (u + v) / s2
            inside = (s >= 0) & (th1.abs() <= 1) & (th2.abs() <= 1)
            mass = mass + (w[None, :] * inside).sum(1)
        out.append(torch.log(mass / 4))
    return torch.cat(out).to(y.dtype)


def conditional_log_prob(name: str, x: torch.Tensor, c: torch.Tensor, ring_std: float = RING_STD) -> torch.Tensor:
    """The true ``log p(x | c)`` per pair, shape ``(n,)``, in ``x.dtype``: exact for ``rotated-8gaussians``, the
    exact posterior up to the evidence quadrature for ``two-moons-sbi`` (``-inf`` outside the prior box)."""
    _check_name(name)
    if x.dim() != 2 or c.dim() != 2 or x.shape[1] != 2 or c.shape != x.shape:
        raise ValueError(f"expected x and c of shape (n, 2), got {tuple(x.shape)} and {tuple(c.shape)}")
    xd, cd = x.detach().double().cpu(), c.detach().double().cpu()
    if name == "rotated-8gaussians":
        angle = torch.atan2(cd[:, 1], cd[:, 0])
        x0 = _rotate(xd, torch.cos(angle), -torch.sin(angle))  # R(a)^T x
        out = toy_log_prob("8gaussians", x0)
    else:
        in_box = (xd.abs() <= 1).all(1)
        unique, index = torch.unique(cd, dim=0, return_inverse=True)  # the evidence once per observation
        evidence = two_moons_log_evidence(unique, ring_std)[index]
        out = two_moons_log_likelihood(cd, xd, ring_std) + math.log(0.25) - evidence
        out = torch.where(in_box, out, torch.full_like(out, -math.inf))
    return out.to(device=x.device, dtype=x.dtype)
