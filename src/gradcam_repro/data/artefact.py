"""A shortcut artefact: what is put on the images, where, and the class it pushes predictions to.

One type for every artefact the project handles: the planted patch (`Artefact.square`, what `data.bias`
plants and `measure.shortcut` pastes), an audit's confirmed candidate (the per-pixel median of its cluster's
images in its region, `measure.spray`), a user's box (the class's training-image median there, `from_images`),
and what repair pastes and removes. Today every artefact is fixed pixels in a fixed box; `Artefact.apply` is
the one place that renders an artefact and says where it went, as per-image masks, so that kinds placed or
drawn per image can join there. Pure functions on (N, 3, H, W) uint8 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradcam_repro.errors import UserError

# Removing the artefact fills its box with the mean colour of a ring this wide around it (as the audit does on
# 32x32 images; the audit widens it with the image's size, `measure.spray.AuditScale`).
RING_PX = 2


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of `image_size`: the side of a square image, or a (height, width) pair."""
    height, width = image_size if isinstance(image_size, Sequence) else (image_size, image_size)
    return int(height), int(width)


def patch_box(image_size: int | Sequence[int], patch_size: int, corner: str = "top-left", offset: int = 0) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel box of a `patch_size` px square at `corner`, `offset` px in from both
    edges; bottom/right exclusive. image_size: the side of a square image, or (height, width)."""
    height, width = image_hw(image_size)
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


def check_box(box: tuple[int, int, int, int], image_size: int | Sequence[int]) -> None:
    """One-line `UserError` unless (top, left, bottom, right) `box` is a non-empty box inside the image."""
    height, width = image_hw(image_size)
    top, left, bottom, right = box
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise UserError(f"box {','.join(map(str, box))} (top,left,bottom,right) lies outside the {height}x{width} px "
                        f"image; fix: pass --box with 0 <= top < bottom <= {height} and 0 <= left < right <= {width}")


def check_images(images: torch.Tensor, image_size: int | Sequence[int] | None = None) -> None:
    """`ValueError` unless `images` is an (N, 3, H, W) uint8 batch (of (H, W) = `image_size` when given)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    if image_size is not None and tuple(images.shape[-2:]) != image_hw(image_size):
        raise ValueError(f"the artefact is for {image_hw(image_size)} (height, width) images, got {tuple(images.shape[-2:])}")


