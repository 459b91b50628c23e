"""An artefact that moves: finding it and testing it on each image where it is, whatever its place.

The audit's first pass (`measure.spray`) groups a class's explanation maps by *where* their relevance sits
and tests one region per group: the region's median pixels are pasted at the same place on other classes'
images. A watermark that sits somewhere else on every image defeats both steps: its images scatter over
clusters by position, and the median over them is background. This module asks the same two questions
without a fixed place:

- grouping by *what the relevance looks like*: each map is embedded by the magnitude of the 2-D Fourier
  transform of its pooled, normalised form, which does not change when the map is shifted (circularly);
  images whose relevance is one small blob fall together wherever the blob is. A group is scored by how
  peaked its maps are: the share of each map's relevance on its own 1/16 most relevant pixels.
- testing *per image*: each image's region is the connected area around its own peak, grown until its removal
  changes the image's own class (`REGION_LADDER`: from the area at half the map's maximum, capped at 1/8 of the
  image, to the area at 0.3 of it, capped at 1/2), and it is transplanted to the same place on an image of another
  class, one source image per destination image in turn. Only the regions whose removal changes their own image's
  class are pasted (where at least 10 images' do): a class's images that do not carry the artefact point at their
  object, and pasting that dilutes the test. An image none of whose regions decides keeps the smallest. The
  controls are the same destination images with that region only occluded (filled with the mean of a ring around
  it) and untouched.

Any image size: the peak and the cap are shares of the image, and the pixel lengths (the margin a region is grown
by, the ring it is filled from) are parameters, which the audit reads for the image's size (`spray.AuditScale`).
Pure functions on (N, H, W) maps in [0, 1], (N, 3, H, W) uint8 images and (N, 4) long boxes (top, left,
bottom, right; bottom/right exclusive).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

# The peak of a map: its 1/16 most relevant pixels (64 of a 32x32 image, the audit's fixed-place share), at any size.
PEAK_SHARE = 1 / 16
# A per-image region is at most 1/8 of the image (128 px of 32x32, 384 px of 48x64) unless a smaller one does not
# decide its own image: larger and it is the object, and pasting an object's part can itself move images to the class.
MAX_REGION_SHARE = 1 / 8
# The regions an image's own region is grown through, smallest first, until its removal changes the image's class:
# (threshold as a share of the map's maximum, cap as a share of the image). Audit rules 4: added after the 10x22 px
# text at a random place (benchmark, seeds 0 and 2 at dose 1, relied on 99%) was pasted in 1/8-image pieces, which
# moved 24% and 13% of other images to frog; grown to the first region that decides, 69% and 59%, and its controls
# 17% and 9% (the same kind's models that ignore it; other classes of the relying models 22-32%). Checked on seed 1
# (not used to choose it) and on the benchmark's other kinds (docs/findings/benchmark.md).
REGION_LADDER = ((0.5, 1 / 8), (0.3, 1 / 8), (0.5, 1 / 4), (0.3, 1 / 4), (0.5, 1 / 2), (0.3, 1 / 2))
# "Unexplained concentration": a class none of whose tests confirmed anything, yet whose most peaked group
# of maps is at least 1.5x as peaked as the median class's (both as lower 95% bounds, x what a uniform map
# scores). Fixed before any CIFAR-10 audit of a moving artefact was run; the other classes of the same model
# are the reference, so that how sharp a method and layer are in general cancels out. The same ratio also flags a
# class whose regions, pasted, move at least 10% of other images (above the controls) and 1.5x the median class's
# rate: added after a benchmark model that relies on a corner text at 32% got "no localised artefact found" (its
# text moved 35% against the median class's 10%).
UNEXPLAINED_RATIO = 1.5


def peak_share(maps: torch.Tensor, share: float = PEAK_SHARE) -> torch.Tensor:
    """(N,) share of each (H, W) map's relevance on its own `share` most relevant pixels; all-zero maps 0."""
    flat = maps.flatten(1).float().clamp_min(0)
    k = max(1, round(share * flat.shape[1]))
    total = flat.sum(dim=1)
    top = flat.topk(k, dim=1).values.sum(dim=1)
    return top / torch.where(total > 0, total, torch.ones_like(total))


