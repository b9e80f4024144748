"""A small convolutional i-ResNet on 8x8 digits, shared by the chapter-4/5 core reproductions.

``InjectivePad -> [ActNorm, ResidualBlock(3x3-1x1-3x3, ELU)] x n -> Squeeze -> [...] x n`` (the Appendix A.1
layout in miniature). Trained briefly so that Fig. 4.4 and Fig. 5.3 are measured on learned, not random, weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import invertible as inv
from invertible.data import load_images, train_test_split_indices
from invertible.training.classification import CrossEntropyObjective
from invertible.training.engine import LoopConfig, Trainer
from invertible.training.losses import DequantizedNLLObjective
from invertible.training.sources import RandomIndexSource


def residual_function(channels: int, hidden: int, coeff: float, tol: float = 1e-3) -> nn.Sequential:
    """``g = A3 ELU(A2 ELU(A1 x))`` with 3x3, 1x1, 3x3 spectrally normalized convolutions (eq. 4.5).

    Spectral normalization in tolerance mode (Residual Flows' ``atol = rtol = 1e-3``): with a single power
    iteration per step the estimate lags behind fast-moving weights and the exact norms end up above ``coeff``.
    """
    sn = dict(coeff=coeff, n_power_iterations=1, atol=tol, rtol=tol)
    return nn.Sequential(
        inv.spectral_norm(nn.Conv2d(channels, hidden, 3, padding=1), **sn),
        nn.ELU(),
        inv.spectral_norm(nn.Conv2d(hidden, hidden, 1), **sn),
        nn.ELU(),
        inv.spectral_norm(nn.Conv2d(hidden, channels, 3, padding=1), **sn),
    )


def conv_iresnet(coeff: float, blocks_per_stage: int = 2, hidden: int = 32, logdet=None, pad: int = 3):
    """Bijection on (B, 1, 8, 8): pad to ``1 + pad`` channels, two stages separated by a squeeze."""
    layers: list[nn.Module] = [inv.InjectivePad(pad)] if pad else []
    c = 1 + pad
    for stage in range(2):
        for _ in range(blocks_per_stage):
            layers += [inv.ActNorm(c), inv.ResidualBlock(residual_function(c, hidden, coeff), logdet=logdet)]
        if stage == 0:
            layers.append(inv.Squeeze())
            c *= 4
    return inv.InvertibleSequential(*layers)


def digits_tensors(seed: int = 0, dtype=torch.float64):
    """Train/test split of scikit-learn's digits as floats in [0, 1], shape (N, 1, 8, 8)."""
    images, labels = load_images("digits")
    tr, te = train_test_split_indices(len(images), 0.2, seed)
    x = torch.as_tensor(images.astype(np.float64) / 255.0, dtype=dtype)
    y = torch.as_tensor(labels)
    return (x[tr], y[tr]), (x[te], y[te])


class Classifier(nn.Module):
    """i-ResNet feature map followed by a linear head on globally pooled features."""

    def __init__(self, body: inv.InvertibleSequential, channels: int, n_classes: int = 10):
        super().__init__()
        self.body = body
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.head(self.body(x).relu().mean((2, 3)))


def train_classifier(model: Classifier, x, y, steps: int, ctx, desc: str, lr: float = 2e-3, batch: int = 64):
    """Adam on the cross-entropy, ``batch`` rows drawn with replacement per step from ``ctx.generator(1)``, run
    by the engine (no run folder); then the spectral norms are converged (Remark 4.9). Returns the last loss."""
    source = RandomIndexSource((x, y), batch, ctx.generator(1), epoch_steps=steps)
    objective = CrossEntropyObjective()
    Trainer(model, objective, torch.optim.Adam(model.parameters(), lr=lr), source,
            LoopConfig(steps=steps, log_every=steps, on_nonfinite="stop"), show_progress=ctx.show_progress,
            desc=desc).fit()
    model.eval()
    return float(objective.last_loss)


def set_logdet(body: inv.InvertibleSequential, estimator) -> None:
    """Use ``estimator`` for every residual block of ``body``."""
    for m in body:
        if isinstance(m, inv.ResidualBlock):
            m.logdet = estimator


def train_digits_flow(body, x, steps: int, generator: torch.Generator, lr: float = 1e-3,
                      progress: bool = False) -> float:
    """Maximum likelihood on uniformly dequantized digits (section 5.3) with the i-ResNet estimator (5-term
    power series, as in the thesis), batch 64, Adam, run by the engine (no run folder); then converge the
    spectral norms. ``generator`` drives, step after step, the batch indices, the dequantization noise and the
    estimator's probes. Returns the last NLL/dim."""
    set_logdet(body, inv.PowerSeriesLogDet(n_terms=5, generator=generator))
    flow = inv.Flow(body, event_shape=tuple(body(x[:1]).shape[1:]))
    objective = DequantizedNLLObjective(flow, generator)
    source = RandomIndexSource(x, 64, generator, epoch_steps=steps, replay=False)
    Trainer(body, objective, torch.optim.Adam(body.parameters(), lr=lr), source,
            LoopConfig(steps=steps, log_every=steps, on_nonfinite="stop"), show_progress=progress,
            desc="train flow").fit()
    body.eval()
    return float(objective.last_loss)
