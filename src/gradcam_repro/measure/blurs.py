"""A region where a class's images have lost their fine detail: what the audit tests for a blurred region (issue
23's `blur`: a square of every image of one class replaced by the same place of the blurred image).

A blur adds nothing: no colour for `measure.shared` to find and no pattern for `measure.patterns` to add elsewhere,
and the region keeps each image's own (smoothed) content. What the carriers share is what they lack. The *detail* of
an image at a pixel is the mean over its channels of the absolute residual of `measure.patterns` (the image minus its
local 3x3 mean); a blur of a few px takes it to near zero, where a photo's content keeps some almost everywhere.

For one class: members are the images assigned to it, the reference as many images assigned to other classes
(seeded). Both are split into two seeded halves (a stream of their own, as the pattern test's). In each half the
*loss* at a pixel is the reference images' mean detail less the members'. Every image of the other half scores
log(its detail where the class's detail is ordinary) - log(its detail where the class lacks it), each a mean of its
own detail weighted by that half's loss, so that an image flat all over (a sky) scores as little as a sharp one. An
image *carries* a blur where its score exceeds the reference images' scores by `patterns.CARRIER_SIGMAS` of their
standard deviations, as the pattern test's carriers do.

The *region* is where the carriers lack most: the bounding box of the pixels whose loss (all reference images'
mean detail less the carriers') exceeds `patterns.BOX_SHARE` of its largest value. At a blur's edge a pixel's 3x3
residual reaches sharp neighbours, so that box can fall short of the blurred one by a pixel or two, by how much
depending on the images' content. The blur's *extent and strength* are therefore read off the images, not off the
model: of that box grown by 0, 1 or 2 px (`GROW_PX`) and the sigmas of `SIGMA_LADDER`, the blur that, applied to the
reference images, brings their mean detail map nearest the carriers' (least squares of the logarithms, so that the
near-zero detail inside a blur weighs as much as the sharp detail around it). The audit then blurs that box
at that sigma on other classes' images: the artefact's effect transplanted (a blur cannot be pasted as pixels). It
also blurs the box rolled by half the image (the same blur, none of it at its place) and reports that rate beside
the verdict, not as its control, as the pattern test does: a model that answers blur of this strength anywhere
answers both, and that is a shortcut too. A blur cannot be undone, so there is no removal test; the audit says so.

Audit rules version 8. The ladder spans the zoo's blur strengths (`data.zoo.BLUR_STRENGTH`, 0.3-5 px) and the
thresholds are the pattern test's, fixed before any audit of a blurred model was looked at. Two choices came later:
detail "elsewhere" is weighed where the class's detail is ordinary, after a check without models (each benchmark
recipe planted on CIFAR-10 test images), as a drawn mark adds detail (a frame's border had made 33 of 52 framed frogs
"carriers"); and the extent is fitted (`GROW_PX`), after one blurred model (seed 0) moved 50% of other images with
the found 18 px box and 73% with the planted 20 px one. The benchmark's other cells are their check
(docs/findings/benchmark.md).

Rules version 9: the extent's misfit is taken between the logarithms of the detail maps (`DETAIL_FLOOR_LEVELS`
added), not the maps. Least squares of the maps themselves weighs a blur's inside, where the detail is near zero
at any sigma, hardly at all, and read sigma 2 for a 16 px blur of sigma 3 (its transplant moved 13% of other images
where the model's flip rate was 51%). Without models (blurs of 9 sizes and strengths planted on half of one class's
images in a 1,000-image CIFAR-10 test subset), where the box was found (IoU >= 0.9) the logarithms read the planted
sigma exactly in 25 of 27 cases on subsets and classes not used to choose them (4 classes, 2 subsets), the maps in
13 of 27 (docs/zoo.md).

Pure functions on (N, 3, H, W) uint8 images.
"""

from __future__ import annotations

import torch

from gradcam_repro.data.zoo import box_masks, gaussian_blur
from gradcam_repro.measure.moving import grow_box
from gradcam_repro.measure.patterns import SPLIT_STREAM, cross_fitted, residuals, share_box

# The blur strengths tried when the found blur is measured: Gaussian sigmas in px, the zoo's range.
SIGMA_LADDER = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
# How far the found box may grow on each side (px) when the blur's extent is read off the images: the box is where
# the carriers lack at least half the largest shortfall, and at a blur's edge a pixel's 3x3 residual reaches sharp
# neighbours.
GROW_PX = (0, 1, 2)
# Another stream than the pattern test's halves (`patterns.SPLIT_STREAM`), so the two tests split a class apart.
BLUR_STREAM = SPLIT_STREAM + 1
# Added to detail before its logarithm (an image's score, the extent's misfit): a quarter of a level, under what JPEG
# and uint8 rounding leave in a flat region, so that a perfectly flat one does not score without bound.
DETAIL_FLOOR_LEVELS = 0.25


