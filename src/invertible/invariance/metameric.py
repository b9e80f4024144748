"""Metameric sampling (Definition 6.8) and nuisance interpolation (Figure 6.5).

For a fully invertible classifier ``F`` with ``F(x) = (z_s, z_n)`` (Definition 6.7), a source ``x`` (class i)
and a reference ``x~`` (class j != i),

    x_met = F^{-1}(z_s(x), z_n(x~))                                                   (Definition 6.8)

has exactly the logits of ``x``, hence the same prediction, while carrying all other information of ``x~``: if it
looks like class j, it is an invariance-based adversarial example (Definition 6.3). Interpolating the nuisance,

    x(t) = F^{-1}(z_s(x), (1 - t) z_n(x) + t z_n(x~)),   t in [0, 1],

gives the rows of Figure 6.5. ``logits(x(t)) = z_s(x)`` up to the inverse's error (exact for fi-RevNet up to
floating point; bounded by Lemma 4.5 for i-ResNet blocks): :func:`logit_deviation` measures it.
"""

from __future__ import annotations

import torch

from invertible.models.firevnet import FullyInvertibleClassifier

__all__ = ["metameric_sample", "nuisance_interpolation", "logit_deviation"]


def _pair(model: FullyInvertibleClassifier, x: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name}: source and reference shapes differ: {tuple(x.shape)}, {tuple(ref.shape)}")
    if tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"{name}: expected (B, {', '.join(map(str, model.input_shape))}), got {tuple(x.shape)}")


@torch.no_grad()
def metameric_sample(model: FullyInvertibleClassifier, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``F^{-1}(z_s(x), z_n(reference))`` for batches ``x, reference`` of shape ``(B, *input_shape)``."""
    _pair(model, x, reference, "metameric_sample")
    z_s, _ = model.encode(x)
    _, z_n_ref = model.encode(reference)
    return model.decode(z_s, z_n_ref)


@torch.no_grad()
def nuisance_interpolation(
    model: FullyInvertibleClassifier, x: torch.Tensor, target: torch.Tensor, steps: int = 8
) -> torch.Tensor:
    """``x(t) = F^{-1}(z_s(x), (1 - t) z_n(x) + t z_n(target))`` for ``t = linspace(0, 1, steps)``.

    ``x, target (B, *input_shape) -> (steps, B, *input_shape)``; row 0 reconstructs ``x``, row ``steps - 1`` is
    the metameric sample of Definition 6.8.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    _pair(model, x, target, "nuisance_interpolation")
    z_s, z_n = model.encode(x)
    _, z_n_target = model.encode(target)
    ts = torch.linspace(0, 1, steps, dtype=z_n.dtype, device=z_n.device)
    return torch.stack([model.decode(z_s, (1 - t) * z_n + t * z_n_target) for t in ts])


@torch.no_grad()
def logit_deviation(model: FullyInvertibleClassifier, samples: torch.Tensor, logits: torch.Tensor) -> float:
    """``max |F(samples)_{1..C} - logits|`` over everything: how well metameric samples keep the logits.

    ``samples (..., *input_shape)`` (e.g. the output of :func:`nuisance_interpolation`), ``logits (B, C)``
    broadcast over leading dimensions.
    """
    flat = samples.reshape(-1, *model.input_shape)
    got = model.logits(flat).reshape(*samples.shape[: samples.dim() - len(model.input_shape)], -1)
    return float((got - logits).abs().max())
