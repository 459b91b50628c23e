"""Scores for explanations and for shortcut reliance, with bootstrap confidence intervals.

Pure functions on tensors. Maps are non-negative (N, H, W) tensors; boxes are
(top, left, bottom, right) in pixels with bottom/right exclusive.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gradcam_repro.measure.results import PATCHED_TARGET

# 95% intervals from this many bootstrap resamples (percentile method: it stays
# defined for degenerate samples such as all-ones rates, where BCa is not).
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# The pointing game counts a hit when the map's maximum lies within this many
# pixels of the box: one 32->4 px layer4 cell spans 8 px, and bilinear
# upsampling can move a peak by up to half a cell, so 4 px is not a penalty
# for resolution alone, yet far smaller than the image.
POINTING_TOLERANCE_PX = 4
# Verdict rules, fixed before any result was looked at:
# - Grad-CAM "points at the patch" at a layer when, on patched target images the
#   model calls target, the lower 95% bound of the mean energy in the patch box
#   is at least 2x what a uniform map gets: twice chance is the least a reader
#   would call "pointing at", and the CI bound keeps small samples honest.
# - The model "relies on the patch" when pasting the patch on non-target images
#   makes it predict the target class for a majority of them (lower 95% bound of
#   the flip-to-target rate >= 0.5): the patch alone then overrides the content.
POINTS_AT_PATCH_RATIO = 2.0
RELIES_FLIP_RATE = 0.5


def cam_energy_in_box(maps: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Fraction of each map's total mass inside `box`: (N, H, W) >= 0 -> (N,) in [0, 1].

    An all-zero map scores 0; a uniform map scores box area / (H * W).
    """
    mask = torch.zeros(maps.shape[-2:], dtype=torch.bool)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = True
    return cam_energy_in_mask(maps, mask.expand_as(maps))


def cam_energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of each map's mass on its (N, H, W) bool mask -> (N,) in [0, 1]; all-zero maps score 0."""
    total = maps.sum(dim=(1, 2))
    inside = (maps * masks).sum(dim=(1, 2))
    return inside / torch.where(total > 0, total, torch.ones_like(total))


def uniform_energy(masks_or_box, image_size: int = 32) -> float:
    """What a uniform map scores: the box's area fraction, or the masks' mean area fraction."""
    if isinstance(masks_or_box, torch.Tensor):
        return masks_or_box.float().mean().item()
    top, left, bottom, right = masks_or_box
    return (bottom - top) * (right - left) / image_size**2


def pointing_game(maps: torch.Tensor, box: tuple[int, int, int, int], tolerance_px: int = POINTING_TOLERANCE_PX) -> torch.Tensor:
    """(N,) bool: the map's maximum lies in `box` grown by `tolerance_px` on every side.

    Where several pixels share the maximum, the first in raster order counts;
    an all-zero map never hits.
    """
    n, h, w = maps.shape
    flat = maps.flatten(1).argmax(dim=1)
    rows, cols = flat // w, flat % w
    top, left, bottom, right = box
    inside = ((rows >= top - tolerance_px) & (rows < bottom + tolerance_px)
              & (cols >= left - tolerance_px) & (cols < right + tolerance_px))
    return inside & (maps.flatten(1).amax(dim=1) > 0)


def dilate_masks(masks: torch.Tensor, px: int) -> torch.Tensor:
    """(N, H, W) bool masks grown by `px` pixels in every direction, clipped to the image.

    The neighbourhood is a (2 px + 1)-pixel square (Chebyshev distance <= px), so a
    box grows into the box widened by `px` on each side, as in `pointing_game`.
    """
    if px < 0:
        raise ValueError(f"px must be >= 0, got {px}")
    if px == 0:
        return masks.bool()
    grown = torch.nn.functional.max_pool2d(masks.float().unsqueeze(1), kernel_size=2 * px + 1, stride=1, padding=px)
    return grown.squeeze(1) > 0


