"""shiftMNIST-style data (Remark 6.12): the planted patch encodes the label in training, is random when shifted."""

import pytest
import torch

from invertible.data.shifted import feature_positions, plant_feature, shift_images


def _images(n=200, size=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    images[:, :, 3:-3, 3:-3] = torch.randint(0, 200, (n, 1, size - 6, size - 6), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


def _decode(images, n_codes=10, patch=2):
    """Which patch position is fully lit (-1 for none)."""
    pos = feature_positions(n_codes, images.shape[2], images.shape[3], patch)
    lit = torch.stack([(images[:, 0, r : r + patch, c : c + patch] == 255).all(-1).all(-1) for r, c in pos], 1)
    return torch.where(lit.any(1), lit.float().argmax(1), torch.tensor(-1))


@pytest.mark.parametrize("size,patch", [(14, 2), (28, 2), (8, 1)])
def test_positions_are_distinct_in_bounds_and_on_the_border(size, patch):
    pos = feature_positions(10, size, size, patch)
    assert len(set(pos)) == 10
    for r, c in pos:
        assert r in (0, size - patch) and 0 <= c <= size - patch
    cells = {(r + i, c + j) for r, c in pos for i in range(patch) for j in range(patch)}
    assert len(cells) == 10 * patch * patch  # no overlap


def test_train_mode_encodes_the_label_and_changes_only_the_patch():
    images, labels = _images()
    out = shift_images(images, labels, "train")
    assert torch.equal(_decode(out), labels)
    changed = (out != images).any(1)
    pos = feature_positions(10, 14, 14, 2)
    for i in range(len(images)):
        r, c = pos[int(labels[i])]
        allowed = torch.zeros(14, 14, dtype=torch.bool)
        allowed[r : r + 2, c : c + 2] = True
        assert not bool((changed[i] & ~allowed).any())


def test_shifted_mode_is_independent_of_the_label_and_seeded():
    images, labels = _images(n=2000)
    a = shift_images(images, labels, "shifted", generator=torch.Generator().manual_seed(1))
    b = shift_images(images, labels, "shifted", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    codes = _decode(a)
    assert bool((codes >= 0).all())
    agreement = float((codes == labels).double().mean())
    assert 0.07 < agreement < 0.13  # chance level 1/10, not the training relation
    assert len(torch.unique(codes)) == 10


def test_clean_mode_is_unchanged_copy():
    images, labels = _images()
    out = shift_images(images, labels, "clean")
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()
    assert bool((_decode(out) == -1).all())


def test_bad_inputs_raise():
    images, labels = _images(n=4)
    with pytest.raises(ValueError, match="mode"):
        shift_images(images, labels, "test")
    with pytest.raises(ValueError, match="uint8"):
        plant_feature(images.float(), labels, n_codes=10)
    with pytest.raises(ValueError, match="codes must lie"):
        plant_feature(images, labels + 10, n_codes=10)
    with pytest.raises(ValueError, match="fit"):
        feature_positions(10, 14, 6, 2)
