"""Inverting the feature map of an i-ResNet classifier: reconstructions (Fig. 4.3), error vs iterations (Fig. 4.4).

``z = F(x)`` is the feature map up to the head (padding, residual blocks, ActNorms, squeezes). Its inverse runs
the layers backwards; every residual block ``y = x + g(x)`` is solved by Algorithm 1,

    x[0] = y,  x[k+1] = y - g(x[k]),   ||x - x[k]|| <= L^k / (1 - L) ||x[1] - x[0]||   (Lemma 4.5),

or by Anderson acceleration. The vanilla twin is inverted with the same iteration (the thesis uses 100 steps
per block), without any guarantee: it may converge (MNIST), converge to the wrong point or diverge (CIFAR).
The injective padding is inverted by dropping the padded channels; how far they are from zero is reported.
Inversion runs in float64 by default (a copy of the model), so that numerical error does not mask the
solver's: the reconstruction error then measures the inverse, not the arithmetic.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from invertible.inverse import Anderson, FixedPoint
from invertible.nn import InjectivePad, ResidualBlock

__all__ = [
    "Reconstruction", "invert_features", "reconstruct", "error_vs_iterations", "make_solver", "plot_reconstructions",
    "plot_error_vs_iterations",
]


def make_solver(method: str, iterations: int, atol: float = 1e-12) -> FixedPoint | Anderson:
    """``"fixed-point"`` (Algorithm 1) or ``"anderson"`` with at most ``iterations`` evaluations of g per block;
    per-sample stopping at ``atol``, never raising on non-convergence (the vanilla twin must be tried)."""
    if method == "fixed-point":
        return FixedPoint(atol=atol, max_iter=iterations, on_failure="ignore")
    if method == "anderson":
        return Anderson(atol=atol, max_iter=iterations, memory=5, on_failure="ignore")
    raise ValueError(f"method must be 'fixed-point' or 'anderson', got {method!r}")


@dataclass
class Reconstruction:
    """Result of inverting ``z = F(x)``.

    Attributes:
        x: originals ``(B, C, H, W)``; x_hat: reconstructions (NaN where the iteration diverged).
        max_abs_error: ``max |x_hat - x|`` over the batch (inf if diverged); rel_error: per-sample
            ``||x_hat - x||_2 / ||x||_2``.
        padding_residual: ``max |.|`` of the channels the padding should have left zero.
        iterations: total evaluations of g per sample summed over blocks, ``(B,)``.
        error_bound: Lemma 4.5 / 4.6 bound on the error of the last (first-layer) block solve, per sample
            (inf without a certificate).
        diverged: True if some iterate became non-finite.
    """

    x: torch.Tensor
    x_hat: torch.Tensor
    max_abs_error: float
    rel_error: torch.Tensor
    padding_residual: float
    iterations: torch.Tensor
    error_bound: torch.Tensor
    diverged: bool


def _block_lipschitz(features: nn.Module, lipschitz: Sequence[float] | None) -> list[float | None]:
    blocks = [m for m in features if isinstance(m, ResidualBlock)]
    if lipschitz is None:
        return [None] * len(blocks)
    if len(lipschitz) != len(blocks):
        raise ValueError(f"need one Lipschitz bound per residual block ({len(blocks)}), got {len(lipschitz)}")
    return [float(v) if v < 1 else None for v in lipschitz]


@torch.no_grad()
def invert_features(
    features: nn.Module,
    z: torch.Tensor,
    solver: FixedPoint | Anderson,
    lipschitz: Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Invert an ``InvertibleSequential`` feature map at ``z`` layer by layer with ``solver`` for the blocks.

    Args:
        lipschitz: certified ``Lip(g_t)`` per block (e.g. from :func:`~invertible.models.certify.certify_features`)
            for the error bounds; blocks with a bound >= 1 get none.

    Returns:
        ``(x_hat, info)`` with ``info`` keys ``iterations`` (B,), ``error_bound`` (B,) of the last block solved,
        ``padding_residual`` and ``diverged``.
    """
    lips = _block_lipschitz(features, lipschitz)
    layers = list(features)
    iterations = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    bound = torch.full((z.shape[0],), math.inf, dtype=z.dtype, device=z.device)
    pad_res = 0.0
    k = len(lips)
    y = z
    for layer in reversed(layers):
        if not torch.isfinite(y).all():
            return torch.full_like(y, math.nan), {
                "iterations": iterations, "error_bound": bound, "padding_residual": math.inf, "diverged": True
            }
        if isinstance(layer, ResidualBlock):
            k -= 1
            result = solver(layer.g, y, lipschitz=lips[k])
            iterations += result.iterations
            bound = result.error_bound
            y = result.x
        elif isinstance(layer, InjectivePad):
            keep = y.shape[1] - layer.n_extra_channels
            if layer.n_extra_channels:
                pad_res = float(y[:, keep:].abs().max())
            y = y[:, :keep]
        else:
            y = layer.inverse(y)
    diverged = not bool(torch.isfinite(y).all())
    return y, {"iterations": iterations, "error_bound": bound, "padding_residual": pad_res, "diverged": diverged}


