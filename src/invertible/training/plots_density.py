"""Figures for density models: 2-D data / density / samples (Fig. 5.2), image sample grids (Fig. 5.4) and
training curves. Matplotlib with the Agg backend; every function returns a ``Figure``."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["plot_density_2d", "plot_image_grid", "plot_training_curves", "density_grid"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@torch.no_grad()
def density_grid(model, lim: float = 4.5, n: int = 150, chunk: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grid (n*n, 2), p(grid) (n, n))`` of a 2-D model on ``[-lim, lim]^2`` with the honest (for 2-D: exact)
    estimator of :func:`invertible.logdet.evaluation_estimator`."""
    from invertible.logdet import evaluation_estimator, override_estimators

    p = next(model.parameters())
    ax = torch.linspace(-lim, lim, n, dtype=p.dtype, device=p.device)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    was = model.training
    model.eval()
    with override_estimators(model, evaluation_estimator(model.latent_dim, len(model.event_shape))):
        lp = torch.cat([model.log_prob(c) for c in torch.split(pts, chunk)])
    model.train(was)
    return pts, lp.exp().reshape(n, n).cpu()


def plot_density_2d(models: dict[str, Any], data: torch.Tensor, lim: float = 4.5, n_samples: int = 5000,
                    generator: torch.Generator | None = None, title: str | None = None, true_density=None):
    """One row: data histogram, then for each model its density heat-map and a histogram of its samples.

    Args:
        models: name -> 2-D DensityModel. data: ``(N, 2)`` samples of the data distribution.
        true_density: optional ``(n, n)`` array of the true density on the same grid (an extra panel).
    """
    plt = _plt()
    ncol = 1 + 2 * len(models) + (true_density is not None)
    fig, axes = plt.subplots(1, ncol, figsize=(2.6 * ncol, 2.8))
    axes = list(axes) if ncol > 1 else [axes]
    rng = [[-lim, lim], [-lim, lim]]
    d = data.detach().cpu().double().numpy()
    axes[0].hist2d(d[:, 0], d[:, 1], bins=100, range=rng, cmap="viridis")
    axes[0].set_title("data")
    i = 1
    if true_density is not None:
        axes[i].imshow(true_density, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
        axes[i].set_title("true density")
        i += 1
    for name, m in models.items():
        _, dens = density_grid(m, lim)
        axes[i].imshow(dens.numpy(), origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
        axes[i].set_title(f"{name}: density")
        s = m.sample(n_samples, generator=generator).detach().cpu().double().numpy()
        axes[i + 1].hist2d(s[:, 0], s[:, 1], bins=100, range=rng, cmap="viridis")
        axes[i + 1].set_title(f"{name}: samples")
        i += 2
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
        a.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _grid(images: torch.Tensor, ncol: int) -> torch.Tensor:
    """``(N, C, H, W)`` in [0, 1] -> one ``(H', W', C)`` mosaic."""
    x = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    nrow = math.ceil(n / ncol)
    canvas = torch.ones(c, nrow * (h + 1) + 1, ncol * (w + 1) + 1)
    for k in range(n):
        r, q = divmod(k, ncol)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[k]
    return canvas.permute(1, 2, 0)


def plot_image_grid(samples: torch.Tensor, data: torch.Tensor | None = None, ncol: int = 8, title: str | None = None):
    """Model samples (and, if given, data) as grids (Fig. 5.4). Inputs ``(N, C, H, W)`` in ``[0, 1]`` (floats)
    or uint8."""
    plt = _plt()
    panels = [("samples", samples)] + ([("data", data)] if data is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, (name, x) in zip(axes, panels, strict=True):
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        g = _grid(x, ncol)
        ax.imshow(g.squeeze(-1) if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(records: list[dict[str, Any]], ylabel: str = "NLL (nats)", key: str = "nll",
                         title: str | None = None, bits_per_dim: int | None = None):
    """Train NLL (per logged step) and validation NLL with +-2 standard errors, against the step.

    ``bits_per_dim=d``: the records are NLLs in nats per sample of ``d``-dimensional dequantized 8-bit images
    (``y = (x + u) / 256``); plot them in bits/dim, ``(nll + d log 256) / (d log 2)`` (Section 5.3)."""
    import math

    from invertible.data.dequantize import nats_to_bits_per_dim

    if bits_per_dim is not None:
        d = int(bits_per_dim)
        if d < 1:
            raise ValueError(f"bits_per_dim must be the data dimension (>= 1), got {bits_per_dim}")

        def conv(v):
            return float(nats_to_bits_per_dim(v, d))

        def conv_se(v):
            return v / (d * math.log(2))

        ylabel = "NLL (bits/dim)"
    else:
        def conv(v):
            return v

        def conv_se(v):
            return v

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    tr = [r for r in records if r.get("split") == "train" and r.get(key) is not None]
    va = [r for r in records if r.get("split") == "val" and r.get(key) is not None]
    if tr:
        ax.plot([r["step"] for r in tr], [conv(r[key]) for r in tr], lw=1, label="train (estimator value)")
    if va:
        se_key = f"{key}_se" if key != "nll" else "se"
        ax.errorbar([r["step"] for r in va], [conv(r[key]) for r in va],
                    yerr=[2 * conv_se(r.get(se_key) or 0.0) for r in va], fmt="o-", ms=3,
                    label="validation (honest)")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
