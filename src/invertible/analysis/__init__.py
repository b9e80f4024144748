"""Invertibility analysis of ReLU networks (thesis chapter 3).

* :mod:`~invertible.analysis.relu_preimage`: preimages of ReLU layers by linear programming
  (Definition 3.1, Theorem 3.3): :func:`is_omnidirectional`, :func:`preimage_class`, :func:`layer_preimages`.
* :mod:`~invertible.analysis.linearization`: exact local linearizations and their spectra (Section 3.4,
  Fig. 3.4): :func:`local_linear_map`, :func:`layer_spectra`.
"""

from invertible.analysis.linearization import (
    LayerSpectrum,
    Stage,
    condition_numbers,
    layer_spectra,
    local_linear_map,
    relu_stages,
    spectrum_summary,
    stage_outputs,
    window_indices,
)
from invertible.analysis.relu_preimage import (
    LayerPreimages,
    PreimageInfo,
    is_omnidirectional,
    layer_preimages,
    omnidirectional_margin,
    preimage_class,
    preimage_classes,
    preimage_info,
)

__all__ = [
    "LayerPreimages",
    "LayerSpectrum",
    "PreimageInfo",
    "Stage",
    "condition_numbers",
    "is_omnidirectional",
    "layer_preimages",
    "layer_spectra",
    "local_linear_map",
    "omnidirectional_margin",
    "preimage_class",
    "preimage_classes",
    "preimage_info",
    "relu_stages",
    "spectrum_summary",
    "stage_outputs",
    "window_indices",
]
