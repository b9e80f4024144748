"""A hybrid generative-discriminative residual flow: ``p(x, y) = p(x) p(y | x)`` with one invertible feature map.

The flow ``F`` gives the density ``log p(x) = log N(F(x); 0, I) + log|det J_F(x)|`` (Lemma 5.2, eq. 5.4) and
its latent ``z = F(x)`` feeds a linear classifier head, ``p(y | x) = softmax(W z + b)_y``: a generalized linear
model on invertible features (Nalisnick et al. 2019; Residual Flows section 5). Since ``F`` is a bijection, the
head sees all of ``x``; since it is linear, the features are the flow's (no extra depth to hide in). The
training objective lives in :mod:`invertible.training.hybrid`.

The model is a :class:`~invertible.distributions.FlowModel` (``forward(x) = log p(x)``, so the honest evaluation
of :func:`~invertible.training.evaluate.evaluate_nll` applies unchanged) with a ``head``; kind
``hybrid_resflow``, config :class:`HybridResFlowConfig` (the image residual flow's fields plus ``n_classes``).

References: Nalisnick, Matsukawa, Teh, Gorur, Lakshminarayanan (2019) "Hybrid Models with Deep and Invertible
Features"; Chen et al. (2019) "Residual Flows for Invertible Generative Modeling".
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from invertible.distributions import FlowModel
from invertible.models import registry
from invertible.models.resflow import ImageResFlowConfig, image_residual_flow

__all__ = ["HybridFlowModel", "HybridResFlowConfig", "hybrid_residual_flow"]


@dataclasses.dataclass(frozen=True)
class HybridResFlowConfig(ImageResFlowConfig):
    """Config of :func:`hybrid_residual_flow` (kind ``hybrid_resflow``): the flow's fields (see
    :class:`~invertible.models.resflow.ImageResFlowConfig`) and the number of classes of the head. A new kind:
    no legacy defaults (a stored config without ``squeeze_before_split`` means today's default)."""

    LEGACY: ClassVar[dict[str, Any]] = {}

    n_classes: int = 10


class HybridFlowModel(FlowModel):
    """A flow with a linear head on its flat latent: ``joint(x) -> (log p(x), logits)``, shapes ``(B,)`` and
    ``(B, n_classes)``; ``logits(x)`` alone needs no log-determinant (one forward pass of ``F``)."""

    def __init__(self, flow: FlowModel, n_classes: int, config=None, kind: str | None = None):
        super().__init__(flow.bijection, flow.event_shape, config, kind)
        if n_classes < 2:
            raise ValueError(f"a classifier head needs n_classes >= 2, got {n_classes}")
        self.head = nn.Linear(self.latent_dim, int(n_classes))

    def joint(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(x), W F(x) + b)`` from one pass of the flow."""
        logp, z = self.log_prob_and_latent(x)
        return logp, self.head(z)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``W F(x) + b`` (class scores), shape ``(B, n_classes)``."""
        if tuple(x.shape[1:]) != self.event_shape:
            shape = ", ".join(map(str, self.event_shape))
            raise ValueError(f"expected data of shape (B, {shape}), got {tuple(x.shape)}")
        return self.head(self.bijection(x).flatten(1))


def hybrid_residual_flow(
    shape: tuple[int, int, int] | list[int], n_classes: int = 10, **flow_kwargs
) -> HybridFlowModel:
    """The multi-scale image residual flow of :func:`~invertible.models.resflow.image_residual_flow` (any of its
    keyword arguments, ``block="dense"`` included) with a linear head on the latent over ``n_classes`` classes."""
    flow = image_residual_flow(shape, **flow_kwargs)
    config = HybridResFlowConfig(**flow.config.kwargs(), n_classes=int(n_classes))
    return HybridFlowModel(flow, int(n_classes), config, kind="hybrid_resflow")


@registry.register_model("hybrid_resflow", HybridResFlowConfig)
def _build_hybrid(config: HybridResFlowConfig) -> HybridFlowModel:
    kwargs = config.kwargs()
    return hybrid_residual_flow(kwargs.pop("shape"), kwargs.pop("n_classes"), **kwargs)
