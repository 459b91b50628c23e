"""The artefact zoo: the kinds of shortcut artefact a run can plant, and where and how it plants them.

A shortcut is not always a solid square in a corner: real data carries logos, watermark text, scanner stripes,
frames, colour casts, blurred regions and sensor noise, and JPEG compression smears all of them. Each kind here
is a `Kind` in `KINDS`, rendered by one pure function on (N, 3, H, W) uint8 tensors; `Planted` is the setting
of one artefact (kind, size, colour, place, opacity, strength, JPEG) with the same `apply` as
`data.artefact.Artefact`: the images with the artefact on, and per-image (N, H, W) bool masks of where it went,
so that every measure reads the artefact's region from the masks whatever the kind. With its defaults a
`Planted` square renders exactly the seed's `Artefact.square`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from gradcam_repro.config import CORNERS, PLACEMENTS
from gradcam_repro.data.artefact import check_images, image_hw
from gradcam_repro.errors import UserError

# Where a placed artefact goes: the four corners (what --patch-corner always meant), the middle, or a new
# seeded place on every image (an artefact whose position carries no information, only its look).
# "The same artefact elsewhere": the corner diagonally across, so that the two boxes never overlap when the
# artefact is smaller than half the image; the centre goes to the corner the seed's patch used.
OPPOSITE = {"top-left": "bottom-right", "bottom-right": "top-left", "top-right": "bottom-left",
            "bottom-left": "top-right", "centre": "top-left", "random": "random"}
# A placeless kind's "elsewhere" is a square of this side (the seed's patch size) at the seed's corner.
ELSEWHERE_SQUARE_PX = 6
# Blur has no colour to complement: its control is a half-transparent mid-grey square over the same box,
# a change of the same region that carries no blur.
GREY = (128, 128, 128)
GREY_OPACITY = 0.5
# (default, low, high) of `strength`. Tint/noise: levels added per channel; 8 is visible to a network but faint
# to the eye, 64 a quarter of the range. Blur: Gaussian sigma in px; below 0.3 the kernel is nearly a delta,
# above 5 a 32 px image's box is a flat average.
TINT_STRENGTH = (8.0, 1.0, 64.0)
BLUR_STRENGTH = (1.5, 0.3, 5.0)
NOISE_STRENGTH = (8.0, 1.0, 64.0)
# The noise pattern is one fixed image-sized pattern, the same on every image and every run (a sensor's fixed
# pattern noise), so it is seeded by this constant and never by `apply`'s seed.
NOISE_PATTERN_SEED = 20_240_917
# The Gaussian kernel reaches this many sigmas each side (beyond it the weights are below 1 %).
BLUR_SIGMAS = 3
# PIL's own advice: above 95 JPEG only grows the file, so 95 is the highest quality worth asking for.
MAX_JPEG_QUALITY = 95
# Text: glyphs GLYPH_H x GLYPH_W px with GLYPH_GAP px between them, scaled up by max(1, size // GLYPH_H), so
# the default size 6 draws the 5 px font as it is.
GLYPH_H, GLYPH_W, GLYPH_GAP = 5, 3, 1
# The built-in font: 5 rows of 3 px, '#' ink and '.' background. Lower-case letters are drawn as upper-case.
# Small enough for a 32 px image to carry a short watermark such as "(c) 2024".
FONT = {
    "A": ".#./#.#/###/#.#/#.#", "B": "##./#.#/##./#.#/##.", "C": ".##/#../#../#../.##", "D": "##./#.#/#.#/#.#/##.",
    "E": "###/#../##./#../###", "F": "###/#../##./#../#..", "G": ".##/#../#.#/#.#/.##", "H": "#.#/#.#/###/#.#/#.#",
    "I": "###/.#./.#./.#./###", "J": "..#/..#/..#/#.#/.#.", "K": "#.#/#.#/##./#.#/#.#", "L": "#../#../#../#../###",
    "M": "#.#/###/###/#.#/#.#", "N": "##./#.#/#.#/#.#/#.#", "O": ".#./#.#/#.#/#.#/.#.", "P": "##./#.#/##./#../#..",
    "Q": ".#./#.#/#.#/##./.##", "R": "##./#.#/##./#.#/#.#", "S": ".##/#../.#./..#/##.", "T": "###/.#./.#./.#./.#.",
    "U": "#.#/#.#/#.#/#.#/###", "V": "#.#/#.#/#.#/#.#/.#.", "W": "#.#/#.#/###/###/#.#", "X": "#.#/#.#/.#./#.#/#.#",
    "Y": "#.#/#.#/.#./.#./.#.", "Z": "###/..#/.#./#../###",
    "0": "###/#.#/#.#/#.#/###", "1": ".#./##./.#./.#./###", "2": "##./..#/.#./#../###", "3": "##./..#/.#./..#/##.",
    "4": "#.#/#.#/###/..#/..#", "5": "###/#../##./..#/##.", "6": ".##/#../###/#.#/###", "7": "###/..#/.#./.#./.#.",
    "8": "###/#.#/###/#.#/###", "9": "###/#.#/###/..#/##.",
    " ": ".../.../.../.../...", "(": ".#./#../#../#../.#.", ")": ".#./..#/..#/..#/.#.", ".": ".../.../.../.../.#.",
    ",": ".../.../.../.#./#..", "-": ".../.../###/.../...", ":": ".../.#./.../.#./...", "!": ".#./.#./.#./.../.#.",
    "?": "##./..#/.#./.../.#.", "/": "..#/..#/.#./#../#..", "+": ".../.#./###/.#./...", "=": ".../###/.../###/...",
    "_": ".../.../.../.../###", "'": ".#./.#./.../.../...", '"': "#.#/#.#/.../.../...",
}


@dataclass(frozen=True)
class Kind:
    """One kind of artefact: its name, a one-line help, whether it has a box and a place, the (default, low,
    high) of its `strength` where it uses one, and `render(planted, images, boxes) -> (images, masks)`."""

    name: str
    help: str
    placed: bool
    strength: tuple[float, float, float] | None
    render: Callable


@dataclass(frozen=True)
class Planted:
    """One planted artefact: a `Kind` by name and its settings, on images of `image_size` ((H, W); a side is
    accepted for a square image). Checked on construction: every bad value is a one-line `UserError` naming its
    flag. `strength` None takes the kind's default, so that equal renderings compare (and hash) equal."""

    kind: str = "square"
    size: int = 6
    color: tuple[int, int, int] = (255, 255, 0)
    placement: str = "top-left"
    offset: int = 0
    opacity: float = 1.0
    strength: float | None = None
    text: str = "(c)"
    jpeg_quality: int | None = None
    image_size: tuple[int, int] = (32, 32)
    class_name: str = ""
    source: str = "planted artefact"

    def __post_init__(self):
        object.__setattr__(self, "image_size", image_hw(self.image_size))
        kind = _check_kind(self.kind)
        _check_settings(self)
        object.__setattr__(self, "color", tuple(int(c) for c in self.color))
        object.__setattr__(self, "opacity", float(self.opacity))
        object.__setattr__(self, "strength", _checked_strength(kind, self.strength))
        if self.kind == "text":
            _check_text(self.text)
        _check_fits(self, kind)

    def footprint(self) -> tuple[int, int]:
        """(h, w) of the artefact's box: the square's side, the text's extent, a stripe's thickness by the full
        width; the whole image for the placeless kinds (frame, tint, noise)."""
        height, width = self.image_size
        if not KINDS[self.kind].placed:
            return height, width
        if self.kind == "text":
            scale = text_scale(self.size)
            return GLYPH_H * scale, (len(self.text) * (GLYPH_W + GLYPH_GAP) - GLYPH_GAP) * scale
        if self.kind == "stripe":
            return self.size, width
        return self.size, self.size

    def boxes(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, 4) long (top, left, bottom, right) of the artefact on each of n images: one box repeated for a
        fixed place, seeded uniform places inside the image for "random" (a stripe keeps the full width), the
        whole image for the placeless kinds."""
        h, w = self.footprint()
        if self.placement == "random" and KINDS[self.kind].placed:
            generator = torch.Generator().manual_seed(seed)
            tops = torch.randint(0, self.image_size[0] - h + 1, (n,), generator=generator)
            lefts = torch.randint(0, self.image_size[1] - w + 1, (n,), generator=generator)
        else:
            top, left = _origin(self, h, w)
            tops, lefts = torch.full((n,), top), torch.full((n,), left)
        return torch.stack([tops, lefts, tops + h, lefts + w], dim=1).long()

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """The one box of a placed artefact at a fixed place; None where it varies per image or has no place."""
        if not KINDS[self.kind].placed or self.placement == "random":
            return None
        return tuple(int(v) for v in self.boxes(1)[0])

    def apply(self, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Render the artefact on (N, 3, H, W) uint8 `images` of its `image_size`; deterministic given `seed`
        (which only moves "random" placements).

        Returns (a copy of the images with the artefact on, then JPEG re-encoded when `jpeg_quality` is set,
        (N, H, W) bool masks of the pixels the artefact covers on each: its box for placed kinds (a text's
        whole box, not only the glyph pixels), the border for frame, the whole image for tint and noise).
        Without JPEG every pixel outside the masks is unchanged; with it the whole image is re-encoded, as a
        JPEG-saved photo would be, so pass only the images that carry the artefact.
        """
        check_images(images, self.image_size)
        out, masks = KINDS[self.kind].render(self, images, self.boxes(len(images), seed))
        if self.jpeg_quality is not None:
            out = jpeg(out, self.jpeg_quality)
        return out, masks

    def control(self) -> Planted:
        """The "another colour" control: the same kind, place and size in the complementary colour (255 - c), so a tint or
        noise pushes the other way; blur has no colour, so a half-transparent mid-grey square over its box."""
        if self.kind == "blur":
            return replace(self, kind="square", color=GREY, opacity=GREY_OPACITY, strength=None, source="other_color")
        return replace(self, color=tuple(255 - c for c in self.color), source="other_color")

    def elsewhere(self) -> Planted:
        """The "same artefact elsewhere" control: a placed kind at the opposite corner (centre -> top-left; random stays
        random); a placeless kind has no elsewhere, so another kind at a place: a same-colour square of
        `ELSEWHERE_SQUARE_PX` at the top-left corner."""
        if KINDS[self.kind].placed:
            return replace(self, placement=OPPOSITE[self.placement], source="other_corner")
        return replace(self, kind="square", size=ELSEWHERE_SQUARE_PX, placement="top-left", offset=0, strength=None,
                       source="other_corner")

    def to_dict(self) -> dict:
        """JSON-ready, every field by name (`from_dict` reads it back); the image size is the side for a square
        image, as `Artefact.to_dict` writes it."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        height, width = self.image_size
        return {**values, "color": list(self.color), "image_size": height if height == width else [height, width]}

    @classmethod
    def from_dict(cls, values: dict) -> Planted:
        """The `Planted` a `to_dict` wrote (missing fields take their defaults)."""
        known = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        if "color" in known:
            known["color"] = tuple(known["color"])
        return cls(**known)


# ----- checks --------------------------------------------------------------------------------------------------


def _check_kind(name: str) -> Kind:
    if name not in KINDS:
        raise UserError(f"unknown artefact kind {name!r}; fix: pass --artefact one of {', '.join(KINDS)}")
    return KINDS[name]


def _check_settings(p: Planted) -> None:
    """The settings that do not depend on the image: one `UserError` for the first bad one."""
    color_ok = len(p.color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in p.color)
    quality_ok = p.jpeg_quality is None or (isinstance(p.jpeg_quality, int) and 1 <= p.jpeg_quality <= MAX_JPEG_QUALITY)
    checks = [
        (p.placement in PLACEMENTS, f"unknown placement {p.placement!r}; fix: pass --placement (or --patch-corner) "
                                    f"one of {', '.join(PLACEMENTS)}"),
        (p.size >= 1, f"--patch-size must be at least 1 px, got {p.size}; fix: pass e.g. --patch-size 6"),
        (p.offset >= 0, f"--patch-offset must be >= 0 px, got {p.offset}; fix: pass e.g. --patch-offset 0"),
        (color_ok, f"--patch-color must be three integers in 0..255, got {p.color}; fix: pass e.g. --patch-color 255,255,0"),
        (0.0 < p.opacity <= 1.0, f"--opacity must be in (0, 1], got {p.opacity}; fix: pass e.g. --opacity 0.5"),
        (quality_ok, f"--jpeg-quality must be an integer in 1..{MAX_JPEG_QUALITY}, got {p.jpeg_quality}; "
                     "fix: pass e.g. --jpeg-quality 75, or leave it out for no JPEG"),
        (KINDS[p.kind].placed or p.placement in CORNERS,
         f"--placement {p.placement} needs an artefact with a place; {p.kind} has none; fix: leave --placement at a "
         f"corner or pass --artefact one of {', '.join(k.name for k in KINDS.values() if k.placed)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _checked_strength(kind: Kind, strength: float | None) -> float | None:
    """The kind's strength: `strength` when given and in range, its default when None."""
    if kind.strength is None:
        if strength is not None:
            takers = ", ".join(k.name for k in KINDS.values() if k.strength)
            raise UserError(f"--strength is not used by {kind.name}; fix: leave --strength out (only {takers} take it)")
        return None
    default, low, high = kind.strength
    if strength is None:
        return default
    if not low <= strength <= high:
        raise UserError(f"--strength {strength} is outside {kind.name}'s range {low:g}..{high:g}; "
                        f"fix: pass --strength between {low:g} and {high:g} (default {default:g})")
    return float(strength)


