"""A faint pattern that a class's images share: what the audit tests where an artefact is added to the whole image
rather than drawn at a place (issue 23's `noise`: a sensor's fixed pattern of +-A levels on every pixel).

Such an artefact leaves no region for relevance to point at and no constant pixels for `measure.shared`: every image
that carries it keeps its own content, shifted by the same small amounts. What the carriers do share is in their
fine detail. The *residual* of an image is the image minus its local 3x3 mean (edge-replicated), per channel; averaged
over many images it cancels their content and keeps whatever fine pattern they have in common.

For one class: members are the images assigned to it, the reference as many images assigned to other classes
(seeded). Both are split into two seeded halves. Each half's *signature* is its members' mean residual minus its
reference images' mean residual, and every image of the other half is scored by its residual's projection on that
signature (cross-fitted: no image is scored against a mean it is part of). An image *carries* the pattern when its
score exceeds the reference images' scores by `CARRIER_SIGMAS` standard deviations (their mean plus that many of their
standard deviation); with Gaussian scores a reference image does so once in about 2,000, so a class without a shared
pattern has next to no carriers. The *pattern* is the carriers' mean residual minus all reference images' mean
residual: pasted (added, rounded and clipped) on other classes' images it is the artefact's effect transplanted,
subtracted from the carriers it is the artefact removed. The audit also pastes the same pattern rolled by half the image
in each direction (the same amplitudes and texture, none at its place) and reports that rate beside the verdict, not as
its control: a model that reacts to fine texture of this strength anywhere reacts to both, and that is a shortcut too.

Its box is where the pattern is strong: the bounding box of the pixels whose largest channel exceeds `BOX_SHARE` of
the pattern's largest value (the whole image for a sensor pattern, a drawn artefact's outline for one at a place).

Audit rules version 7. `CARRIER_SIGMAS` and `BOX_SHARE` were set before any audited model was looked at (a one in
2,000 false-carrier rate, and a box at half the peak as the relevance box's threshold is); the benchmark's cells are
their check (docs/findings/benchmark.md).

Pure functions on (N, 3, H, W) uint8 images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

CARRIER_SIGMAS = 3.5  # an image carries the pattern when its score is this many reference SDs above their mean
BOX_SHARE = 0.5  # the box holds the pixels where the pattern exceeds half its largest absolute value
LOCAL_MEAN_PX = 3  # the residual is the image minus its local mean over this square
# The halves are drawn from a stream of their own: `data.bias.plant` draws a planted share with the audit's seed, and
# with the same stream the first half of a class would be exactly its planted images.
SPLIT_STREAM = 0x5EED


def residuals(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, H, W) float: each image minus its local LOCAL_MEAN_PX x LOCAL_MEAN_PX mean."""
    x = images.float()
    pad = LOCAL_MEAN_PX // 2
    local = F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), LOCAL_MEAN_PX, stride=1)
    return x - local


