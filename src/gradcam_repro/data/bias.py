"""Planting the shortcut: an artefact (the seed's: a coloured square) put on the stored uint8 images.

Pure functions on tensors. The artefact is applied at dataset level, before any augmentation, exactly as a
data-collection artefact would be. `patch_artefact` turns the spec's patch dict into the artefact: the seed's
square is a `data.artefact.Artefact` (`patch_box` is its box rule), every other kind, place or rendering a
`data.zoo.Planted`; `inject_patch` and `bias_dataset` paste through either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradcam_repro.data.artefact import Artefact, check_images, patch_box
from gradcam_repro.data.zoo import Planted
from gradcam_repro.errors import UserError

__all__ = ["DEFAULT_PATCH", "bias_dataset", "inject_patch", "patch_artefact", "patch_box", "plant"]

# The planted patch as a dict (`pipeline.spec.BiasSpec.patch`, `inject_patch`'s keywords), with its defaults.
DEFAULT_PATCH = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
# What a patch dict may say besides (`pipeline.spec.BiasSpec.patch` writes them only where they differ).
ZOO_KEYS = ("kind", "text", "opacity", "strength", "jpeg_quality")


def patch_artefact(patch: dict, image_size: int | Sequence[int], class_name: str = "",
                   source: str = "planted patch") -> Artefact | Planted:
    """The artefact a patch dict describes on images of `image_size` (a side, or (height, width)).

    The dict has `DEFAULT_PATCH`'s keys (missing ones take its values) and optionally `ZOO_KEYS`. The seed's
    square (a solid, opaque square at a corner, no JPEG) is an `Artefact`, as it always was; anything else a
    `data.zoo.Planted` (same `apply`; its `box` is None where the place varies)."""
    unknown = sorted(set(patch) - set(DEFAULT_PATCH) - set(ZOO_KEYS))
    if unknown:
        raise TypeError(f"unknown patch key(s) {', '.join(unknown)}; a patch has {', '.join((*DEFAULT_PATCH, *ZOO_KEYS))}")
    p = {**DEFAULT_PATCH, **patch}
    zoo = {k: p[k] for k in ZOO_KEYS if k in p}
    classic = (p["corner"] not in ("centre", "random") and zoo.get("kind", "square") == "square"
               and zoo.get("opacity", 1.0) == 1.0 and zoo.get("jpeg_quality") is None)
    if classic:
        return Artefact.square(p["patch_size"], p["color"], p["corner"], p["offset"], image_size, class_name, source)
    return Planted(size=p["patch_size"], color=tuple(p["color"]), placement=p["corner"], offset=p["offset"],
                   image_size=image_size, class_name=class_name, source=source, **zoo)


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
    out, patched, _ = plant(images, labels, target_class, fraction, seed, artefact)
    return out, patched


def plant(images: torch.Tensor, labels: torch.Tensor, target_class: int, fraction: float, seed: int,
          artefact: Artefact | Planted) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`bias_dataset` with the (N, H, W) bool masks of where the artefact went (all False on unpatched images)."""
    candidates = (labels == target_class).nonzero().squeeze(1)
    n_patched = round(fraction * len(candidates))
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    chosen = candidates[order[:n_patched]]
    patched = torch.zeros(len(labels), dtype=torch.bool)
    patched[chosen] = True
    out = images.clone()
    masks = torch.zeros(len(labels), *images.shape[-2:], dtype=torch.bool)
    out[chosen], masks[chosen] = artefact.apply(images[chosen], seed=seed)
    return out, patched, masks
