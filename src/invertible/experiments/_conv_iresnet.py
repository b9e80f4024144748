"""Training loops for the small digits i-ResNet (:mod:`invertible.models.conv_iresnet`) shared by the
chapter-4/5 core reproductions: trained briefly so that Fig. 4.4 and Fig. 5.3 are measured on learned, not random,
weights. The model (:mod:`invertible.models.conv_iresnet`), the data (:func:`invertible.data.digits_tensors`) and
the estimator policy (:func:`invertible.logdet.set_estimators`) live in the library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import invertible as inv
from invertible.logdet import set_estimators
from invertible.models.conv_iresnet import Classifier

__all__ = ["train_classifier", "train_digits_flow"]


def train_classifier(model: Classifier, x, y, steps: int, ctx, desc: str, lr: float = 2e-3, batch: int = 64):
    gen = ctx.generator(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bar = ctx.progress(range(steps), desc=desc)
    for _ in bar:
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    inv.converge_spectral_norms(model)  # vectors for the final weights (Remark 4.9)
    return float(loss.detach())


def train_digits_flow(body, x, steps: int, generator: torch.Generator, lr: float = 1e-3, progress=None) -> float:
    """Maximum likelihood on uniformly dequantized digits (section 5.3) with the i-ResNet estimator (5-term
    power series, as in the thesis), batch 64, Adam; then converge the spectral norms. Returns the last NLL/dim."""
    set_estimators(body, inv.PowerSeriesLogDet(n_terms=5, generator=generator))
    flow = inv.Flow(body, event_shape=tuple(body(x[:1]).shape[1:]))
    opt = torch.optim.Adam(body.parameters(), lr=lr)
    body.train()
    loop = progress(range(steps), desc="train flow") if progress else range(steps)
    loss = torch.tensor(float("nan"))
    for _ in loop:
        idx = torch.randint(0, len(x), (64,), generator=generator)
        xb = (x[idx] * 255 + torch.rand(x[idx].shape, generator=generator, dtype=x.dtype)) / 256
        loss = -flow.log_prob(xb).mean() / xb[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(loop, "set_postfix"):
            loop.set_postfix(nll_per_dim=f"{loss.item():.3f}")
    body.eval()
    inv.converge_spectral_norms(body)  # vectors for the final weights (Remark 4.9)
    return float(loss.detach())
