"""The planted shortcut: a solid coloured square pasted on a fraction of one class's images."""

from __future__ import annotations

import pytest
import torch

from gradcam_repro.data.bias import bias_dataset, inject_patch, patch_box
from gradcam_repro.errors import UserError

YELLOW = (255, 255, 0)


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    # Values 1..254 only, so a pasted 255 or 0 is always a change.
    return torch.randint(1, 255, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "corner, offset, expected",
    [
        ("top-left", 0, (0, 0, 6, 6)),
        ("top-right", 0, (0, 26, 6, 32)),
        ("bottom-left", 0, (26, 0, 32, 6)),
        ("bottom-right", 0, (26, 26, 32, 32)),
        ("top-left", 3, (3, 3, 9, 9)),
        ("top-right", 3, (3, 23, 9, 29)),
        ("bottom-left", 3, (23, 3, 29, 9)),
        ("bottom-right", 3, (23, 23, 29, 29)),
    ],
)
def test_patch_box(corner, offset, expected):
    assert patch_box(32, 6, corner, offset) == expected


def test_patch_box_that_exactly_fits():
    assert patch_box(8, 5, "bottom-right", 3) == (0, 0, 5, 5)
    assert patch_box(8, 8, "top-left") == (0, 0, 8, 8)


@pytest.mark.parametrize("patch_size, offset", [(33, 0), (30, 3), (6, 27)])
def test_patch_larger_than_image_raises_user_error(patch_size, offset):
    with pytest.raises(UserError, match="patch"):
        patch_box(32, patch_size, "top-left", offset)
    with pytest.raises(UserError, match="patch"):
        inject_patch(random_images(1), patch_size=patch_size, offset=offset)


@pytest.mark.parametrize("corner", ["middle", "left-top", "top", "top-centre"])
def test_unknown_corner_raises_user_error(corner):
    with pytest.raises(UserError, match="corner"):
        patch_box(32, 6, corner)


# --------------------------------------------------------------------------- inject_patch


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
@pytest.mark.parametrize("offset", [0, 2])
def test_inject_patch_sets_exactly_the_patch_pixels(corner, offset):
    images = random_images(3)
    original = images.clone()
    out = inject_patch(images, patch_size=5, color=(255, 0, 128), corner=corner, offset=offset)

    assert torch.equal(images, original), "the input must not be modified"
    assert out.dtype == torch.uint8 and out.shape == images.shape
    top, left, bottom, right = patch_box(32, 5, corner, offset)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert int(inside.sum()) == 25
    for c, value in enumerate((255, 0, 128)):
        assert (out[:, c][:, inside] == value).all()
    assert torch.equal(out[:, :, ~inside], original[:, :, ~inside])
    # Exactly the patch pixels changed (the random images never hold the colour already).
    changed = (out != original).any(dim=1).any(dim=0)
    assert torch.equal(changed, inside)


def test_inject_patch_default_is_a_yellow_6px_top_left_square():
    out = inject_patch(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    expected = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    expected[0, 0, :6, :6] = 255
    expected[0, 1, :6, :6] = 255
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8)],
    ids=["float", "one-channel", "3d"],
)
def test_inject_patch_rejects_non_uint8_rgb_batches(bad):
    with pytest.raises(ValueError, match="uint8"):
        inject_patch(bad, patch_size=2)


def test_inject_patch_bottom_corner_on_a_non_square_image():
    images = torch.zeros(1, 3, 16, 24, dtype=torch.uint8)
    out = inject_patch(images, patch_size=4, color=YELLOW, corner="bottom-right")
    expected = images.clone()
    expected[:, 0, 12:16, 20:24] = 255
    expected[:, 1, 12:16, 20:24] = 255
    assert torch.equal(out, expected)


# --------------------------------------------------------------------------- bias_dataset


def labelled_set():
    """40 images; class 3 holds 7 of them (an odd count, so fraction 0.5 needs rounding)."""
    labels = torch.tensor([i % 5 for i in range(35)] + [0, 1, 2, 4, 0])
    assert int((labels == 3).sum()) == 7
    return random_images(len(labels), size=16, seed=1), labels


@pytest.mark.parametrize("fraction, n_expected", [(0.0, 0), (0.5, 4), (1.0, 7), (0.3, 2)])
def test_bias_dataset_patches_round_fraction_of_the_target_class_only(fraction, n_expected):
    images, labels = labelled_set()
    original = images.clone()
    out, patched = bias_dataset(images, labels, target_class=3, fraction=fraction, seed=0, patch_size=4, corner="bottom-left")

    assert n_expected == round(fraction * 7)
    assert patched.dtype == torch.bool and patched.shape == labels.shape
    assert int(patched.sum()) == n_expected
    assert (labels[patched] == 3).all()
    assert torch.equal(images, original), "the input must not be modified"
    # Patched images equal inject_patch of the original; every other image is untouched.
    assert torch.equal(out[~patched], original[~patched])
    if n_expected:
        assert torch.equal(out[patched], inject_patch(original[patched], patch_size=4, corner="bottom-left"))
    # The mask says which images changed, and nothing else.
    assert torch.equal((out != original).flatten(1).any(dim=1), patched)


def test_bias_dataset_is_deterministic_by_seed():
    images, labels = labelled_set()
    a_img, a_mask = bias_dataset(images, labels, target_class=3, fraction=0.5, seed=7)
    b_img, b_mask = bias_dataset(images, labels, target_class=3, fraction=0.5, seed=7)
    assert torch.equal(a_mask, b_mask) and torch.equal(a_img, b_img)
    # Another seed picks another subset (for some seed among a few: C(7, 4) = 35 subsets).
    others = [bias_dataset(images, labels, target_class=3, fraction=0.5, seed=s)[1] for s in range(8, 13)]
    assert any(not torch.equal(a_mask, m) for m in others)
    assert all(int(m.sum()) == 4 for m in others)


def test_bias_dataset_with_no_image_of_the_target_class_patches_nothing():
    images, labels = labelled_set()
    out, patched = bias_dataset(images, labels, target_class=9, fraction=1.0)
    assert not patched.any() and torch.equal(out, images)


@pytest.mark.parametrize("fraction", [-0.01, 1.01, 2.0])
def test_bias_dataset_rejects_fraction_outside_unit_interval(fraction):
    images, labels = labelled_set()
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        bias_dataset(images, labels, target_class=3, fraction=fraction)
