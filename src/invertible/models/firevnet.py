"""Fully invertible classifiers with the simplified read-out of Definition 6.7 (fi-RevNet, fi-i-ResNet).

A bijection ``F_theta : R^d -> R^d`` whose output ``z = F(x)`` (flattened, shape ``(B, d)``) is split as

    z_s = z_{1..C}      (logits, the semantic variables),
    z_n = z_{C+1..d}    (nuisance variables, not used for classification),
    D(x) = argmax_k softmax(z_s)_k                                              (Definition 6.7).

Because nothing is thrown away, ``x = F^{-1}(z_s, z_n)`` for *any* ``(z_s, z_n)``, which is what metameric
sampling (Definition 6.8) and the independence cross-entropy (Definition 6.14) rely on.

Two backbones:

* :func:`fi_revnet` - RevNet/Glow style (Jacobsen et al. 2019): per stage a :class:`~invertible.Squeeze`,
  :class:`~invertible.ActNorm` and :class:`~invertible.nn.AdditiveCoupling` steps with convolutional shift
  networks, then a flatten, dense additive couplings and a two-coupling read-out head (:func:`readout_head`:
  the logits read everything, the nuisance is shifted by a function of the logits) so that every logit sees the
  whole image. The inverse is exact and ``log|det J| = sum of ActNorm log-scales`` (couplings and squeezes are
  volume preserving). ActNorms start at the identity (see :func:`_actnorm`).
* :func:`fi_iresnet` - the same layout with i-ResNet blocks ``x + g(x)``, ``Lip(g) < 1`` (Chapter 4), as the
  thesis proposes for future work (Remark 6.10): inverse by fixed-point iteration with the certified error
  bound of Lemma 4.5, log-det by the estimator you pass (exact for tests, unbiased Russian roulette for
  training).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from invertible.inverse import AbstractSolver, FixedPoint
from invertible.logdet import AbstractLogDet, RussianRouletteLogDet
from invertible.models import registry
from invertible.models.blocks import lipschitz_convnet, lipschitz_mlp
from invertible.nn import ActNorm, AdditiveCoupling, Bijection, Flatten, InvertibleSequential, ResidualBlock, Squeeze
from invertible.nn.base import check_input, check_like_module

__all__ = [
    "Flatten",
    "FiIResNetConfig",
    "FiRevNetConfig",
    "FullyInvertibleClassifier",
    "fi_revnet",
    "fi_iresnet",
    "readout_head",
]


@dataclasses.dataclass(frozen=True)
class FiRevNetConfig(registry.ModelConfig):
    """Config of :func:`fi_revnet` (kind ``fi_revnet``)."""

    input_shape: tuple[int, ...] = (1, 28, 28)
    n_classes: int = 10
    n_squeeze: int = 2
    conv_blocks: int = 2
    hidden: int = 32
    dense_blocks: int = 2
    dense_hidden: int = 256
    head_hidden: int = 256


@dataclasses.dataclass(frozen=True)
class FiIResNetConfig(registry.ModelConfig):
    """Config of :func:`fi_iresnet` (kind ``fi_iresnet``); the log-det estimator and inverse solver are
    strategies, not architecture: a registry build uses their defaults."""

    input_shape: tuple[int, ...] = (1, 28, 28)
    n_classes: int = 10
    n_squeeze: int = 2
    conv_blocks: int = 2
    hidden: int = 32
    dense_blocks: int = 2
    dense_hidden: int = 256
    coeff: float = 0.9


class FullyInvertibleClassifier(Bijection):
    """Bijective classifier with simplified read-out (Definition 6.7).

    Args:
        body: a bijection from inputs ``(B, *input_shape)`` to flat codes ``(B, d)``, ``d = prod(input_shape)``.
        input_shape: shape of one input, e.g. ``(1, 28, 28)``.
        n_classes: ``C <= d``, the number of logits ``z_s`` taken from the front of ``z``.

    ``forward(x) -> z (B, d)``, ``forward_and_logdet(x) -> (z, log|det J_F(x)| (B,))``, ``inverse(z) -> x``;
    :meth:`encode` / :meth:`decode` work with the pair ``(z_s (B, C), z_n (B, d - C))``.
    """

    container = True

    def __init__(self, body: Bijection, input_shape: Sequence[int], n_classes: int):
        super().__init__()
        self.body = body
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dim = math.prod(self.input_shape)
        if not 1 <= n_classes <= self.dim:
            raise ValueError(f"n_classes must lie in [1, {self.dim}], got {n_classes}")
        self.n_classes = int(n_classes)

    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.input_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected inputs of shape (B, {', '.join(map(str, self.input_shape))}), got {got}")
        check_input(x, type(self).__name__)
        check_like_module(x, self, type(self).__name__)

    def _check_z(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"expected codes of shape (B, {self.dim}), got {got}")
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return self._check_z(self.body(x))

    def forward_and_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_x(x)
        z, logdet = self.body.forward_and_logdet(x)
        return self._check_z(z), logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.body.inverse(self._check_z(z))

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, d) -> (z_s (B, C), z_n (B, d - C))``."""
        self._check_z(z)
        return z[:, : self.n_classes], z[:, self.n_classes :]

    def merge(self, z_s: torch.Tensor, z_n: torch.Tensor) -> torch.Tensor:
        """``(z_s (B, C), z_n (B, d - C)) -> z (B, d)``."""
        if z_s.dim() != 2 or z_n.dim() != 2 or z_s.shape[0] != z_n.shape[0]:
            raise ValueError(f"z_s and z_n must be (B, C) and (B, d - C), got {tuple(z_s.shape)}, {tuple(z_n.shape)}")
        if z_s.shape[1] != self.n_classes or z_n.shape[1] != self.dim - self.n_classes:
            raise ValueError(
                f"z_s must be (B, {self.n_classes}) and z_n (B, {self.dim - self.n_classes}); "
                f"got {tuple(z_s.shape)}, {tuple(z_n.shape)}"
            )
        return torch.cat([z_s, z_n], dim=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_s, z_n) = F(x)`` split as in Definition 6.7."""
        return self.split(self.forward(x))

    def decode(self, z_s: torch.Tensor, z_n: torch.Tensor) -> torch.Tensor:
        """``x = F^{-1}(z_s, z_n)``, shape ``(B, *input_shape)``."""
        return self.inverse(self.merge(z_s, z_n))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``z_s = F(x)_{1..C}``, shape ``(B, C)``."""
        return self.forward(x)[:, : self.n_classes]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x) = argmax_k z_s``, shape ``(B,)``."""
        return self.logits(x).argmax(dim=1)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, n_classes={self.n_classes}"


def _check_shape(input_shape: Sequence[int], n_squeeze: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    if n_squeeze < 1:
        raise ValueError(f"n_squeeze must be >= 1 (the first squeeze makes channels to split), got {n_squeeze}")
    f = 2**n_squeeze
    if h % f or w % f:
        raise ValueError(f"H and W must be divisible by 2**n_squeeze = {f}, got {h}x{w}")
    return c, h, w


def _actnorm(n: int) -> ActNorm:
    """ActNorm starting at the identity (no data-dependent initialization).

    The data-dependent init sets ``log_scale = -log(std + 1e-6)``, which multiplies channels that are constant on
    the first batch (MNIST's empty border pixels once flattened, a planted patch that is absent) by ~1e6 and makes
    training diverge; a learnable affine map that starts at the identity is stable.
    """
    a = ActNorm(n)
    a.initialized.fill_(True)
    return a


def _conv_shift(c_in: int, c_out: int, hidden: int) -> nn.Sequential:
    last = nn.Conv2d(hidden, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)  # the coupling starts as the identity (Glow)
    first = nn.Conv2d(c_in, hidden, 3, padding=1)
    return nn.Sequential(first, nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)


def _dense_shift(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    last = nn.Linear(hidden, d_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)


def fi_revnet(
    input_shape: Sequence[int] = (1, 28, 28),
    n_classes: int = 10,
    *,
    n_squeeze: int = 2,
    conv_blocks: int = 2,
    hidden: int = 32,
    dense_blocks: int = 2,
    dense_hidden: int = 256,
    head_hidden: int = 256,
) -> FullyInvertibleClassifier:
    """fi-RevNet (Jacobsen et al. 2019): ``n_squeeze`` stages of [Squeeze, (ActNorm, AdditiveCoupling) x
    conv_blocks], then Flatten, ``dense_blocks`` x (ActNorm, dense AdditiveCoupling), the read-out head (see
    :func:`readout_head`; ``head_hidden=0`` leaves it out) and a final ActNorm.

    Exact inverse; ``log|det J|`` = sum of the ActNorm log-scales. ``input_shape = (C, H, W)`` with H, W
    divisible by ``2**n_squeeze``.
    """
    c, h, w = c0, h0, w0 = _check_shape(input_shape, n_squeeze)
    layers: list[Bijection] = []
    for _ in range(n_squeeze):
        layers.append(Squeeze())
        c, h, w = 4 * c, h // 2, w // 2
        for _ in range(conv_blocks):
            split = c // 2
            layers += [_actnorm(c), AdditiveCoupling(_conv_shift(split, c - split, hidden), c, split)]
    d = c * h * w
    layers.append(Flatten((c, h, w)))
    for _ in range(dense_blocks):
        split = d // 2
        layers += [_actnorm(d), AdditiveCoupling(_dense_shift(split, d - split, dense_hidden), d, split)]
    if head_hidden:
        layers += [_actnorm(d), *readout_head(d, n_classes, head_hidden)]
    layers.append(_actnorm(d))
    model = FullyInvertibleClassifier(InvertibleSequential(*layers), input_shape, n_classes)
    model.kind, model.config = "fi_revnet", FiRevNetConfig(
        (c0, h0, w0), int(n_classes), int(n_squeeze), int(conv_blocks), int(hidden), int(dense_blocks),
        int(dense_hidden), int(head_hidden),
    )
    return model


def readout_head(dim: int, n_classes: int, hidden: int = 256) -> list[AdditiveCoupling]:
    """Two additive couplings between the logits and the nuisance, on flat vectors ``(B, dim)``:

        (a, b) -> (s, a) with s = b + t_1(a)        (b: the last C entries; the logits read everything)
        (s, a) -> (s, n) with n = a + t_2(s)        (z_s = s, z_n = n)

    The second step lets the network remove from ``z_n`` whatever the logits predict (``n = a + t_2(z_s)``), the
    route by which the nuisance classifier of Definition 6.14 can be defeated without destroying information.
    Cross-entropy alone never trains ``t_2`` (it starts at zero), so a CE model keeps ``z_n = a``. Both steps are
    volume preserving and exactly invertible.
    """
    t1 = _dense_shift(dim - n_classes, n_classes, hidden)
    t2 = _dense_shift(n_classes, dim - n_classes, hidden)
    return [AdditiveCoupling(t1, dim, dim - n_classes, swap=True), AdditiveCoupling(t2, dim, n_classes, swap=False)]


def fi_iresnet(
    input_shape: Sequence[int] = (1, 28, 28),
    n_classes: int = 10,
    *,
    n_squeeze: int = 2,
    conv_blocks: int = 2,
    hidden: int = 32,
    dense_blocks: int = 2,
    dense_hidden: int = 256,
    coeff: float = 0.9,
    logdet: AbstractLogDet | None = None,
    inverse: AbstractSolver | None = None,
) -> FullyInvertibleClassifier:
    """Fully invertible i-ResNet classifier: the layout of :func:`fi_revnet` with every coupling replaced by an
    i-ResNet block ``x + g(x)``, ``g = SN-conv3x3 o LipSwish o SN-conv1x1 o LipSwish o SN-conv3x3`` (eq. 4.5,
    :func:`~invertible.models.blocks.lipschitz_convnet`; dense blocks ``SN-linear o LipSwish o SN-linear``,
    :func:`~invertible.models.blocks.lipschitz_mlp`), each layer normalized to ``||W||_2 <= coeff < 1`` so
    ``Lip(g) < 1``.

    ``logdet`` (shared by all blocks; default unbiased :class:`~invertible.RussianRouletteLogDet`) and
    ``inverse`` (default ``FixedPoint(atol=1e-6, max_iter=200)``) are passed to every
    :class:`~invertible.ResidualBlock`.
    """
    c, h, w = c0, h0, w0 = _check_shape(input_shape, n_squeeze)
    logdet = logdet if logdet is not None else RussianRouletteLogDet(n_exact=2)
    solver = inverse if inverse is not None else FixedPoint(atol=1e-6, max_iter=200)

    def block(g: nn.Module) -> ResidualBlock:
        return ResidualBlock(g, logdet=logdet, inverse=solver)

    layers: list[Bijection] = []
    for _ in range(n_squeeze):
        layers.append(Squeeze())
        c, h, w = 4 * c, h // 2, w // 2
        for _ in range(conv_blocks):
            g = lipschitz_convnet(c, hidden, coeff, "lipswish", 1)
            layers += [_actnorm(c), block(g)]
    d = c * h * w
    layers.append(Flatten((c, h, w)))
    for _ in range(dense_blocks):
        g = lipschitz_mlp([d, dense_hidden, d], coeff, "lipswish", 1, preact=False, beta=1.0, orthogonal=False)
        layers += [_actnorm(d), block(g)]
    layers.append(_actnorm(d))
    model = FullyInvertibleClassifier(InvertibleSequential(*layers), input_shape, n_classes)
    model.kind, model.config = "fi_iresnet", FiIResNetConfig(
        (c0, h0, w0), int(n_classes), int(n_squeeze), int(conv_blocks), int(hidden), int(dense_blocks),
        int(dense_hidden), float(coeff),
    )
    return model


@registry.register_model("fi_revnet", FiRevNetConfig)
def _build_fi_revnet(config: FiRevNetConfig) -> FullyInvertibleClassifier:
    return fi_revnet(**config.kwargs())


@registry.register_model("fi_iresnet", FiIResNetConfig)
def _build_fi_iresnet(config: FiIResNetConfig) -> FullyInvertibleClassifier:
    return fi_iresnet(**config.kwargs())
