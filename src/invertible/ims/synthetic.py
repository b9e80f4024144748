"""Synthetic MALDI-TOF tissue-microarray measurements, written as real imzML + an annotation CSV.

The thesis's data (tasks ADSQ and LP) cannot be had, so this module simulates measurements with the structure
that chapter 7 builds on. Per spectrum ``s`` of spot ``(x, y)`` in core ``c`` of TMA ``t`` with class ``y``::

    lambda_s(m) = g_s * [ B_s * (m / m_lo)^(-p)  +  sum_j a_sj * P_tj(m) ]          expected counts
    a_sj        = A_j * exp(beta_j [y] + u_cj + v_tj + e_sj)                        peptide abundances
    I_s(m)      = max(0, lambda_s(m) + c * lambda_s(m)^q * N(0, 1))                  observed intensity

* m/z axis: time-of-flight law, equal steps in ``sqrt(m/z)`` (calibrated on the real TOF spectra: their
  ``diff(sqrt(m))`` is constant to 0.03 %); the ``adsq-like`` preset has 27286 bins with mean width 0.163 Da
  (section 7.3.2) over 800..5248 Da, i.e. a ``sqrt`` step of 0.00162 - the real instrument's step is 0.00161.
* ``P_tj``: averagine isotope pattern of peptide ``j`` (threshold ``t_iso``), every peak a Gaussian of FWHM
  ``m / R`` (resolving power ``R`` ~ 3000: isotopes 1 Da apart are resolved, as in the thesis's peptide data;
  *not* calibrated on the real spectra, which are linear-mode serum spectra with R ~ 400), shifted per TMA by a
  small mass error ``delta_t`` (batch effect).
* Class signal: ``beta_j[y]`` is non-zero only for ``n_discriminative`` peptides (log fold change
  ``+-effect``); cores (patients) ``u_cj``, TMAs ``v_tj`` (ionisation batch effect) and spots ``e_sj``
  (heterogeneity) add log-normal variation to every peptide. In the ``lp-like`` preset a fraction of the
  spots is non-tumour tissue: these carry a stroma profile and no class signal but keep the core's label.
* Envelope signal (``signal="envelope"``): instead of their abundance, the class moves the share ``f`` of a
  modified form of each discriminative peptide, ``modification_shift`` (0.984 Da, deamidation) heavier:
  ``a_sj -> (1 - f_sj) a_sj`` at ``P_j`` plus ``f_sj a_sj`` at ``P_j`` shifted, with
  ``logit f_sj = logit(modified_fraction) + gamma_j[y] + w_cj + N(0, spot_sd^2)`` (``gamma_j = +-effect/2``,
  signs per peptide or all alike with ``same_direction``; patients ``w_cj ~ N(0, core_sd^2)``). The relative
  intensities inside the isotope envelope carry the class; its total does not. ``signal_abundance_sd`` adds
  patient-level log-abundance variation to the discriminative peptides (either signal), ``spot_shift_sd`` a
  per-spot mass error (Da, spectra shifted by interpolation) on top of the TMA's.
* Calibration error (:mod:`invertible.ims.calibration_error`, measured on the real spectra there): relative
  m/z errors ``m -> m (1 + eps)``, ``eps`` ~ ``N(0, tma_ppm_sd^2)`` per TMA and ``N(0, spot_ppm_sd^2)`` per spot
  (ppm; both off by default).
* Baseline ``B_s`` (power-law decay ``p``), TMA/spot intensity scale ``g_s`` (log-normal, TIC variation) and
  the noise law ``sd = c * lambda^q`` are calibrated on the real spectra by :func:`spectrum_statistics`.

None of the parameters was tuned on the performance of any model; they were fixed before any model was run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from invertible.ims.calibration_error import scaled_positions, shift_spectra_ppm
from invertible.ims.isotopes import isotope_pattern

__all__ = [
    "PRESETS",
    "SyntheticConfig",
    "SyntheticTMA",
    "generate",
    "preset",
    "spectrum_statistics",
    "tof_axis",
    "write_imzml",
]


def tof_axis(mz_lo: float, n_bins: int, sqrt_step: float) -> np.ndarray:
    """TOF m/z axis: ``m_i = (sqrt(mz_lo) + i * sqrt_step)^2``, i = 0..n_bins-1 (bin width ~ 2 sqrt(m) step)."""
    if mz_lo <= 0 or n_bins < 2 or sqrt_step <= 0:
        raise ValueError(f"need mz_lo > 0, n_bins >= 2, sqrt_step > 0; got {mz_lo}, {n_bins}, {sqrt_step}")
    return (np.sqrt(mz_lo) + sqrt_step * np.arange(n_bins)) ** 2


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator (see module docstring for the model). Sizes first, then physics."""

    n_tmas: int = 8
    cores_per_tma: int = 16
    n_spectra: int = 4672
    n_bins: int = 27286
    mz_lo: float = 800.0
    sqrt_step: float = 0.0016183  # 27286 bins of mean width 0.163 Da from 800 Da (section 7.3.2)
    n_classes: int = 2
    peptides_per_kda: float = 60.0
    n_discriminative: int = 8
    effect: float = 0.6  # log fold change of a discriminative peptide between classes
    discriminative_scale: float = 1.0  # abundance factor of the discriminative peptides (< 1: near the noise floor)
    signal: str = "abundance"  # "abundance": class shifts peptide abundance; "envelope": it shifts a modified share
    modification_shift: float = 0.984  # envelope signal: mass shift of the modified form (deamidation, Da)
    modified_fraction: float = 0.3  # envelope signal: share of the modified form midway between the classes
    same_direction: bool = False  # envelope signal: the modified share of every discriminative peptide rises together
    signal_abundance_sd: float = 0.0  # extra patient-level log-abundance variation of the discriminative peptides
    core_sd: float = 0.35  # patient-to-patient log-abundance variation
    tma_sd: float = 0.25  # per-TMA ionisation batch effect (log abundance)
    spot_sd: float = 0.3  # spot heterogeneity (log abundance)
    tma_scale_sd: float = 0.15  # per-TMA intensity scale (log)
    spot_scale_sd: float = 0.2  # per-spot intensity scale (log): TIC variation
    mass_shift_sd: float = 0.05  # per-TMA mass calibration error, Da
    spot_shift_sd: float = 0.0  # per-spot mass error (sample topography), Da, on top of the TMA's
    tma_ppm_sd: float = 0.0  # per-TMA relative calibration error, ppm (calibration_error.py; real: 273)
    spot_ppm_sd: float = 0.0  # per-spot relative calibration error, ppm, on top of the TMA's (real: 98)
    non_tumour_fraction: float = 0.0  # lp-like: spots of non-tumour tissue inside a core
    resolving_power: float = 3000.0
    t_iso: float = 0.005
    peak_height: float = 2500.0  # median peptide peak height, counts (real spectra: median level ~1000)
    baseline_level: float = 3000.0  # baseline at mz_lo, counts (real: ~3000 at 1000 Da)
    baseline_power: float = 1.7  # baseline ~ (m/mz_lo)^-p (real: drops ~45x from 1 to 10 kDa)
    baseline_sd: float = 0.15  # spot-to-spot baseline variation (log)
    noise_scale: float = 0.8  # noise sd = noise_scale * lambda^noise_power (fitted on real spectra)
    noise_power: float = 0.38

    def __post_init__(self) -> None:
        if self.n_tmas < 1 or self.cores_per_tma < self.n_classes or self.n_spectra < self.n_tmas * self.cores_per_tma:
            raise ValueError("need n_tmas >= 1, cores_per_tma >= n_classes and at least one spectrum per core")
        if not self.discriminative_scale > 0:
            raise ValueError(f"discriminative_scale must be > 0, got {self.discriminative_scale}")
        if self.signal not in ("abundance", "envelope"):
            raise ValueError(f"signal must be 'abundance' or 'envelope', got {self.signal!r}")
        if not 0 < self.modified_fraction < 1 or self.signal_abundance_sd < 0:
            raise ValueError(f"need 0 < modified_fraction < 1 and signal_abundance_sd >= 0, got "
                             f"{self.modified_fraction}, {self.signal_abundance_sd}")
        if self.tma_ppm_sd < 0 or self.spot_ppm_sd < 0:
            raise ValueError(f"calibration errors must be >= 0 ppm, got {self.tma_ppm_sd}, {self.spot_ppm_sd}")
        if not 0 <= self.non_tumour_fraction < 1:
            raise ValueError(f"non_tumour_fraction must lie in [0, 1), got {self.non_tumour_fraction}")

    @property
    def mz(self) -> np.ndarray:
        return tof_axis(self.mz_lo, self.n_bins, self.sqrt_step)


