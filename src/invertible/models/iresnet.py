"""i-ResNet image classifier (thesis Section 4.3, Appendix A.1) and its unconstrained twins.

Architecture (Appendix A.1), for an input of shape ``(B, C_in, H, W)``:

    x -> [Squeeze]                      optional initial invertible downsampling (C_in -> 4 C_in, H/2, W/2)
      -> InjectivePad                   zero channels up to ``channels`` (injective, not surjective)
      -> stage 1: ResidualBlock, (ActNorm -> ResidualBlock) x (blocks[0] - 1)      at C_1 = channels
      -> Squeeze                        C -> 4C, H -> H/2, W -> W/2 (Jacobsen et al. 2018)
      -> stage 2: (ActNorm -> ResidualBlock) x blocks[1]       at C_2 = 4 C_1 ...

ActNorm sits *between* residual blocks (A.1), never right after the padding: its data-dependent initialization
would give the all-zero padded channels a scale of 1 / eps and wreck training.
      -> head: BatchNorm2d -> ELU -> global average pool -> Linear(C_last, n_classes)

Each residual block is ``F_t(x) = x + g_t(x)`` with the pre-activation bottleneck of eq. 4.5,

    g_t(x) = A_3 phi(A_2 phi(A_1 phi(x) + b_1) + b_2) + b_3,   A_1: 3x3, A_2: 1x1, A_3: 3x3,  phi = ELU,

and every ``A_i`` spectrally normalized to ``||A_i||_2 <= c`` (eq. 4.9), so ``Lip(g_t) <= c^3 < 1`` (eq. 4.6,
4.7): the feature map ``x -> z`` up to the head is invertible (Theorem 4.1) and bi-Lipschitz (Lemma 4.6).

Variants, all with the same layer layout so that their numbers compare (Table 4.1, Fig. 4.2):

* ``coeff=c`` in (0, 1): the i-ResNet.
* ``coeff=None``: the *vanilla* twin - identical architecture and ActNorm, no spectral normalization,
  hence no invertibility guarantee.
* ``norm="batchnorm"``: batch normalization before every nonlinearity inside ``g_t`` (and no ActNorm), the
  "BatchNorm ResNet" of Fig. 4.2; usually combined with ``coeff=None``.

References: Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen (2019) "Invertible Residual Networks".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from invertible.inverse import FixedPoint
from invertible.logdet import PowerSeriesLogDet
from invertible.models import registry
from invertible.models.blocks import bottleneck_g
from invertible.nn import ActNorm, InjectivePad, InvertibleSequential, ResidualBlock, Squeeze
from invertible.nn.base import check_input, check_like_module

__all__ = ["IResNetClassifier", "IResNetClassifierConfig", "bottleneck_g", "NORMS"]

NORMS = ("actnorm", "batchnorm", "none")


@dataclasses.dataclass(frozen=True)
class IResNetClassifierConfig(registry.ModelConfig):
    """Config of :class:`IResNetClassifier` (kind ``iresnet_classifier``); ``hidden`` as resolved per stage."""

    input_shape: tuple[int, ...] = (1, 28, 28)
    n_classes: int = 10
    blocks: tuple[int, ...] = (13, 13, 13)
    channels: int = 16
    hidden: int | tuple[int, ...] | None = None
    coeff: float | None = 0.9
    n_power_iterations: int = 1
    norm: str = "actnorm"
    init_squeeze: bool = False
    inverse_iterations: int = 100


def _per_stage(value: int | Sequence[int] | None, default: Sequence[int], name: str) -> tuple[int, ...]:
    if value is None:
        return tuple(int(v) for v in default)
    if isinstance(value, int):
        return tuple(int(value) for _ in default)
    out = tuple(int(v) for v in value)
    if len(out) != len(default):
        raise ValueError(f"{name} needs one value per stage ({len(default)}), got {list(out)}")
    return out


class IResNetClassifier(nn.Module):
    """Invertible ResNet classifier after Appendix A.1 (see the module docstring for the layout).

    Args:
        input_shape: per-sample input shape ``(C_in, H, W)``; ``H`` and ``W`` must be divisible by
            ``2 ** n_squeezes`` (one squeeze between stages, one more with ``init_squeeze``). It fixes the
            operators whose norms are certified (:mod:`invertible.models.certify`).
        n_classes: number of classes of the linear head.
        blocks: residual blocks per stage; A.1 uses ``(13, 13, 13)`` (39 blocks).
        channels: channels after injective padding (A.1: 16); stage ``s`` has ``channels * 4**s``.
        hidden: bottleneck width of ``g`` per stage (an int for all stages); default: the stage's channels,
            capped at 128.
        coeff: spectral-normalization coefficient ``c`` in (0, 1), or ``None`` for the vanilla twin.
        n_power_iterations: power-iteration steps per training step (thesis: 1).
        norm: ``"actnorm"`` (ActNorm between consecutive blocks; A.1), ``"batchnorm"`` (BN before every ELU in g,
            no ActNorm) or ``"none"``.
        init_squeeze: squeeze the input once before padding (e.g. 28x28x1 -> 14x14x4), a cheaper layout.
        inverse_iterations: ``max_iter`` of each block's fixed-point solver (Algorithm 1; thesis: 100).

    Shapes: ``forward(x)``: ``(B, C_in, H, W) -> (B, n_classes)`` logits; ``features(x)`` is the invertible part,
    ``(B, C_in, H, W) -> (B, C_last, H', W')`` with ``C_last * H' * W' >= C_in * H * W``.

    Example:
        >>> model = IResNetClassifier((1, 8, 8), blocks=(1, 1), channels=8, coeff=0.9)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        n_classes: int = 10,
        *,
        blocks: Sequence[int] = (13, 13, 13),
        channels: int = 16,
        hidden: int | Sequence[int] | None = None,
        coeff: float | None = 0.9,
        n_power_iterations: int = 1,
        norm: str = "actnorm",
        init_squeeze: bool = False,
        inverse_iterations: int = 100,
    ):
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
        blocks = tuple(int(b) for b in blocks)
        if not blocks or min(blocks) < 0:
            raise ValueError(f"blocks must be a non-empty sequence of non-negative counts, got {list(blocks)}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        n_squeezes = len(blocks) - 1 + int(init_squeeze)
        factor = 2**n_squeezes
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"input size {shape[1]}x{shape[2]} must be divisible by {factor} for {len(blocks)} stages"
                f"{' and an initial squeeze' if init_squeeze else ''}"
            )
        c_in = shape[0] * (4 if init_squeeze else 1)
        if channels < c_in:
            raise ValueError(f"channels ({channels}) must be >= the input channels after squeezing ({c_in})")
        stage_channels = [channels * 4**s for s in range(len(blocks))]
        hiddens = _per_stage(hidden, [min(c, 128) for c in stage_channels], "hidden")
        self.kind = "iresnet_classifier"
        self.config = IResNetClassifierConfig(
            input_shape=shape,
            n_classes=int(n_classes),
            blocks=blocks,
            channels=int(channels),
            hidden=tuple(hiddens),
            coeff=None if coeff is None else float(coeff),
            n_power_iterations=int(n_power_iterations),
            norm=norm,
            init_squeeze=bool(init_squeeze),
            inverse_iterations=int(inverse_iterations),
        )
        self.input_shape = shape
        self.coeff = coeff
        layers: list[nn.Module] = []
        if init_squeeze:
            layers.append(Squeeze())
        layers.append(InjectivePad(channels - c_in))
        for s, (n_blocks, c, h) in enumerate(zip(blocks, stage_channels, hiddens, strict=True)):
            if s > 0:
                layers.append(Squeeze())
            for _ in range(n_blocks):
                if norm == "actnorm" and any(isinstance(m, ResidualBlock) for m in layers):
                    layers.append(ActNorm(c))  # between blocks: the padded zero channels must not be scaled
                g = bottleneck_g(
                    c, h, coeff=coeff, n_power_iterations=n_power_iterations, batchnorm=norm == "batchnorm"
                )
                layers.append(
                    ResidualBlock(
                        g,
                        logdet=PowerSeriesLogDet(n_terms=5),  # unused by the classifier; set for completeness
                        inverse=FixedPoint(atol=1e-6, max_iter=inverse_iterations, on_failure="ignore"),
                    )
                )
        self.features = InvertibleSequential(*layers)
        c_last = stage_channels[-1]
        self.head = nn.Sequential(
            nn.BatchNorm2d(c_last), nn.ELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_last, n_classes)
        )

    @property
    def vanilla(self) -> bool:
        """True for the twin without spectral normalization."""
        return self.coeff is None

    def residual_blocks(self) -> list[ResidualBlock]:
        """The residual blocks ``F_t = I + g_t`` in forward order."""
        return [m for m in self.features if isinstance(m, ResidualBlock)]

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.input_shape[0]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"IResNetClassifier expects (B, {self.input_shape[0]}, H, W) images, got {got}")
        check_input(x, "IResNetClassifier", min_dim=4)
        check_like_module(x, self, "IResNetClassifier")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The invertible feature map ``z = F(x)`` up to the head, ``(B, C_in, H, W) -> (B, C_last, H', W')``."""
        self._check(x)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``."""
        return self.head(self.forward_features(x))

    def extra_repr(self) -> str:
        kind = "vanilla" if self.coeff is None else f"coeff={self.coeff}"
        return f"input_shape={self.input_shape}, blocks={list(self.config.blocks)}, {kind}, norm={self.config.norm}"


@registry.register_model("iresnet_classifier", IResNetClassifierConfig)
def _build(config: IResNetClassifierConfig) -> IResNetClassifier:
    return IResNetClassifier(**config.kwargs())
