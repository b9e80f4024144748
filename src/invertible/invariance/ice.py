"""Independence cross-entropy (iCE, Definition 6.14) with the nuisance maximum-likelihood term (eq. 6.13).

For a fully invertible classifier ``F_theta`` with ``z = F(x) = (z_s, z_n)`` (Definition 6.7), a nuisance
classifier ``D_nc : R^{d-C} -> [0, 1]^C`` with parameters ``theta_nc`` and per-dimension Gaussians
``p_k = N(beta_k, gamma_k^2)`` on ``z_n``, the objective of eq. 6.13 is

    L(theta, theta_nc) = L_sCE(theta) + L_nCE(theta, theta_nc) + L_MLEn(theta),
    L_sCE  = sum_i -log softmax(z_s^(i))_{y_i}                       (cross-entropy on the logits)
    L_nCE  = sum_i  log D_nc(z_n^(i))_{y_i}                          (minus the nuisance classifier's CE)
    L_MLEn = -sum_i [ sum_k log p_k(z_n,k^(i)) + log|det J_F(x^(i))| ]

optimized as the min-max game ``min_theta max_theta_nc L`` (Definition 6.14) by alternating updates: the
nuisance classifier ascends ``L_nCE`` (i.e. minimizes its own cross-entropy on detached ``z_n``); the
network (and ``beta, gamma``) descends ``L``, i.e. *maximizes* the nuisance classifier's cross-entropy, which
removes label information from ``z_n`` (Theorem 6.16: it minimizes a variational lower bound on I(Y; Z_n)).

Here sums over the batch are means, the MLE term is divided by ``d`` (a per-dimension negative log-likelihood,
so its weight does not depend on image size), and the three terms carry weights
``(1, nuisance_weight, mle_weight)``; ``nuisance_weight = mle_weight = 0`` is plain cross-entropy.
``form="minimax"`` uses the network term ``-CE`` of Definition 6.14 literally; ``form="nonsaturating"`` uses
``-log(1 - q_y)`` instead (same fixed points, bounded below, non-vanishing gradient while the nuisance
classifier wins; see :func:`adversarial_nuisance_loss`), which is what the reproductions train with.
Note that the MLE term leaves ``z_s`` without a prior, so scaling the logits up lowers it; CE bounds this only
while some training logits are wrong.

References: Jacobsen, Behrmann, Zemel, Bethge (2019) "Excessive Invariance Causes Adversarial Vulnerability";
Barber & Agakov (2003) for the variational bound of Lemma 6.15.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invertible.models.firevnet import FullyInvertibleClassifier

FORMS = ("minimax", "nonsaturating", "confusion")

__all__ = [
    "FactorizedGaussian",
    "ICELosses",
    "NuisanceClassifier",
    "adversarial_nuisance_loss",
    "ice_losses",
    "ice_metrics",
    "ice_round",
    "ice_step",
]


class NuisanceClassifier(nn.Module):
    """``D_nc(z_n)``: logits ``(B, C)`` from nuisance variables ``(B, d - C)``; an MLP with ``hidden`` units
    (``hidden=0``: a linear classifier). The softmax of its output is the variational posterior q(y | z_n).

    ``standardize=True`` puts a batch normalization without affine parameters in front (batch statistics in
    training mode, running ones in eval mode), so the classifier sees every nuisance dimension at unit scale.
    Without it the network can hide the label in dimensions whose scale a few Adam steps cannot follow (very
    small or very large ``z_n,k``) while a probe fitted afterwards on standardized ``z_n`` reads it perfectly."""

    def __init__(self, n_nuisance: int, n_classes: int, hidden: int = 256, n_hidden_layers: int = 1,
                 standardize: bool = False):
        super().__init__()
        if n_nuisance < 1 or n_classes < 2 or hidden < 0 or n_hidden_layers < 0:
            raise ValueError(
                f"need n_nuisance >= 1, n_classes >= 2, hidden >= 0, n_hidden_layers >= 0; "
                f"got {n_nuisance}, {n_classes}, {hidden}, {n_hidden_layers}"
            )
        layers: list[nn.Module] = [nn.BatchNorm1d(n_nuisance, affine=False)] if standardize else []
        width = n_nuisance
        for _ in range(n_hidden_layers if hidden else 0):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)
        self.n_nuisance, self.n_classes = int(n_nuisance), int(n_classes)

    def forward(self, z_n: torch.Tensor) -> torch.Tensor:
        if z_n.dim() != 2 or z_n.shape[1] != self.n_nuisance:
            raise ValueError(f"NuisanceClassifier expects (B, {self.n_nuisance}), got {tuple(z_n.shape)}")
        return self.net(z_n)


class FactorizedGaussian(nn.Module):
    """``p(z) = prod_k N(z_k; beta_k, gamma_k^2)`` with learned ``beta`` and ``gamma = exp(log_gamma)`` (eq. 6.13).

    ``log_prob(z (B, D)) -> (B,)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.mean = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"FactorizedGaussian expects (B, {self.dim}), got {tuple(z.shape)}")
        mean, log_scale = self.mean.to(z.dtype), self.log_scale.to(z.dtype)
        e = (z - mean) * torch.exp(-log_scale)
        return (-0.5 * e**2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(dim=1)


@dataclass
class ICELosses:
    """The terms of eq. 6.13 for one batch (scalars, batch means).

    ``semantic_ce`` = L_sCE, ``nuisance_ce`` = the nuisance classifier's cross-entropy = -L_nCE, ``mle`` =
    L_MLEn / d, ``model_loss`` = what the network minimizes, ``nuisance_loss`` = what the nuisance classifier
    minimizes (computed on detached ``z_n``, so it only reaches ``theta_nc``). ``logits`` are ``z_s``.
    """

    semantic_ce: torch.Tensor
    nuisance_ce: torch.Tensor
    mle: torch.Tensor
    model_loss: torch.Tensor
    nuisance_loss: torch.Tensor
    logits: torch.Tensor


def adversarial_nuisance_loss(nuisance_logits: torch.Tensor, y: torch.Tensor, form: str = "minimax") -> torch.Tensor:
    """The network's nuisance term (to be *minimized* by theta), batch mean, from the nuisance logits ``(B, C)``.

    ``"minimax"``: ``mean_i log q(y_i | z_n^(i)) = -CE``, exactly ``L_nCE / N`` of Definition 6.14. Its gradient
    ``(1 - q_y)`` vanishes once the nuisance classifier is confident, as in the original GAN objective.
    ``"nonsaturating"``: ``-mean_i log(1 - q(y_i | z_n^(i)))``, the same fixed points (both push ``q_y`` down) but a
    gradient ``q_y`` that stays large while the nuisance classifier wins (Goodfellow et al. 2014, Section 3).
    ``"confusion"``: ``mean_i KL(u || q(. | z_n^(i)))`` with ``u`` uniform over the C classes, i.e. the
    cross-entropy of ``q`` against uniform targets minus ``log C``. It is >= 0 and zero exactly when the nuisance
    classifier is maximally uncertain, which (against a best-responding classifier, ``q = p(y | z_n)``) is the
    minimax fixed point I(Y; Z_n) = 0 of Definition 6.14 for balanced classes. Unlike the two label-based forms
    it cannot be lowered by making the classifier *confidently wrong* (a relabelling of z_n keeps all label
    information); it does not use ``y`` (Tzeng et al. 2015's domain-confusion loss; Alvi et al. 2018).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "confusion":
        log_p = F.log_softmax(nuisance_logits, dim=1)
        return -(log_p.mean(dim=1) + math.log(nuisance_logits.shape[1])).mean()
    log_q = F.log_softmax(nuisance_logits, dim=1).gather(1, y[:, None])[:, 0]
    if form == "minimax":
        return log_q.mean()
    return -torch.log1p(-torch.exp(log_q).clamp(max=1 - 1e-6)).mean()


def _encode(model: FullyInvertibleClassifier, x: torch.Tensor, with_logdet: bool):
    if with_logdet:
        return model.forward_and_logdet(x)
    return model(x), None


def _check_weights(y: torch.Tensor, x: torch.Tensor, nuisance_weight: float, mle_weight: float, prior, form) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype != torch.long:
        raise ValueError(f"y must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    if not (nuisance_weight >= 0 and mle_weight >= 0):
        raise ValueError(f"weights must be >= 0, got nuisance_weight={nuisance_weight}, mle_weight={mle_weight}")
    if mle_weight > 0 and prior is None:
        raise ValueError("mle_weight > 0 needs a FactorizedGaussian prior on z_n")


def _terms(model, nuisance, prior, z, logdet, y, nuisance_weight: float, mle_weight: float, form: str) -> ICELosses:
    z_s, z_n = model.split(z)
    semantic = F.cross_entropy(z_s, y)
    nc_logits = nuisance(z_n)
    nuisance_ce = F.cross_entropy(nc_logits, y)
    adversarial = -nuisance_ce if form == "minimax" else adversarial_nuisance_loss(nc_logits, y, form)
    nuisance_loss = F.cross_entropy(nuisance(z_n.detach()), y)
    if logdet is not None and prior is not None:
        mle = -(prior.log_prob(z_n) + logdet).mean() / model.dim
    else:
        mle = z.new_zeros(())
    model_loss = semantic + nuisance_weight * adversarial + mle_weight * mle
    return ICELosses(semantic, nuisance_ce, mle, model_loss, nuisance_loss, z_s)


def ice_losses(
    model: FullyInvertibleClassifier,
    nuisance: NuisanceClassifier,
    prior: FactorizedGaussian | None,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    nuisance_weight: float = 1.0,
    mle_weight: float = 1.0,
    form: str = "minimax",
) -> ICELosses:
    """All terms of eq. 6.13 from one forward pass of ``model``.

    ``model_loss = L_sCE - nuisance_weight * CE(D_nc(z_n), y) + mle_weight * L_MLEn / d`` (gradients for theta
    and the prior) and ``nuisance_loss = CE(D_nc(z_n.detach()), y)`` (gradients for theta_nc only).
    ``x (B, *input_shape)``, ``y (B,)`` int64 in ``[0, C)``.
    """
    _check_weights(y, x, nuisance_weight, mle_weight, prior, form)
    z, logdet = _encode(model, x, mle_weight > 0)
    return _terms(model, nuisance, prior, z, logdet, y, nuisance_weight, mle_weight, form)


def ice_round(
    model: FullyInvertibleClassifier,
    nuisance: NuisanceClassifier,
    prior: FactorizedGaussian | None,
    nuisance_optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    nuisance_weight: float = 1.0,
    mle_weight: float = 1.0,
    nuisance_steps: int = 1,
    form: str = "minimax",
    sync_gradients: Callable[[list[torch.Tensor]], None] | None = None,
) -> ICELosses:
    """The nuisance half of one round of the min-max game of Definition 6.14, and the network's loss.

    From a single forward pass of the network: ``nuisance_steps`` ascent steps of ``theta_nc`` on ``L_nCE``
    (descent on the nuisance classifier's cross-entropy on the current ``z_n``, detached; each gradient passed
    through ``sync_gradients`` first, e.g. the all-reduce of data-parallel training), then the terms of
    eq. 6.13 against the updated classifier. ``model_loss`` is left for the caller to minimize over ``theta``
    (and the prior); its backward pass also leaves (opposite-signed) gradients on ``theta_nc``, which the
    next round's ``zero_grad`` drops.
    """
    _check_weights(y, x, nuisance_weight, mle_weight, prior, form)
    z, logdet = _encode(model, x, mle_weight > 0)
    z_n = model.split(z)[1].detach()
    for _ in range(nuisance_steps if nuisance_weight > 0 else 0):
        nuisance_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(nuisance(z_n), y).backward()
        if sync_gradients is not None:
            sync_gradients([p for p in nuisance.parameters() if p.grad is not None])
        nuisance_optimizer.step()
    return _terms(model, nuisance, prior, z, logdet, y, nuisance_weight, mle_weight, form)


def ice_step(
    model: FullyInvertibleClassifier,
    nuisance: NuisanceClassifier,
    prior: FactorizedGaussian | None,
    model_optimizer: torch.optim.Optimizer,
    nuisance_optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    nuisance_weight: float = 1.0,
    mle_weight: float = 1.0,
    nuisance_steps: int = 1,
    form: str = "minimax",
) -> dict[str, float]:
    """One alternating round of the min-max game of Definition 6.14, from a single forward pass of the network.

    1. ``nuisance_steps`` ascent steps of ``theta_nc`` on ``L_nCE`` (descent on the nuisance classifier's
       cross-entropy on the current ``z_n``, detached);
    2. one descent step of ``theta`` (and the prior) on ``L`` of eq. 6.13 against the updated classifier.

    ``model_optimizer`` must hold the network's (and prior's) parameters only, ``nuisance_optimizer`` the
    nuisance classifier's. With ``nuisance_weight = mle_weight = 0`` this is a plain cross-entropy step.
    Returns the batch's loss terms and accuracy as floats (:func:`ice_round` does step 1; the training
    recipe, :mod:`invertible.invariance.training`, leaves step 2 to the engine).
    """
    terms = ice_round(model, nuisance, prior, nuisance_optimizer, x, y, nuisance_weight=nuisance_weight,
                      mle_weight=mle_weight, nuisance_steps=nuisance_steps, form=form)
    model_optimizer.zero_grad(set_to_none=True)
    terms.model_loss.backward()
    model_optimizer.step()
    nuisance_optimizer.zero_grad(set_to_none=True)  # drop the (opposite-signed) grads the model loss left there
    return {k: float(v) for k, v in ice_metrics(terms, y).items()}


def ice_metrics(terms: ICELosses, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"loss", "ce", "nuisance_ce", "mle", "acc"}`` of a round as detached 0-dim tensors (no host sync)."""
    return {
        "loss": terms.model_loss.detach(),
        "ce": terms.semantic_ce.detach(),
        "nuisance_ce": terms.nuisance_ce.detach(),
        "mle": terms.mle.detach(),
        "acc": (terms.logits.argmax(1) == y).double().mean(),
    }
