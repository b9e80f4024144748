"""Honest evaluation of a flow's negative log-likelihood, with its standard error.

* Small dimension (``d <= exact_max_dim``): the exact log-determinant (forward-mode Jacobian for MLP blocks,
  autograd Jacobian + slogdet otherwise). The standard error is that of the test-set mean,
  ``std(-log p(x_i)) / sqrt(n)``.
* Otherwise: the unbiased Russian-roulette estimate (Chen et al. 2019) with ``n_exact`` fixed terms, evaluated
  batch by batch with fresh probes and truncation; batch means are independent, so the standard error is that
  of their weighted mean (it includes the estimator's variance). The Neumann *gradient* surrogate is never used
  for a reported number (its value is not the log-determinant).

Discrete images are uniformly dequantized (Lemma 5.10) and reported in bits/dim as well.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from invertible.data.dequantize import dequantize, nats_to_bits_per_dim
from invertible.distributions import FlowModel
from invertible.logdet import AbstractLogDet, estimator_sites, evaluation_estimator, override_estimators

__all__ = ["evaluate_nll", "honest_estimator"]


def honest_estimator(model: FlowModel, exact_max_dim: int = 64, n_exact: int = 8,
                     generator: torch.Generator | None = None) -> AbstractLogDet:
    """The estimator used for evaluation (:func:`invertible.logdet.evaluation_estimator` for the model's data
    dimension): exact for ``d <= exact_max_dim``, else unbiased Russian roulette."""
    return evaluation_estimator(model.latent_dim, len(model.event_shape), exact_max_dim=exact_max_dim,
                                n_exact=n_exact, generator=generator)


def _weighted_se(means: torch.Tensor, sizes: torch.Tensor) -> float:
    w = sizes / sizes.sum()
    m = (w * means).sum()
    k = means.numel()
    if k < 2:
        return math.nan
    return float(torch.sqrt((w * w * (means - m) ** 2).sum() * k / (k - 1)))


@torch.no_grad()
def evaluate_nll(
    model: FlowModel,
    data: torch.Tensor,
    *,
    batch_size: int = 500,
    exact_max_dim: int = 64,
    n_exact: int = 8,
    seed: int = 0,
    dequantize_data: bool | None = None,
) -> dict[str, Any]:
    """Mean NLL of ``data`` under ``model`` with its standard error.

    Args:
        data: ``(N, *event_shape)``; uint8 images are dequantized to ``[0, 1)`` (or set ``dequantize_data``).
        exact_max_dim: use the exact log-det up to this dimension. n_exact: fixed terms of the unbiased estimator.
        seed: seeds the dequantization noise and the estimator's probes (the global RNG is untouched).

    Returns:
        ``{"nll", "se", "n", "estimator", "exact"}`` in nats per sample, plus ``"bits_per_dim"`` and
        ``"bits_per_dim_se"`` for discrete data.
    """
    if data.shape[0] < 1:
        raise ValueError("evaluate_nll needs at least one sample")
    if tuple(data.shape[1:]) != model.event_shape:
        raise ValueError(f"data of shape {tuple(data.shape)} does not match the model's event shape "
                         f"{model.event_shape}")
    discrete = data.dtype == torch.uint8 if dequantize_data is None else dequantize_data
    p = next(model.parameters())
    gen = torch.Generator(device=p.device).manual_seed(int(seed))
    est = honest_estimator(model, exact_max_dim, n_exact, generator=gen)
    exact = est.exact or not estimator_sites(model)
    was = model.training
    model.eval()
    nlls, means, sizes = [], [], []
    try:
        with override_estimators(model, est):
            for chunk in torch.split(data, batch_size):
                chunk = chunk.to(p.device)
                x = dequantize(chunk, gen, dtype=p.dtype) if discrete else chunk.to(p.dtype)
                nll = -model.log_prob(x).double()
                if not torch.isfinite(nll).all():
                    raise ValueError("non-finite log-likelihood in evaluation (is the model contractive?)")
                nlls.append(nll.cpu())
                means.append(nll.mean().cpu())
                sizes.append(float(nll.numel()))
    finally:
        model.train(was)
    all_nll = torch.cat(nlls)
    mean = float(all_nll.mean())
    if exact or len(means) < 2:
        se = float(all_nll.std() / math.sqrt(all_nll.numel())) if all_nll.numel() > 1 else math.nan
    else:
        se = _weighted_se(torch.stack(means), torch.tensor(sizes, dtype=torch.float64))
    out: dict[str, Any] = {"nll": mean, "se": se, "n": int(all_nll.numel()), "estimator": repr(est), "exact": exact}
    if discrete:
        d = model.latent_dim
        out["bits_per_dim"] = float(nats_to_bits_per_dim(mean, d))
        out["bits_per_dim_se"] = se / (d * math.log(2))
    return out