#: Presets. ``adsq-like``: 4672 spectra, 27286 bins, 8 TMAs (ROI spectra, tumour only). ``lp-like``: 27475
#: whole-core spectra with non-tumour spots (the TMA count, 8, is our choice). ``*-quick``: the same physics on
#: 1024 bins (800..897 Da, with a denser peptide list and 4 discriminative peptides so the short range holds
#: some) and 192 spectra in 32 cores, for tests and ``--quick`` runs.
PRESETS: dict[str, SyntheticConfig] = {
    "adsq-like": SyntheticConfig(),
    "lp-like": SyntheticConfig(n_spectra=27475, cores_per_tma=24, non_tumour_fraction=0.25),
}
_QUICK = {"n_spectra": 192, "cores_per_tma": 4, "n_bins": 1024, "peptides_per_kda": 200.0, "n_discriminative": 4}
PRESETS["adsq-like-quick"] = replace(PRESETS["adsq-like"], **_QUICK)
PRESETS["lp-like-quick"] = replace(PRESETS["lp-like"], **_QUICK)


def preset(name: str, *, quick: bool = False, **overrides) -> SyntheticConfig:
    """A preset by name (``adsq-like``, ``lp-like``), its quick variant with ``quick=True``, plus overrides."""
    key = f"{name}-quick" if quick and not name.endswith("-quick") else name
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: adsq-like, lp-like")
    return replace(PRESETS[key], **overrides)


