"""shiftMNIST-style data with a planted, label-encoding feature (thesis Remark 6.12; Jacobsen et al. 2019).

A small bright square (``patch_size`` x ``patch_size``, value 255) is written into every image at one of
``n_codes`` positions on the top and bottom border rows (where digits and clothes rarely are). Its position
is the *code*:

* ``"train"``   code = label: the patch alone predicts the label perfectly (the training distribution D);
* ``"shifted"`` code ~ Uniform{0..C-1}, independent of the label (the adversarial shift D_Adv: the planted
  feature carries no information, I_Adv(Y; patch) = 0, the image content is unchanged);
* ``"clean"``   no patch at all.

A classifier that relies on the shortcut fails on ``"shifted"``; one whose logits explain all
label-dependent variation (iCE, Theorem 6.18) keeps using the digit.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["feature_positions", "plant_feature", "shift_images"]

MODES = ("train", "shifted", "clean")


def feature_positions(n_codes: int, height: int, width: int, patch_size: int = 2) -> list[tuple[int, int]]:
    """Top-left corners ``(row, col)`` of the ``n_codes`` patch positions: ``ceil(n/2)`` evenly spaced along the
    top border row, the rest along the bottom one. Raises ``ValueError`` if they would overlap."""
    if n_codes < 1 or patch_size < 1 or height < 2 * patch_size or width < patch_size:
        raise ValueError(f"cannot place {n_codes} patches of size {patch_size} in a {height}x{width} image")
    n_top = (n_codes + 1) // 2
    positions: list[tuple[int, int]] = []
    for row, k in ((0, n_top), (height - patch_size, n_codes - n_top)):
        if k == 0:
            continue
        cols = np.round(np.linspace(0, width - patch_size, k)).astype(int) if k > 1 else np.array([0])
        if k > 1 and np.diff(cols).min() < patch_size:
            raise ValueError(f"{k} patches of size {patch_size} do not fit side by side in width {width}")
        positions += [(row, int(c)) for c in cols]
    return positions


def plant_feature(images: torch.Tensor, codes: torch.Tensor, *, n_codes: int, patch_size: int = 2) -> torch.Tensor:
    """Copy of ``images`` (uint8, ``(N, C, H, W)``) with a 255-valued patch at position ``codes[i]`` in every
    channel of image i. ``codes`` int64 ``(N,)`` in ``[0, n_codes)``."""
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if codes.shape != (images.shape[0],) or codes.dtype != torch.long:
        raise ValueError(f"codes must be int64 of shape ({images.shape[0]},), got {codes.dtype} {tuple(codes.shape)}")
    if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= n_codes):
        raise ValueError(f"codes must lie in [0, {n_codes}), got range [{int(codes.min())}, {int(codes.max())}]")
    out = images.clone()
    for code, (r, c) in enumerate(feature_positions(n_codes, images.shape[2], images.shape[3], patch_size)):
        out[codes == code, :, r : r + patch_size, c : c + patch_size] = 255
    return out


def shift_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    *,
    n_classes: int = 10,
    patch_size: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The shiftMNIST version of ``images`` (uint8 ``(N, C, H, W)``) for ``mode`` in ``"train"`` (patch position =
    label), ``"shifted"`` (position uniform at random, drawn with ``generator``) or ``"clean"`` (no patch)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if mode == "clean":
        return images.clone()
    if mode == "train":
        codes = labels.long()
    else:
        codes = torch.randint(0, n_classes, (images.shape[0],), generator=generator)
    return plant_feature(images, codes, n_codes=n_classes, patch_size=patch_size)
