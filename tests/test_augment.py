"""Batched augmentation in train.py: RandomCrop(32, padding=4) + RandomHorizontalFlip as tensor ops.

The reference is torchvision: zero-pad by 4 with `pad`, `crop(top, left, 32, 32)`, then `hflip`.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.transforms.functional as TF
from scipy import stats

from gradcam_repro.model.train import CROP_PADDING_PX, random_crop_flip, sample_augmentation


def torchvision_reference(image: torch.Tensor, top: int, left: int, flip: bool, padding: int = 4) -> torch.Tensor:
    h, w = image.shape[-2:]
    out = TF.crop(TF.pad(image, [padding]), top, left, h, w)
    return TF.hflip(out) if flip else out


def all_offsets(padding: int = 4) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(2 * padding + 1), repeat=2)))


@pytest.mark.parametrize("flip", [False, True], ids=["crop", "crop+flip"])
def test_every_offset_matches_torchvision(flip):
    offsets = all_offsets()  # all 81 (row, col) offsets, 0..8 each
    n = len(offsets)
    images = torch.randint(1, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    original = images.clone()
    flips = torch.full((n,), flip)
    out = random_crop_flip(images, offsets, flips)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(images, original)
    for i, (top, left) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], torchvision_reference(images[i], top, left, flip)), (top, left)


def test_mixed_flips_in_one_batch():
    offsets = torch.tensor([[0, 8], [8, 0], [3, 5], [4, 4], [1, 7], [6, 2]])
    flips = torch.tensor([True, False, True, False, False, True])
    images = torch.randint(1, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_crop_flip(images, offsets, flips)
    for i in range(6):
        expected = torchvision_reference(images[i], *offsets[i].tolist(), bool(flips[i]))
        assert torch.equal(out[i], expected), i


def test_centre_offset_without_flip_is_the_identity_and_padding_is_zero():
    images = torch.randint(1, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = random_crop_flip(images, torch.tensor([[4, 4], [0, 0]]), torch.tensor([False, False]))
    assert torch.equal(out[0], images[0])
    # Offset (0, 0) shows 4 rows and 4 columns of zero padding at the top-left.
    assert (out[1, :, :4, :] == 0).all() and (out[1, :, :, :4] == 0).all()
    assert torch.equal(out[1, :, 4:, 4:], images[1, :, :28, :28])


def test_non_square_images_and_other_padding():
    # Rows and columns must not be swapped: a 16x24 image with padding 2 and offsets (1, 3).
    images = torch.randint(1, 256, (2, 3, 16, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    offsets, flips = torch.tensor([[1, 3], [4, 0]]), torch.tensor([False, True])
    out = random_crop_flip(images, offsets, flips, padding=2)
    assert out.shape == (2, 3, 16, 24)
    for i in range(2):
        assert torch.equal(out[i], torchvision_reference(images[i], *offsets[i].tolist(), bool(flips[i]), padding=2))


N_SAMPLES = 20_000


@pytest.fixture(scope="module")
def sampled():
    return sample_augmentation(N_SAMPLES, torch.Generator().manual_seed(1234))


def test_sample_augmentation_types_and_range(sampled):
    offsets, flips = sampled
    assert CROP_PADDING_PX == 4
    assert offsets.shape == (N_SAMPLES, 2) and offsets.dtype == torch.int64
    assert flips.shape == (N_SAMPLES,) and flips.dtype == torch.bool
    assert offsets.min().item() == 0 and offsets.max().item() == 8


@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "cols"])
def test_offsets_are_uniform_over_0_to_8(sampled, axis):
    counts = torch.bincount(sampled[0][:, axis], minlength=9)
    assert len(counts) == 9
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


def test_row_and_column_offsets_are_jointly_uniform(sampled):
    # All 81 (row, col) pairs equally likely, i.e. rows and columns are drawn independently.
    offsets = sampled[0]
    counts = torch.bincount(offsets[:, 0] * 9 + offsets[:, 1], minlength=81)
    assert len(counts) == 81
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3


def test_flip_rate_is_one_half(sampled):
    flips = sampled[1]
    k = int(flips.sum())
    assert stats.binomtest(k, N_SAMPLES, 0.5).pvalue > 1e-3
    # Flips are not tied to the offsets: the flip rate is the same for left and right crops.
    left = sampled[0][:, 1] <= 3
    table = [[int(flips[left].sum()), int((~flips[left]).sum())], [int(flips[~left].sum()), int((~flips[~left]).sum())]]
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_sample_augmentation_is_deterministic_by_seed(sampled):
    again = sample_augmentation(N_SAMPLES, torch.Generator().manual_seed(1234))
    assert torch.equal(again[0], sampled[0]) and torch.equal(again[1], sampled[1])
    other = sample_augmentation(N_SAMPLES, torch.Generator().manual_seed(1235))
    assert not torch.equal(other[0], sampled[0])


def test_sample_augmentation_other_padding():
    offsets, _ = sample_augmentation(2000, torch.Generator().manual_seed(0), padding=2)
    assert set(offsets.unique().tolist()) == {0, 1, 2, 3, 4}
