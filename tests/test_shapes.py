"""Tests for the procedurally generated shapes dataset."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradcam_repro.data.shapes import SHAPES_CLASSES, make_shapes

N = 2000


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_shapes(N, seed=0)


def _object_colour(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean RGB over each image's mask: (N, 3) float."""
    m = masks[:, None].float()
    return (images.float() * m).sum((2, 3)) / m.sum((2, 3))


def test_classes() -> None:
    assert len(SHAPES_CLASSES) == 10
    assert len(set(SHAPES_CLASSES)) == 10
    assert all(isinstance(name, str) and name for name in SHAPES_CLASSES)


def test_shapes_dtypes_and_ranges(data) -> None:
    images, labels, masks = data
    assert images.shape == (N, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (N,) and labels.dtype == torch.int64
    assert masks.shape == (N, 32, 32) and masks.dtype == torch.bool
    assert labels.min() >= 0 and labels.max() <= 9
    # Images should use a broad part of the uint8 range, not a constant or narrow band.
    assert images.min() < 40 and images.max() > 215


@pytest.mark.parametrize("image_size", [16, 48])
def test_other_image_sizes(image_size: int) -> None:
    images, labels, masks = make_shapes(50, seed=3, image_size=image_size)
    assert images.shape == (50, 3, image_size, image_size)
    assert masks.shape == (50, image_size, image_size)
    assert masks.flatten(1).any(1).all()
    assert not masks[:, [0, -1], :].any() and not masks[:, :, [0, -1]].any()


@pytest.mark.parametrize("n", [0, 7, 1003])
def test_labels_balanced_and_shuffled(n: int) -> None:
    _, labels, _ = make_shapes(n, seed=1)
    counts = torch.bincount(labels, minlength=10)
    assert counts.sum() == n
    assert set(counts.tolist()) <= {n // 10, n // 10 + 1}
    if n >= 20:
        assert not torch.equal(labels, torch.arange(n) % 10)
        assert not torch.equal(labels, torch.sort(labels).values)


def test_deterministic_per_seed() -> None:
    a = make_shapes(100, seed=5)
    b = make_shapes(100, seed=5)
    c = make_shapes(100, seed=6)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[2], c[2])


def test_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    make_shapes(20, seed=0)
    torch_after, np_after = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(torch_after, torch.rand(1)) and np_after == np.random.rand()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make_shapes(-1, seed=0)
    with pytest.raises(ValueError):
        make_shapes(10, seed=0, image_size=8)


def test_masks_nonempty_inside_and_minority(data) -> None:
    _, labels, masks = data
    area = masks.float().mean((1, 2))
    assert (area > 0).all()
    # A 1-px border stays free, so no object is clipped by the image edge.
    assert not masks[:, [0, -1], :].any() and not masks[:, :, [0, -1]].any()
    assert 0.10 <= area.mean() <= 0.35
    assert area.max() < 0.5
    for c in range(10):
        assert (labels == c).any()
        assert area[labels == c].mean() >= 0.04


def test_object_contrasts_with_background(data) -> None:
    images, _, masks = data
    m = masks[:, None].float()
    outside = (images.float() * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3))
    diff = (_object_colour(images, masks) - outside).abs().mean(1)
    assert diff.min() > 50


def test_mask_is_exactly_the_object(data) -> None:
    images, _, masks = data
    x = images.float()
    dist = (x - _object_colour(images, masks)[:, :, None, None]).abs()
    # Every mask pixel is the object colour up to the +-8 pixel noise (plus
    # rounding and error in the estimated colour) ...
    assert dist.amax(1)[masks].max() <= 12
    # ... and every pixel bordering the mask is clearly not the object colour.
    dilated = F.max_pool2d(masks[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    boundary = dilated & ~masks
    assert dist.mean(1)[boundary].min() > 30


def _mask_features(masks: torch.Tensor, side: int = 12) -> torch.Tensor:
    """Per mask: its bounding-box crop resampled to side x side, plus the box's
    aspect ratio (which separates e.g. square from hbar): (N, side*side + 1)."""
    feats = []
    for mask in masks:
        rows = torch.nonzero(mask.any(1)).flatten()
        cols = torch.nonzero(mask.any(0)).flatten()
        crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].float()
        shape = F.adaptive_avg_pool2d(crop[None, None], side).flatten()
        aspect = torch.tensor([crop.shape[0] / crop.shape[1]])
        feats.append(torch.cat([shape, 4 * aspect]))
    return torch.stack(feats)


def test_classes_distinguishable_from_mask_geometry(data) -> None:
    _, train_labels, train_masks = data
    test_images, test_labels, test_masks = make_shapes(500, seed=1)
    train_x, test_x = _mask_features(train_masks), _mask_features(test_masks)
    centroids = torch.stack([train_x[train_labels == c].mean(0) for c in range(10)])
    pred = torch.cdist(test_x, centroids).argmin(1)
    accuracy = (pred == test_labels).float().mean()
    assert accuracy > 0.9  # chance is 0.1