def pointing_game_mask(maps: torch.Tensor, masks: torch.Tensor, *, tolerance_px: int = 0) -> torch.Tensor:
    """(N,) bool: the map's maximum (first in raster order) falls on the (N, H, W) mask
    grown by `tolerance_px` (`dilate_masks`); an all-zero map never hits.

    With a box's mask and `tolerance_px=POINTING_TOLERANCE_PX` this is `pointing_game`.
    """
    n = maps.shape[0]
    if tolerance_px:
        masks = dilate_masks(masks, tolerance_px)
    flat = maps.flatten(1).argmax(dim=1)
    return masks.flatten(1)[torch.arange(n), flat] & (maps.flatten(1).amax(dim=1) > 0)


def relevance_rank_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) float: with K the mask's pixel count, the share of the map's K highest pixels on the mask.

    Relevance rank accuracy (Arras et al. 2022; Quantus's RelevanceRankAccuracy).
    Ties are ranked in raster order (a stable descending sort: of equal values the
    first pixel ranks higher, as the maximum in the pointing game), so an all-zero
    map's top K are its first K pixels. An empty mask scores NaN. A map equal to
    its mask scores 1; a uniformly random ranking scores K / (H * W) in expectation
    (`uniform_rank_accuracy`).
    """
    on = masks.flatten(1).bool()
    k = on.sum(dim=1)
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
    hits_in_top = on.gather(1, order).cumsum(dim=1)  # [i, j]: mask pixels among image i's j + 1 highest
    hits = hits_in_top.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    dtype = maps.dtype if maps.is_floating_point() else torch.get_default_dtype()
    share = hits.to(dtype) / k.clamp(min=1).to(dtype)
    return torch.where(k > 0, share, torch.full_like(share, math.nan))


def uniform_rank_accuracy(masks: torch.Tensor) -> float:
    """What a uniformly random ranking scores in `relevance_rank_accuracy`, in expectation:
    the mean over the (N, H, W) masks of K / (H * W) (empty masks count as 0)."""
    return masks.flatten(1).float().mean(dim=1).mean().item()


def uniform_pointing(box: tuple[int, int, int, int], image_size: int = 32, tolerance_px: int = POINTING_TOLERANCE_PX) -> float:
    """Hit rate of a map whose maximum falls on a uniformly random pixel."""
    top, left, bottom, right = box
    rows = min(bottom + tolerance_px, image_size) - max(top - tolerance_px, 0)
    cols = min(right + tolerance_px, image_size) - max(left - tolerance_px, 0)
    return rows * cols / image_size**2


def flip_to_target_rate(patched_predictions: torch.Tensor, labels: torch.Tensor, target: int) -> torch.Tensor:
    """(M,) bool over the images whose label is not `target`: predicted `target` once patched."""
    keep = labels != target
    return patched_predictions[keep] == target


def bootstrap_ci(values, seed: int = 0, n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE) -> dict:
    """Mean of `values` with a seeded percentile-bootstrap confidence interval.

    Returns {"mean", "low", "high", "n"}; an empty sample gives NaNs, a single
    value or a constant sample a zero-width interval.
    """
    from scipy.stats import bootstrap

    x = np.asarray(values.float().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    if x.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return {"mean": mean, "low": mean, "high": mean, "n": int(x.size)}
    res = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                    method="percentile", rng=np.random.default_rng(seed))
    return {"mean": mean, "low": float(res.confidence_interval.low), "high": float(res.confidence_interval.high),
            "n": int(x.size)}


def verdicts(model_metrics: dict, uniform_energy_in_box: float) -> dict:
    """The two verdicts of the shortcut study for one model (see the rules above).

    model_metrics: one model's entry of `evaluate.measure_shortcut`. Returns
    {"relies_on_patch": bool, "points_at_patch": {layer: bool}, "agrees": {layer: bool}}.
    """
    relies = model_metrics["flip_to_target"]["patch"]["low"] >= RELIES_FLIP_RATE
    points = {}
    for layer, sets in model_metrics["cam"].items():
        low = sets[PATCHED_TARGET]["energy"]["low"]
        points[layer] = bool(low == low and low >= POINTS_AT_PATCH_RATIO * uniform_energy_in_box)
    return {"relies_on_patch": bool(relies), "points_at_patch": points,
            "agrees": {layer: p == bool(relies) for layer, p in points.items()}}