def _halves(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded halves of range(n) (the second one larger where n is odd)."""
    order = torch.randperm(n, generator=generator)
    return order[: n // 2], order[n // 2:]


def _scores(res: torch.Tensor, base: torch.Tensor, signature: torch.Tensor) -> torch.Tensor:
    """Projections of (n, 3, H, W) residuals, less the reference mean `base`, on the unit `signature`."""
    unit = signature / signature.norm().clamp_min(1e-12)
    return ((res - base) * unit).flatten(1).sum(dim=1)


Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_fitted(member_features: torch.Tensor, reference_features: torch.Tensor, score: Scorer,
                 stream: int) -> tuple[torch.Tensor, dict]:
    """(n,) bool: which members score above the reference images by CARRIER_SIGMAS of the reference scores' SD,
    each image scored by `score(features, fit members, fit reference)` fitted on the other seeded half (drawn from
    the generator seeded `stream`), and the summary {"member_scores", "reference_mean", "reference_sd", "threshold"}.
    Nothing is carried where there is no half to fit on (under 2 members) or no spread to measure (under 4
    reference images)."""
    if len(member_features) < 2 or len(reference_features) < 4:
        nan = float("nan")
        return torch.zeros(len(member_features), dtype=torch.bool), {
            "member_scores": torch.full((len(member_features),), nan), "reference_mean": nan, "reference_sd": nan,
            "threshold": nan}
    generator = torch.Generator().manual_seed(stream)
    (m_a, m_b), (r_a, r_b) = _halves(len(member_features), generator), _halves(len(reference_features), generator)
    member_scores = torch.empty(len(member_features))
    reference_scores = torch.empty(len(reference_features))
    for (m_fit, r_fit), (m_score, r_score) in (((m_a, r_a), (m_b, r_b)), ((m_b, r_b), (m_a, r_a))):
        fitted = (member_features[m_fit], reference_features[r_fit])
        member_scores[m_score] = score(member_features[m_score], *fitted)
        reference_scores[r_score] = score(reference_features[r_score], *fitted)
    mean, sd = float(reference_scores.mean()), float(reference_scores.std())
    threshold = mean + CARRIER_SIGMAS * sd
    return member_scores > threshold, {"member_scores": member_scores, "reference_mean": mean, "reference_sd": sd,
                                       "threshold": threshold}


def _signature_scores(res: torch.Tensor, fit_members: torch.Tensor, fit_reference: torch.Tensor) -> torch.Tensor:
    base = fit_reference.mean(dim=0)
    return _scores(res, base, fit_members.mean(dim=0) - base)


def carriers(members: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """(n,) bool: which member images carry a pattern the members share more than the reference images do (module
    docstring), and the scores' summary {"member_scores", "reference_mean", "reference_sd", "threshold"}."""
    return cross_fitted(residuals(members), residuals(reference), _signature_scores, seed * 65_536 + SPLIT_STREAM)


def pattern(carried: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float: the carriers' mean residual minus the reference images' mean residual."""
    return residuals(carried).mean(dim=0) - residuals(reference).mean(dim=0)


def add(images: torch.Tensor, shift: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """(N, 3, H, W) uint8 `images` with the (3, H, W) float `shift` added (sign -1: subtracted), rounded, clipped."""
    return (images.float() + sign * shift).round().clamp(0, 255).to(torch.uint8)


def rolled(shift: torch.Tensor) -> torch.Tensor:
    """`shift` (a pattern, or an (H, W) mask) rolled by half its height and half its width (wrapping round): the same,
    none of it at its place."""
    height, width = shift.shape[-2:]
    return torch.roll(shift, shifts=(height // 2, width // 2), dims=(-2, -1))


def pattern_box(shift: torch.Tensor, share: float = BOX_SHARE) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pixels whose largest absolute channel exceeds `share` of the maximum.
    Strictly: a 1 px line's residual is exactly half its own on the rows either side, which are not the line."""
    return share_box(shift.abs().amax(dim=0), share)


def share_box(strength: torch.Tensor, share: float = BOX_SHARE) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pixels of the (H, W) `strength` that exceed `share` of its maximum."""
    rows, cols = (strength > share * strength.max()).nonzero(as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def visible(shift: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 picture of a signed pattern: mid-grey where it is 0, its largest value stretched to 0 or 255."""
    peak = shift.abs().max().clamp_min(1e-6)
    return (128 + 127 * shift / peak).round().clamp(0, 255).to(torch.uint8)


def shared_pattern(members: torch.Tensor, reference: torch.Tensor, seed: int = 0) -> dict:
    """The pattern test's finding: {"carriers" (n,) bool, "pattern" (3, H, W) float or None where nothing is carried,
    "box", "rms" (levels), "scores" (the summary of `carriers`)}."""
    carried, summary = carriers(members, reference, seed)
    if not carried.any():
        return {"carriers": carried, "pattern": None, "box": None, "rms": 0.0, "scores": summary}
    shift = pattern(members[carried], reference)
    return {"carriers": carried, "pattern": shift, "box": pattern_box(shift), "rms": float(shift.pow(2).mean().sqrt()),
            "scores": summary}
