"""Pixels that a class's images share more than other classes' do: an artefact at one place, found without relevance.

The audit's region search (`measure.spray`) starts from where a cluster's explanation maps concentrate. A model that
relies partly on a large artefact hardly moves its relevance onto it: on the benchmark's corner text at dose 0.3
(seed 1, flip rate 42.8%), the frog images with the text put 0.29 of HiResCAM's `layer2` mass in the text's box,
where a uniform map puts 0.215, and their maps cluster with the frog images without it; no relevance-driven search
reaches the text, and the audit's per-image transplant moved 13% of other images. What does tell the text apart is
that, at its place, many of the class's images share one colour, far more of them than of other classes' images.

For each pixel, the *mode share* of a set of images is the largest share of them whose colour there lies within
`TOLERANCE` levels (largest channel) of one of them (a candidate colour; at most `MAX_CANDIDATES` seeded images are
tried as candidates). A pixel is *shared* by a class when its mode share over the images assigned to the class is at
least `SHARED_RATIO` times the mode share over as many images of other classes, and at least `MIN_SHARE`, both read at
the lower end of the share's Wilson 95% interval (`wilson_low`): a maximum over candidate colours is high by chance on a
few images, and on a 50-image class 10 images share some colour at scattered pixels. The region
is the largest group of shared pixels (parts at most `bridge_px` apart are one group), its pixels the median of the
colours that make the mode, and its carriers the class's images that hold those colours on at least `CARRIER_SHARE`
of the group's pixels. The audit pastes only the shared pixels (as it pastes a constant-pixel region's constant
pixels) and removes the box from the carriers.

Audit rules version 5. The three numbers were set on one benchmark cell (the text at dose 0.3, seed 1, retrained on a
2-core Intel Xeon; its frog's 68 shared pixels all lay on the text, their colours pasted moved 41.9% of other images
against the 42.8% flip rate, and 6.1% on the clean control); they are checked on the benchmark's other cells, which
were not used to set them (docs/findings/benchmark.md). The Wilson bound was added after that check: on the text and
the logo at dose 1 (seed 0), where the class has only 50 test images, 19 scattered pixels shared by 10 of them (0.2,
against 0.08-0.1 for other classes) joined the text's group and widened its box (IoU 0.34 with the text's). It was
set on those two cells; the benchmark's other kinds are its check (docs/findings/benchmark.md).

Pure functions on (N, 3, H, W) uint8 images.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gradcam_repro.measure.shortcut import seeded_cap

TOLERANCE = 16  # intensity levels, largest channel: JPEG at quality 75 keeps a flat artefact's pixels within this
SHARED_RATIO = 2.0  # the class's mode share (its lower 95% bound) over other classes' at the same pixel
MIN_SHARE = 0.2  # and at least a fifth of the class's images hold the colour (the lower 95% bound)
Z95 = 1.959964  # the Wilson bound's z
MAX_CANDIDATES = 256  # candidate colours tried per pixel: a seeded choice of the images ...
MAX_IMAGES = 512  # ... against at most this many images (a seeded choice) ...
MAX_COMPARISONS = 1 << 31  # ... and fewer candidates (at least MIN_CANDIDATES) where images are large (224 px: 83)
MIN_CANDIDATES = 32
CARRIER_SHARE = 0.5  # an image carries the region when it holds the shared colours on at least half its pixels
_CHUNK_ELEMENTS = 1 << 25  # comparisons held in memory at once (int16: 64 MiB)


def mode_share(images: torch.Tensor, tolerance: int = TOLERANCE, candidates: int = MAX_CANDIDATES,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 -> ((H, W) float mode share, (3, H, W) uint8 the candidate colour that reaches it).

    At each pixel: max over the candidate images j of the share of images i with max_c |x_i - x_j| <= tolerance
    (i over at most MAX_IMAGES of them, j over at most `candidates`, fewer where the images are large).
    """
    _, _, height, width = images.shape
    if len(images) == 0:
        return torch.zeros(height, width), torch.zeros(3, height, width, dtype=torch.uint8)
    x = images[seeded_cap(torch.arange(len(images)), MAX_IMAGES, seed)].to(torch.int16)
    n = len(x)
    candidates = min(candidates, max(MIN_CANDIDATES, MAX_COMPARISONS // (n * height * width)))
    pool = x[seeded_cap(torch.arange(n), candidates, seed + 1)]
    best = torch.full((height, width), -1.0)
    colour = torch.zeros(3, height, width, dtype=torch.int16)
    step = max(1, _CHUNK_ELEMENTS // (n * 3 * height * width))
    for start in range(0, len(pool), step):
        c = pool[start:start + step]  # (m, 3, H, W)
        close = ((x[None] - c[:, None]).abs().amax(dim=2) <= tolerance)  # (m, N, H, W)
        share = close.float().mean(dim=1)  # (m, H, W)
        top, arg = share.max(dim=0)
        better = top > best
        best = torch.where(better, top, best)
        chosen = c.gather(0, arg[None, None].expand(1, 3, height, width))[0]
        colour = torch.where(better, chosen, colour)
    return best, colour.to(torch.uint8)


def wilson_low(share: torch.Tensor, n: int, z: float = Z95) -> torch.Tensor:
    """The lower end of the Wilson 95% interval of a share observed over `n` images (elementwise; 0 where n is 0)."""
    if n == 0:
        return torch.zeros_like(share)
    centre = share + z * z / (2 * n)
    spread = z * torch.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return ((centre - spread) / (1 + z * z / n)).clamp_min(0)


def mode_colour(images: torch.Tensor, colour: torch.Tensor, tolerance: int = TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the median colour of the images within `tolerance` of (3, H, W) `colour` (where none is, `colour`
    itself), and (N, H, W) bool: which images are."""
    x = images.to(torch.int16)
    close = (x - colour.to(torch.int16)).abs().amax(dim=1) <= tolerance  # (N, H, W)
    masked = torch.where(close[:, None], x.float(), torch.tensor(float("nan")))
    median = masked.nanmedian(dim=0).values
    return torch.where(median.isnan(), colour.float(), median).round().to(torch.uint8), close


def shared_mask(members: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(H, W) bool: the pixels the class's (n, 3, H, W) `members` share (rules of the module docstring) against the
    (m, 3, H, W) `reference` images of other classes; (3, H, W) uint8 the members' candidate colours; and the two
    (H, W) mode-share maps {"share", "reference_share"}."""
    share, colour = mode_share(members, seed=seed)
    reference_share, _ = mode_share(reference, seed=seed + 1)
    low = wilson_low(share, min(len(members), MAX_IMAGES))  # the share's lower bound: a maximum over colours of few
    mask = (low >= MIN_SHARE) & (low >= SHARED_RATIO * reference_share)  # images is high by chance alone
    return mask, colour, {"share": share, "reference_share": reference_share}


def bridged_labels(mask: np.ndarray, bridge_px: int | None) -> tuple[np.ndarray, int]:
    """Label `mask`'s parts, those at most `bridge_px` apart as one (a square reach, so that the corners of glyphs
    that sit diagonally apart count too); without `bridge_px`, its 4-connected parts. Returns the (H, W) labels, 0
    off `mask`, and their count."""
    from scipy.ndimage import binary_dilation, label

    if bridge_px:
        square = np.ones((3, 3), dtype=bool)
        joined = binary_dilation(mask, square, iterations=math.ceil(bridge_px / 2)) if mask.any() else mask
        labelled, count = label(joined, square)
    else:
        labelled, count = label(mask)
    return np.where(mask, labelled, 0), count


def largest_group(mask: np.ndarray, bridge_px: int) -> np.ndarray:
    """(H, W) bool: the largest group of `mask`'s pixels, parts at most `bridge_px` (at least 1) apart counted as
    one, as the audit joins a text's glyphs."""
    labelled, count = bridged_labels(mask, max(bridge_px, 1))
    if count == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def shared_region(members: torch.Tensor, reference: torch.Tensor, bridge_px: int, min_px: int,
                  seed: int = 0) -> dict | None:
    """The class's shared-pixel region, or None where fewer than `min_px` pixels are shared.

    members: (n, 3, H, W) uint8 images assigned to the class; reference: as many of other classes'. Returns
    {"box": (t, l, b, r), "keep": (h, w) bool shared pixels in it, "pixels": (3, h, w) uint8 their colours,
    "carriers": (n,) bool, "constant_px": count, "share": (H, W) the members' mode share, "reference_share"}.
    """
    mask, colour, maps = shared_mask(members, reference, seed)
    group = torch.from_numpy(largest_group(mask.numpy(), bridge_px))
    count = int(group.sum())
    if count < min_px:
        return None
    rows, cols = group.nonzero(as_tuple=True)
    top, left, bottom, right = int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1
    pixels, close = mode_colour(members, colour)
    held = (close & group).flatten(1).sum(dim=1).float() / count
    return {"box": (top, left, bottom, right), "keep": group[top:bottom, left:right],
            "pixels": pixels[:, top:bottom, left:right].contiguous(), "carriers": held >= CARRIER_SHARE,
            "constant_px": count, **maps}
