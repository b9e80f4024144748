"""Attribution of an IMS classifier to the *measured* intensities, through TIC normalisation, over an ensemble.

Section 7.5 explains a classifier by its input gradients averaged over the spectra of a class
(:mod:`invertible.ims.explain`). On TIC-normalised spectra ``x_s = r_s / T(r_s)``, ``T(r) = mean_j r_j``, those
maps inherit a property of the normalisation, not of the tissue: when a class raises a few peptides, ``T``
rises and *every other* normalised intensity of that class falls, so the whole background (every non-planted bin,
with its small variance) separates the classes and a network may read it. The gradient then points at the
background as much as at the cause (measured on the synthetic TMAs of ``sec7.5``: the univariate class
difference of background bins reaches Cohen's ``d`` ~ 3, that of the planted peaks ~ 2.5).

The attribution here asks the question in the units the instrument measured. With ``F(r) = score_c(f(T-normalised
r / sd))`` (the whole pipeline: TIC, the m/z scaler, the network; ``score_c`` the centred logit) it is the
integrated gradient (Sundararajan et al. 2017) of the class score along the straight path from a reference
measured spectrum ``r_ref`` to ``r_s``,

    a_sj = (r_sj - r_ref_j) int_0^1 dF/dr_j (r_ref + alpha (r_s - r_ref)) d alpha,
    A_c(m_j) = (1/|I_c|) sum_{s in I_c} a_sj,

(``steps = 1``: gradient x input at ``r_s``). It is invariant to a rescaling of the bins (the scaler), sums to
``F(r_s) - F(r_ref)`` (completeness), and credits bin ``j`` only where the measured intensity differs from the
reference: the background's raw counts do not depend on the class, so its attribution averages out, while its
TIC-induced shift in ``x`` is charged to the peptides that caused it. The reference of class ``c`` is the mean
measured spectrum of the *other* classes (:func:`contrast_references`): "why this class and not the others".
From the overall mean the path of a confidently classified class runs where the network is already saturated,
and that class's map is weak (measured: sec7.5 seeds 101 and 102). For a linear ``f`` on unnormalised spectra
(``T = 1``) ``A_c = (W_c - mean_k W_k) * (mean_{I_c} r - r_ref)``.

Single networks differ in which of the correlated bins they read (isotopes of one peptide, the background), so
the maps of an ensemble of independently trained networks are averaged, each scaled to unit RMS first so that
every member has one vote (:func:`ensemble_map`). :func:`pattern_scores` sums a map along the averagine isotope
pattern anchored at each m/z (Section 7.3.2: IsotopeNet's receptive field is sized for such patterns), so an
isotope pattern can be tested as a unit; ``spacing`` other than :data:`~invertible.ims.explain.ISOTOPE_SPACING`
gives the control template with misplaced isotopes. :func:`bootstrap_class_maps` resamples cores (patients)
within each class for the uncertainty of anything computed from the class maps.

Shapes: ``X`` (n, d) TIC-normalised spectra, ``tic`` (n,), ``y`` (n,), ``groups`` (n,), maps (K, d), member maps
(M, K, d).

References: Simonyan et al. (2014) (saliency maps); Shrikumar et al. (2016) and Ancona et al. (2018)
(gradient x input); Deininger et al. (2011), J. Proteome Res. (TIC normalisation artefacts in IMS).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from invertible.ims.explain import ISOTOPE_SPACING, SensitivityMap, build_map, ensemble_map, isotope_marks

__all__ = ["bootstrap_class_maps", "class_maps", "contrast_references", "ensemble_attributions", "ensemble_map",
           "explain_measured", "measured_attributions", "pattern_scores", "spectrum_tic"]


def measured_attributions(model: nn.Module, X, tic, target, *, scale, reference: np.ndarray | None = None,
                          steps: int = 1, batch_size: int = 256) -> np.ndarray:
    """``a_sj = dF/dr_j (r_s) (r_sj - reference_j)`` (module docstring) for the measured spectra
    ``r_s = X_s * tic_s``, ``F(r) = z_t - mean_k z_k`` of ``model((r / mean_j r) / scale)``; ``reference``
    (d,) defaults to the mean of ``r``. ``X`` (n, d) TIC-normalised, ``tic`` (n,) > 0, ``target`` (n,) the class
    of each row, ``scale`` (d,) the scaler's ``sd`` (ones for none). Eval mode. Returns (n, d) float64.

    ``steps > 1``: integrated gradients (Sundararajan et al. 2017) along the straight path from the reference,
    ``dF/dr`` averaged at ``ref + (k - 1/2)/steps (r - ref)``, k = 1..steps (midpoint rule), so that the
    attributions of a spectrum sum to ``F(r) - F(ref)`` up to the quadrature error (completeness) and a
    saturated network (a confident class whose gradient at ``r`` has vanished) still credits its evidence."""
    X = np.asarray(X)
    tic = np.asarray(tic, np.float64)
    target = np.asarray(target, np.int64)
    if X.ndim != 2 or len(X) == 0 or tic.shape != (len(X),) or target.shape != (len(X),):
        raise ValueError(f"expected X (n, d), tic (n,) and target (n,), got {X.shape}, {tic.shape}, {target.shape}")
    if not np.all(tic > 0):
        raise ValueError("tic must be positive (the mean intensity of each spectrum before TIC normalisation)")
    scale = np.asarray(scale, np.float64)
    if scale.shape != (X.shape[1],):
        raise ValueError(f"scale must have one entry per bin ({X.shape[1]}), got shape {scale.shape}")
    R = np.asarray(X, np.float64) * tic[:, None]
    ref = R.mean(0) if reference is None else np.asarray(reference, np.float64)
    if ref.ndim == 2:  # one reference per class: row t for the spectra of target t
        if ref.shape[1] != X.shape[1] or not 0 <= target.min() <= target.max() < len(ref):
            raise ValueError(f"a per-class reference must be (K, {X.shape[1]}) with a row for every target, got "
                             f"shape {ref.shape} for targets up to {target.max()}")
        ref = ref[target]
    elif ref.shape != (X.shape[1],):
        raise ValueError(f"reference must have one entry per bin ({X.shape[1]}), got shape {ref.shape}")
    else:
        ref = np.broadcast_to(ref, R.shape)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    was = model.training
    model.eval()
    p = next(model.parameters())
    inv_scale = torch.as_tensor(1.0 / scale, device=p.device, dtype=p.dtype)
    out = np.empty(R.shape, np.float64)
    try:
        for s in range(0, len(R), batch_size):
            r_end = torch.as_tensor(R[s:s + batch_size], device=p.device, dtype=p.dtype)
            ref_t = torch.as_tensor(np.ascontiguousarray(ref[s:s + batch_size]), device=p.device, dtype=p.dtype)
            t = torch.as_tensor(target[s:s + batch_size], device=p.device)
            total = torch.zeros_like(r_end)
            for k in range(int(steps)):
                alpha = 1.0 if steps == 1 else (k + 0.5) / steps
                rb = (ref_t + alpha * (r_end - ref_t)).requires_grad_(True)
                with torch.enable_grad():
                    z = model(rb / rb.mean(1, keepdim=True) * inv_scale)
                    if not 0 <= int(t.min()) <= int(t.max()) < z.shape[1]:
                        raise ValueError(f"target classes must lie in [0, {z.shape[1]}), got {sorted(set(target))}")
                    (grad,) = torch.autograd.grad((z - z.mean(1, keepdim=True)).gather(1, t[:, None]).sum(), rb)
                total += grad.detach()
            out[s:s + len(t)] = (total / steps).double().cpu().numpy() * (R[s:s + len(t)] - ref[s:s + len(t)])
    finally:
        model.train(was)
    return out


def ensemble_attributions(models: nn.Module | Sequence[nn.Module], X, tic, y, n_classes: int, *, scale,
                          reference: np.ndarray | None = None, steps: int = 1,
                          batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(A, member_maps)``: the per-spectrum attributions of an ensemble, ``A = (1/M) sum_m a^(m) / rms_m``
    (n, d), where ``a^(m)`` is :func:`measured_attributions` of member ``m`` (targets ``y``) and ``rms_m`` the RMS
    of its class maps, so ``class_maps(A) == ensemble_map(member_maps)``; ``member_maps`` (M, K, d) unscaled."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models:
        raise ValueError("need at least one model")
    A = np.zeros(np.shape(X))
    members = []
    for model in models:
        a = measured_attributions(model, X, tic, y, scale=scale, reference=reference, steps=steps,
                                  batch_size=batch_size)
        m = class_maps(a, y, n_classes)
        rms = float(np.sqrt(np.mean(m ** 2)))
        if rms == 0:
            raise ValueError("a member's attribution map is zero everywhere")
        A += a / rms / len(models)
        members.append(m)
    return A, np.stack(members)


def contrast_references(R: np.ndarray, y, n_classes: int) -> np.ndarray:
    """(K, d): row ``c`` the mean of the spectra ``R`` (n, d) *not* of class ``c``, the reference of "why is this
    spectrum of class c and not of another": with it the attributions of a class-c spectrum sum (integrated
    gradients) to the whole score difference to the other classes' average spectrum."""
    R, y = np.asarray(R, np.float64), np.asarray(y, np.int64)
    out = np.empty((n_classes, R.shape[1]))
    for c in range(n_classes):
        if not np.any(y != c):
            raise ValueError(f"class {c} is the only class present: no other spectra to contrast it with")
        out[c] = R[y != c].mean(0)
    return out


