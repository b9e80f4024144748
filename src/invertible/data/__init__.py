"""Data sets: images from user files (uint8 arrays, seeded splits, model-shaped tensors), toy densities, shifted
variants (nothing is downloaded)."""

from invertible.data.dequantize import dequantize, nats_to_bits_per_dim
from invertible.data.digits import digits_tensors
from invertible.data.images import load_images, read_idx, train_test_split_indices
from invertible.data.shifted import feature_positions, plant_feature, shift_images
from invertible.data.splits import ImageSplits, load_splits, quick_dataset, to_float
from invertible.data.toy2d import TOY_DATASETS, best_possible_nll, has_toy_log_prob, sample_toy, toy_log_prob

__all__ = [
    "ImageSplits",
    "TOY_DATASETS",
    "best_possible_nll",
    "dequantize",
    "digits_tensors",
    "feature_positions",
    "has_toy_log_prob",
    "load_images",
    "load_splits",
    "nats_to_bits_per_dim",
    "plant_feature",
    "quick_dataset",
    "read_idx",
    "sample_toy",
    "shift_images",
    "to_float",
    "toy_log_prob",
    "train_test_split_indices",
]
