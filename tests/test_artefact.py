"""One artefact type: the planted square, the audit's transplanted region and repair's artefact are all an
`Artefact`, which pastes exactly the pixels the patch always had and says where they went."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gradcam_repro.data import artefact as artefacts
from gradcam_repro.data.artefact import Artefact, fill_from_ring, median_pixels, paste_pixels
from gradcam_repro.data.bias import bias_dataset, inject_patch, patch_artefact, patch_box
from gradcam_repro.data.images import EvalSet
from gradcam_repro.errors import UserError
from gradcam_repro.measure import spray
from gradcam_repro.measure.shortcut import counterfactual_artefacts, counterfactual_patches
from gradcam_repro.runtime import Runtime

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
COLOR = (255, 0, 128)


def random_images(n: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    # Values 1..254 only, so a pasted 255 or 0 is always a change.
    return torch.randint(1, 255, (n, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def painted(images: torch.Tensor, box, color) -> torch.Tensor:
    """What the planted patch always was: the box filled with one colour, written out by hand."""
    top, left, bottom, right = box
    out = images.clone()
    for c, value in enumerate(color):
        out[:, c, top:bottom, left:right] = value
    return out


# ----- the square is the planted patch -------------------------------------------------------------------------

@pytest.mark.parametrize("corner", CORNERS)
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("height, width", [(32, 32), (48, 64)])
def test_the_square_pastes_exactly_the_patch_pixels_at_every_corner_and_offset(corner, offset, height, width):
    images = random_images(4, height, width)
    square = Artefact.square(5, COLOR, corner, offset, (height, width))
    box = patch_box((height, width), 5, corner, offset)
    out, masks = square.apply(images)
    assert square.box == box
    assert torch.equal(out, painted(images, box, COLOR))
    assert torch.equal(out, inject_patch(images, patch_size=5, color=COLOR, corner=corner, offset=offset))
    assert torch.equal(artefacts.paste(images, square), out)
    assert not torch.equal(out, images), "the input must not be modified"
    # The masks are the box on every image, and exactly the pixels that changed.
    assert masks.shape == (4, height, width) and masks.dtype == torch.bool
    assert torch.equal(masks, (out != images).any(dim=1))
    assert torch.equal(masks[0], square.mask())


@pytest.mark.parametrize("corner, expected", [("top-left", (0, 0, 6, 6)), ("top-right", (0, 58, 6, 64)),
                                               ("bottom-left", (42, 0, 48, 6)), ("bottom-right", (42, 58, 48, 64))])
def test_a_square_on_a_non_square_image_sits_in_its_corner(corner, expected):
    square = Artefact.square(6, (255, 255, 0), corner, image_size=(48, 64))
    assert square.box == expected and square.image_size == (48, 64)
    inside = torch.zeros(48, 64, dtype=torch.bool)
    inside[expected[0]:expected[2], expected[1]:expected[3]] = True
    assert torch.equal(square.mask(), inside)
    assert torch.equal(square.apply(random_images(2, 48, 64))[1], inside.expand(2, 48, 64))


def test_the_image_size_is_a_height_width_pair_and_a_side_still_works():
    assert Artefact.square(6, (255, 255, 0), image_size=32).image_size == (32, 32)
    assert artefacts.solid((0, 0, 2, 2), (1, 2, 3), "c", "s").image_size == (32, 32)
    assert Artefact.square(6, (255, 255, 0), image_size=torch.Size([48, 64])).image_size == (48, 64)
    with pytest.raises(ValueError, match=r"\(48, 64\)"):
        Artefact.square(6, (255, 255, 0), image_size=(48, 64)).apply(random_images(1))


def test_patch_artefact_reads_the_specs_patch_dict_with_inject_patchs_defaults():
    patch = {"patch_size": 4, "color": (10, 20, 30), "corner": "bottom-right", "offset": 2}
    a = patch_artefact(patch, 32, "frog", "the run's planted patch")
    assert (a.box, a.class_name, a.source, a.image_size) == ((26, 26, 30, 30), "frog", "the run's planted patch", (32, 32))
    assert a.pixels[:, 0, 0].tolist() == [10, 20, 30]
    default = patch_artefact({}, 32)
    assert default.box == (0, 0, 6, 6) and default.pixels[:, 0, 0].tolist() == [255, 255, 0]
    with pytest.raises(TypeError, match="colour"):
        patch_artefact({"colour": (1, 2, 3)}, 32)


def test_bias_dataset_plants_an_artefact_as_it_plants_the_patch_keywords():
    images, labels = random_images(30, 16, 16, seed=1), torch.arange(30) % 3
    patch = {"patch_size": 4, "color": (255, 255, 0), "corner": "bottom-left", "offset": 1}
    by_keywords = bias_dataset(images, labels, 2, 0.5, 7, **patch)
    by_artefact = bias_dataset(images, labels, 2, 0.5, 7, artefact=patch_artefact(patch, 16))
    assert torch.equal(by_keywords[0], by_artefact[0]) and torch.equal(by_keywords[1], by_artefact[1])
    with pytest.raises(TypeError, match="not both"):
        bias_dataset(images, labels, 2, 0.5, 7, artefact=patch_artefact(patch, 16), patch_size=4)


# ----- what a repaired experiment's spec hashes does not move ------------------------------------------------------

def test_a_square_artefacts_dict_is_byte_for_byte_what_repaired_specs_hashed():
    planted = patch_artefact({"patch_size": 2, "color": (255, 255, 0), "corner": "top-left", "offset": 0}, 32, "frog",
                             "the run's planted patch")
    expected = ('{"box_tlbr_px": [0, 0, 2, 2], "pixels": [[[255, 255], [255, 255]], [[255, 255], [255, 255]], '
                '[[0, 0], [0, 0]]], "class": "frog", "source": "the run\'s planted patch", "image_size": 32}')
    assert json.dumps(planted.to_dict()) == expected
    assert json.dumps(artefacts.solid((0, 0, 2, 2), (255, 255, 0), "frog", "the run's planted patch").to_dict()) == expected
    again = Artefact.from_dict(json.loads(expected))
    assert json.dumps(again.to_dict()) == expected and again.image_size == (32, 32)


def test_a_non_square_artefact_round_trips_with_height_and_width():
    a = Artefact.square(3, (1, 2, 3), "bottom-right", image_size=(48, 64), class_name="c", source="s")
    assert a.to_dict()["image_size"] == [48, 64]
    back = Artefact.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back.box == a.box == (45, 61, 48, 64) and back.image_size == (48, 64) and torch.equal(back.pixels, a.pixels)


def test_a_box_outside_a_non_square_image_is_refused_with_its_height_and_width():
    with pytest.raises(UserError, match="48x64"):
        artefacts.solid((40, 0, 50, 4), (1, 2, 3), "c", "s", (48, 64))
    with pytest.raises(UserError, match="48x64"):
        artefacts.from_images((0, 60, 2, 66), random_images(3, 48, 64), "c", "s")


# ----- the shortcut study and the audit paste through it ------------------------------------------------------------

def test_the_counterfactual_variants_are_artefacts_pasting_the_recorded_patches():
    patch = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 1}
    images = random_images(3)
    variants = counterfactual_artefacts(patch, 32)
    assert list(variants) == list(counterfactual_patches(patch))
    for name, spec in counterfactual_patches(patch).items():
        assert torch.equal(variants[name].apply(images)[0], inject_patch(images, **spec))
        assert variants[name].source == name


def test_the_audits_transplant_pastes_the_clusters_median_and_removal_fills_from_the_ring():
    images, labels = random_images(24, seed=2), torch.arange(24) % 4
    images[labels == 1, :, 2:6, 3:8] = 200  # the cluster's constant region
    data = EvalSet(images, labels, ("a", "b", "c", "d"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval()
    members, box = (labels == 1).nonzero().squeeze(1), (2, 3, 6, 8)
    region = {"box": box, "kind": "constant pixels", "relevance_box": box, "constant_px": 20}
    record, ex = spray.confirm_candidate(model, data, torch.full((24,), 1), members, region,
                                         spray.AuditSettings(transplant_images=10), Runtime(torch.device("cpu")))
    median = median_pixels(images[members], box)
    assert torch.equal(ex["pixels"], median) and record["pixels"] == median.tolist()
    assert torch.equal(ex["pasted"], paste_pixels(ex["originals"], median, box))
    assert torch.equal(ex["removed"], fill_from_ring(images[members][:len(ex["removed"])], box, spray.REMOVAL_RING_PX))


def test_a_keep_mask_pastes_only_its_pixels_and_survives_the_round_trip_through_json():
    keep = torch.tensor([[True, False, True], [False, True, False]])
    art = Artefact((4, 5, 6, 8), torch.full((3, 2, 3), 250, dtype=torch.uint8), "c", "s", keep=keep)
    images = random_images(2)
    out, masks = art.apply(images)
    expected = images.clone()
    expected[:, :, 4:6, 5:8] = torch.where(keep, torch.tensor(250, dtype=torch.uint8), images[:, :, 4:6, 5:8])
    assert torch.equal(out, expected)
    assert int(masks[0].sum()) == 3 and masks[0, 4, 5] and not masks[0, 4, 6]
    back = Artefact.from_dict(json.loads(json.dumps(art.to_dict())))
    assert torch.equal(back.keep, keep) and torch.equal(back.apply(images)[0], out)
    assert "keep" not in artefacts.solid((0, 0, 2, 2), (1, 2, 3), "c", "s").to_dict()  # earlier keys unchanged
    with pytest.raises(ValueError, match="keep mask"):
        Artefact((4, 5, 6, 8), torch.zeros(3, 2, 3, dtype=torch.uint8), "c", "s", keep=torch.ones(3, 3, dtype=torch.bool))


def test_the_audits_transplant_of_a_constant_pixel_region_pastes_its_constant_pixels_only():
    # A sparse mark (a text's glyphs: an L of 7 px) on the cluster's images over varying backgrounds: the region's
    # box holds the mark and background; only the mark's pixels may be pasted, the other images' pixels kept.
    images, labels = random_images(40, seed=3), torch.arange(40) % 4
    mark = torch.zeros(32, 32, dtype=torch.bool)
    mark[20:25, 10] = True
    mark[24, 10:13] = True
    images[((labels == 1)[:, None, None, None] & mark).expand_as(images)] = 240
    spread = spray.pixel_spread(images)
    members = (labels == 1).nonzero().squeeze(1)
    mean = torch.zeros(32, 32)
    mean[20:25, 10:13] = 1.0
    region = spray.candidate_region(images[members], spread, mean)
    assert region["kind"] == "constant pixels" and region["box"] == (20, 10, 25, 13)
    assert region["constant_mask"] == ["100", "100", "100", "100", "111"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval()
    data = EvalSet(images, labels, ("a", "b", "c", "d"))
    record, ex = spray.confirm_candidate(model, data, torch.full((40,), 1), members, region,
                                         spray.AuditSettings(transplant_images=10), Runtime(torch.device("cpu")))
    assert record["constant_mask"] == region["constant_mask"]
    assert torch.equal(ex["pasted"], torch.where(mark, torch.tensor(240, dtype=torch.uint8), ex["originals"]))
