"""A shortcut artefact as the repair step sees it: a box, the pixels found there, and the class they predict.

It comes from the run's planted patch, from an audit's confirmed candidate, or from a user's box (pixels:
the per-pixel median of the class's training images there). Pure functions on (N, 3, H, W) uint8 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradcam_repro.errors import UserError

# Removing the artefact fills its box with the mean colour of a ring this wide around it (as the audit does).
RING_PX = 2


@dataclass(frozen=True)
class Artefact:
    """`pixels` (3, h, w) uint8 pasted at `box` (top, left, bottom, right; bottom/right exclusive) on images
    of size `image_size`; `class_name` is the class it pushes predictions to; `source` says where it came from."""

    box: tuple[int, int, int, int]
    pixels: torch.Tensor
    class_name: str
    source: str
    image_size: int = 32

    def __post_init__(self):
        top, left, bottom, right = self.box
        if not (0 <= top < bottom <= self.image_size and 0 <= left < right <= self.image_size):
            raise UserError(f"box {','.join(map(str, self.box))} (top,left,bottom,right) lies outside the "
                            f"{self.image_size}x{self.image_size} px image; fix: pass --box with "
                            f"0 <= top < bottom <= {self.image_size} and 0 <= left < right <= {self.image_size}")
        if tuple(self.pixels.shape) != (3, bottom - top, right - left) or self.pixels.dtype != torch.uint8:
            raise ValueError(f"artefact pixels must be (3, {bottom - top}, {right - left}) uint8, got "
                             f"{tuple(self.pixels.shape)} {self.pixels.dtype}")

    def mask(self) -> torch.Tensor:
        """(H, W) bool, True inside the box."""
        top, left, bottom, right = self.box
        out = torch.zeros(self.image_size, self.image_size, dtype=torch.bool)
        out[top:bottom, left:right] = True
        return out

    def to_dict(self) -> dict:
        """JSON-ready, and what a repaired experiment's spec hashes: the box, the pixels, the class, the source."""
        return {"box_tlbr_px": list(self.box), "pixels": self.pixels.tolist(), "class": self.class_name,
                "source": self.source, "image_size": self.image_size}

    @classmethod
    def from_dict(cls, values: dict) -> Artefact:
        return cls(tuple(values["box_tlbr_px"]), torch.tensor(values["pixels"], dtype=torch.uint8), values["class"],
                   values["source"], values.get("image_size", 32))


def solid(box: tuple[int, int, int, int], color: tuple[int, int, int], class_name: str, source: str,
          image_size: int = 32) -> Artefact:
    """A solid-colour artefact filling `box` (the planted patch is one)."""
    top, left, bottom, right = box
    pixels = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, max(bottom - top, 0), max(right - left, 0))
    return Artefact(tuple(box), pixels.contiguous(), class_name, source, image_size)


def from_images(box: tuple[int, int, int, int], images: torch.Tensor, class_name: str, source: str) -> Artefact:
    """The per-pixel median of `images` (the class's own, (N, 3, H, W) uint8) inside `box`: what a user's box holds."""
    if len(images) == 0:
        raise UserError(f"class {class_name} has no training images to read the box's pixels from; "
                        "fix: pass another class or a run with training images of it")
    size = images.shape[-1]
    Artefact(tuple(box), torch.zeros(3, max(box[2] - box[0], 0), max(box[3] - box[1], 0), dtype=torch.uint8),
             class_name, source, size)  # validates the box before indexing with it
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
    """A copy of `images` with the artefact's pixels in its box."""
    return paste_pixels(images, artefact.pixels, artefact.box)


def remove(images: torch.Tensor, artefact: Artefact) -> torch.Tensor:
    """A copy of `images` with the artefact's box filled from the ring around it (`fill_from_ring`)."""
    return fill_from_ring(images, artefact.box)


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
