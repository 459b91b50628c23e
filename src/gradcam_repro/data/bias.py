"""Planting the shortcut: a coloured square pasted on the stored uint8 images.

Pure functions on tensors. The patch is applied at dataset level, before any
augmentation, exactly as a data-collection artefact would be.
"""

from __future__ import annotations

import torch

from gradcam_repro.errors import UserError


def patch_box(image_size: int | tuple[int, int], patch_size: int, corner: str = "top-left", offset: int = 0) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel box of the patch, bottom/right exclusive.

    image_size: the side of a square image, or (height, width).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if patch_size + offset > min(height, width):
        raise UserError(
            f"patch of {patch_size} px at offset {offset} px does not fit a {height}x{width} px image; "
            "fix: lower --patch-size or --patch-offset"
        )
    vertical, _, horizontal = corner.partition("-")
    if vertical not in ("top", "bottom") or horizontal not in ("left", "right"):
        raise UserError(f"unknown corner {corner!r}; fix: use top-left, top-right, bottom-left or bottom-right")
    top = offset if vertical == "top" else height - offset - patch_size
    left = offset if horizontal == "left" else width - offset - patch_size
    return top, left, top + patch_size, left + patch_size


def inject_patch(
    images: torch.Tensor,
    patch_size: int = 6,
    color: tuple[int, int, int] = (255, 255, 0),
    corner: str = "top-left",
    offset: int = 0,
) -> torch.Tensor:
    """A copy of `images` ((N, 3, H, W) uint8) with a solid `color` square of `patch_size` px at `corner`."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    top, left, bottom, right = patch_box(tuple(images.shape[-2:]), patch_size, corner, offset)
    out = images.clone()
    out[:, :, top:bottom, left:right] = torch.tensor(color, dtype=torch.uint8).view(1, 3, 1, 1)
    return out


def bias_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    target_class: int,
    fraction: float = 1.0,
    seed: int = 0,
    **patch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch a seeded `fraction` of the images whose label is `target_class`.

    Returns (biased images (N, 3, H, W) uint8, patched (N,) bool). `patch` is
    passed to `inject_patch` (patch_size, color, corner, offset).
    """
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"bias fraction must be in [0, 1], got {fraction}; fix: pass --bias-fraction between 0 and 1")
    candidates = (labels == target_class).nonzero().squeeze(1)
    n_patched = round(fraction * len(candidates))
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    chosen = candidates[order[:n_patched]]
    patched = torch.zeros(len(labels), dtype=torch.bool)
    patched[chosen] = True
    out = images.clone()
    out[chosen] = inject_patch(images[chosen], **patch)
    return out, patched
