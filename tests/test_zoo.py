"""The artefact zoo: every kind renders deterministically, says exactly where it went, leaves the rest of the
image alone (until JPEG), and every bad setting is a one-line error with its fix."""

from __future__ import annotations

import json

import pytest
import torch

from gradcam_repro.data.artefact import Artefact
from gradcam_repro.data.zoo import FONT, KINDS, NOISE_PATTERN_SEED, PLACEMENTS, Planted, gaussian_blur, text_ink
from gradcam_repro.errors import UserError

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
PLACED = [name for name, kind in KINDS.items() if kind.placed]
PLACELESS = [name for name, kind in KINDS.items() if not kind.placed]
SIZES = [(32, 32), (48, 64)]
COLOR = (255, 0, 128)


def random_images(n: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    # Values 1..254 only, so that a pasted 0 or 255 is always a change.
    return torch.randint(1, 255, (n, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def expected_area(p: Planted) -> int:
    height, width = p.image_size
    s = p.size
    if p.kind in ("square", "logo", "blur"):
        return s * s
    if p.kind == "text":
        scale = max(1, s // 5)
        return 5 * scale * (4 * len(p.text) - 1) * scale
    if p.kind == "stripe":
        return s * width
    if p.kind == "frame":
        return height * width - (height - 2 * s) * (width - 2 * s)
    return height * width  # tint, noise


def one_line_error(match: str, **settings) -> str:
    with pytest.raises(UserError) as info:
        Planted(**settings)
    message = str(info.value)
    assert match in message and "fix:" in message and "\n" not in message, message
    return message


# ----- the registry --------------------------------------------------------------------------------------------


def test_the_registry_holds_the_eight_kinds_in_order_with_their_settings():
    assert list(KINDS) == ["square", "logo", "text", "stripe", "frame", "tint", "blur", "noise"]
    assert PLACED == ["square", "logo", "text", "stripe", "blur"]
    assert PLACEMENTS == ("top-left", "top-right", "bottom-left", "bottom-right", "centre", "random")
    for name, kind in KINDS.items():
        assert kind.name == name and kind.help and "\n" not in kind.help and callable(kind.render)
        if name in ("tint", "noise", "blur"):
            default, low, high = kind.strength
            assert low <= default <= high
        else:
            assert kind.strength is None
    assert KINDS["tint"].strength == (8.0, 1.0, 64.0) and KINDS["noise"].strength == (8.0, 1.0, 64.0)
    assert KINDS["blur"].strength == (1.5, 0.3, 5.0)


def test_strength_none_takes_the_kinds_default_so_equal_renderings_compare_equal():
    assert Planted(kind="tint").strength == 8.0 and Planted(kind="blur").strength == 1.5
    assert Planted(kind="tint") == Planted(kind="tint", strength=8)
    assert Planted(kind="square").strength is None


# ----- every kind: determinism, masks, the rest of the image ---------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_renders_deterministically_inside_its_mask(kind, size):
    p = Planted(kind=kind, color=COLOR, image_size=size)
    images = random_images(5, *size)
    out, masks = p.apply(images, seed=3)
    again, masks_again = p.apply(images, seed=3)
    assert torch.equal(out, again) and torch.equal(masks, masks_again)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert masks.dtype == torch.bool and masks.shape == (5, *size)
    assert masks.flatten(1).sum(1).tolist() == [expected_area(p)] * 5
    changed = (out != images).any(dim=1)
    assert changed.any(), "the artefact drew nothing"
    assert not (changed & ~masks).any(), "pixels outside the mask changed without JPEG"
    assert torch.equal(images, random_images(5, *size)), "apply wrote into its input"


@pytest.mark.parametrize("kind", PLACED)
def test_random_placement_moves_per_image_and_per_seed_and_stays_inside(kind):
    p = Planted(kind=kind, color=COLOR, placement="random", image_size=(48, 64))
    images = random_images(16, 48, 64)
    boxes = p.boxes(16, seed=1)
    assert boxes.dtype == torch.long and boxes.shape == (16, 4)
    assert torch.equal(boxes, p.boxes(16, seed=1)) and not torch.equal(boxes, p.boxes(16, seed=2))
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 64).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) == torch.tensor(p.footprint())).all()
    out, masks = p.apply(images, seed=1)
    assert masks.flatten(1).sum(1).tolist() == [expected_area(p)] * 16  # no part of any box fell off the image
    assert len({m.numpy().tobytes() for m in masks}) > 1, "every image got the same place"
    assert not torch.equal(out, p.apply(images, seed=2)[0])
    assert p.box is None
    assert not ((out != images).any(dim=1) & ~masks).any()


@pytest.mark.parametrize("kind", PLACELESS)
def test_placeless_kinds_cover_the_whole_image_and_ignore_the_seed(kind):
    p = Planted(kind=kind, color=COLOR, image_size=(48, 64))
    images = random_images(3, 48, 64)
    assert p.box is None and p.footprint() == (48, 64)
    assert p.boxes(3).tolist() == [[0, 0, 48, 64]] * 3
    assert torch.equal(p.apply(images, seed=0)[0], p.apply(images, seed=9)[0])


@pytest.mark.parametrize("kind", PLACED)
def test_a_fixed_place_is_one_box_on_every_image(kind):
    p = Planted(kind=kind, placement="bottom-right", offset=2, image_size=(48, 64))
    boxes = p.boxes(4, seed=5)
    assert (boxes == boxes[0]).all() and tuple(boxes[0].tolist()) == p.box
    h, w = p.footprint()
    assert p.box == (48 - 2 - h, 0 if kind == "stripe" else 64 - 2 - w, 48 - 2, 64 if kind == "stripe" else 64 - 2)


# ----- the square is the seed's patch --------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("corner", CORNERS)
def test_the_default_square_is_exactly_the_seeds_artefact(corner, size):
    images = random_images(4, *size)
    for patch, offset in ((6, 0), (4, 3)):
        planted, planted_masks = Planted(size=patch, color=COLOR, placement=corner, offset=offset, image_size=size).apply(images)
        seeds, seeds_masks = Artefact.square(patch, COLOR, corner, offset, size).apply(images)
        assert torch.equal(planted, seeds) and torch.equal(planted_masks, seeds_masks)
    assert Planted(image_size=size).box == Artefact.square(6, (255, 255, 0), "top-left", 0, size).box


def test_opacity_blends_the_colour_with_the_image():
    images = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    out, _ = Planted(color=(200, 0, 50), opacity=0.5).apply(images)
    assert out[0, :, 0, 0].tolist() == [150, 50, 75] and out[0, :, 10, 10].tolist() == [100, 100, 100]
    framed, masks = Planted(kind="frame", size=2, color=(200, 0, 50), opacity=0.25).apply(images)
    assert framed[0, :, 0, 0].tolist() == [125, 75, 88] and framed[0, :, 16, 16].tolist() == [100, 100, 100]
    assert masks[0, :2].all() and masks[0, :, -2:].all() and not masks[0, 2:-2, 2:-2].any()


# ----- the drawn kinds -----------------------------------------------------------------------------------------


def test_the_logo_is_a_one_pixel_checker_of_the_colour_and_white_or_black():
    images = random_images(1)
    out, _ = Planted(kind="logo", size=4, color=COLOR).apply(images)
    assert out[0, :, 0, 0].tolist() == list(COLOR) and out[0, :, 0, 1].tolist() == [255, 255, 255]
    assert out[0, :, 1, 1].tolist() == list(COLOR) and out[0, :, 3, 2].tolist() == [255, 255, 255]
    white, _ = Planted(kind="logo", size=4, color=(255, 255, 255)).apply(images)
    assert white[0, :, 0, 0].tolist() == [255, 255, 255] and white[0, :, 0, 1].tolist() == [0, 0, 0]


def test_the_font_covers_its_characters_with_distinct_3x5_glyphs():
    wanted = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ().,-:!?/+=_'\"")
    assert set(FONT) == wanted
    for char, glyph in FONT.items():
        rows = glyph.split("/")
        assert len(rows) == 5 and all(len(r) == 3 and set(r) <= set("#.") for r in rows), char
    assert len(set(FONT.values())) == len(FONT), "two characters share a glyph"


def test_text_draws_its_glyphs_in_the_colour_and_masks_its_whole_box():
    images = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    p = Planted(kind="text", text="(c)", color=COLOR)
    assert p.footprint() == (5, 11)
    out, masks = p.apply(images)
    ink = text_ink("(c)")
    assert ink.shape == (5, 11)
    assert torch.equal((out[0] != 100).any(0)[:5, :11], ink)
    assert (out[0, :, :5, :11].permute(1, 2, 0)[ink] == torch.tensor(COLOR, dtype=torch.uint8)).all()
    assert masks[0, :5, :11].all() and masks.sum() == 55
    assert torch.equal(Planted(kind="text", text="abc").apply(images)[0], Planted(kind="text", text="ABC").apply(images)[0])


def test_text_scales_by_whole_multiples_of_the_glyph_height():
    assert Planted(kind="text", size=4).footprint() == (5, 11)
    assert Planted(kind="text", size=10).footprint() == (10, 22)
    assert torch.equal(text_ink("A", 2), text_ink("A").repeat_interleave(2, 0).repeat_interleave(2, 1))


@pytest.mark.parametrize(("placement", "row"), [("top-left", 3), ("top-right", 3), ("bottom-left", 48 - 3 - 4),
                                                ("bottom-right", 48 - 3 - 4), ("centre", 22)])
def test_a_stripe_runs_the_full_width_at_its_row(placement, row):
    p = Planted(kind="stripe", size=4, offset=3, placement=placement, image_size=(48, 64))
    _, masks = p.apply(random_images(1, 48, 64))
    assert p.box == (row, 0, row + 4, 64)
    assert masks[0, row:row + 4].all() and masks[0].sum() == 4 * 64


# ----- the image-wide kinds ------------------------------------------------------------------------------------


def test_tint_shifts_each_channel_along_the_colour():
    images = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    out, _ = Planted(kind="tint", strength=10, image_size=8, size=1).apply(images)
    assert out[:, 0].eq(110).all() and out[:, 1].eq(110).all() and out[:, 2].eq(90).all()
    assert Planted(kind="tint", strength=64, image_size=8, size=1).apply(torch.full((1, 3, 8, 8), 250, dtype=torch.uint8))[0].max() == 255


def test_noise_is_one_fixed_pattern_of_plus_minus_strength():
    images = torch.full((3, 3, 32, 32), 100, dtype=torch.uint8)
    out, _ = Planted(kind="noise", color=(255, 255, 255), strength=5).apply(images)
    delta = out.int() - 100
    assert set(delta.unique().tolist()) == {-5, 5}
    assert (delta == delta[0:1, 0:1]).all(), "the pattern differs between images or channels"
    pattern = torch.randint(0, 2, (1, 32, 32), generator=torch.Generator().manual_seed(NOISE_PATTERN_SEED)) * 2 - 1
    assert torch.equal(delta[0, :1].long(), pattern * 5)


def test_blur_smooths_its_box_and_keeps_flat_images_flat():
    images = random_images(2)
    out, masks = Planted(kind="blur", size=8, strength=2.0).apply(images)
    assert out[:, :, :8, :8].float().std() < images[:, :, :8, :8].float().std() / 2
    flat = torch.full((1, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(flat, 5.0), flat)
    assert torch.equal(gaussian_blur(images, 1.5), gaussian_blur(images, 1.5))


# ----- JPEG ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_jpeg_reencodes_the_planted_images_only(kind):
    images = random_images(6)
    idx = torch.tensor([1, 4])
    p = Planted(kind=kind, color=COLOR, jpeg_quality=50)
    out = images.clone()
    planted, masks = p.apply(images[idx], seed=2)
    out[idx] = planted
    rest = torch.ones(6, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(out[rest], images[rest]), "images not passed to apply changed"
    assert torch.equal(planted, p.apply(images[idx], seed=2)[0])
    if kind not in ("tint", "noise"):  # their mask is the whole image
        assert ((planted != images[idx]).any(1) & ~masks).any(), "JPEG left every pixel outside the mask alone"
    plain, _ = Planted(kind=kind, color=COLOR).apply(images[idx], seed=2)
    assert not torch.equal(planted, plain)


# ----- the controls --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "blur"])
def test_control_is_the_same_artefact_in_the_complementary_colour(kind):
    p = Planted(kind=kind, color=COLOR, placement="random" if KINDS[kind].placed else "top-left", jpeg_quality=80)
    c = p.control()
    assert (c.kind, c.size, c.placement, c.offset, c.opacity, c.strength, c.jpeg_quality) == \
           (p.kind, p.size, p.placement, p.offset, p.opacity, p.strength, p.jpeg_quality)
    assert c.color == (0, 255, 127) and c.source == "other_color"
    images = random_images(4)
    assert torch.equal(p.apply(images, seed=7)[1], c.apply(images, seed=7)[1])


@pytest.mark.parametrize("kind", ["tint", "noise"])
def test_the_complementary_colour_pushes_the_other_way(kind):
    images = torch.full((1, 3, 16, 16), 128, dtype=torch.uint8)
    p = Planted(kind=kind, color=(255, 255, 0), image_size=16)
    shift = p.apply(images)[0].int() - 128
    assert shift.abs().max() == 8
    assert torch.equal(p.control().apply(images)[0].int() - 128, -shift)


def test_blurs_control_is_a_half_grey_square_over_the_same_box():
    for placement in ("bottom-left", "random"):
        p = Planted(kind="blur", size=5, placement=placement, strength=2.0)
        c = p.control()
        assert (c.kind, c.color, c.opacity, c.strength, c.source) == ("square", (128, 128, 128), 0.5, None, "other_color")
        assert torch.equal(c.boxes(6, seed=4), p.boxes(6, seed=4))


@pytest.mark.parametrize("kind", PLACED)
def test_elsewhere_is_the_opposite_corner(kind):
    for placement, opposite in (("top-left", "bottom-right"), ("top-right", "bottom-left"),
                                ("bottom-left", "top-right"), ("bottom-right", "top-left"), ("centre", "top-left")):
        p = Planted(kind=kind, placement=placement, color=COLOR)
        e = p.elsewhere()
        assert e.placement == opposite and e.source == "other_corner"
        assert (e.kind, e.size, e.color, e.opacity, e.strength) == (p.kind, p.size, p.color, p.opacity, p.strength)
        if placement != "centre":
            assert not (p.apply(random_images(1))[1] & e.apply(random_images(1))[1]).any()
    random = Planted(kind=kind, placement="random")
    assert random.elsewhere() == Planted(kind=kind, placement="random", source="other_corner")


@pytest.mark.parametrize("kind", PLACELESS)
def test_a_placeless_kinds_elsewhere_is_a_small_square_at_a_place(kind):
    e = Planted(kind=kind, color=COLOR, size=3).elsewhere()
    assert (e.kind, e.size, e.color, e.placement, e.strength, e.source) == ("square", 6, COLOR, "top-left", None,
                                                                          "other_corner")
    assert e.box == (0, 0, 6, 6)


# ----- settings: round trip and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_dict_and_from_dict_round_trip_every_field(kind):
    settings = {"strength": KINDS[kind].strength[2]} if KINDS[kind].strength else {}
    placement = "random" if KINDS[kind].placed else "bottom-left"
    p = Planted(kind=kind, size=5, color=(1, 2, 3), placement=placement, offset=1, opacity=0.75, text="HI",
                jpeg_quality=60, image_size=(48, 64), class_name="frog", source="planted artefact", **settings)
    values = json.loads(json.dumps(p.to_dict()))
    assert set(values) == {"kind", "size", "color", "placement", "offset", "opacity", "strength", "text",
                           "jpeg_quality", "image_size", "class_name", "source"}
    assert values["image_size"] == [48, 64] and values["color"] == [1, 2, 3]
    assert Planted.from_dict(values) == p
    square = Planted(kind=kind, image_size=32)
    assert square.to_dict()["image_size"] == 32 and Planted.from_dict(square.to_dict()) == square


@pytest.mark.parametrize(("match", "settings"), [
    ("unknown artefact kind 'sticker'", {"kind": "sticker"}),
    ("--artefact one of square, logo, text, stripe, frame, tint, blur, noise", {"kind": "sticker"}),
    ("unknown placement 'middle'", {"placement": "middle"}),
    ("--opacity", {"opacity": 0.0}),
    ("--opacity", {"opacity": 1.5}),
    ("--strength", {"kind": "tint", "strength": 100}),
    ("--strength", {"kind": "blur", "strength": 0.1}),
    ("--strength is not used by square", {"strength": 3}),
    ("--jpeg-quality", {"jpeg_quality": 0}),
    ("--jpeg-quality", {"jpeg_quality": 96}),
    ("--placement random needs an artefact with a place; frame has none", {"kind": "frame", "placement": "random"}),
    ("--placement centre needs an artefact with a place; tint has none", {"kind": "tint", "placement": "centre"}),
    ("--patch-size", {"size": 0}),
    ("--patch-size", {"size": 33}),
    ("--patch-offset", {"size": 6, "offset": 27}),
    ("--patch-offset", {"kind": "stripe", "placement": "bottom-left", "offset": 30}),
    ("--patch-size", {"kind": "frame", "size": 16}),
    ("--patch-size", {"kind": "text", "size": 35}),
    ("text 'COPYRIGHT' is 35 px wide, the image 32 px", {"kind": "text", "text": "COPYRIGHT"}),
    ("'é'", {"kind": "text", "text": "(é)"}),
    ("--artefact-text", {"kind": "text", "text": ""}),
    ("--patch-color", {"color": (256, 0, 0)}),
])
def test_every_bad_setting_is_a_one_line_error_with_its_fix(match, settings):
    one_line_error(match, **settings)


def test_the_fit_follows_the_image_and_its_shape():
    Planted(kind="text", text="COPYRIGHT", image_size=(32, 64))  # fits a wider image
    Planted(size=40, image_size=(48, 64))
    one_line_error("does not fit a 32x64 px image", size=40, image_size=(32, 64))
    assert Planted(kind="text", text="(c) 2024").footprint() == (5, 31)  # 8 glyphs of 3 px and 7 gaps of 1 px
