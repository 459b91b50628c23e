"""Procedurally generated 10-class "shapes" dataset with ground-truth object masks.

Each image is a cluttered, low-contrast colour background with exactly one
filled or outlined geometric object drawn on top in a contrasting colour. The
label depends only on the object's geometry: background, object colour,
position and scale are drawn independently of the class, so a classifier has
to look at the object. The per-image mask marks exactly the object's pixels,
which makes the dataset suitable for scoring Grad-CAM localisation offline.

Everything is generated from a local ``numpy.random.Generator``; nothing is
downloaded and no global RNG state is touched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gradcam_repro.data.images import ImageData, tensor_fingerprint

# Shape predicates take object-centred coordinates ``u`` (right) and ``v``
# (down), both float32 arrays of shape (k, H, W) scaled so that the object's
# bounding box is [-1, 1] x [-1, 1], and return a bool array of the same
# shape that is True inside the object. Stroke widths are fractions of the
# half-size, so outlines stay >= ~2 px wide at the smallest scale.
_ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Upright isosceles triangle: apex at the top (v = -1), base at v = 1.
    return (np.abs(v) <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return (np.maximum(au, av) <= 1.0) & ((au <= 0.3) | (av <= 0.3))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 1.0


def _hbar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)


def _xcross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Two diagonal strokes (distance to each diagonal <= 0.25), clipped to the box.
    half_width = 0.25 * np.sqrt(2.0)
    on_diag = (np.abs(u - v) <= half_width) | (np.abs(u + v) <= half_width)
    return on_diag & (np.maximum(np.abs(u), np.abs(v)) <= 1.0)


def _frame(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    cheb = np.maximum(np.abs(u), np.abs(v))
    return (cheb <= 1.0) & (cheb >= 0.6)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Unit disk minus a disk shifted right, leaving a crescent that opens right.
    return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2)


_SHAPE_FNS: dict[str, _ShapeFn] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "diamond": _diamond,
    "hbar": _hbar,
    "xcross": _xcross,
    "frame": _frame,
    "crescent": _crescent,
}

SHAPES_CLASSES: tuple[str, ...] = tuple(_SHAPE_FNS)
"""Class names; label ``i`` of :func:`make_shapes` is ``SHAPES_CLASSES[i]``."""

# Object side length as a fraction of the image size (11-20 px at 32x32).
_MIN_SIZE_FRAC = 0.34
_MAX_SIZE_FRAC = 0.62
# Background: per-image base colour, plus smooth colour clutter at several
# scales (grid side, amplitude) and fine per-pixel noise; all amplitudes are
# in uint8 units and well below the object/background colour gap.
_BG_BASE_RANGE = (60.0, 196.0)
_BG_OCTAVES = ((2, 25.0), (4, 18.0), (8, 10.0))
_PIXEL_NOISE = 8
# Per-channel offset of the object colour from the background base colour.
_OBJ_DELTA_RANGE = (80.0, 130.0)


def _background(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (float32 backgrounds (n, 3, size, size) before pixel noise, base colours (n, 3))."""
    base = rng.uniform(*_BG_BASE_RANGE, size=(n, 3)).astype(np.float32)
    # Random values on coarse grids, upsampled bilinearly: smooth blotches and
    # gradients that vary per image and per channel. The octaves are summed at
    # the finest grid resolution so only one full-size upsample is needed.
    fine = max(grid for grid, _ in _BG_OCTAVES)
    coarse = torch.from_numpy(np.broadcast_to(base[:, :, None, None], (n, 3, fine, fine)).copy())
    for grid, amp in _BG_OCTAVES:
        octave = torch.from_numpy(rng.uniform(-amp, amp, size=(n, 3, grid, grid)).astype(np.float32))
        coarse += F.interpolate(octave, size=(fine, fine), mode="bilinear", align_corners=True)
    bg = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    return bg.numpy(), base


