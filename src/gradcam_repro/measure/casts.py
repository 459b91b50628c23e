"""Global colour casts: what the audit measures where an artefact has no region (issue 23's tint).

A cast over the whole image (a camera's colour balance, the benchmark's `tint`) leaves no region to cluster,
transplant or remove, so the audit transplants its *effect* instead: every pixel of a seeded sample of the
audited images is shifted by `CAST_LEVELS` intensity levels along each of the 26 directions of the RGB cube
(each channel -1, 0 or +1), and for every class the share of images not predicted as it before that are
predicted as it after is counted. The `CHECKED_CLASSES` classes a cast moves most images into are measured again,
each with its strongest direction, on other images of the sample (so the reported rate is not the maximum of 26
noisy ones), with a 95% bootstrap interval.

No verdict is drawn from these rates: models react to faint casts without any shortcut (on 15 of this project's
CIFAR-10 ResNet-18s that rely on no cast, the strongest cast turned 9-28% of other images into one class, mostly a
green cast into deer; docs/zoo.md). They say which class a faint cast pushes towards and how hard, for a reader to
compare with a model trained without the suspected cast.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from gradcam_repro.measure import scores
from gradcam_repro.measure.predict import predict
from gradcam_repro.runtime import Runtime

CAST_LEVELS = 8  # about 3% of the intensity range: faint, as a camera's cast or the benchmark's tint is
SCAN_IMAGES = 100  # images shifted along every direction (26 x 100 predictions)
CHECK_IMAGES = 200  # other images on which each checked class's strongest cast is measured again
CHECKED_CLASSES = 3
DIRECTIONS = tuple(d for d in itertools.product((-1, 0, 1), repeat=3) if any(d))


def cast(images: torch.Tensor, direction: tuple[int, int, int], levels: int = CAST_LEVELS) -> torch.Tensor:
    """(N, 3, H, W) uint8 `images` with every pixel shifted by `levels` x `direction` (per channel), clipped."""
    shift = torch.tensor(direction, dtype=torch.int16).view(1, 3, 1, 1) * levels
    return (images.to(torch.int16) + shift).clamp(0, 255).to(torch.uint8)


def _turned(before: torch.Tensor, after: torch.Tensor, target: int) -> torch.Tensor:
    """Per image not predicted as `target` before: whether it is after (bool)."""
    pool = before != target
    return after[pool] == target


def scan_casts(model: nn.Module, images: torch.Tensor, predictions: torch.Tensor, classes: tuple[str, ...],
               runtime: Runtime, seed: int = 0, levels: int = CAST_LEVELS) -> list[dict]:
    """The classes a faint colour cast turns most images into (module docstring), strongest first.

    images: (N, 3, H, W) uint8; predictions: (N,) the model's classes for them. Each row: "class", "direction"
    (-1/0/+1 per R, G, B), "levels", "scan_flip" (the rate in the scan) and "flip" (the bootstrap interval on
    the check images, NaN where none is left)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    scan = order[:min(SCAN_IMAGES, max(1, len(images) // 2))]
    check = order[len(scan):len(scan) + CHECK_IMAGES]
    before = predictions[scan]
    best: dict[int, tuple[float, tuple[int, int, int]]] = {}
    for direction in DIRECTIONS:
        after = predict(model, cast(images[scan], direction, levels), runtime)
        for target in range(len(classes)):
            turned = _turned(before, after, target)
            rate = float(turned.float().mean()) if len(turned) else 0.0
            if target not in best or rate > best[target][0]:
                best[target] = (rate, direction)
    strongest = sorted(best, key=lambda t: -best[t][0])[:CHECKED_CLASSES]
    rows = []
    for target in strongest:
        rate, direction = best[target]
        after = predict(model, cast(images[check], direction, levels), runtime) if len(check) else predictions[check]
        rows.append({"class": classes[target], "direction": list(direction), "levels": levels,
                     "scan_flip": round(rate, 4),
                     "flip": scores.bootstrap_ci(_turned(predictions[check], after, target), seed)})
    return sorted(rows, key=lambda r: -r["flip"]["mean"] if r["flip"]["n"] else 1.0)


def settings_record() -> dict:
    """The scan's fixed settings, as audit.json records them."""
    return {"levels": CAST_LEVELS, "scan_images": SCAN_IMAGES, "check_images": CHECK_IMAGES,
            "checked_classes": CHECKED_CLASSES, "directions": len(DIRECTIONS)}
