"""Mass calibration error of TOF spectra: measured on real spectra, simulated for the synthetic TMAs.

A TOF instrument turns flight times into m/z through a calibration fitted per measurement; a residual error
of the time offset or of the flight length scales every m/z by the same factor, so the error is *relative*:
``m_observed = m (1 + eps)``, ``eps`` in ppm. MALDIquant aligns ("warps") spectra for exactly this reason.

Measurement (:func:`peak_offsets_ppm`, :func:`offset_summary`): on spectra that share one m/z axis, the
baseline (rolling minimum) is removed, the mean spectrum's strongest peaks are located, and every spectrum's
centroid of each such peak (window of one FWHM of the mean peak around its local maximum) is compared with the
mean spectrum's: ``offset[s, p] = (c_sp - c_p) / c_p * 1e6`` ppm. The per-spectrum median over peaks is the
spectrum's calibration error; what is left per peak is centroid noise and non-linear error.

On the 16 real linear-mode serum spectra ``fiedler2009_subset`` (8 patients x 2 technical replicates, 38 peaks
1-9.3 kDa; :data:`FIEDLER2009`): the spectra's calibration errors have sd 273 ppm (between the patients'
replicate means 273 ppm, between the two replicates of one patient 98 ppm per spectrum), the offsets are flat
in m/z (a linear fit ``a + b m`` has sd(b) 25 ppm per kDa against sd(a) 268 ppm, so the error is one factor per
spectrum), and the residual per peak is 36 ppm. The bins of that instrument are 102 ppm wide at 1 kDa and
32 ppm at 10 kDa, so the spectra are misaligned by 1-8 bins. Those spectra are linear-mode (resolving power
~400); the thesis's tissue peptide spectra are reflector-mode (R in the thousands), whose longer flight path
and narrower peaks make calibration errors smaller; we do not know by how much, so the generator takes the
error as a parameter (:class:`invertible.ims.synthetic.SyntheticConfig` ``tma_ppm_sd``, ``spot_ppm_sd``) and
its default is off.

Simulation: ``eps_t ~ N(0, tma_ppm_sd^2)`` per TMA (each TMA is measured and calibrated separately) moves the
isotope pattern of every peptide of that TMA to ``m (1 + eps_t)`` (:func:`scaled_positions`);
``eps_s ~ N(0, spot_ppm_sd^2)`` per spot resamples the spot's peak signal by linear interpolation so that
what sat at ``m`` sits at ``m (1 + eps_s)`` (:func:`shift_spectra_ppm`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FIEDLER2009", "offset_summary", "peak_offsets_ppm", "scaled_positions", "shift_spectra_ppm"]

#: The measurement of :func:`offset_summary` on ``../shared/data/maldi/fiedler2009_subset.npz`` (ppm; replicate
#: pairs (0, 1), (2, 3), ...; 38 peaks). ``tests/test_ims_calibration_error.py`` recomputes it when the file
#: is present.
FIEDLER2009 = {"spectrum_sd_ppm": 273.0, "between_pair_sd_ppm": 273.0, "within_pair_sd_ppm": 98.0,
               "residual_sd_ppm": 36.0, "n_peaks": 38}


def scaled_positions(mz: np.ndarray, ppm: float) -> np.ndarray:
    """Positions ``m (1 + ppm 1e-6)`` of features that a calibration error of ``ppm`` moves (any shape)."""
    return np.asarray(mz, np.float64) * (1.0 + 1e-6 * float(ppm))


def shift_spectra_ppm(mz: np.ndarray, spectra: np.ndarray, ppm: np.ndarray) -> np.ndarray:
    """Resample each spectrum so that its signal at ``m`` appears at ``m (1 + ppm_s 1e-6)``: ``out[s](m) =
    spectra[s](m / (1 + ppm_s 1e-6))`` by linear interpolation (flat beyond the axis ends). Shapes: ``mz``
    (d,), ``spectra`` (n, d), ``ppm`` (n,) -> (n, d) float64."""
    mz = np.asarray(mz, np.float64)
    X = np.asarray(spectra, np.float64)
    ppm = np.asarray(ppm, np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[1] != len(mz) or len(ppm) != len(X):
        raise ValueError(f"need spectra (n, {len(mz)}) and ppm (n,), got {X.shape} and {ppm.shape}")
    return np.stack([np.interp(mz / (1.0 + 1e-6 * e), mz, x) for e, x in zip(ppm, X, strict=True)])


def peak_offsets_ppm(mz: np.ndarray, spectra: np.ndarray, *, n_peaks: int = 40, baseline_window: int = 801,
                     smooth: int = 9, min_distance: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Calibration offsets of every spectrum at the ``n_peaks`` strongest peaks of the mean spectrum (module
    docstring): returns ``(offsets (n, p) in ppm, peak m/z (p,))``. ``baseline_window``, ``smooth`` and
    ``min_distance`` are in bins (rolling-minimum baseline, moving-average smoothing, least peak spacing)."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d
    from scipy.signal import find_peaks

    mz = np.asarray(mz, np.float64)
    X = np.asarray(spectra, np.float64)
    if X.ndim != 2 or X.shape[1] != len(mz) or len(X) < 2:
        raise ValueError(f"need at least 2 spectra shaped (n, {len(mz)}), got {X.shape}")
    if not 3 <= baseline_window <= X.shape[1]:
        raise ValueError(f"baseline_window must lie in [3, {X.shape[1]}] bins, got {baseline_window}")
    Y = uniform_filter1d(X - uniform_filter1d(minimum_filter1d(X, baseline_window, axis=1), baseline_window, axis=1),
                         smooth, axis=1)
    ref = Y.mean(0)
    found, props = find_peaks(ref, prominence=np.quantile(ref, 0.9), distance=min_distance)
    if len(found) == 0:
        raise ValueError("no peaks found in the mean spectrum")
    top = np.sort(found[np.argsort(-props["prominences"])[:n_peaks]])
    offsets = np.empty((len(X), len(top)))
    for p, i in enumerate(top):
        half = _half_width(ref, i)
        c0 = _centroid(mz, ref, i, half)
        offsets[:, p] = [(_centroid(mz, y, i, half) - c0) / c0 * 1e6 for y in Y]
    return offsets, mz[top]


def _half_width(y: np.ndarray, i: int) -> int:
    """Half the full width at half maximum of the peak at bin ``i`` (bins, at least 3)."""
    h, lo, hi = y[i] / 2, i, i
    while lo > 0 and y[lo] > h:
        lo -= 1
    while hi < len(y) - 1 and y[hi] > h:
        hi += 1
    return max(3, (hi - lo) // 2)


def _centroid(mz: np.ndarray, y: np.ndarray, i: int, half: int) -> float:
    """Intensity-weighted mean m/z over ``+-half`` bins around the local maximum near bin ``i`` (the window's
    minimum subtracted, so the flanks weigh nothing)."""
    lo = max(i - half, 0)
    j = lo + int(np.argmax(y[lo:i + half + 1]))
    lo, hi = max(j - half, 0), min(j + half + 1, len(y))
    w = y[lo:hi] - y[lo:hi].min()
    if w.sum() <= 0:
        return float(mz[j])
    return float((w * mz[lo:hi]).sum() / w.sum())


def offset_summary(offsets: np.ndarray, *, replicate_pairs: bool = False) -> dict[str, float]:
    """Summary of :func:`peak_offsets_ppm`: ``spectrum_sd_ppm`` (sd over spectra of the per-spectrum median
    offset), ``residual_sd_ppm`` (median over peaks of the robust sd, 1.4826 MAD, of what the spectrum's
    median leaves), and with ``replicate_pairs`` (spectra ``2i`` and ``2i + 1`` replicate one sample)
    ``within_pair_sd_ppm`` (``sqrt(mean(d^2) / 2)`` of the pair differences ``d``: per spectrum) and
    ``between_pair_sd_ppm`` (sd of the pair means)."""
    off = np.asarray(offsets, np.float64)
    if off.ndim != 2 or off.shape[0] < 2:
        raise ValueError(f"offsets must be (n >= 2, p), got {off.shape}")
    med = np.median(off, axis=1)
    res = off - med[:, None]
    mad = np.median(np.abs(res - np.median(res, axis=0)), axis=0)
    out = {"spectrum_sd_ppm": float(med.std(ddof=1)), "residual_sd_ppm": float(np.median(1.4826 * mad)),
           "n_peaks": int(off.shape[1])}
    if replicate_pairs:
        if len(med) % 2 or len(med) < 4:
            raise ValueError(f"replicate pairs need an even number >= 4 of spectra, got {len(med)}")
        d = med[0::2] - med[1::2]
        out["within_pair_sd_ppm"] = float(np.sqrt(np.mean(d * d) / 2))
        out["between_pair_sd_ppm"] = float(((med[0::2] + med[1::2]) / 2).std(ddof=1))
    return out
