"""Data sets: images from user files, toy densities, shifted variants (nothing is downloaded)."""

from invertible.data.images import load_images, read_idx, train_test_split_indices

__all__ = ["load_images", "read_idx", "train_test_split_indices"]