def class_maps(A: np.ndarray, y, n_classes: int) -> np.ndarray:
    """Mean of the rows of ``A`` (n, d) over each class: (K, d); a class without rows gets zeros."""
    y = np.asarray(y, np.int64)
    out = np.zeros((n_classes, A.shape[1]))
    for c in range(n_classes):
        if np.any(y == c):
            out[c] = A[y == c].mean(0)
    return out


def bootstrap_class_maps(A: np.ndarray, y, groups, n_classes: int, *, n_boot: int = 200,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """Class maps of ``n_boot`` resamples: within every class, its groups (cores, i.e. patients) are drawn with
    replacement and the rows of the drawn groups averaged. ``A`` (n, d), ``y`` and ``groups`` (n,) -> (n_boot,
    K, d). Spectra of one core are not independent, so cores are the unit of resampling."""
    rng = rng or np.random.default_rng(0)
    y, groups = np.asarray(y, np.int64), np.asarray(groups)
    if len(y) != len(A) or len(groups) != len(A):
        raise ValueError(f"A, y and groups must have one row each, got {len(A)}, {len(y)}, {len(groups)}")
    out = np.zeros((n_boot, n_classes, A.shape[1]))
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        if len(rows) == 0:
            continue
        ids, inv = np.unique(groups[rows], return_inverse=True)
        sums = np.zeros((len(ids), A.shape[1]))
        np.add.at(sums, inv, A[rows])
        counts = np.bincount(inv, minlength=len(ids)).astype(np.float64)
        for b in range(n_boot):
            pick = rng.integers(0, len(ids), len(ids))
            out[b, c] = sums[pick].sum(0) / counts[pick].sum()
    return out


def pattern_scores(mz: np.ndarray, maps: np.ndarray, *, t_iso: float = 0.005, min_abundance: float = 0.1,
                   spacing: float = ISOTOPE_SPACING, segments: int = 16) -> np.ndarray:
    """The map summed along the averagine pattern anchored at every m/z (monoisotopic peak there):

        P_c(m) = sum_i w_i S_c(m + i * spacing),   w_i = abundance_i / sum_k abundance_k,

    over the isotopes of at least ``min_abundance`` of the largest (:func:`~invertible.ims.explain.isotope_marks`,
    their offsets rescaled to ``spacing``), linearly interpolated, zero beyond the axis. The pattern's shape
    follows the mass on ``segments`` pieces of the axis. ``maps`` (K, d) -> (K, d)."""
    mz, S = np.asarray(mz, np.float64), np.atleast_2d(np.asarray(maps, np.float64))
    if S.shape[1] != len(mz) or mz.ndim != 1:
        raise ValueError(f"maps must be (K, {len(mz)}) on the m/z axis, got {S.shape}")
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    out = np.zeros_like(S)
    edges = np.linspace(0, len(mz), min(segments, len(mz)) + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        iso, ab = isotope_marks(float(mz[(lo + hi) // 2]), t_iso=t_iso, min_abundance=min_abundance)
        offsets = np.arange(len(iso)) * spacing
        w = ab / ab.sum()
        for c in range(len(S)):
            for o, a in zip(offsets, w, strict=True):
                out[c, lo:hi] += a * np.interp(mz[lo:hi] + o, mz, S[c], left=0.0, right=0.0)
    return out


def spectrum_tic(imzml, annotations, *, mz_range: tuple[float, float] | None = None,
                 baseline_window: int | None = None) -> np.ndarray:
    """The TIC factor ``mean_j r_j`` of every annotated spectrum after baseline removal and cropping, in the row
    order of :func:`~invertible.ims.evaluate.load_dataset` (whose ``X`` is ``r / tic``), shape (n,)."""
    from invertible.ims.annotations import align_annotations, read_annotations
    from invertible.ims.imzml import read_imzml
    from invertible.ims.preprocess import crop, remove_baseline

    ann = read_annotations(annotations)
    data = read_imzml(imzml, mz_range=mz_range)
    rows = np.sort(align_annotations(data.coordinates, ann), kind="stable")
    mz, spectra = data.mz, data.spectra
    out = np.empty(len(rows))
    for s in range(0, len(rows), 1024):
        chunk = np.asarray(spectra[rows[s:s + 1024]], np.float32)
        if mz_range is not None:
            _, chunk = crop(mz, chunk, *mz_range)
        if baseline_window:
            chunk = remove_baseline(chunk, baseline_window)
        out[s:s + 1024] = np.asarray(chunk, np.float64).mean(1)
    return out


def explain_measured(models: nn.Module | Sequence[nn.Module], X, tic, y, mz: np.ndarray,
                     classes: Sequence[str] | None = None, *, scale, reference: np.ndarray | None = None,
                     steps: int = 8, top: int = 10, resolving_power: float | None = 3000.0,
                     min_separation: float = 0.5, isotope_tol: float = 0.15,
                     batch_size: int = 256) -> SensitivityMap:
    """:func:`~invertible.ims.explain.explain` with the attribution to the measured intensities: the class maps
    of :func:`ensemble_attributions` (integrated gradients with ``steps``, the centred logit), as peak
    sensitivities, with their peaks. ``X`` (n, d) TIC-normalised spectra *before* the scaler, ``tic`` (n,),
    ``scale`` (d,) the scaler's ``sd``; ``reference`` (d,) or (K, d), by default :func:`contrast_references` of
    these spectra."""
    X = np.asarray(X)
    mz = np.asarray(mz, np.float64)
    if X.ndim != 2 or X.shape[1] != len(mz):
        raise ValueError(f"the spectra must be (n, {len(mz)}) on the m/z axis, got shape {X.shape}")
    y = np.asarray(y, np.int64)
    n_classes = len(classes) if classes else int(y.max()) + 1
    classes = list(classes) if classes else [str(c) for c in range(n_classes)]
    models = [models] if isinstance(models, nn.Module) else list(models)
    if reference is None:
        reference = contrast_references(np.asarray(X, np.float64) * np.asarray(tic, np.float64)[:, None], y,
                                        n_classes)
    A, _ = ensemble_attributions(models, X, tic, y, n_classes, scale=scale, reference=reference, steps=steps,
                                 batch_size=batch_size)
    return build_map(mz, class_maps(A, y, n_classes), np.bincount(y, minlength=n_classes), classes, score="logit",
                     resolving_power=resolving_power, top=top, min_separation=min_separation,
                     isotope_tol=isotope_tol, method="measured", members=len(models))
