"""scikit-learn's 8x8 digits as float tensors: the small real data set of the chapter-4/5 core reproductions."""

from __future__ import annotations

import numpy as np
import torch

from invertible.data.images import load_images, train_test_split_indices

__all__ = ["digits_tensors"]


def digits_tensors(
    seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((x_train, y_train), (x_test, y_test))``: the digits as floats in ``[0, 1]`` of shape ``(N, 1, 8, 8)`` with
    int64 labels ``(N,)``, split 80 / 20 by ``seed`` (:func:`~invertible.data.train_test_split_indices`)."""
    images, labels = load_images("digits")
    tr, te = train_test_split_indices(len(images), 0.2, seed)
    x = torch.as_tensor(images.astype(np.float64) / 255.0, dtype=dtype)
    y = torch.as_tensor(labels)
    return (x[tr], y[tr]), (x[te], y[te])
