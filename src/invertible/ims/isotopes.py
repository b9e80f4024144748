"""Isotope-pattern design of IsotopeNet (thesis section 7.3.2, Fig. 7.3 and 7.4).

The averagine model (Senko et al. 1995) describes a peptide of monoisotopic-ish mass ``M`` as ``M / 111.1254``
copies of an average amino acid C4.9384 H7.7583 N1.3577 O1.4773 S0.0417. We round the element counts to
integers (hydrogen absorbs the remaining mass), compute the isotopic fine structure with BRAIN
(``brain-isotopic-distribution``), drop isotopes whose abundance is below ``t_iso = 0.005`` of the total, and
convolve every remaining peak with a Gaussian of FWHM ``m / R`` (resolving power ``R``). The number of m/z bins
that the broadened pattern covers (above ``t_iso`` of its maximum) on a given, non-equidistant m/z axis is the
blue curve of Fig. 7.3; the receptive field of a conv stack is its red line. The average bin width gives the
stride (section 7.3.2: 0.163 Da per bin, 6.14 bins per Da, stride 5 chosen slightly below 6).

References: Senko, Beu, McLafferty (1995), J. Am. Soc. Mass Spectrom. 6:229; Dittwald et al. (2014), BRAIN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AVERAGINE",
    "averagine_formula",
    "isotope_pattern",
    "carbon_isotope_pattern",
    "envelope_span",
    "pattern_bins",
    "receptive_field",
    "StrideSuggestion",
    "suggest_stride",
    "ISOTOPENET_CONVS",
]

#: Elements of one averagine residue and its average mass (Senko et al. 1995).
AVERAGINE: dict[str, float] = {"C": 4.9384, "H": 7.7583, "N": 1.3577, "O": 1.4773, "S": 0.0417}
AVERAGINE_MASS = 111.1254
_H_MASS = 1.007825
_PROTON = 1.007276

#: (kernel, stride) of every convolution of IsotopeNet on the main path (Table 7.2): residual layers of
#: depth 2 whose second conv carries the layer's stride (1, 5, 1, 3).
ISOTOPENET_CONVS: tuple[tuple[int, int], ...] = ((3, 1), (3, 1), (3, 1), (3, 5), (3, 1), (3, 1), (3, 1), (3, 3))


def averagine_formula(mass: float) -> dict[str, int]:
    """Integer element counts of an averagine peptide of (neutral, average) ``mass`` in Da.

    ``n = mass / 111.1254`` residues; C, N, O, S are rounded; H takes up the mass left over so the formula's
    mass stays close to ``mass``. Raises ``ValueError`` for a mass below one residue.
    """
    if not np.isfinite(mass) or mass < AVERAGINE_MASS:
        raise ValueError(f"mass must be a finite number >= {AVERAGINE_MASS} Da, got {mass}")
    n = mass / AVERAGINE_MASS
    counts = {el: int(round(n * v)) for el, v in AVERAGINE.items() if el != "H"}
    avg_mass = {"C": 12.0107, "N": 14.0067, "O": 15.9994, "S": 32.065}
    heavy = sum(avg_mass[el] * c for el, c in counts.items())
    counts["H"] = max(1, int(round((mass - heavy) / 1.00794)))
    return {el: counts[el] for el in ("C", "H", "N", "O", "S") if counts[el] > 0}


def isotope_pattern(mass: float, *, t_iso: float = 0.005, charge: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Isotope peaks of the averagine peptide of ``mass``: m/z (k,) and relative abundance (k,) summing to 1.

    Peaks with abundance below ``t_iso`` (of the total) are dropped, as in section 7.3.2.
    """
    from brainpy import isotopic_variants

    if not 0 <= t_iso < 1:
        raise ValueError(f"t_iso must lie in [0, 1), got {t_iso}")
    peaks = isotopic_variants(averagine_formula(mass), npeaks=None, charge=charge)
    mz = np.asarray([p.mz for p in peaks], np.float64)
    ab = np.asarray([p.intensity for p in peaks], np.float64)
    ab /= ab.sum()
    keep = ab >= t_iso
    return mz[keep], ab[keep] / ab[keep].sum()


