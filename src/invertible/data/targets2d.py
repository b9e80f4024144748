"""Two-dimensional targets for fitting a flow by forward or reverse KL (section 5.1, eq. 5.1-5.3).

Both can be sampled (for the forward KL, maximum likelihood) and evaluated pointwise (for the reverse KL, which
needs ``log p`` at the model's samples), and both know their normalizer, so every divergence can be reported in
nats, not only up to a constant:

* :class:`GaussianMixture2D`: ``p(x) = sum_k w_k N(x; m_k, s^2 I)``, the multi-modal target of Fig. 5.1.
* :class:`Banana2D`: ``x_1 ~ N(0, s_1^2)``, ``x_2 | x_1 ~ N(b x_1^2 - c, s_2^2)``; its
  :meth:`~Banana2D.unnormalized_log_prob` ``-x_1^2 / (2 s_1^2) - (x_2 - b x_1^2 + c)^2 / (2 s_2^2)`` is what a
  variational-inference user has, ``log Z = log(2 pi s_1 s_2)`` its normalizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["Banana2D", "GaussianMixture2D", "fig5_1_mixture"]

_LOG2PI = math.log(2 * math.pi)


def _check_points(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != 2 or not torch.is_floating_point(x):
        raise ValueError(f"{name}: expected points of shape (n, 2) (floating), got {getattr(x, 'shape', type(x))}")


@dataclass(frozen=True)
class GaussianMixture2D:
    """``sum_k w_k N(m_k, std^2 I)`` on R^2. ``means``: K points; ``weights``: K positive numbers (normalized)."""

    means: tuple[tuple[float, float], ...]
    weights: tuple[float, ...]
    std: float
    _w: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.means) < 1 or any(len(m) != 2 for m in self.means):
            raise ValueError(f"means must be K >= 1 points (x, y), got {self.means!r}")
        if len(self.weights) != len(self.means) or not all(w > 0 for w in self.weights):
            raise ValueError(f"need one positive weight per mean, got weights={self.weights!r}")
        if not (math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"std must be a finite number > 0, got {self.std!r}")
        total = sum(self.weights)
        object.__setattr__(self, "_w", tuple(w / total for w in self.weights))

    @property
    def n_modes(self) -> int:
        return len(self.means)

    def mode_weights(self) -> torch.Tensor:
        """The normalized weights ``w_k``, shape ``(K,)``."""
        return torch.tensor(self._w, dtype=torch.float64)

    def centres(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        return torch.tensor(self.means, dtype=dtype, device=device)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        """``n`` independent draws, shape ``(n, 2)`` (on the CPU; ``generator`` a CPU generator)."""
        k = torch.multinomial(self.mode_weights(), n, replacement=True, generator=generator)
        eps = torch.randn((n, 2), generator=generator, dtype=torch.float64)
        return (self.centres()[k] + self.std * eps).to(dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` (normalized), shape ``(n,)``, differentiable in ``x``."""
        _check_points(x, "GaussianMixture2D.log_prob")
        d2 = (x[:, None, :] - self.centres(x.dtype, x.device)).square().sum(-1)  # (n, K)
        log_w = torch.log(self.mode_weights().to(x.dtype).to(x.device))
        comp = -0.5 * d2 / self.std**2 - 2 * math.log(self.std) - _LOG2PI
        return torch.logsumexp(comp + log_w, dim=1)

    def nearest_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the closest mean for each point, shape ``(n,)``."""
        _check_points(x, "GaussianMixture2D.nearest_mode")
        return (x[:, None, :] - self.centres(x.dtype, x.device)).square().sum(-1).argmin(1)

    def mode_mass(self, x: torch.Tensor) -> torch.Tensor:
        """The fraction of the points ``x (n, 2)`` nearest to each mean (a model's weight per mode), ``(K,)``."""
        counts = torch.bincount(self.nearest_mode(x).cpu(), minlength=self.n_modes)
        return counts.double() / max(x.shape[0], 1)


def fig5_1_mixture() -> GaussianMixture2D:
    """The target of the Fig. 5.1 reproduction: three well-separated modes (std 0.5, pairwise distances 4.5 to
    6) of unequal weight, so that no symmetry decides which mode a mode-seeking fit picks."""
    return GaussianMixture2D(means=((-3.0, -1.5), (3.0, -1.5), (0.0, 2.5)), weights=(0.4, 0.35, 0.25), std=0.5)


@dataclass(frozen=True)
class Banana2D:
    """``x_1 ~ N(0, s1^2)``, ``x_2 | x_1 ~ N(b x_1^2 - c, s2^2)``: a curved, normalizable 2-D target."""

    s1: float = 2.0
    s2: float = 0.5
    b: float = 0.25
    c: float = 1.0

    def __post_init__(self) -> None:
        for name in ("s1", "s2"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"Banana2D: {name} must be a finite number > 0, got {v!r}")

    @property
    def log_normalizer(self) -> float:
        """``log Z = log(2 pi s1 s2)`` of :meth:`unnormalized_log_prob`."""
        return math.log(2 * math.pi * self.s1 * self.s2)

    def unnormalized_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p~(x) = -x_1^2 / (2 s1^2) - (x_2 - b x_1^2 + c)^2 / (2 s2^2)``, shape ``(n,)``."""
        _check_points(x, "Banana2D.unnormalized_log_prob")
        x1, x2 = x[:, 0], x[:, 1]
        return -0.5 * (x1 / self.s1).square() - 0.5 * ((x2 - self.b * x1.square() + self.c) / self.s2).square()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.unnormalized_log_prob(x) - self.log_normalizer

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        e = torch.randn((n, 2), generator=generator, dtype=torch.float64)
        x1 = self.s1 * e[:, 0]
        x2 = self.b * x1.square() - self.c + self.s2 * e[:, 1]
        return torch.stack([x1, x2], 1).to(dtype)