def _check_text(text: str) -> None:
    if not text:
        raise UserError("--artefact-text is empty; fix: pass a watermark such as --artefact-text '(c)'")
    unknown = sorted({c for c in text if c.upper() not in FONT})
    if unknown:
        raise UserError(f"--artefact-text {text!r} has {', '.join(map(repr, unknown))}, not in the built-in font; "
                        "fix: use A-Z, 0-9, space and ( ) . , - : ! ? / + = _ ' \"")


def _check_fits(p: Planted, kind: Kind) -> None:
    """One `UserError` unless the artefact's footprint fits the image at its place."""
    height, width = p.image_size
    if p.kind == "frame" and 2 * p.size >= min(height, width):
        raise UserError(f"a {p.size} px frame covers all of a {height}x{width} px image; "
                        f"fix: a --patch-size below {(min(height, width) + 1) // 2}")
    if not kind.placed:
        return
    h, w = p.footprint()
    if p.kind == "text" and w > width:
        raise UserError(f"text {p.text!r} is {w} px wide, the image {width} px; "
                        "fix: a shorter --artefact-text or a smaller --patch-size")
    top, left = (0, 0) if p.placement == "random" else _origin(p, h, w)
    if not (0 <= top and top + h <= height and 0 <= left and left + w <= width):
        raise UserError(f"a {h}x{w} px {p.kind} at offset {p.offset} px ({p.placement}) does not fit a {height}x{width} "
                        "px image; fix: lower --patch-size or --patch-offset")