def detail(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, H, W) float: the mean absolute residual over the channels, in levels."""
    return residuals(images).abs().mean(dim=1)


def _loss_scores(details: torch.Tensor, fit_members: torch.Tensor, fit_reference: torch.Tensor) -> torch.Tensor:
    """How much less detail each of (n, H, W) `details` has where the fit members lack it (against the fit reference
    images' mean) than it has elsewhere: log(detail elsewhere) - log(detail there), each a weighted mean of the image's
    own detail (DETAIL_FLOOR_LEVELS added), so that an image flat all over scores as little as a sharp one. There: the
    pixels weighted by the members' shortfall; elsewhere: by how ordinary their detail is (the largest shortfall less
    the absolute difference), so that a mark that adds detail (a frame, a text) is neither."""
    loss = fit_reference.mean(dim=0) - fit_members.mean(dim=0)
    there = loss.clamp_min(0) / loss.clamp_min(0).sum().clamp_min(1e-12)
    ordinary = (loss.max() - loss.abs()).clamp_min(0)  # where the class's detail is like the others' (not where a
    elsewhere = ordinary / ordinary.sum().clamp_min(1e-12)  # drawn mark adds detail: a frame's border)

    def weighted(weight: torch.Tensor) -> torch.Tensor:
        return (details * weight).flatten(1).sum(dim=1) + DETAIL_FLOOR_LEVELS

    return weighted(elsewhere).log() - weighted(there).log()


def carriers(members: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """(n,) bool: which member images lack detail where the members do more than the reference images (module
    docstring), and the scores' summary {"member_scores", "reference_mean", "reference_sd", "threshold"}."""
    return cross_fitted(detail(members), detail(reference), _loss_scores, seed * 65_536 + BLUR_STREAM)


def blur_inside(images: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 3, H, W) uint8 `images` with the pixels where the (H, W) bool `mask` holds replaced by the same pixels of
    the images blurred at `sigma` px (as `data.zoo` renders a blur)."""
    return torch.where(mask, gaussian_blur(images, sigma), images)


def mask_of(box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """(H, W) bool, True inside `box` (`data.zoo.box_masks` of one box)."""
    return box_masks(torch.tensor([box]), height, width)[0]


def extent(wanted: torch.Tensor, reference: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[tuple, float]:
    """(box, sigma): of `box` grown by each of GROW_PX and each sigma of SIGMA_LADDER, the blur that brings the
    reference images' mean detail map nearest `wanted`, the carriers' (least squares of log(detail +
    DETAIL_FLOOR_LEVELS) over the image; ties: the first, least grown and smallest). Read off the images, not the
    model: a blur's edge keeps some detail where its neighbours are sharp, by how much depends on the images' content,
    and blurring the reference images reproduces that. In logarithms, as the near-zero detail inside a blur tells
    one sigma from the next by its ratio, not by its difference (rules version 9)."""
    size = tuple(reference.shape[-2:])
    blurred = {sigma: gaussian_blur(reference, sigma) for sigma in SIGMA_LADDER}  # each sigma once, for every box
    target = (wanted + DETAIL_FLOOR_LEVELS).log()

    def misfit(candidate: tuple[tuple, float]) -> float:
        place, sigma = candidate
        inside = torch.where(mask_of(place, *size), blurred[sigma], reference)
        return float(((detail(inside).mean(dim=0) + DETAIL_FLOOR_LEVELS).log() - target).pow(2).sum())

    return min(((grow_box(box, px, size), sigma) for px in GROW_PX for sigma in SIGMA_LADDER), key=misfit)


def shared_blur(members: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> dict:
    """The blur test's finding: {"carriers" (n,) bool, "box" (None where nothing is carried), "sigma" (px),
    "detail" {"carriers", "reference"}: mean detail inside the box in levels, "loss" (H, W): the reference images'
    mean detail less the carriers' (positive where the carriers lack), "scores" (the summary of `carriers`)}."""
    carried, summary = carriers(members, reference, seed)
    if not carried.any():
        return {"carriers": carried, "box": None, "sigma": None, "detail": None, "loss": None, "scores": summary}
    carried_detail, reference_detail = detail(members[carried]), detail(reference)
    wanted = carried_detail.mean(dim=0)
    loss = reference_detail.mean(dim=0) - wanted
    box, sigma = extent(wanted, reference, share_box(loss))
    mask = mask_of(box, *members.shape[-2:])
    levels = {"carriers": float(carried_detail[:, mask].mean()), "reference": float(reference_detail[:, mask].mean())}
    return {"carriers": carried, "box": box, "sigma": sigma, "detail": levels, "loss": loss, "scores": summary}
