"""Data sets: images from user files, toy densities, shifted variants (nothing is downloaded)."""

from invertible.data.images import load_images, read_idx, train_test_split_indices
from invertible.data.shifted import feature_positions, plant_feature, shift_images

__all__ = [
    "feature_positions",
    "load_images",
    "plant_feature",
    "read_idx",
    "shift_images",
    "train_test_split_indices",
]
