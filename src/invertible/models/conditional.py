"""The conditional residual flow ``p(x | c)`` on ``R^d`` (kind ``conditional_resflow``).

``F(.; c) = [ActNorm] -> (ConditionalResidualBlock(g_t(., c)) -> [ActNorm]) x n_blocks``, each ``g_t`` a
:class:`~invertible.models.blocks.ConditionalLipschitzMLP`: spectrally normalized x-path, the context entering
as unconstrained shifts of every layer, so ``Lip_x(g_t(., c)) <= coeff^L < 1`` for every ``c`` and every block is
invertible given ``c`` (Theorem 4.1). The density is the change of variables per context,
``log p(x | c) = log N(F(x; c); 0, I) + sum_t log det(I + J_x g_t(x_t, c))`` (eq. 5.4), the log-determinants
exact by forward Jacobian propagation (cost ``d`` forward passes; meant for small ``d``).
"""

from __future__ import annotations

import dataclasses

from invertible.distributions import ConditionalFlowModel
from invertible.inverse import FixedPoint
from invertible.models import registry
from invertible.models.blocks import ConditionalLipschitzMLP
from invertible.nn import ActNorm, ConditionalResidualBlock, ConditionalSequential

__all__ = ["ConditionalResFlowConfig", "conditional_residual_flow"]


@dataclasses.dataclass(frozen=True)
class ConditionalResFlowConfig(registry.ModelConfig):
    """Config of :func:`conditional_residual_flow` (kind ``conditional_resflow``)."""

    dim: int
    context_dim: int
    n_blocks: int = 4
    hidden: tuple[int, ...] = (64, 64)
    embed_hidden: tuple[int, ...] = (64,)
    coeff: float = 0.9
    activation: str = "lipswish"
    beta: float = 16.0
    actnorm: bool = True
    n_power_iterations: int = 1
    inverse_atol: float = 1e-6


def conditional_residual_flow(
    dim: int,
    context_dim: int,
    n_blocks: int = 4,
    hidden: tuple[int, ...] | list[int] = (64, 64),
    embed_hidden: tuple[int, ...] | list[int] = (64,),
    coeff: float = 0.9,
    activation: str = "lipswish",
    beta: float = 16.0,
    actnorm: bool = True,
    n_power_iterations: int = 1,
    inverse_atol: float = 1e-6,
) -> ConditionalFlowModel:
    """A conditional residual flow on ``R^dim`` given contexts in ``R^context_dim`` (module docstring).

    Each block: x-path ``dim -> hidden... -> dim`` (``||W||_2 <= coeff``, LipSwish slope ``beta``), context
    embedding ``context_dim -> embed_hidden... -> sum(hidden) + dim`` (unconstrained). Inputs ``x (B, dim)``,
    ``c (B, context_dim)``; ``model(c)`` is the distribution ``p(. | c)``."""
    config = ConditionalResFlowConfig(
        dim=int(dim), context_dim=int(context_dim), n_blocks=int(n_blocks), hidden=tuple(int(h) for h in hidden),
        embed_hidden=tuple(int(h) for h in embed_hidden), coeff=float(coeff), activation=activation,
        beta=float(beta), actnorm=bool(actnorm), n_power_iterations=int(n_power_iterations),
        inverse_atol=float(inverse_atol),
    )
    if config.dim < 1 or config.context_dim < 1 or config.n_blocks < 1:
        raise ValueError(f"need dim, context_dim, n_blocks >= 1, got {dim}, {context_dim}, {n_blocks}")
    layers = [ActNorm(config.dim)] if config.actnorm else []
    for _ in range(config.n_blocks):
        g = ConditionalLipschitzMLP([config.dim, *config.hidden, config.dim], config.context_dim,
                                    config.embed_hidden, config.coeff, activation, config.beta,
                                    config.n_power_iterations)
        layers.append(ConditionalResidualBlock(g, inverse=FixedPoint(atol=config.inverse_atol, max_iter=500)))
        if config.actnorm:
            layers.append(ActNorm(config.dim))
    return ConditionalFlowModel(ConditionalSequential(*layers), config.dim, config.context_dim, config,
                                kind="conditional_resflow")


@registry.register_model("conditional_resflow", ConditionalResFlowConfig)
def _build(config: ConditionalResFlowConfig) -> ConditionalFlowModel:
    return conditional_residual_flow(**config.kwargs())