#: 13C - 12C mass difference (Da) and the natural abundance of 13C
C13_SHIFT, C13_ABUNDANCE = 1.003355, 0.0107


def carbon_isotope_pattern(mass: float, *, t_iso: float = 0.005, charge: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The thesis's own isotope model (section 7.3.2): a binomial ("Bernoulli") distribution of 13C over the
    averagine peptide's ``n_C`` carbon atoms, ``P(k) = C(n_C, k) 0.0107^k 0.9893^(n_C - k)``, peaks ``1.003355``
    Da apart from the monoisotopic peak; isotopes below ``t_iso`` are dropped. Returns m/z (k,) and abundances
    (k,) summing to 1. Unlike :func:`isotope_pattern` it ignores H, N, O and S isotopes (a narrower envelope)."""
    from scipy.stats import binom

    if not 0 <= t_iso < 1:
        raise ValueError(f"t_iso must lie in [0, 1), got {t_iso}")
    n_c = averagine_formula(mass)["C"]
    mono = isotope_pattern(mass, t_iso=0.0, charge=charge)[0][0]
    k = np.arange(n_c + 1)
    ab = binom.pmf(k, n_c, C13_ABUNDANCE)
    keep = ab >= t_iso
    return mono + C13_SHIFT * k[keep] / charge, ab[keep] / ab[keep].sum()


def _broadened(mz_axis: np.ndarray, peaks: np.ndarray, ab: np.ndarray, resolving_power: float,
               fixed_fwhm: float | None = None) -> np.ndarray:
    fwhm = peaks / resolving_power if fixed_fwhm is None else np.full(len(peaks), fixed_fwhm)
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    lo, hi = np.searchsorted(mz_axis, [peaks[0] - 6 * sigma[0], peaks[-1] + 6 * sigma[-1]])
    window = mz_axis[lo:hi]
    prof = (ab[:, None] * np.exp(-0.5 * ((window[None] - peaks[:, None]) / sigma[:, None]) ** 2)).sum(0)
    out = np.zeros(len(mz_axis))
    out[lo:hi] = prof
    return out


def pattern_bins(
    mz_axis: np.ndarray,
    masses: Sequence[float] | np.ndarray,
    *,
    t_iso: float = 0.005,
    resolving_power: float = 3000.0,
    reference_mz: float | None = None,
    peak_fwhm: float | None = None,
    isotopes: str = "averagine",
) -> np.ndarray:
    """Number of bins of ``mz_axis`` covered by each averagine isotope pattern (Fig. 7.3, blue).

    For each mass the pattern (peaks >= ``t_iso``, singly charged) is broadened by Gaussians of FWHM
    ``m / R(m)`` and evaluated on the axis. Peak model: ``reference_mz=None`` keeps the resolving power
    constant, ``R(m) = resolving_power``; a ``reference_mz`` uses the TOF law of a constant peak width in
    flight time (``t ~ sqrt(m)``, so ``FWHM_m = 2 m dt / t ~ sqrt(m)``): ``R(m) = resolving_power *
    sqrt(m / reference_mz)``, i.e. ``resolving_power`` at ``reference_mz`` and a peak width constant in bins
    of a TOF axis (:mod:`invertible.ims.tof`); ``peak_fwhm`` (Da) instead convolves every peak with one fixed
    Gaussian filter, as the thesis words it. ``isotopes``: ``"averagine"`` (BRAIN's fine structure of all
    elements, :func:`isotope_pattern`) or ``"carbon"`` (the thesis's 13C binomial, :func:`carbon_isotope_pattern`).
    The count is the width, in bins, of the range where the
    profile exceeds ``t_iso`` times its maximum (first to last such bin). Shapes: ``mz_axis`` (d,) increasing,
    ``masses`` (k,) -> (k,) int.
    """
    mz_axis = np.asarray(mz_axis, np.float64)
    if mz_axis.ndim != 1 or np.any(np.diff(mz_axis) <= 0):
        raise ValueError("mz_axis must be a strictly increasing 1-d array")
    if resolving_power <= 0:
        raise ValueError(f"resolving_power must be positive, got {resolving_power}")
    if reference_mz is not None and not reference_mz > 0:
        raise ValueError(f"reference_mz must be positive (or None for a constant resolving power), got {reference_mz}")
    if peak_fwhm is not None and not peak_fwhm > 0:
        raise ValueError(f"peak_fwhm must be positive (Da) or None, got {peak_fwhm}")
    patterns = {"averagine": isotope_pattern, "carbon": carbon_isotope_pattern}
    if isotopes not in patterns:
        raise ValueError(f"isotopes must be 'averagine' or 'carbon', got {isotopes!r}")
    out = np.zeros(len(masses), np.int64)
    for i, mass in enumerate(np.asarray(masses, np.float64)):
        peaks, ab = patterns[isotopes](mass - _PROTON, t_iso=t_iso)
        r = resolving_power if reference_mz is None else resolving_power * np.sqrt(mass / reference_mz)
        prof = _broadened(mz_axis, peaks, ab, r, peak_fwhm)
        if prof.max() <= 0:
            continue  # pattern outside the axis
        above = np.flatnonzero(prof >= t_iso * prof.max())
        out[i] = above[-1] - above[0] + 1
    return out


def envelope_span(masses: Sequence[float] | np.ndarray, *, t_iso: float = 0.005) -> np.ndarray:
    """Span in Da (last minus first isotope peak >= ``t_iso``) of the averagine pattern of each mass (k,)."""
    out = []
    for mass in np.asarray(masses, np.float64):
        peaks, _ = isotope_pattern(mass - _PROTON, t_iso=t_iso)
        out.append(peaks[-1] - peaks[0])
    return np.asarray(out)


def receptive_field(convs: Sequence[tuple[int, int]] = ISOTOPENET_CONVS) -> int:
    """Receptive field in input bins of a chain of 1-d convolutions ``[(kernel, stride), ...]``.

    ``r = 1 + sum_l (k_l - 1) * prod_{j<l} s_j`` (Luo et al. 2016): each kernel widens the field by
    ``k - 1`` steps of the input grid of that layer, whose spacing is the product of earlier strides.
    """
    r, jump = 1, 1
    for k, s in convs:
        if k < 1 or s < 1:
            raise ValueError(f"kernel and stride must be >= 1, got ({k}, {s})")
        r += (k - 1) * jump
        jump *= s
    return r


@dataclass(frozen=True)
class StrideSuggestion:
    """Average bin width (Da) of an m/z axis, bins per ``spacing`` Da, and the stride that makes one output
    value cover about one isotope peak (``floor`` of bins per Da; the thesis picks one less to keep detail in
    the coarse high-mass end)."""

    mean_bin_width: float
    bins_per_spacing: float
    stride: int
    conservative_stride: int


def suggest_stride(mz_axis: np.ndarray, spacing: float = 1.0) -> StrideSuggestion:
    """Section 7.3.2: isotope peaks lie ``spacing`` ~ 1 Da apart; the mean bin width ``w`` gives ``spacing/w``
    bins per peak distance (ADSQ: 0.163 Da -> 6.14), so stride ``floor(spacing/w)`` (6), or one less (5)."""
    mz_axis = np.asarray(mz_axis, np.float64)
    if mz_axis.ndim != 1 or len(mz_axis) < 2:
        raise ValueError("mz_axis must be a 1-d array with at least two values")
    w = float(np.mean(np.diff(mz_axis)))
    per = spacing / w
    stride = max(1, int(np.floor(per)))
    return StrideSuggestion(mean_bin_width=w, bins_per_spacing=per, stride=stride,
                            conservative_stride=max(1, stride - 1))