@dataclass(frozen=True)
class Artefact:
    """`pixels` (3, h, w) uint8 put at `box` (top, left, bottom, right; bottom/right exclusive) on images of
    `image_size` ((height, width); a side is accepted for a square image); `class_name` is the class it pushes
    predictions to; `source` says where it came from. `keep`, an (h, w) bool mask, puts only the pixels where it is
    True (an audit's constant pixels inside their box: a text's glyphs, not the background between them); None:
    the whole box."""

    box: tuple[int, int, int, int]
    pixels: torch.Tensor
    class_name: str
    source: str
    image_size: tuple[int, int] = (32, 32)
    keep: torch.Tensor | None = None

    def __post_init__(self):
        object.__setattr__(self, "image_size", image_hw(self.image_size))
        check_box(self.box, self.image_size)
        top, left, bottom, right = self.box
        if tuple(self.pixels.shape) != (3, bottom - top, right - left) or self.pixels.dtype != torch.uint8:
            raise ValueError(f"artefact pixels must be (3, {bottom - top}, {right - left}) uint8, got "
                             f"{tuple(self.pixels.shape)} {self.pixels.dtype}")
        if self.keep is not None and (tuple(self.keep.shape) != (bottom - top, right - left) or self.keep.dtype != torch.bool):
            raise ValueError(f"artefact keep mask must be ({bottom - top}, {right - left}) bool, got "
                             f"{tuple(self.keep.shape)} {self.keep.dtype}")

    @classmethod
    def square(cls, size_px: int, color: Sequence[int], corner: str = "top-left", offset: int = 0,
               image_size: int | Sequence[int] = 32, class_name: str = "", source: str = "planted patch") -> Artefact:
        """A solid RGB `color` square of `size_px` px at `corner`, `offset` px in from both edges (`patch_box`):
        the planted patch."""
        return solid(patch_box(image_size, size_px, corner, offset), color, class_name, source, image_size)

    def mask(self) -> torch.Tensor:
        """(H, W) bool, True where the artefact's pixels go: inside the box (where `keep` is True)."""
        top, left, bottom, right = self.box
        out = torch.zeros(self.image_size, dtype=torch.bool)
        out[top:bottom, left:right] = True if self.keep is None else self.keep
        return out

    def apply(self, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Render the artefact on (N, 3, H, W) uint8 `images` of its `image_size` (`seed` is for kinds placed
        or drawn per image, `data.zoo.Planted`; fixed pixels in a fixed box ignore it).

        Returns (a copy of the images with the artefact on, (N, H, W) bool masks of the pixels it covers on
        each). The masks of a fixed box are one (H, W) mask broadcast over N: clone them before writing.
        """
        check_images(images, self.image_size)
        top, left, bottom, right = self.box
        out = images.clone()
        inside = out[:, :, top:bottom, left:right]
        out[:, :, top:bottom, left:right] = self.pixels if self.keep is None else torch.where(self.keep, self.pixels, inside)
        return out, self.mask().expand(len(images), *self.image_size)

    def to_dict(self) -> dict:
        """JSON-ready, and what a repaired experiment's spec hashes: the box, the pixels, the class, the source,
        and the image size (the side for a square image, as before non-square images were allowed); the keep mask
        where there is one, as rows of "1"/"0" (absent otherwise, so that earlier keys stay)."""
        height, width = self.image_size
        out = {"box_tlbr_px": list(self.box), "pixels": self.pixels.tolist(), "class": self.class_name,
               "source": self.source, "image_size": height if height == width else [height, width]}
        return out if self.keep is None else out | {"keep": mask_rows(self.keep)}

    @classmethod
    def from_dict(cls, values: dict) -> Artefact:
        keep = values.get("keep")
        return cls(tuple(values["box_tlbr_px"]), torch.tensor(values["pixels"], dtype=torch.uint8), values["class"],
                   values["source"], values.get("image_size", 32), None if keep is None else rows_mask(keep))


def mask_rows(mask: torch.Tensor) -> list[str]:
    """(h, w) bool -> h strings of "1" (True) and "0": a small mask, readable in JSON."""
    return ["".join("1" if v else "0" for v in row) for row in mask.tolist()]


def rows_mask(rows: Sequence[str]) -> torch.Tensor:
    """The inverse of `mask_rows`."""
    return torch.tensor([[c == "1" for c in row] for row in rows], dtype=torch.bool)


def solid(box: tuple[int, int, int, int], color: Sequence[int], class_name: str, source: str,
          image_size: int | Sequence[int] = 32) -> Artefact:
    """A solid RGB `color` artefact filling `box` (the planted patch is one)."""
    top, left, bottom, right = box
    pixels = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, max(bottom - top, 0), max(right - left, 0))
    return Artefact(tuple(box), pixels.contiguous(), class_name, source, image_size)


def from_images(box: tuple[int, int, int, int], images: torch.Tensor, class_name: str, source: str) -> Artefact:
    """The per-pixel median of `images` ((N, 3, H, W) uint8) inside `box`: what a user's box holds on the class's
    own images, or an audited region on its cluster's images."""
    if len(images) == 0:
        raise UserError(f"class {class_name} has no training images to read the box's pixels from; "
                        "fix: pass another class or a run with training images of it")
    size = tuple(images.shape[-2:])
    check_box(tuple(box), size)  # before indexing with it
    return Artefact(tuple(box), median_pixels(images, box).contiguous(), class_name, source, size)


def median_pixels(images: torch.Tensor, box) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (3, h, w) uint8: the per-pixel median of the images inside `box`."""
    top, left, bottom, right = box
    return images[:, :, top:bottom, left:right].median(dim=0).values


def paste_pixels(images: torch.Tensor, pixels: torch.Tensor, box) -> torch.Tensor:
    """A copy of (N, 3, H, W) uint8 `images` with (3, h, w) uint8 `pixels` pasted into `box`."""
    top, left, bottom, right = box
    out = images.clone()
    out[:, :, top:bottom, left:right] = pixels.to(images.dtype)
    return out


def fill_from_ring(images: torch.Tensor, box, ring_px: int = RING_PX) -> torch.Tensor:
    """A copy of (N, 3, H, W) uint8 `images` with `box` filled by each image's mean colour over a
    `ring_px` ring around it (the part inside the image; the whole image's mean where no ring is left)."""
    height, width = images.shape[-2:]
    top, left, bottom, right = box
    ring = torch.zeros(height, width, dtype=torch.bool)
    ring[max(top - ring_px, 0):min(bottom + ring_px, height), max(left - ring_px, 0):min(right + ring_px, width)] = True
    ring[top:bottom, left:right] = False
    if not ring.any():
        ring = torch.ones(height, width, dtype=torch.bool)
    fill = (images.float() * ring).sum(dim=(2, 3)) / ring.sum()
    out = images.clone()
    out[:, :, top:bottom, left:right] = fill.round().clamp(0, 255).to(torch.uint8)[:, :, None, None]
    return out


def paste(images: torch.Tensor, artefact: Artefact) -> torch.Tensor:
    """A copy of (N, 3, H, W) uint8 `images` with the artefact on (`Artefact.apply` without the masks)."""
    return artefact.apply(images)[0]


def remove(images: torch.Tensor, artefact: Artefact, ring_px: int = RING_PX) -> torch.Tensor:
    """A copy of `images` with the artefact's box filled from a `ring_px` ring around it (`fill_from_ring`)."""
    return fill_from_ring(images, artefact.box, ring_px)


def decorrelate(images: torch.Tensor, artefact: Artefact, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counterfactual augmentation: make the artefact independent of the class.

    Every image, of every class, gets a seeded coin: with probability `share` the artefact is pasted on it,
    otherwise its box is filled from the ring around it (`remove`), so that images of the artefact's class
    that carried it lose it. Afterwards the box holds the artefact in about `share` of each class's images
    and a smooth fill in the rest: it says nothing about the class. Returns (images, pasted (N,) bool).
    """
    if not 0.0 < share < 1.0:
        raise UserError(f"--share must be strictly between 0 and 1, got {share}; fix: pass e.g. --share 0.5")
    pasted = torch.rand(len(images), generator=torch.Generator().manual_seed(seed)) < share
    out = images.clone()
    out[pasted] = paste(images[pasted], artefact)
    out[~pasted] = remove(images[~pasted], artefact)
    return out, pasted
