"""The TOF binning law: the fit recovers the instrument step of a TOF axis, the width exponent is 1/2."""

import math

import numpy as np
import pytest

from invertible.ims.synthetic import tof_axis
from invertible.ims.tof import fit_tof_axis, tof_bins_over


def test_fit_recovers_the_sqrt_step_and_exponent_half():
    mz = tof_axis(1000.0, 20000, 0.0016)
    fit = fit_tof_axis(mz)
    assert fit.sqrt_step == pytest.approx(0.0016, rel=1e-9)
    assert fit.sqrt_offset == pytest.approx(math.sqrt(1000.0), rel=1e-9)
    assert fit.max_rel_residual < 1e-6
    assert abs(fit.width_exponent - 0.5) < 1e-3  # width = 2 s sqrt(m) + s^2
    assert fit.n_bins == 20000


def test_fit_tells_a_linear_axis_from_a_tof_one():
    fit = fit_tof_axis(np.linspace(1000.0, 2000.0, 5000))  # equidistant: width exponent 0, not 1/2
    assert abs(fit.width_exponent) < 1e-3 and fit.max_rel_residual > 1


def test_bins_over_a_range():
    n, width = tof_bins_over(800.0, 5247.0, 0.00161313)
    assert n - 1 == round((math.sqrt(5247.0) - math.sqrt(800.0)) / 0.00161313)
    assert width == pytest.approx(4447.0 / (n - 1))
    assert tof_axis(800.0, n, 0.00161313)[-1] == pytest.approx(5247.0, abs=0.2)


@pytest.mark.parametrize("bad", [[1.0, 2.0], [3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, float("nan"), 3.0]])
def test_bad_axes_are_refused(bad):
    with pytest.raises(ValueError, match="strictly increasing"):
        fit_tof_axis(np.asarray(bad))


def test_bad_range_is_refused():
    with pytest.raises(ValueError, match="mz_lo"):
        tof_bins_over(5000.0, 800.0, 0.001)