@dataclass
class SyntheticTMA:
    """Layout and latent variables of one simulated data set (everything but the spectra themselves)."""

    config: SyntheticConfig
    mz: np.ndarray  # (d,)
    x: np.ndarray  # (n,) spot coordinates, 1-based
    y: np.ndarray
    tma: np.ndarray  # (n,) int
    core: np.ndarray  # (n,) int, unique over the data set
    label: np.ndarray  # (n,) int class of the core
    tumour: np.ndarray  # (n,) bool
    peptide_mz: np.ndarray  # (k,)
    discriminative: np.ndarray  # (n_discriminative,) peptide indices
    _rng: np.random.Generator
    _patterns: list[sp.csr_matrix]  # per TMA: (k, d) isotope profiles with the TMA's mass shift
    _log_abundance: np.ndarray  # (k,)
    _beta: np.ndarray  # (n_classes, k)
    _stroma: np.ndarray  # (k,)
    _core_eff: np.ndarray  # (n_cores, k)
    _tma_eff: np.ndarray  # (n_tmas, k)
    _tma_scale: np.ndarray  # (n_tmas,)
    _logit_beta: np.ndarray  # (n_classes, n_discriminative): envelope signal, class shift of logit(modified share)
    _core_logit: np.ndarray  # (n_cores, n_discriminative): patient variation of logit(modified share)
    tma_ppm: np.ndarray | None = None  # (n_tmas,) relative calibration error of every TMA, ppm

    def __len__(self) -> int:
        return len(self.x)

    def spectra(self, rows: np.ndarray) -> np.ndarray:
        """Simulate the spectra of ``rows`` (m,) -> (m, d) float32. Deterministic given the seed and the
        order of calls (use :meth:`iter_batches` to stream the whole data set)."""
        cfg, rng = self.config, self._rng
        rows = np.asarray(rows)
        k = len(self.peptide_mz)
        out = np.empty((len(rows), len(self.mz)), np.float32)
        rel = (self.mz / cfg.mz_lo) ** (-cfg.baseline_power)
        for t in np.unique(self.tma[rows]):
            sel = np.flatnonzero(self.tma[rows] == t)
            r = rows[sel]
            logs = (self._log_abundance[None] + self._core_eff[self.core[r]] + self._tma_eff[t][None]
                    + cfg.spot_sd * rng.standard_normal((len(r), k)))
            tum = self.tumour[r][:, None]
            logs = logs + np.where(tum, self._beta[self.label[r]], self._stroma[None])
            ab = np.exp(logs) * cfg.peak_height
            if cfg.signal == "envelope":  # split each discriminative peptide into native and modified form
                d = self.discriminative
                logit = (np.log(cfg.modified_fraction / (1 - cfg.modified_fraction)) + self._core_logit[self.core[r]]
                         + cfg.spot_sd * rng.standard_normal((len(r), len(d))))
                logit = logit + np.where(tum, self._logit_beta[self.label[r]], 0.0)
                share = 1.0 / (1.0 + np.exp(-logit))
                modified = ab[:, d] * share
                ab[:, d] *= 1.0 - share
                ab = np.concatenate([ab, modified], axis=1)
            peaks = (self._patterns[t].T @ ab.T).T  # (m, d)
            if cfg.spot_shift_sd > 0:  # the spot's peaks sit delta_s Da off the TMA's calibration
                delta = cfg.spot_shift_sd * rng.standard_normal(len(r))
                peaks = np.stack([np.interp(self.mz - dl, self.mz, row) for dl, row in zip(delta, peaks, strict=True)])
            if cfg.spot_ppm_sd > 0:  # and a relative calibration error of its own
                peaks = shift_spectra_ppm(self.mz, peaks, cfg.spot_ppm_sd * rng.standard_normal(len(r)))
            base = cfg.baseline_level * np.exp(cfg.baseline_sd * rng.standard_normal((len(r), 1))) * rel[None]
            gain = self._tma_scale[t] * np.exp(cfg.spot_scale_sd * rng.standard_normal((len(r), 1)))
            lam = gain * (base + peaks)
            noisy = lam + cfg.noise_scale * lam ** cfg.noise_power * rng.standard_normal(lam.shape)
            out[sel] = np.maximum(noisy, 0.0)
        return out

    def peak_bins(self, tma: int = 0) -> np.ndarray:
        """Bin of the most abundant isotope of every peptide (k,) on the axis of TMA ``tma``."""
        return np.asarray(self._patterns[tma][:len(self.peptide_mz)].argmax(axis=1)).ravel()

    def iter_batches(self, batch: int = 256):
        """Yield ``(rows, spectra)`` over the whole data set in order."""
        for s in range(0, len(self), batch):
            rows = np.arange(s, min(s + batch, len(self)))
            yield rows, self.spectra(rows)