def _object_colours(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Return float32 object colours (n, 3) that differ from ``base`` by >= ~80 per channel."""
    delta = rng.uniform(*_OBJ_DELTA_RANGE, size=base.shape).astype(np.float32)
    sign = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=base.shape)
    colour = base + sign * delta
    # Flip channels that would leave [0, 255] so the contrast survives clipping.
    out_of_range = (colour < 0.0) | (colour > 255.0)
    colour = np.where(out_of_range, base - sign * delta, colour)
    return np.clip(colour, 0.0, 255.0)


def _object_masks(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Return bool masks (n, size, size) of one object per image, drawn per ``labels``."""
    n = labels.shape[0]
    half = rng.uniform(_MIN_SIZE_FRAC, _MAX_SIZE_FRAC, size=n).astype(np.float32) * size / 2.0
    # Keep a 1-px margin so no object touches or crosses the image border.
    lo, hi = half + 1.0, size - 1.0 - half
    cx = lo + rng.random(n, dtype=np.float32) * (hi - lo)
    cy = lo + rng.random(n, dtype=np.float32) * (hi - lo)

    centres = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    masks = np.zeros((n, size, size), dtype=bool)
    for label, shape_fn in enumerate(_SHAPE_FNS.values()):
        idx = np.flatnonzero(labels == label)
        if idx.size == 0:
            continue
        u = (centres[None, None, :] - cx[idx, None, None]) / half[idx, None, None]
        v = (centres[None, :, None] - cy[idx, None, None]) / half[idx, None, None]
        masks[idx] = shape_fn(*np.broadcast_arrays(u, v))
    return masks


def make_shapes(n: int, seed: int, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``n`` labelled shape images with ground-truth object masks.

    Args:
        n: number of images (>= 0).
        seed: RNG seed; the same ``(n, seed, image_size)`` gives bit-identical
            outputs, different seeds give different images.
        image_size: side length H = W of the square images (>= 16).

    Returns:
        images: (n, 3, H, W) uint8 RGB in [0, 255]; a cluttered background with
            one object whose colour differs from the background base colour by
            roughly 80-130 per channel.
        labels: (n,) int64 in [0, 9], indexing :data:`SHAPES_CLASSES`. Balanced:
            class ``i`` occurs ``n // 10`` or ``n // 10 + 1`` times, in a
            seed-dependent shuffled order.
        masks: (n, H, W) bool, True exactly on the object's pixels. Every mask
            is non-empty and stays >= 1 px away from the image border; the mean
            mask covers about 14% of the image (object side 0.34-0.62 x H).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    rng = np.random.default_rng(seed)
    num_classes = len(SHAPES_CLASSES)

    labels = rng.permutation(np.arange(n) % num_classes)
    masks = _object_masks(rng, labels, image_size)
    bg, base = _background(rng, n, image_size)
    colours = _object_colours(rng, base)

    images = np.where(masks[:, None], colours[:, :, None, None], bg)
    # Pixel noise over the whole image, object included, so the object carries
    # the same fine texture as the background rather than being a flat patch.
    images += rng.integers(-_PIXEL_NOISE, _PIXEL_NOISE, size=images.shape, endpoint=True, dtype=np.int8)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)

    return (
        torch.from_numpy(images),
        torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(masks),
    )


def load_shapes(n_train: int, n_test: int, seed: int) -> ImageData:
    """The synthetic shapes set; train and test come from independent seeds derived from `seed`."""
    tr_x, tr_y, tr_m = make_shapes(n_train, seed=2 * seed + 1)
    te_x, te_y, te_m = make_shapes(n_test, seed=2 * seed + 2)
    return ImageData(
        "shapes", tuple(SHAPES_CLASSES), tr_x, tr_y, te_x, te_y,
        fingerprint=tensor_fingerprint(tr_x, tr_y, tr_m, te_x, te_y, te_m),
        source=f"generated: make_shapes(seed={seed})", train_masks=tr_m, test_masks=te_m,
    )
