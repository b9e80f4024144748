"""Residual flows: the vector flow (MLP blocks) and the multi-scale image flow (Appendix A.2), as density models.

A residual flow is ``F = f_T o ... o f_1`` with i-ResNet blocks ``f_t(x) = x + g_t(x)``, ``Lip(g_t) < 1``
(Theorem 4.1), interleaved with ActNorm and, for images, squeezes; its density is the change of variables
(Lemma 5.2, eq. 5.4) ``log p(x) = log N(F(x); 0, I) + sum_t log det(I + J_{g_t}(x_t))``. The log-determinant
estimator is the *mode* (:func:`invertible.logdet.make_estimator`):

* ``"iresnet"``: the truncated power series with Hutchinson's trace (eq. 5.6, Algorithm 2; biased by at most
  Theorem 5.8) and backpropagation through all terms - Table 5.1's i-ResNet.
* ``"resflow"``: the unbiased Russian-roulette estimator with the Neumann-series gradient (Chen et al. 2019).
* ``"exact"``: the exact log-determinant; for vector flows by forward-mode Jacobian propagation through the MLP
  (:class:`~invertible.ForwardJacobianLogDet`, cost ``d`` forward passes), otherwise :class:`~invertible.ExactLogDet`.

Models are :class:`~invertible.distributions.FlowModel` modules (``DensityModel`` here, the same class) with a typed
config (:class:`VectorResFlowConfig`, :class:`ImageResFlowConfig`) registered in :mod:`invertible.models.registry`,
so a checkpoint is ``(state_dict, {"kind": ..., **config})`` and can be rebuilt without pickles.

References: Behrmann et al. (2019) "Invertible Residual Networks"; Chen et al. (2019) "Residual Flows for
Invertible Generative Modeling"; Kingma & Dhariwal (2018) "Glow" (multi-scale, ActNorm).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from invertible.distributions import FlowModel
from invertible.inverse import FixedPoint
from invertible.logdet import (
    MODES,
    ForwardJacobianLogDet,
    make_estimator,
    override_estimators,
    set_recompute,
)
from invertible.models import registry
from invertible.models.blocks import (
    lipschitz_convnet,
    lipschitz_dense_convnet,
    lipschitz_dense_mlp,
    lipschitz_mlp,
)
from invertible.nn import (
    ActNorm,
    Bijection,
    InvertibleSequential,
    LogitTransform,
    MultiScale,
    PreThen,
    ResidualBlock,
    Squeeze,
)

__all__ = [
    "BLOCKS",
    "MODES",
    "DensityModel",
    "ImageResFlowConfig",
    "VectorResFlowConfig",
    "build_model",
    "image_residual_flow",
    "residual_blocks",
    "toy_residual_flow",
    "vector_residual_flow",
    # re-exported from their homes (invertible.logdet, invertible.nn, invertible.models.blocks)
    "ForwardJacobianLogDet",
    "LogitTransform",
    "MultiScale",
    "lipschitz_convnet",
    "lipschitz_mlp",
    "make_estimator",
    "override_estimators",
]

DensityModel = FlowModel  # the historical name of the module face of a Flow

#: Residual-function families: ``"residual"`` (the i-ResNet MLP / 3x3-1x1-3x3 convnet, eq. 4.5) and ``"dense"``
#: (i-DenseNet dense layers with CLipSwish, :func:`~invertible.models.blocks.lipschitz_dense_mlp`).
BLOCKS = ("residual", "dense")


def _check_block(block: str) -> None:
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")


def residual_blocks(module: nn.Module) -> list[ResidualBlock]:
    """All :class:`~invertible.ResidualBlock` s in a module."""
    return [m for m in module.modules() if isinstance(m, ResidualBlock)]


def _solver(inverse_atol: float) -> FixedPoint:
    return FixedPoint(atol=inverse_atol, max_iter=200)


@dataclasses.dataclass(frozen=True)
class VectorResFlowConfig(registry.ModelConfig):
    """Config of :func:`vector_residual_flow` (kind ``vector_resflow``). Legacy: configs stored before
    ``preact``/``beta`` existed were built with ``preact=True, beta=4``."""

    LEGACY: ClassVar[dict[str, Any]] = {"preact": True, "beta": 4.0}

    dim: int
    n_blocks: int = 8
    hidden: tuple[int, ...] = (128, 128)
    coeff: float = 0.9
    mode: str = "exact"
    activation: str = "lipswish"
    actnorm: bool = True
    n_power_iterations: int = 1
    n_terms: int = 5
    n_exact: int = 2
    inverse_atol: float = 1e-6
    preact: bool = False
    beta: float = 16.0
    block: str = "residual"


@dataclasses.dataclass(frozen=True)
class ImageResFlowConfig(registry.ModelConfig):
    """Config of :func:`image_residual_flow` (kind ``image_resflow``). Legacy: configs stored before
    ``squeeze_before_split`` existed factored out before squeezing (``False``); configs stored before ``probe``
    existed drew Gaussian Hutchinson probes."""

    LEGACY: ClassVar[dict[str, Any]] = {"squeeze_before_split": False, "probe": "gaussian"}

    shape: tuple[int, int, int]
    n_scales: int = 3
    n_blocks: int = 4
    hidden: int = 32
    coeff: float = 0.9
    mode: str = "resflow"
    activation: str = "lipswish"
    factor_out: bool = False
    logit_alpha: float = 1e-5
    n_power_iterations: int = 1
    n_terms: int = 10
    n_exact: int = 4
    squeeze_first: bool = False
    inverse_atol: float = 1e-5
    squeeze_before_split: bool = True
    block: str = "residual"
    dense_depth: int = 2
    probe: str = "rademacher"
    recompute_chunk: int | None = 32


def vector_residual_flow(
    dim: int,
    n_blocks: int = 8,
    hidden: tuple[int, ...] | list[int] = (128, 128),
    coeff: float = 0.9,
    mode: str = "exact",
    activation: str = "lipswish",
    actnorm: bool = True,
    n_power_iterations: int = 1,
    n_terms: int = 5,
    n_exact: int = 2,
    inverse_atol: float = 1e-6,
    preact: bool = False,
    beta: float = 16.0,
    block: str = "residual",
) -> FlowModel:
    """Residual flow on ``R^d``: ``[ActNorm] -> (ResidualBlock(MLP d-h..-d) -> [ActNorm]) x n_blocks``.

    Each block's ``g`` is :func:`~invertible.models.blocks.lipschitz_mlp` (LipSwish slope ``beta``,
    pre-activation with ``preact``), so ``Lip(g) <= coeff^L < 1``. ``mode`` picks the log-det estimator for
    training (module docstring). Inputs ``(B, d)``.

    Defaults chosen on held-out *validation* data (8gaussians, 10k points, the 1000-step protocol of
    ``benchmarks/toy2d.py``, seeds 0 and 1): no activation on the block input (``preact=False``; LipSwish on raw
    low-dimensional coordinates discards information) and a sharp LipSwish (``beta=16``): 2.928 / 2.923 nats
    against 3.052 / 3.139 for ``preact=True, beta=4`` (true density 2.825).

    ``block="dense"``: each ``g`` is the i-DenseNet :func:`~invertible.models.blocks.lipschitz_dense_mlp` with one
    dense layer of growth ``h`` per entry of ``hidden`` (activation ``"clipswish"`` for Concatenated LipSwish),
    ``Lip(g) <= coeff``; no forward-mode Jacobian, so ``mode="exact"`` uses the autograd Jacobian.
    """
    config = VectorResFlowConfig(
        dim=int(dim), n_blocks=int(n_blocks), hidden=tuple(int(h) for h in hidden), coeff=float(coeff), mode=mode,
        activation=activation, actnorm=bool(actnorm), n_power_iterations=int(n_power_iterations),
        n_terms=int(n_terms), n_exact=int(n_exact), inverse_atol=float(inverse_atol), preact=bool(preact),
        beta=float(beta), block=block,
    )
    _check_block(block)
    if dim < 1 or n_blocks < 1:
        raise ValueError(f"need dim >= 1 and n_blocks >= 1, got dim={dim}, n_blocks={n_blocks}")
    est = make_estimator(mode, n_terms=n_terms, n_exact=n_exact)
    layers: list[Bijection] = [ActNorm(dim)] if actnorm else []
    for _ in range(n_blocks):
        if block == "dense":
            g = lipschitz_dense_mlp(dim, hidden, coeff, activation, n_power_iterations, beta=beta)
        else:
            g = lipschitz_mlp([dim, *hidden, dim], coeff, activation, n_power_iterations, preact=preact, beta=beta)
        layers.append(ResidualBlock(g, logdet=est, inverse=_solver(inverse_atol)))
        if actnorm:
            layers.append(ActNorm(dim))
    return FlowModel(InvertibleSequential(*layers), (dim,), config, kind="vector_resflow")


TOY2D_COEFF = 0.98  # spectral-normalization coefficient of the 2-D toy flows (chosen on validation data)


def toy_residual_flow(n_blocks: int = 8, hidden: tuple[int, ...] | list[int] = (32, 32),
                      coeff: float = TOY2D_COEFF, **kwargs: Any) -> FlowModel:
    """The residual flow for 2-D toy densities (Fig. 5.2): :func:`vector_residual_flow` on ``R^2`` with the exact
    log-det (``mode="exact"``, forward-mode Jacobian, closed-form 2x2 determinant) in training and evaluation,
    no pre-activation, LipSwish ``beta=16``, 8 blocks of 2-32-32-2 and spectral coefficient ``coeff=0.98``, so
    ``Lip(g) <= 0.98^3 = 0.941`` for the three linear layers (eq. 4.6). Inputs ``(B, 2)``.

    Chosen on held-out *validation* samples (generator seeds 20000+, never a test set) with 150-300 Adam steps,
    cosine decay from lr 1e-2 (numbers in :mod:`invertible.experiments.fig5_2`): 8 narrow blocks beat 4 blocks of
    2-64-64-2 (same parameters) by 0.05-0.3 nats; a near-1 coefficient lets each block bend the plane further
    (4 x 64, 300 steps, gaps 8gaussians / checkerboard / 2spirals / rings: 0.154 / 0.496 / 0.658 / 0.828 nats at
    0.98, 0.141 / 0.482 / 0.651 / 0.824 at 0.99, 0.6+ on the last three at 0.9, the general default of
    :func:`vector_residual_flow`, kept there for images and checkpoints). 0.98 rather than 0.99 (equal within
    seed noise, 8 x 32, 150 steps) keeps a margin below 1 for the power iteration's error: at 0.99 one trained
    2->32 layer had an exact norm of 1.026 after ``converge_spectral_norms`` and its block a certified
    ``Lip(g) = 1.006``. ``kwargs`` go to :func:`vector_residual_flow`."""
    kwargs.setdefault("mode", "exact")
    return vector_residual_flow(2, n_blocks, hidden, coeff=coeff, **kwargs)


def image_residual_flow(
    shape: tuple[int, int, int] | list[int],
    n_scales: int = 3,
    n_blocks: int = 4,
    hidden: int = 32,
    coeff: float = 0.9,
    mode: str = "resflow",
    activation: str = "lipswish",
    factor_out: bool = False,
    logit_alpha: float = 1e-5,
    n_power_iterations: int = 1,
    n_terms: int = 10,
    n_exact: int = 4,
    squeeze_first: bool = False,
    inverse_atol: float = 1e-5,
    squeeze_before_split: bool = True,
    block: str = "residual",
    dense_depth: int = 2,
    probe: str = "rademacher",
    recompute_chunk: int | None = 32,
) -> FlowModel:
    """Multi-scale image residual flow (Appendix A.2): logit pre-transform, [squeeze], then ``n_scales``
    scale-blocks of ``n_blocks`` i-ResNet layers (3x3-1x1-3x3 convolutions, ``hidden`` filters) each followed by
    ActNorm, with a squeeze (and optional factor-out of half the channels) between scale-blocks.

    ``squeeze_before_split`` (with ``factor_out``): squeeze, then factor out (the Residual Flows order; works for
    1-channel images); ``False``: factor out, then squeeze (checkpoints written before the option).

    Inputs are dequantized images in ``[0, 1]`` of shape ``(B, C, H, W)``; ``H, W`` must be divisible by
    ``2^(n_scales - 1 + squeeze_first)``. A. 2 uses 3 scale-blocks of 32 layers, ELU, 32 hidden filters (MNIST),
    power series with 10 terms (``mode="iresnet"``, ``n_terms=10``).

    ``block="dense"``: each ``g`` is :func:`~invertible.models.blocks.lipschitz_dense_convnet` (``dense_depth``
    dense layers of growth ``hidden``; activation ``"clipswish"`` for Concatenated LipSwish), ``Lip(g) <= coeff``.

    Training estimator (``mode="resflow"``): unbiased Russian roulette with ``n_exact`` fixed terms and Hutchinson
    ``probe`` vectors. The defaults ``n_exact=4``, ``probe="rademacher"`` give the same unbiased gradient as the
    Residual Flows setting (2, Gaussian) with 4.7-7.3x less variance per CPU second on a trained conv block
    (``benchmarks/logdet_gradient_variance.py``); reported likelihoods never use it (``evaluation_estimator``).
    Its Neumann gradient is recomputed in chunks of ``recompute_chunk`` samples (:func:`~invertible.logdet.
    set_recompute`; the same values and gradients as the stored graph, in 0.31x normflows' step memory and 0.42x its
    step time, ``benchmarks/resflow_images.py``); ``None`` keeps the stored graph.
    """
    c, h, w = (int(s) for s in shape)
    config = ImageResFlowConfig(
        shape=(c, h, w), n_scales=int(n_scales), n_blocks=int(n_blocks), hidden=int(hidden), coeff=float(coeff),
        mode=mode, activation=activation, factor_out=bool(factor_out), logit_alpha=float(logit_alpha),
        n_power_iterations=int(n_power_iterations), n_terms=int(n_terms), n_exact=int(n_exact),
        squeeze_first=bool(squeeze_first), inverse_atol=float(inverse_atol),
        squeeze_before_split=bool(squeeze_before_split), block=block, dense_depth=int(dense_depth), probe=probe,
        recompute_chunk=None if recompute_chunk is None else int(recompute_chunk),
    )
    _check_block(block)
    n_down = n_scales - 1 + int(squeeze_first)
    if n_scales < 1 or n_blocks < 1 or h % (2**n_down) or w % (2**n_down):
        raise ValueError(f"image of shape {(c, h, w)} cannot be squeezed {n_down} times (n_scales={n_scales})")
    est = make_estimator(mode, n_terms=n_terms, n_exact=n_exact, probe=probe)
    pre: list[Bijection] = [LogitTransform(logit_alpha)]
    if squeeze_first:
        pre.append(Squeeze())
        c, h, w = 4 * c, h // 2, w // 2
    first_shape = (c, h, w)
    stages: list[Bijection] = []
    for s in range(n_scales):
        layers: list[Bijection] = [ActNorm(c)]
        for _ in range(n_blocks):
            if block == "dense":
                g = lipschitz_dense_convnet(c, hidden, dense_depth, coeff, activation, n_power_iterations)
            else:
                g = lipschitz_convnet(c, hidden, coeff, activation, n_power_iterations)
            layers += [ResidualBlock(g, logdet=est, inverse=_solver(inverse_atol)), ActNorm(c)]
        stages.append(InvertibleSequential(*layers))
        if s < n_scales - 1:
            if not factor_out:
                c = 4 * c
            elif squeeze_before_split:
                c = (4 * c) // 2
            else:
                c = (c // 2) * 4
            h, w = h // 2, w // 2
    ms = MultiScale(stages, first_shape, factor_out, squeeze_before_split=squeeze_before_split)
    bij = PreThen(InvertibleSequential(*pre), ms)
    if mode == "resflow" and recompute_chunk is not None:
        set_recompute(bij, recompute_chunk)
    return FlowModel(bij, (int(shape[0]), int(shape[1]), int(shape[2])), config, kind="image_resflow")


@registry.register_model("vector_resflow", VectorResFlowConfig)
def _build_vector(config: VectorResFlowConfig) -> FlowModel:
    return vector_residual_flow(**config.kwargs())


@registry.register_model("image_resflow", ImageResFlowConfig)
def _build_image(config: ImageResFlowConfig) -> FlowModel:
    return image_residual_flow(**config.kwargs())


def build_model(config: Mapping[str, Any] | registry.ModelConfig) -> nn.Module:
    """Rebuild a model from its stored ``{"kind": ..., **config}`` dict (as in checkpoints) or its typed config;
    the one-argument form of :func:`invertible.models.registry.build_model`, kept for callers of this module."""
    return registry.build_model(config)