# ----- places --------------------------------------------------------------------------------------------------


def text_scale(size: int) -> int:
    """How many px each font pixel becomes: `size` is the glyph height in steps of `GLYPH_H`."""
    return max(1, size // GLYPH_H)


def _origin(p: Planted, h: int, w: int) -> tuple[int, int]:
    """(top, left) of an h x w box at a fixed placement, `offset` px in from the corner's edges; the middle for
    "centre" (offset ignored); a stripe always starts at column 0. Placeless kinds: the image's origin."""
    height, width = p.image_size
    if not KINDS[p.kind].placed:
        return 0, 0
    if p.placement == "centre":
        top, left = (height - h) // 2, (width - w) // 2
    else:
        vertical, _, horizontal = p.placement.partition("-")
        top = p.offset if vertical == "top" else height - p.offset - h
        left = p.offset if horizontal == "left" else width - p.offset - w
    return top, 0 if p.kind == "stripe" else left


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W) bool: True inside each image's (top, left, bottom, right) box."""
    rows, cols = torch.arange(height), torch.arange(width)
    in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 2:3])
    in_cols = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 3:4])
    return in_rows[:, :, None] & in_cols[:, None, :]


def _region_index(boxes: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices that pick each image's h x w box at once: images[i, :, rows, cols] is (N, h, w, 3)."""
    rows = (boxes[:, 0:1] + torch.arange(h))[:, :, None]
    cols = (boxes[:, 1:2] + torch.arange(w))[:, None, :]
    return torch.arange(len(boxes))[:, None, None], rows, cols


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(0, 255).to(torch.uint8)


def _stamp(images: torch.Tensor, boxes: torch.Tensor, pixels: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """A copy of `images` with (3, h, w) `pixels` alpha-blended (alpha (h, w) in [0, 1]) into each image's box:
    round(image * (1 - a) + pixels * a), exact where a is 0 or 1. Only the boxes are touched, all at once."""
    index, rows, cols = _region_index(boxes, *alpha.shape)
    region = images[index, :, rows, cols].float()
    a = alpha[:, :, None]
    out = images.clone()
    out[index, :, rows, cols] = _to_uint8(region * (1 - a) + pixels.permute(1, 2, 0) * a)
    return out


def _direction(color: Sequence[int]) -> torch.Tensor:
    """(3, 1, 1) float in [-1, 1]: which way a tint or noise pushes each channel (color / 255 * 2 - 1), so the
    complementary colour pushes the opposite way."""
    return (torch.tensor(color, dtype=torch.float32) / 255 * 2 - 1).view(3, 1, 1)


# ----- the kinds -----------------------------------------------------------------------------------------------


def _square_pattern(p: Planted) -> tuple[torch.Tensor, torch.Tensor]:
    """Solid `color` over the whole box."""
    h, w = p.footprint()
    return _solid(p.color, h, w), torch.ones(h, w)


def _logo_pattern(p: Planted) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1 px checker of `color` (top-left cell) and white, or black where the colour is white: a texture
    rather than a flat colour, as a printed logo is."""
    other = (0, 0, 0) if tuple(p.color) == (255, 255, 255) else (255, 255, 255)
    rows, cols = torch.arange(p.size)[:, None], torch.arange(p.size)[None, :]
    on = ((rows + cols) % 2 == 0)[None]
    return torch.where(on, _solid(p.color, p.size, p.size), _solid(other, p.size, p.size)), torch.ones(p.size, p.size)


def _text_pattern(p: Planted) -> tuple[torch.Tensor, torch.Tensor]:
    """`color` where the font's glyphs have ink, transparent between them."""
    h, w = p.footprint()
    return _solid(p.color, h, w), text_ink(p.text, text_scale(p.size)).float()


def _stripe_pattern(p: Planted) -> tuple[torch.Tensor, torch.Tensor]:
    """A solid `color` band across the full width (a scanner or sensor line)."""
    h, w = p.footprint()
    return _solid(p.color, h, w), torch.ones(h, w)


def _solid(color: Sequence[int], h: int, w: int) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32).view(3, 1, 1).expand(3, h, w)


def text_ink(text: str, scale: int = 1) -> torch.Tensor:
    """(GLYPH_H * scale, (len * (GLYPH_W + GLYPH_GAP) - GLYPH_GAP) * scale) bool: where `text` in the built-in
    font has ink (lower case drawn as upper case); one loop over the characters, none over pixels."""
    gap = torch.zeros(GLYPH_H, GLYPH_GAP, dtype=torch.bool)
    parts = []
    for char in text.upper():
        glyph = torch.tensor([[c == "#" for c in row] for row in FONT[char].split("/")])
        parts += [gap, glyph] if parts else [glyph]
    ink = torch.cat(parts, dim=1)
    return ink.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)


