"""Planting the shortcut: a coloured square pasted on the stored uint8 images.

Pure functions on tensors. The patch is applied at dataset level, before any augmentation, exactly as a
data-collection artefact would be. The square is a `data.artefact.Artefact` (`patch_artefact` turns the
spec's patch dict into one, `patch_box` is its box rule); `inject_patch` and `bias_dataset` paste through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradcam_repro.data.artefact import Artefact, check_images, patch_box
from gradcam_repro.errors import UserError

__all__ = ["DEFAULT_PATCH", "bias_dataset", "inject_patch", "patch_artefact", "patch_box"]

# The planted patch as a dict (`pipeline.spec.BiasSpec.patch`, `inject_patch`'s keywords), with its defaults.
DEFAULT_PATCH = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}


def patch_artefact(patch: dict, image_size: int | Sequence[int], class_name: str = "",
                   source: str = "planted patch") -> Artefact:
    """The square artefact a patch dict ({patch_size, color, corner, offset}; missing keys take
    `DEFAULT_PATCH`'s values) describes on images of `image_size` (a side, or (height, width))."""
    unknown = sorted(set(patch) - set(DEFAULT_PATCH))
    if unknown:
        raise TypeError(f"unknown patch key(s) {', '.join(unknown)}; a patch has {', '.join(DEFAULT_PATCH)}")
    p = {**DEFAULT_PATCH, **patch}
    return Artefact.square(p["patch_size"], p["color"], p["corner"], p["offset"], image_size, class_name, source)


def inject_patch(
    images: torch.Tensor,
    patch_size: int = DEFAULT_PATCH["patch_size"],
    color: tuple[int, int, int] = DEFAULT_PATCH["color"],
    corner: str = DEFAULT_PATCH["corner"],
    offset: int = DEFAULT_PATCH["offset"],
) -> torch.Tensor:
    """A copy of `images` ((N, 3, H, W) uint8) with a solid `color` square of `patch_size` px at `corner`."""
    check_images(images)
    artefact = Artefact.square(patch_size, color, corner, offset, tuple(images.shape[-2:]))
    return artefact.apply(images)[0]


def bias_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    target_class: int,
    fraction: float = 1.0,
    seed: int = 0,
    artefact: Artefact | None = None,
    **patch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste `artefact` on a seeded `fraction` of the images whose label is `target_class`.

    Without `artefact`, the square the `patch` keywords describe (`inject_patch`'s: patch_size, color,
    corner, offset) is pasted. Returns (biased images (N, 3, H, W) uint8, patched (N,) bool).
    """
    if artefact is not None and patch:
        raise TypeError("bias_dataset takes an artefact or patch keywords, not both")
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"bias fraction must be in [0, 1], got {fraction}; fix: pass --bias-fraction between 0 and 1")
    if artefact is None:
        artefact = patch_artefact(patch, tuple(images.shape[-2:]))
    candidates = (labels == target_class).nonzero().squeeze(1)
    n_patched = round(fraction * len(candidates))
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    chosen = candidates[order[:n_patched]]
    patched = torch.zeros(len(labels), dtype=torch.bool)
    patched[chosen] = True
    out = images.clone()
    out[chosen] = artefact.apply(images[chosen])[0]
    return out, patched
