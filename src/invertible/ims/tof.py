"""The time-of-flight binning law, fitted to a measured m/z axis (thesis section 7.3.2, Fig. 7.4).

An ion of mass-to-charge ``m`` accelerated through a potential ``U`` flies a field-free length ``L`` in time
``t = L sqrt(m / (2 e U))``, so ``sqrt(m) = a (t - t0)``. The digitizer samples ``t`` at a constant interval, hence
bin ``i`` of a TOF spectrum sits at

    sqrt(m_i) = s0 + s * i          (s = a * dt, the "sqrt step"),

and its width is ``m_{i+1} - m_i = 2 s sqrt(m_i) + s^2``: bin width proportional to ``sqrt(m/z)``. An instrument's
``s`` is a property of its flight tube and digitizer, not of the mass range, so the mean bin width over any range
``[m_lo, m_hi]`` follows from it: ``n = (sqrt(m_hi) - sqrt(m_lo)) / s`` bins of mean width ``(m_hi - m_lo) / n``.

:func:`fit_tof_axis` fits both the constrained law (``s0``, ``s`` by least squares on ``sqrt(m_i)``) and the free
power law ``width = k m^e`` (log-log least squares, with the standard error of ``e``), so the exponent 1/2 is
tested, not assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TOFFit", "fit_tof_axis", "tof_bins_over"]


@dataclass(frozen=True)
class TOFFit:
    """Fit of ``sqrt(m_i) = sqrt_offset + sqrt_step * i`` and of ``width = width_scale * m^width_exponent``.

    ``max_rel_residual``: the largest ``|m_i - fitted m_i| / width_i`` (fraction of a bin) of the TOF law;
    ``width_exponent_se``: standard error of the fitted exponent."""

    sqrt_step: float
    sqrt_offset: float
    max_rel_residual: float
    width_exponent: float
    width_exponent_se: float
    width_scale: float
    n_bins: int


def fit_tof_axis(mz: np.ndarray) -> TOFFit:
    """Fit the TOF law to a strictly increasing m/z axis ``(d,)``, d >= 3."""
    mz = np.asarray(mz, np.float64)
    if mz.ndim != 1 or len(mz) < 3 or not np.all(np.isfinite(mz)) or mz[0] <= 0 or np.any(np.diff(mz) <= 0):
        raise ValueError("fit_tof_axis needs a strictly increasing 1-d axis of >= 3 positive m/z values")
    i = np.arange(len(mz), dtype=np.float64)
    step, offset = np.polyfit(i, np.sqrt(mz), 1)
    fitted = (offset + step * i) ** 2
    width = np.diff(mz)
    resid = np.abs(mz - fitted)[:-1] / width
    x, y = np.log(mz[:-1] + 0.5 * width), np.log(width)
    (e, logk), cov = np.polyfit(x, y, 1, cov=True)
    return TOFFit(sqrt_step=float(step), sqrt_offset=float(offset), max_rel_residual=float(resid.max()),
                  width_exponent=float(e), width_exponent_se=float(math.sqrt(max(cov[0, 0], 0.0))),
                  width_scale=float(math.exp(logk)), n_bins=len(mz))


def tof_bins_over(mz_lo: float, mz_hi: float, sqrt_step: float) -> tuple[int, float]:
    """Bins and mean bin width (Da) an instrument of ``sqrt_step`` gives over ``[mz_lo, mz_hi]``."""
    if not 0 < mz_lo < mz_hi or not sqrt_step > 0:
        raise ValueError(f"need 0 < mz_lo < mz_hi and sqrt_step > 0, got {mz_lo}, {mz_hi}, {sqrt_step}")
    n = int(round((math.sqrt(mz_hi) - math.sqrt(mz_lo)) / sqrt_step))
    return n + 1, (mz_hi - mz_lo) / max(n, 1)
