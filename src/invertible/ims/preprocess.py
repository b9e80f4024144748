"""Spectrum preprocessing for tumour typing (thesis section 7.3.1; Behrmann et al. 2018, Bioinformatics).

Pipeline: m/z range crop -> optional baseline removal -> TIC normalisation (every spectrum divided by its
mean intensity, so that the spectra have total ion count ``d``) -> per-m/z standard-deviation scaling whose
scales are fitted on the training folds only (:class:`StdScaler`). All functions take ``(n, d)`` arrays
(numpy, possibly memory-mapped) and work in row chunks so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SCALER_NAME", "StdScaler", "crop", "estimate_baseline", "load_scaler", "preprocess", "remove_baseline",
           "save_scaler", "tic_normalize"]


def crop(mz: np.ndarray, spectra: np.ndarray, lo: float | None = None, hi: float | None = None):
    """Keep the bins with ``lo <= m/z <= hi``: returns ``(mz[k], spectra[:, k])`` (a view for memmaps)."""
    mz = np.asarray(mz)
    lo = -np.inf if lo is None else lo
    hi = np.inf if hi is None else hi
    if lo >= hi:
        raise ValueError(f"crop range must have lo < hi, got ({lo}, {hi})")
    idx = np.flatnonzero((mz >= lo) & (mz <= hi))
    if len(idx) < 2:
        raise ValueError(f"crop ({lo}, {hi}) keeps fewer than 2 bins of [{mz[0]:.2f}, {mz[-1]:.2f}]")
    sl = slice(idx[0], idx[-1] + 1)
    return mz[sl], spectra[:, sl]


def estimate_baseline(spectra: np.ndarray, window: int = 301) -> np.ndarray:
    """Baseline by a rolling minimum followed by a rolling mean of the same ``window`` (bins): (n, d)."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    if window < 3:
        raise ValueError(f"window must be >= 3 bins, got {window}")
    X = np.asarray(spectra, np.float32)
    return uniform_filter1d(minimum_filter1d(X, window, axis=-1), window, axis=-1)


def remove_baseline(spectra: np.ndarray, window: int = 301, chunk: int = 1024) -> np.ndarray:
    """Subtract :func:`estimate_baseline` and clip at zero; returns a new float32 (n, d) array. ``window`` (bins)
    must lie in ``[1, d]``: a wider rolling minimum is the spectrum's global minimum, not a baseline."""
    X = np.asarray(spectra)
    if X.ndim != 2 or not 1 <= int(window) <= X.shape[1]:
        raise ValueError(f"the baseline window must be between 1 and the number of bins ({X.shape[-1]}) of "
                         f"spectra shaped (n, d), got window {window} for shape {X.shape}")
    out = np.empty(X.shape, np.float32)
    for s in range(0, len(X), chunk):
        x = np.asarray(X[s:s + chunk], np.float32)
        out[s:s + chunk] = np.maximum(x - estimate_baseline(x, window), 0.0)
    return out


def tic_normalize(spectra: np.ndarray, chunk: int = 1024, out: np.ndarray | None = None) -> np.ndarray:
    """TIC normalisation ``x / mean(x)`` per spectrum (float32 (n, d)). All-zero spectra are a ValueError.
    ``out`` (e.g. a writable memmap of the same shape) receives the result; default a new array."""
    X = spectra
    if out is None:
        out = np.empty(X.shape, np.float32)
    elif out.shape != X.shape:
        raise ValueError(f"out has shape {out.shape}, expected {X.shape}")
    for s in range(0, len(X), chunk):
        x = np.asarray(X[s:s + chunk], np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("spectra contain NaN or inf")
        tic = x.mean(1, keepdims=True)
        if np.any(tic <= 0):
            bad = s + int(np.flatnonzero(tic[:, 0] <= 0)[0])
            raise ValueError(f"spectrum {bad} has no positive intensity; cannot TIC-normalise")
        out[s:s + chunk] = x / tic
    return out


@dataclass
class StdScaler:
    """Per-m/z standard-deviation scaling ``x_j / sd_j`` (no centring), fitted on training spectra only.

    ``sd_j`` is the standard deviation of bin ``j`` over the training spectra; bins with ``sd_j < eps * max``
    get scale 1 so constant bins are not blown up.
    """

    eps: float = 1e-6
    scale_: np.ndarray | None = None

    def fit(self, spectra: np.ndarray, chunk: int = 2048) -> StdScaler:
        X = spectra
        n = len(X)
        if n < 2:
            raise ValueError("StdScaler needs at least 2 training spectra")
        s1 = np.zeros(X.shape[1])
        s2 = np.zeros(X.shape[1])
        for s in range(0, n, chunk):
            x = np.asarray(X[s:s + chunk], np.float64)
            s1 += x.sum(0)
            s2 += (x * x).sum(0)
        var = np.maximum(s2 / n - (s1 / n) ** 2, 0.0) * n / (n - 1)
        sd = np.sqrt(var)
        sd[sd < self.eps * max(sd.max(), 1e-30)] = 1.0
        self.scale_ = sd.astype(np.float32)
        return self

    def transform(self, spectra: np.ndarray) -> np.ndarray:
        if self.scale_ is None:
            raise ValueError("StdScaler.transform called before fit")
        if spectra.shape[-1] != len(self.scale_):
            raise ValueError(f"expected {len(self.scale_)} bins, got {spectra.shape[-1]}")
        return (np.asarray(spectra, np.float32) / self.scale_).astype(np.float32)


def preprocess(mz: np.ndarray, spectra: np.ndarray, *, mz_range: tuple[float, float] | None = None,
               baseline_window: int | None = None, out: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Crop, optionally remove the baseline, TIC-normalise: returns ``(mz, X)`` with X float32 (n, d)
    (written into ``out`` when given). The fold-dependent :class:`StdScaler` is applied later, inside
    cross-validation."""
    if mz_range is not None:
        mz, spectra = crop(mz, spectra, *mz_range)
    if baseline_window:
        spectra = remove_baseline(spectra, baseline_window)
    return np.asarray(mz), tic_normalize(spectra, out=out)


SCALER_NAME = "scaler.safetensors"


def save_scaler(path, scaler: StdScaler, **settings) -> None:
    """Write a fitted :class:`StdScaler` (its ``scale_``) with the preprocessing ``settings`` that preceded it
    (e.g. ``baseline_window``, ``mz_range``) as a checkpoint of kind ``ims_scaler``
    (:func:`invertible.io.save_checkpoint`)."""
    import torch

    from invertible.io import save_checkpoint

    if scaler.scale_ is None:
        raise ValueError("save_scaler: the scaler is not fitted")
    save_checkpoint(path, {"scale": torch.from_numpy(np.asarray(scaler.scale_, np.float32))}, kind="ims_scaler",
                    config={"n_bins": int(len(scaler.scale_)), **settings})


def load_scaler(path) -> tuple[StdScaler, dict]:
    """The :class:`StdScaler` and preprocessing settings written by :func:`save_scaler`."""
    from invertible.io import load_checkpoint

    ck = load_checkpoint(path)
    if ck.kind != "ims_scaler" or "scale" not in ck.tensors:
        raise ValueError(f"{path}: not an IMS scaler (kind {ck.kind!r})")
    sc = StdScaler()
    sc.scale_ = ck.tensors["scale"].numpy().astype(np.float32)
    return sc, {k: v for k, v in ck.config.items() if k != "n_bins"}