def _stamped(pattern: Callable) -> Callable:
    """A kind's render from its pattern ((3, h, w) pixels, (h, w) ink): the pattern at `opacity` in each box;
    the masks are the boxes."""

    def render(p: Planted, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, ink = pattern(p)
        return _stamp(images, boxes, pixels, ink * p.opacity), box_masks(boxes, *p.image_size)

    return render


def _render_frame(p: Planted, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A `size` px border of `color` around the whole image, at `opacity`."""
    height, width = p.image_size
    border = torch.ones(height, width, dtype=torch.bool)
    border[p.size:height - p.size, p.size:width - p.size] = False
    alpha = border.float() * p.opacity
    color = torch.tensor(p.color, dtype=torch.float32).view(3, 1, 1)
    out = _to_uint8(images.float() * (1 - alpha) + color * alpha)
    return out, border.expand(len(images), height, width).clone()


def _whole(images: torch.Tensor) -> torch.Tensor:
    return torch.ones(len(images), *images.shape[-2:], dtype=torch.bool)


def _render_tint(p: Planted, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A global colour cast: `strength` levels along `color`'s direction on every pixel."""
    return _to_uint8(images.float() + p.strength * _direction(p.color)), _whole(images)


def noise_pattern(height: int, width: int) -> torch.Tensor:
    """(1, H, W) float of +-1: the one fixed high-frequency pattern (seeded by `NOISE_PATTERN_SEED` only)."""
    generator = torch.Generator().manual_seed(NOISE_PATTERN_SEED)
    return (torch.randint(0, 2, (1, height, width), generator=generator) * 2 - 1).float()


def _render_noise(p: Planted, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed pattern times `strength` along `color`'s direction, added to every image."""
    shift = noise_pattern(*p.image_size) * p.strength * _direction(p.color)
    return _to_uint8(images.float() + shift), _whole(images)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 3, H, W) uint8 blurred by a separable Gaussian of `sigma` px with reflect padding (so the edges do
    not darken); the kernel's reach is cut below the image side, as reflect padding needs."""
    radius = max(1, min(math.ceil(BLUR_SIGMAS * sigma), min(images.shape[-2:]) - 1))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.pad(images.float(), (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return _to_uint8(out)


def _render_blur(p: Planted, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The box replaced by the same place of the blurred image: lost detail, no added colour."""
    index, rows, cols = _region_index(boxes, *p.footprint())
    out = images.clone()
    out[index, :, rows, cols] = gaussian_blur(images, p.strength)[index, :, rows, cols]
    return out, box_masks(boxes, *p.image_size)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 each encoded and decoded as JPEG at `quality` by PIL: the blocking and colour
    smearing a saved photo carries. One image at a time, as PIL encodes them."""
    from PIL import Image

    out = torch.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        decoded = Image.open(buffer).convert("RGB")
        pixels = torch.frombuffer(bytearray(decoded.tobytes()), dtype=torch.uint8)
        out[i] = pixels.view(decoded.height, decoded.width, 3).permute(2, 0, 1)
    return out


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("square", "a solid square of the colour, --patch-size px a side (the seed's patch)", True, None,
         _stamped(_square_pattern)),
    Kind("logo", "a --patch-size px checker of the colour and white (black on white): a textured mark", True, None,
         _stamped(_logo_pattern)),
    Kind("text", "--artefact-text as a watermark in a 3x5 px font, scaled by --patch-size // 5", True, None,
         _stamped(_text_pattern)),
    Kind("stripe", "a horizontal line --patch-size px thick across the full width", True, None,
         _stamped(_stripe_pattern)),
    Kind("frame", "a border --patch-size px wide around the whole image", False, None, _render_frame),
    Kind("tint", "a global colour cast of --strength levels toward the colour", False, TINT_STRENGTH, _render_tint),
    Kind("blur", "a --patch-size px square blurred with Gaussian sigma --strength px", True, BLUR_STRENGTH,
         _render_blur),
    Kind("noise", "a fixed faint +-1 pixel pattern times --strength levels along the colour", False, NOISE_STRENGTH,
         _render_noise),
)}