def _core_sizes(rng: np.random.Generator, n_cores: int, total: int) -> np.ndarray:
    w = rng.gamma(6.0, 1.0, n_cores)
    raw = w / w.sum() * total
    sizes = np.maximum(1, np.floor(raw).astype(int))
    while sizes.sum() < total:
        sizes[np.argmax(raw - sizes)] += 1
    while sizes.sum() > total:
        sizes[np.argmax(sizes)] -= 1
    return sizes


def _pattern_matrix(mz: np.ndarray, peptide_mz: np.ndarray, shift: float, cfg: SyntheticConfig,
                    ppm: float = 0.0) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for j, m in enumerate(peptide_mz):
        peaks, ab = isotope_pattern(m - 1.007276, t_iso=cfg.t_iso)
        peaks = scaled_positions(peaks, ppm) + shift
        sigma = peaks / cfg.resolving_power / 2.3548
        lo, hi = np.searchsorted(mz, [peaks[0] - 5 * sigma[0], peaks[-1] + 5 * sigma[-1]])
        w = mz[lo:hi]
        prof = (ab[:, None] / ab.max() * np.exp(-0.5 * ((w[None] - peaks[:, None]) / sigma[:, None]) ** 2)).sum(0)
        rows.append(np.full(hi - lo, j))
        cols.append(np.arange(lo, hi))
        vals.append(prof)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(len(peptide_mz), len(mz)))


