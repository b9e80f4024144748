"""Sensitivity maps of IMS classifiers (thesis Section 7.5, "Interpretation of models"; Behrmann et al. 2018b).

For a classifier ``f`` with logits ``z(x) in R^K`` and spectra ``x in R^d`` on a fixed m/z axis, the sensitivity
of class ``c`` at bin ``j`` is the input gradient of the class score, averaged over the spectra of that class:

    S_c(m_j) = (1 / |I_c|) sum_{s in I_c} d score_c(x_s) / d x_sj,     I_c = {s : y_s = c},

with ``score_c = z_c - (1/K) sum_k z_k`` (the centred logit: softmax is invariant to a common shift of the
logits, so this is the part of ``z_c`` the prediction depends on; for a linear model ``z = W x + b`` it is
``W_c - mean_k W_k``) or ``score_c = log p_c``. Because IMS features (peaks, isotope patterns) sit at fixed m/z,
averaging over spectra is meaningful (Section 7.5). Raw input gradients flip sign from bin to bin (the
derivative lobes of the conv filters); :func:`peak_sensitivity` turns them into the sensitivity to the amplitude
of a peak of the instrument's width, the quantity a peak list speaks about. The peaks that drive a class are
the largest local extrema of ``|S_c|`` (:func:`pick_peaks`); each is marked with the averagine isotope pattern
that a singly charged peptide at that m/z would have (:func:`isotope_marks`, Section 7.3.2), and scored by how
many of those isotope positions carry a sensitivity extremum of the same sign (``isotope_support``).

On TIC-normalised spectra these gradient maps also point at the background (the normalisation makes every
other bin anti-correlated with a class that raises a few peptides); :mod:`invertible.ims.attribution` gives the
attribution to the measured intensities (:func:`~invertible.ims.attribution.explain_measured`); :func:`explain`
averages an ensemble when given a sequence of models.

Shapes: ``X`` (n, d) as the model sees it, ``y`` (n,) int, maps (K, d).

References: Behrmann, Etmann, Boskamp, Casadonte, Kriegsmann, Maass (2018), "Deep learning for tumor
classification in imaging mass spectrometry", Bioinformatics 34(7); Simonyan et al. (2014) (saliency maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from invertible.ims.isotopes import isotope_pattern

__all__ = ["ISOTOPE_SPACING", "Peak", "SensitivityMap", "TARGETS", "build_map", "ensemble_map", "explain",
           "input_gradients", "isotope_marks", "map_peaks", "peak_sensitivity", "pick_peaks", "sensitivity_maps"]

TARGETS = ("logit", "log_prob")
_PROTON = 1.007276
#: mass difference of neighbouring isotope peaks of a peptide (13C - 12C), Da
ISOTOPE_SPACING = 1.00336


def _check(X, y=None) -> None:
    if not hasattr(X, "shape") or len(X.shape) != 2 or X.shape[0] == 0:
        raise ValueError(f"expected spectra of shape (n, d) with n >= 1, got {getattr(X, 'shape', type(X))}")
    if y is not None and len(y) != X.shape[0]:
        raise ValueError(f"expected one label per spectrum: {X.shape[0]} spectra, {len(y)} labels")


def input_gradients(model: nn.Module, X, target: np.ndarray | Sequence[int], *, score: str = "logit",
                    batch_size: int = 256) -> np.ndarray:
    """``d score_{t_s}(x_s) / d x_s`` for every spectrum ``s`` (eval mode: dropout off, BatchNorm running
    statistics), shape (n, d) float64. ``target`` (n,) the class of each row; ``score`` in :data:`TARGETS`."""
    _check(X, target)
    if score not in TARGETS:
        raise ValueError(f"score must be one of {', '.join(TARGETS)}, got {score!r}")
    target = np.asarray(target, np.int64)
    was = model.training
    model.eval()
    p = next(model.parameters())
    out = np.empty(X.shape, np.float64)
    try:
        for s in range(0, X.shape[0], batch_size):
            xb = torch.as_tensor(np.ascontiguousarray(X[s:s + batch_size]), device=p.device, dtype=p.dtype)
            xb.requires_grad_(True)
            with torch.enable_grad():
                z = model(xb)
                if not 0 <= target[s:s + batch_size].min() <= target[s:s + batch_size].max() < z.shape[1]:
                    raise ValueError(f"target classes must lie in [0, {z.shape[1]}), got {sorted(set(target))}")
                scores = torch.log_softmax(z, 1) if score == "log_prob" else z - z.mean(1, keepdim=True)
                t = torch.as_tensor(target[s:s + batch_size], device=p.device)
                (grad,) = torch.autograd.grad(scores.gather(1, t[:, None]).sum(), xb)
            out[s:s + len(t)] = grad.detach().double().cpu().numpy().reshape(len(t), -1)
    finally:
        model.train(was)
    return out


def sensitivity_maps(model: nn.Module, X, y, n_classes: int, *, score: str = "logit",
                     batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(S, counts)``: ``S[c]`` the mean input gradient of class ``c``'s score over the spectra of class ``c``
    (module docstring), shape (K, d); ``counts`` (K,) spectra per class (a class without spectra has ``S[c] = 0``)."""
    y = np.asarray(y, np.int64)
    grads = input_gradients(model, X, y, score=score, batch_size=batch_size)
    maps = np.zeros((n_classes, grads.shape[1]))
    counts = np.bincount(y, minlength=n_classes)
    for c in range(n_classes):
        if counts[c]:
            maps[c] = grads[y == c].mean(0)
    return maps, counts