def shift_invariant_embedding(maps: torch.Tensor, grid: int = 8) -> np.ndarray:
    """(N, H, W) maps -> (N, grid * (grid // 2 + 1)) unit vectors: |2-D FFT| of the maps average-pooled to
    `grid` x `grid` and L1-normalised. A (circular) shift of a map changes only the FFT's phase."""
    maps = maps.double().clamp_min(0)
    pooled = F.adaptive_avg_pool2d(maps[:, None], grid)[:, 0]
    total = pooled.sum(dim=(1, 2), keepdim=True)
    pooled = torch.where(total > 0, pooled / torch.where(total > 0, total, torch.ones_like(total)), 1.0 / grid**2)
    spectrum = torch.fft.rfft2(pooled).abs().flatten(1)
    return (spectrum / spectrum.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def grow_box(box, margin: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) `box` grown by `margin` px on every side, clipped to an image of `size` (H, W)."""
    top, left, bottom, right = box
    return max(top - margin, 0), max(left - margin, 0), min(bottom + margin, size[0]), min(right + margin, size[1])


def peak_boxes(maps: torch.Tensor, threshold: float = 0.5, margin: int = 0,
               max_share: float = MAX_REGION_SHARE) -> torch.Tensor:
    """(N, 4) long: each map's region, the box around the connected area >= `threshold` x its maximum that
    holds its peak, grown by `margin` px on every side (the audit grows its fixed regions' search window the same
    way: a coarse map's peak covers only part of an artefact); where that is larger than `max_share` of the
    image, the square of that area centred on the peak. Clipped to the image."""
    from scipy.ndimage import label

    n, height, width = maps.shape
    out = torch.empty(n, 4, dtype=torch.int64)
    for i, m in enumerate(maps.float().numpy()):
        peak = np.unravel_index(np.argmax(m), m.shape)
        labelled, _ = label(m >= threshold * m.max())
        rows, cols = np.nonzero(labelled == labelled[peak])
        box = grow_box((rows.min(), cols.min(), rows.max() + 1, cols.max() + 1), margin, (height, width))
        out[i] = torch.tensor(capped_box(box, peak, (height, width), max_share))
    return out


def deciding_regions(maps: torch.Tensor, decides: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], margin: int = 0,
                     ladder: tuple[tuple[float, float], ...] = REGION_LADDER) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (N, H, W) map's region grown through `ladder` ((threshold, max share) steps, `peak_boxes`) until
    `decides(index, boxes)` ((k,) image indices and their (k, 4) boxes -> (k,) bool: removing the box changes that
    image's class) says so. Returns (N, 4) long boxes and (N,) long steps: the ladder step whose region decided, or
    -1 where none did (that image keeps the first step's region). Only undecided images are tried at each step,
    and only with a box they were not tried with before."""
    tried = [peak_boxes(maps, threshold, margin, share) for threshold, share in ladder]
    boxes = tried[0].clone() if ladder else torch.zeros(len(maps), 4, dtype=torch.int64)
    steps = torch.full((len(maps),), -1)
    for step, grown in enumerate(tried):
        new = torch.stack([~(grown == before).all(dim=1) for before in tried[:step]]).all(dim=0) if step else True
        index = ((steps < 0) & new).nonzero().squeeze(1)
        if len(index):
            hit = index[decides(index, grown[index])]
            boxes[hit], steps[hit] = grown[hit], step
    return boxes, steps


def capped_box(box, peak: tuple[int, int], size: tuple[int, int], max_share: float = MAX_REGION_SHARE) -> list[int]:
    """`box` (top, left, bottom, right) if it covers at most `max_share` of an image of `size`, else the square of
    that area centred on `peak` (row, col), inside the image (a square: an artefact's shape, not the image's; on a
    narrow image at most as wide as the image's shorter side)."""
    height, width = size
    top, left, bottom, right = (int(v) for v in box)
    if (bottom - top) * (right - left) <= max_share * height * width:
        return [top, left, bottom, right]
    side = min(max(1, int((max_share * height * width) ** 0.5)), height, width)
    top = min(max(int(peak[0]) - side // 2, 0), height - side)
    left = min(max(int(peak[1]) - side // 2, 0), width - side)
    return [top, left, top + side, left + side]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) long bounding boxes of each mask (an empty mask gives (0, 0, 0, 0))."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    height, width = masks.shape[1:]

    def first_last(hit: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(length).expand_as(hit)
        first = torch.where(hit, index, length).amin(dim=1)
        last = torch.where(hit, index + 1, 0).amax(dim=1)
        return torch.where(hit.any(dim=1), first, 0), last

    top, bottom = first_last(rows, height)
    left, right = first_last(cols, width)
    return torch.stack([top, left, bottom, right], dim=1)


def boxes_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) intersection over union of the (N, 4) boxes `a` and `b`, pair by pair (0 where both are empty)."""
    inter_h = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    inter_w = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = inter_h * inter_w
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter, dtype=torch.float32)).float()


def ring_fill(images: torch.Tensor, masks: torch.Tensor, ring_px: int) -> torch.Tensor:
    """A copy of (N, 3, H, W) uint8 `images` with each (N, H, W) mask filled by that image's mean colour over
    a `ring_px` ring around it (the whole image's mean where no ring is left)."""
    grown = F.max_pool2d(masks[:, None].float(), 2 * ring_px + 1, stride=1, padding=ring_px)[:, 0] > 0
    ring = grown & ~masks
    ring = torch.where(ring.flatten(1).any(dim=1)[:, None, None], ring, torch.ones_like(ring))
    fill = (images.float() * ring[:, None]).sum(dim=(2, 3)) / ring.sum(dim=(1, 2))[:, None]
    fill = fill.round().clamp(0, 255).to(torch.uint8)[:, :, None, None].expand_as(images)
    return torch.where(masks[:, None], fill, images)


def transplant(destinations: torch.Tensor, sources: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each destination image j with source image j mod n's pixels pasted inside that source's mask (same place).

    destinations: (M, 3, H, W) uint8; sources: (n, 3, H, W) uint8 with their (n, H, W) bool masks."""
    pick = torch.arange(len(destinations)) % len(sources)
    return torch.where(masks[pick][:, None], sources[pick], destinations)