def generate(config: SyntheticConfig, *, seed: int = 0) -> SyntheticTMA:
    """Draw the layout and all latent effects of a synthetic data set; spectra are simulated on demand."""
    cfg = config
    rng = np.random.default_rng(seed)
    mz = cfg.mz
    if mz[-1] - mz[0] <= 20:  # peptides are placed in [lo + 5, hi - 15] Da, their isotope envelopes after them
        raise ValueError(f"the m/z axis spans only {mz[-1] - mz[0]:.1f} Da ({cfg.n_bins} bins from {cfg.mz_lo} with "
                         f"sqrt step {cfg.sqrt_step}); the synthetic spectra need more than 20 Da: use more bins")
    # peptides: uniform over the range (tryptic peptides), heavier tail of abundances at low mass
    k = max(cfg.n_discriminative + 4, int(round(cfg.peptides_per_kda * (mz[-1] - mz[0]) / 1000)))
    peptide_mz = np.sort(rng.uniform(mz[0] + 5, mz[-1] - 15, k))
    log_ab = rng.normal(0.0, 0.8, k) - 0.5 * np.log(peptide_mz / cfg.mz_lo)
    disc = rng.choice(k, size=min(cfg.n_discriminative, k), replace=False)
    if cfg.discriminative_scale != 1.0:
        log_ab[disc] += np.log(cfg.discriminative_scale)
    beta = np.zeros((cfg.n_classes, k))
    if cfg.n_classes == 2:  # class 0 and class 1 differ by exactly `effect` in log abundance
        signs = rng.choice([-1.0, 1.0], size=len(disc))
        beta[0, disc], beta[1, disc] = 0.5 * cfg.effect * signs, -0.5 * cfg.effect * signs
    else:
        beta[:, disc] = 0.5 * cfg.effect * rng.standard_normal((cfg.n_classes, len(disc)))
    stroma = np.zeros(k)
    stroma[rng.choice(k, size=max(1, k // 20), replace=False)] = 1.0
    # layout: TMAs side by side, cores on a grid, spots as a compact patch per core
    n_cores = cfg.n_tmas * cfg.cores_per_tma
    sizes = _core_sizes(rng, n_cores, cfg.n_spectra)
    labels_core = np.concatenate([rng.permutation(np.arange(cfg.cores_per_tma) % cfg.n_classes)
                                  for _ in range(cfg.n_tmas)])
    side = int(np.ceil(np.sqrt(sizes.max()))) + 2
    grid = int(np.ceil(np.sqrt(cfg.cores_per_tma)))
    xs, ys, tmas, cores, labels, tumour = [], [], [], [], [], []
    for c in range(n_cores):
        t, ci = divmod(c, cfg.cores_per_tma)
        gx, gy = ci % grid, ci // grid
        i = np.arange(sizes[c])
        xs.append(1 + t * grid * side + gx * side + i % (side - 2))
        ys.append(1 + gy * side + i // (side - 2))
        tmas.append(np.full(sizes[c], t))
        cores.append(np.full(sizes[c], c))
        labels.append(np.full(sizes[c], labels_core[c]))
        tumour.append(rng.random(sizes[c]) >= cfg.non_tumour_fraction)
    shifts = rng.normal(0.0, cfg.mass_shift_sd, cfg.n_tmas)
    core_eff = cfg.core_sd * rng.standard_normal((n_cores, k))
    tma_eff = cfg.tma_sd * rng.standard_normal((cfg.n_tmas, k))
    tma_scale = np.exp(cfg.tma_scale_sd * rng.standard_normal(cfg.n_tmas))
    disc = np.sort(disc)
    logit_beta = np.zeros((cfg.n_classes, len(disc)))
    core_logit = np.zeros((n_cores, len(disc)))
    if cfg.signal_abundance_sd > 0:  # patients differ strongly in how much of these peptides they express
        core_eff[:, disc] += cfg.signal_abundance_sd * rng.standard_normal((n_cores, len(disc)))
    species = peptide_mz
    if cfg.signal == "envelope":  # the class moves the modified share, not the peptide's total abundance
        beta[:, disc] = 0.0
        signs = np.ones(len(disc)) if cfg.same_direction else rng.choice([-1.0, 1.0], size=len(disc))
        if cfg.n_classes == 2:
            logit_beta[0], logit_beta[1] = 0.5 * cfg.effect * signs, -0.5 * cfg.effect * signs
        else:
            logit_beta = 0.5 * cfg.effect * rng.standard_normal((cfg.n_classes, len(disc)))
        core_logit = cfg.core_sd * rng.standard_normal((n_cores, len(disc)))
        species = np.concatenate([peptide_mz, peptide_mz[disc] + cfg.modification_shift])
    ppms = cfg.tma_ppm_sd * rng.standard_normal(cfg.n_tmas) if cfg.tma_ppm_sd > 0 else np.zeros(cfg.n_tmas)
    patterns = [_pattern_matrix(mz, species, s, cfg, e) for s, e in zip(shifts, ppms, strict=True)]
    return SyntheticTMA(
        config=cfg, mz=mz, x=np.concatenate(xs), y=np.concatenate(ys), tma=np.concatenate(tmas),
        core=np.concatenate(cores), label=np.concatenate(labels), tumour=np.concatenate(tumour),
        peptide_mz=peptide_mz, discriminative=disc, _rng=rng, _patterns=patterns,
        _log_abundance=log_ab, _beta=beta, _stroma=stroma, _core_eff=core_eff, _tma_eff=tma_eff,
        _tma_scale=tma_scale, _logit_beta=logit_beta, _core_logit=core_logit, tma_ppm=ppms,
    )


def write_imzml(
    data: SyntheticTMA,
    out: str | os.PathLike,
    *,
    name: str = "synthetic",
    progress: Callable[[Iterable, str, int], Iterable] | None = None,
) -> tuple[Path, Path]:
    """Write ``data`` as ``out/name.imzML`` + ``.ibd`` (continuous mode, float32 intensities) through pyimzML,
    and ``out/name.csv`` with columns ``x, y, core, tma, label, tumour``. Streams spectra in batches, so
    memory stays flat. Returns the imzML and CSV paths."""
    from pyimzml.ImzMLWriter import ImzMLWriter

    from invertible.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    imzml = out / f"{name}.imzML"
    batches = data.iter_batches()
    if progress is not None:
        batches = progress(batches, "writing imzML", (len(data) + 255) // 256)
    with ImzMLWriter(str(imzml), mz_dtype=np.float64, intensity_dtype=np.float32, mode="continuous",
                     spec_type="profile") as writer:
        for rows, spectra in batches:
            for r, s in zip(rows, spectra, strict=True):
                writer.addSpectrum(data.mz, s, (int(data.x[r]), int(data.y[r]), 1))
    lines = ["x,y,core,tma,label,tumour"]
    names = np.asarray([f"class{c}" for c in range(data.config.n_classes)])
    for i in range(len(data)):
        lines.append(f"{data.x[i]},{data.y[i]},core{data.core[i]:03d},tma{data.tma[i]},"
                     f"{names[data.label[i]]},{int(data.tumour[i])}")
    csv_path = out / f"{name}.csv"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    atomic_write_text(out / f"{name}.json", _json_config(data.config))
    return imzml, csv_path


def _json_config(cfg: SyntheticConfig) -> str:
    import json

    return json.dumps(asdict(cfg), indent=2)


# ------------------------------------------------------------------------------------------- calibration


def spectrum_statistics(mz: np.ndarray, spectra: np.ndarray, *, window_da: float = 60.0) -> dict[str, float]:
    """Summary statistics of a set of TOF spectra on one axis, to compare synthetic with real data.

    Returns ``sqrt_step`` (median diff of sqrt(m/z)) and ``sqrt_step_rel_sd`` (TOF law: ~0), ``mean_bin_width``
    (Da), ``baseline_fraction`` (share of the TIC under a rolling-minimum baseline of ``window_da``),
    ``baseline_decay_per_decade`` (fitted power ``p`` of baseline ~ m^-p), ``noise_power`` and
    ``noise_scale`` (fit of the local noise sd = scale * level^power, noise from robust first differences,
    level the local median), and ``tic_cv`` (coefficient of variation of the total ion count).
    Shapes: ``mz`` (d,), ``spectra`` (n, d).
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    mz = np.asarray(mz, np.float64)
    X = np.asarray(spectra, np.float64)
    if X.ndim != 2 or X.shape[1] != len(mz):
        raise ValueError(f"spectra must be (n, {len(mz)}), got {X.shape}")
    ds = np.diff(np.sqrt(mz))
    width = max(3, int(round(window_da / np.mean(np.diff(mz)))))
    fracs, powers, nscale, npow = [], [], [], []
    for x in X:
        b = uniform_filter1d(minimum_filter1d(x, width), width)
        fracs.append(b.sum() / max(x.sum(), 1e-12))
        ok = b > 0
        if ok.sum() > 10:
            powers.append(-np.polyfit(np.log(mz[ok]), np.log(b[ok]), 1)[0])
        dx = np.diff(x)
        w = 500 if len(dx) > 5000 else max(20, len(dx) // 40)
        lv, nz = [], []
        for s in range(0, len(dx) - w + 1, w):
            seg = dx[s:s + w]
            # lower quartile of |first differences|: robust to the sparse, sharp peaks (|N(0,1)| q25 = 0.3186)
            nz.append(np.quantile(np.abs(seg - np.median(seg)), 0.25) / 0.3186 / np.sqrt(2))
            lv.append(np.median(x[s:s + w]))
        lv, nz = np.asarray(lv), np.asarray(nz)
        k = (lv > 0) & (nz > 0)
        if k.sum() > 3:
            q, logc = np.polyfit(np.log(lv[k]), np.log(nz[k]), 1)
            npow.append(q)
            nscale.append(np.median(nz[k] / lv[k] ** q))
    tic = X.sum(1)
    return {
        "n_spectra": int(X.shape[0]),
        "n_bins": int(X.shape[1]),
        "mz_range": f"{mz[0]:.0f}-{mz[-1]:.0f}",
        "sqrt_step": float(np.median(ds)),
        "sqrt_step_rel_sd": float(np.std(ds) / np.mean(ds)),
        "mean_bin_width": float(np.mean(np.diff(mz))),
        "baseline_fraction": float(np.median(fracs)),
        "baseline_power": float(np.median(powers)) if powers else float("nan"),
        "noise_power": float(np.median(npow)) if npow else float("nan"),
        "noise_scale": float(np.median(nscale)) if nscale else float("nan"),
        "tic_cv": float(np.std(tic) / np.mean(tic)),
    }


def write_annotations_csv(path: str | os.PathLike, rows: Iterable[tuple]) -> None:
    """Write ``(x, y, core, tma, label)`` rows as an annotation CSV (helper for user tables and tests)."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "core", "tma", "label"])
        w.writerows(rows)