def ensemble_map(member_maps: np.ndarray) -> np.ndarray:
    """``(1/M) sum_m S_m / rms(S_m)`` of member maps (M, K, d): each member scaled to unit RMS over all its
    classes and bins (one vote per network), then averaged -> (K, d). A member that is zero everywhere is a
    ValueError (it cannot vote)."""
    S = np.asarray(member_maps, np.float64)
    if S.ndim != 3 or len(S) == 0:
        raise ValueError(f"member maps must be (M, K, d) with M >= 1, got shape {S.shape}")
    rms = np.sqrt(np.mean(S ** 2, axis=(1, 2)))
    if np.any(rms == 0):
        raise ValueError(f"member {int(np.flatnonzero(rms == 0)[0])} has an all-zero map")
    return np.mean(S / rms[:, None, None], 0)


def peak_sensitivity(mz: np.ndarray, maps: np.ndarray, resolving_power: float) -> np.ndarray:
    """Sensitivity to the *amplitude of a peak* at each m/z: the maps (K, d) correlated with a Gaussian peak of
    FWHM ``m / resolving_power`` (the instrument's peak shape, Section 7.3.1),

        P_c(m) = sum_j S_c(m_j) exp(-(m_j - m)^2 / (2 sigma(m)^2)),   sigma(m) = m / (R 2 sqrt(2 ln 2)),

    up to normalization (the kernel sums to one): the derivative of the class score along "add a peak at m".
    It removes the bin-to-bin sign flips of raw input gradients (a conv filter's derivative lobes). The width in
    bins follows the axis (piecewise, on 32 segments)."""
    from scipy.ndimage import gaussian_filter1d

    mz, maps = np.asarray(mz, np.float64), np.atleast_2d(np.asarray(maps, np.float64))
    if not resolving_power > 0:
        raise ValueError(f"resolving_power must be positive, got {resolving_power}")
    width = np.gradient(mz)
    sigma_bins = mz / resolving_power / (2 * np.sqrt(2 * np.log(2))) / width
    out = np.empty_like(maps)
    edges = np.linspace(0, len(mz), min(32, len(mz)) + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi > lo:
            sig = float(np.median(sigma_bins[lo:hi]))
            out[:, lo:hi] = gaussian_filter1d(maps, sig, axis=1, mode="constant")[:, lo:hi]
    return out


def pick_peaks(mz: np.ndarray, saliency: np.ndarray, *, top: int = 10, min_separation: float = 0.5) -> np.ndarray:
    """Bins of the ``top`` largest local maxima of ``|saliency|``, at least ``min_separation`` Da apart,
    largest first, shape (<= top,)."""
    from scipy.signal import find_peaks

    mz, s = np.asarray(mz, np.float64), np.abs(np.asarray(saliency, np.float64))
    if mz.shape != s.shape or mz.ndim != 1:
        raise ValueError(f"mz and saliency must be 1-d of the same length, got {mz.shape} and {s.shape}")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    distance = max(1, int(round(min_separation / float(np.mean(np.diff(mz))))))
    bins, _ = find_peaks(np.concatenate([[-np.inf], s, [-np.inf]]), distance=distance)
    bins = bins - 1
    return bins[np.argsort(-s[bins], kind="stable")][:top]


def isotope_marks(peak_mz: float, *, t_iso: float = 0.005, min_abundance: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Isotope positions (m/z) and relative abundances of the averagine pattern of a singly charged peptide
    whose monoisotopic peak is at ``peak_mz`` (Section 7.3.2), keeping peaks of at least ``min_abundance`` times
    the largest."""
    peaks, ab = isotope_pattern(float(peak_mz) - _PROTON, t_iso=t_iso)
    peaks = peaks - peaks[0] + float(peak_mz)  # the averagine mass is an average: anchor the monoisotopic peak
    keep = ab >= min_abundance * ab.max()
    return peaks[keep], ab[keep] / ab.max()


@dataclass(frozen=True)
class Peak:
    """A sensitivity peak: its bin and m/z, the (signed) sensitivity, the isotope positions of the pattern it
    would start, and how many of those (monoisotopic one included) carry an extremum of the same sign."""

    bin: int
    mz: float
    value: float
    isotopes: tuple[float, ...]
    isotope_support: int
    #: same-sign extrema one isotope spacing below and above the peak (0, 1 or 2): the peak may be any isotope
    isotope_neighbours: int = 0


@dataclass
class SensitivityMap:
    """Per-class sensitivity maps on an m/z axis and the peaks that drive each class."""

    mz: np.ndarray  # (d,)
    maps: np.ndarray  # (K, d)
    counts: np.ndarray  # (K,)
    classes: list[str]
    score: str
    peaks: list[list[Peak]] = field(default_factory=list)
    raw: np.ndarray | None = None  # (K, d) the plain averaged gradients when ``maps`` are peak sensitivities
    resolving_power: float | None = None
    method: str = "gradient"  # "gradient": input gradients; "measured": attribution to the measured intensities
    members: int = 1  # networks averaged (an ensemble when > 1)

    def table(self) -> str:
        """Markdown: the peaks of every class, largest first."""
        lines = ["| class | rank | m/z | sensitivity | isotope pattern (m/z) | isotopes supported | +-1 isotope |",
                 "|---|---|---|---|---|---|---|"]
        for c, peaks in enumerate(self.peaks):
            for r, p in enumerate(peaks, 1):
                iso = ", ".join(f"{m:.2f}" for m in p.isotopes)
                lines.append(f"| {self.classes[c]} | {r} | {p.mz:.2f} | {p.value:+.3g} | {iso} | "
                             f"{p.isotope_support}/{len(p.isotopes)} | {p.isotope_neighbours}/2 |")
        return "\n".join(lines)


def _support(mz: np.ndarray, s: np.ndarray, value: float, isotopes: np.ndarray, tol: float,
             min_ratio: float = 0.25) -> int:
    """Isotope positions with a local extremum of ``s`` of the sign of ``value`` and at least ``min_ratio``
    times its size within ``tol`` Da."""
    sign = np.sign(value)
    n = 0
    for m in isotopes:
        lo, hi = np.searchsorted(mz, [m - tol, m + tol])
        if hi - lo < 1 or lo == 0 or hi >= len(mz):
            continue
        seg = sign * s[lo - 1:hi + 1]
        inner = np.arange(1, len(seg) - 1)
        ext = (seg[inner] >= seg[inner - 1]) & (seg[inner] >= seg[inner + 1])
        if np.any(ext & (seg[inner] >= min_ratio * abs(value))):
            n += 1
    return n


def explain(model: nn.Module | Sequence[nn.Module], X, y, mz: np.ndarray, classes: Sequence[str] | None = None, *,
            top: int = 10, score: str = "logit", resolving_power: float | None = 3000.0, min_separation: float = 0.5,
            isotope_tol: float = 0.15, batch_size: int = 256) -> SensitivityMap:
    """Sensitivity maps per class (:func:`sensitivity_maps`), as peak sensitivities (:func:`peak_sensitivity`)
    unless ``resolving_power`` is None, their ``top`` peaks (:func:`pick_peaks`) and the isotope marks of each
    (:func:`isotope_marks`; an isotope is supported by a same-sign extremum of >= 1/4 the peak's size within
    ``isotope_tol`` Da). ``model`` may be a sequence of networks (an ensemble): their maps are averaged, each
    scaled to unit RMS (:func:`ensemble_map`). The attribution to the measured intensities is
    :func:`invertible.ims.attribution.explain_measured`."""
    _check(X, y)
    mz = np.asarray(mz, np.float64)
    if X.shape[1] != len(mz):
        raise ValueError(f"the spectra have {X.shape[1]} bins but the m/z axis {len(mz)}")
    models = [model] if isinstance(model, nn.Module) else list(model)
    if not models:
        raise ValueError("need at least one model")
    y = np.asarray(y, np.int64)
    n_classes = len(classes) if classes else int(y.max()) + 1
    classes = list(classes) if classes else [str(c) for c in range(n_classes)]
    members = [sensitivity_maps(m, X, y, n_classes, score=score, batch_size=batch_size) for m in models]
    raw = members[0][0] if len(models) == 1 else ensemble_map(np.stack([m[0] for m in members]))
    return build_map(mz, raw, members[0][1], classes, score=score, resolving_power=resolving_power, top=top,
                     min_separation=min_separation, isotope_tol=isotope_tol, method="gradient", members=len(models))


def build_map(mz: np.ndarray, raw: np.ndarray, counts: np.ndarray, classes: Sequence[str], *, score: str,
              resolving_power: float | None, top: int = 10, min_separation: float = 0.5, isotope_tol: float = 0.15,
              method: str = "gradient", members: int = 1) -> SensitivityMap:
    """A :class:`SensitivityMap` from averaged class maps ``raw`` (K, d): as peak sensitivities unless
    ``resolving_power`` is None, with the ``top`` peaks of every class (:func:`map_peaks`)."""
    maps = raw if resolving_power is None else peak_sensitivity(mz, raw, resolving_power)
    result = SensitivityMap(mz=mz, maps=maps, counts=counts, classes=list(classes), score=score, raw=raw,
                            resolving_power=resolving_power, method=method, members=members)
    for c in range(len(classes)):
        result.peaks.append(map_peaks(mz, maps[c], top=top, min_separation=min_separation, isotope_tol=isotope_tol))
    return result


def map_peaks(mz: np.ndarray, saliency: np.ndarray, *, top: int = 10, min_separation: float = 0.5,
              isotope_tol: float = 0.15) -> list[Peak]:
    """The ``top`` peaks of one map (d,) (:func:`pick_peaks`) with their isotope marks and support."""
    peaks = []
    for b in pick_peaks(mz, saliency, top=top, min_separation=min_separation):
        iso, _ = isotope_marks(mz[b])
        value = float(saliency[b])
        spacing = float(iso[1] - iso[0]) if len(iso) > 1 else ISOTOPE_SPACING
        neighbours = np.array([mz[b] - spacing, mz[b] + spacing])
        peaks.append(Peak(int(b), float(mz[b]), value, tuple(float(m) for m in iso),
                          _support(mz, saliency, value, iso, isotope_tol),
                          _support(mz, saliency, value, neighbours, isotope_tol)))
    return peaks