def _as_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    model = model.eval()
    if dtype is None or next(model.parameters()).dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype).eval()


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "fixed-point",
    iterations: int = 100,
    atol: float = 1e-12,
    lipschitz: Sequence[float] | None = None,
    dtype: torch.dtype | None = torch.float64,
) -> Reconstruction:
    """Compute ``x_hat = F^{-1}(F(x))`` for a classifier with a ``features`` map (Fig. 4.3).

    Args:
        x: images ``(B, C, H, W)`` in the model's input scaling.
        method, iterations, atol: the block solver (see :func:`make_solver`); the thesis uses 100 fixed-point
            iterations per block.
        lipschitz: certified per-block bounds for the error bound (optional).
        dtype: arithmetic of the inversion (a float64 copy of the model by default; ``None`` keeps the model's).
    """
    features = getattr(model, "features", None)
    if features is None:
        raise ValueError(f"{type(model).__name__} has no invertible feature map (features) to invert")
    if x.dim() != 4:
        raise ValueError(f"reconstruct expects images (B, C, H, W), got {tuple(x.shape)}")
    m = _as_dtype(model, dtype)
    xd = x.to(next(m.parameters()).dtype)
    z = m.features(xd)
    x_hat, info = invert_features(m.features, z, make_solver(method, iterations, atol), lipschitz)
    diff = (x_hat - xd).flatten(1)
    max_err = float(diff.abs().max()) if not info["diverged"] else math.inf
    rel = diff.norm(dim=1) / xd.flatten(1).norm(dim=1).clamp_min(1e-30)
    return Reconstruction(
        xd, x_hat, max_err, rel, info["padding_residual"], info["iterations"], info["error_bound"], info["diverged"]
    )


@torch.no_grad()
def error_vs_iterations(
    model: nn.Module,
    x: torch.Tensor,
    iterations: Sequence[int] = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50),
    methods: Sequence[str] = ("fixed-point", "anderson"),
    dtype: torch.dtype | None = torch.float64,
) -> dict[str, list[float]]:
    """Max reconstruction error ``max |F^{-1}_k(F(x)) - x|`` when every block gets exactly ``k`` solver steps
    (no early stopping), for each ``k`` in ``iterations`` and each method (Fig. 4.4 on trained weights).
    Diverged inversions give ``inf``. Every solver iteration counts (one evaluation of g each)."""
    out: dict[str, list[float]] = {}
    m = _as_dtype(model, dtype)
    xd = x.to(next(m.parameters()).dtype)
    z = m.features(xd)
    for method in methods:
        errs = []
        for k in iterations:
            x_hat, info = invert_features(m.features, z, make_solver(method, max(int(k), 1), atol=1e-300))
            errs.append(math.inf if info["diverged"] else float((x_hat - xd).abs().max()))
        out[method] = errs
    return out


def plot_reconstructions(rows: dict[str, torch.Tensor], title: str | None = None):
    """A matplotlib figure with one row of images per entry (Fig. 4.3): ``rows`` maps a label to images
    ``(B, C, H, W)`` with intensities in [0, 1] (NaN, from a diverged inversion, is drawn red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = max(int(v.shape[0]) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n + 1.6, 1.0 * len(rows) + 0.4), squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= imgs.shape[0]:
                ax.axis("off")
                continue
            img = imgs[c].detach().double().cpu().permute(1, 2, 0).numpy()
            bad = ~np.isfinite(img).all(axis=2)
            img = np.clip(np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0), 0, 1)
            img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
            img[bad] = (1.0, 0.0, 0.0)
            ax.imshow(img, interpolation="nearest")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_error_vs_iterations(curves: dict[str, dict[str, list[float]]], iterations: Sequence[int]):
    """Log-scale max reconstruction error against solver steps per block (Fig. 4.4); ``curves`` maps a model
    label to ``{method: errors}`` as returned by :func:`error_vs_iterations`. Diverged points are omitted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    styles = {"fixed-point": "-o", "anderson": "--s"}
    for label, by_method in curves.items():
        for method, errs in by_method.items():
            pts = [(k, max(e, 1e-17)) for k, e in zip(iterations, errs, strict=True) if math.isfinite(e)]
            if pts:
                ax.semilogy(*zip(*pts, strict=True), styles.get(method, "-"), ms=3, label=f"{label}, {method}")
    ax.set_xlabel("solver iterations per block")
    ax.set_ylabel("max |x_hat - x| (model input units)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig
