"""The audit at any image size: its pixel rules, tuned on 32x32 images, are read for the image at hand
(`spray.AuditScale`: shares stay shares, lengths scale with sqrt(H * W / 32^2), areas with its square), they are
today's constants at 32x32, and on a non-square 64x48 image (64 rows, 48 columns, as --image-size 64x48 reads) the
audit's regions, boxes and fills land in that image's pixels."""

import pytest
import torch
from cam_helpers import SmallCNN
from torch import nn

from gradcam_repro.data.artefact import RING_PX, fill_from_ring, median_pixels, paste_pixels
from gradcam_repro.data.images import EvalSet
from gradcam_repro.data.zoo import box_masks
from gradcam_repro.measure import moving, spray
from gradcam_repro.measure.spray import AuditScale
from gradcam_repro.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
HEIGHT, WIDTH = 64, 48  # factor sqrt(3072 / 1024) = sqrt(3) = 1.732
PATCH = (12, 20, 18, 28)  # a 6x8 px artefact, 48 px

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _with_patch(images: torch.Tensor) -> torch.Tensor:
    top, left, bottom, right = PATCH
    images[:, :, top:bottom, left:right] = torch.tensor([200, 30, 30], dtype=torch.uint8).view(3, 1, 1)
    return images


# ----- the rule -------------------------------------------------------------------------------------------------

def test_at_32x32_the_scale_is_exactly_todays_constants():
    scale = AuditScale.for_size(32, 32)
    assert scale == AuditScale(32, 32, fixed_place_px=64, search_margin_px=4, min_artefact_px=4, removal_ring_px=2, embed_grid=8)
    assert (scale.fixed_place_px, scale.search_margin_px, scale.min_artefact_px, scale.removal_ring_px, scale.embed_grid) == (
        spray.FIXED_PLACE_PX, spray.SEARCH_MARGIN_PX, spray.MIN_ARTEFACT_PX, spray.REMOVAL_RING_PX, spray.EMBED_GRID)
    assert scale.factor == 1.0 and spray.REMOVAL_RING_PX == RING_PX
    record = spray.settings_record(spray.AuditSettings(), scale)
    assert {k: record[k] for k in ("embed_grid", "fixed_place_px", "search_margin_px", "removal_ring_px")} == {
        "embed_grid": 8, "fixed_place_px": 64, "search_margin_px": 4, "removal_ring_px": 2}  # as audit.json had them


@pytest.mark.parametrize("height, width, expected", [
    # factor sqrt(3) = 1.732: fixed place 3072 / 16 = 192; margin 4 x 1.732 = 6.93 -> 7; artefact 4 x 3 = 12;
    # ring 2 x 1.732 = 3.46 -> 3.
    (64, 48, (192, 7, 12, 3)),
    (48, 64, (192, 7, 12, 3)),  # only the area counts, not which side is longer
    (224, 224, (3136, 28, 196, 14)),  # factor 7: 50176 / 16; 4 x 7; 4 x 49; 2 x 7
    (20, 20, (25, 3, 2, 1)),  # factor 0.625: margin 2.5 -> 3 (half up, not to even); artefact 1.56 -> 2; ring 1.25 -> 1
    (8, 8, (4, 1, 1, 1)),  # factor 0.25: margin 1, artefact 0.25 and ring 0.5 kept at 1 px
])
def test_lengths_scale_with_the_images_linear_size_areas_with_its_square_and_shares_stay_shares(height, width, expected):
    scale = AuditScale.for_size(height, width)
    assert (scale.fixed_place_px, scale.search_margin_px, scale.min_artefact_px, scale.removal_ring_px) == expected
    assert scale.embed_grid == 8 and scale.fixed_place_px == max(1, height * width // 16)


def test_the_settings_record_says_which_image_size_the_pixel_rules_were_read_for():
    record = spray.settings_record(spray.AuditSettings(), AuditScale.for_size(HEIGHT, WIDTH))
    assert {k: record[k] for k in ("image_hw_px", "embed_grid", "fixed_place_px", "search_margin_px", "min_artefact_px",
                                   "removal_ring_px", "peak_share", "max_region_share")} == {
        "image_hw_px": [64, 48], "embed_grid": 8, "fixed_place_px": 192, "search_margin_px": 7, "min_artefact_px": 12,
        "removal_ring_px": 3, "peak_share": 1 / 16, "max_region_share": 1 / 8}


# ----- discovery on 64x48 maps -----------------------------------------------------------------------------------

def test_the_embedding_pools_a_non_square_map_into_8x8_cells_of_the_image():
    maps = torch.zeros(3, HEIGHT, WIDTH)
    maps[0, 0:8, 0:6] = 1.0  # exactly the first cell: 64 / 8 = 8 rows by 48 / 8 = 6 columns
    maps[1, 24:32, 30:36] = 1.0  # the same blob in cell (3, 5)
    maps[2, 0:32, :] = 1.0  # a different shape
    e = spray.embed_maps(maps)
    assert e.shape == (3, 64) and e[0].tolist() == [1.0] + [0.0] * 63 and e[1][3 * 8 + 5] == 1.0
    shifted = moving.shift_invariant_embedding(maps)
    assert abs(float(shifted[0] @ shifted[1]) - 1) < 1e-9 and float(shifted[0] @ shifted[2]) < 0.99


def test_the_fixed_place_is_a_16th_of_a_non_square_image_and_a_class_at_one_place_finds_its_constant_patch():
    g = torch.Generator().manual_seed(0)
    maps = 0.01 * torch.rand(40, HEIGHT, WIDTH, generator=g)
    maps[:, 10:22, 16:32] += 1.0  # 12 x 16 = 192 px: the fixed place of a 64x48 image, holding the patch
    mask = spray.fixed_place_mask(spray.mean_map(maps))
    assert mask.sum() == 192 and mask[10:22, 16:32].all()
    images = _with_patch(_random_images(40))
    record, _ = spray.discover_class(maps, images, spray.pixel_spread(_random_images(200, seed=1)))
    assert record["fixed_place"]["low"] > 0.9
    regions = [c for c in record["clusters"] if c["region"] is not None]
    assert regions and all(c["uniform"] == 192 / 3072 for c in record["clusters"])
    assert all(c["region"]["box"] == PATCH and c["region"]["constant_px"] == 48 for c in regions)
    assert all(c["region"]["relevance_box"] == (10, 16, 22, 32) for c in regions)


def test_the_constant_pixels_are_searched_a_margin_scaled_to_the_image_around_the_relevance():
    images = _with_patch(_random_images(40))
    reference = spray.pixel_spread(_random_images(200, seed=1))
    mean = torch.zeros(HEIGHT, WIDTH)
    mean[10:20, 34:40] = 1.0  # 6 px right of the patch: beyond the 4 px of 32x32, within 64x48's 7 px
    region = spray.candidate_region(images, reference, mean)
    top, left, bottom, right = PATCH
    every = ["1" * (right - left)] * (bottom - top)  # a solid patch: every pixel of its box is constant
    assert region == {"box": PATCH, "kind": "constant pixels", "relevance_box": (10, 34, 20, 40), "constant_px": 48,
                      "constant_mask": every}


def test_without_constant_pixels_a_large_relevant_area_is_capped_at_an_8th_of_the_non_square_image():
    mean = torch.zeros(HEIGHT, WIDTH)
    mean[:32] = 0.8
    mean[16, 24] = 1.0  # the peak, in a 32 x 48 area at >= half of it: larger than 3072 / 8 = 384 px
    region = spray.candidate_region(_random_images(40), spray.pixel_spread(_random_images(40)), mean)
    # A square of int(sqrt(384)) = 19 px centred on the peak: rows 16 - 9 = 7.., columns 24 - 9 = 15..
    assert region == {"box": (7, 15, 26, 34), "kind": "relevance only", "relevance_box": (0, 0, 32, 48), "constant_px": 0}


def test_a_capped_region_on_a_narrow_image_stays_inside_it():
    # 1/8 of 4 x 100 px is 50 px: a 7 px square does not fit 4 rows, so the square is 4 px, centred on the peak.
    assert moving.capped_box((0, 0, 4, 100), (2, 50), (4, 100)) == [0, 48, 4, 52]


# ----- the causal tests on 64x48 images --------------------------------------------------------------------------

def _data() -> tuple[EvalSet, torch.Tensor, nn.Module]:
    images, labels = _random_images(24, seed=2), torch.arange(24) % 4
    images[labels == 1] = _with_patch(images[labels == 1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * HEIGHT * WIDTH, 4)).eval()
    return EvalSet(images, labels, ("a", "b", "c", "d")), (labels == 1).nonzero().squeeze(1), model


def test_the_fixed_place_transplant_and_removal_use_the_non_square_images_pixels_and_a_scaled_ring():
    data, members, model = _data()
    region = {"box": PATCH, "kind": "constant pixels", "relevance_box": PATCH, "constant_px": 48}
    record, ex = spray.confirm_candidate(model, data, torch.full((24,), 1), members, region,
                                         spray.AuditSettings(transplant_images=10), CPU)
    median = median_pixels(data.images[members], PATCH)
    assert record["box_tlbr_px"] == list(PATCH) and torch.equal(ex["pixels"], median) and median.shape == (3, 6, 8)
    assert torch.equal(ex["pasted"], paste_pixels(ex["originals"], median, PATCH))
    removed = fill_from_ring(data.images[members][:len(ex["removed"])], PATCH, 3)  # 64x48's ring: 3 px
    assert torch.equal(ex["removed"], removed)
    assert not torch.equal(removed, fill_from_ring(data.images[members][:len(ex["removed"])], PATCH, 2))


def test_each_images_own_region_is_found_grown_and_transplanted_in_the_non_square_images_pixels():
    data, members, model = _data()
    corners = [(0, 0), (10, 38), (55, 20), (30, 15), (59, 43), (40, 2)]  # a 5x5 blob on each member's map
    maps = torch.zeros(len(members), HEIGHT, WIDTH)
    for i, (row, col) in enumerate(corners):
        maps[i, row:row + 5, col:col + 5] = 1.0
    record, ex = spray.confirm_moving(model, data, torch.full((24,), 1), members, maps,
                                      spray.AuditSettings(transplant_images=10), CPU)
    # Each blob's box grown by 64x48's 7 px margin and clipped to the image (19 x 19 = 361 px <= 384: not capped).
    boxes = torch.tensor([[0, 0, 12, 12], [3, 31, 22, 48], [48, 13, 64, 32], [23, 8, 42, 27], [52, 36, 64, 48],
                          [33, 0, 52, 14]])
    assert torch.equal(ex["boxes"], boxes) and record["box_tlbr_px"] == boxes.median(dim=0).values.tolist()
    masks = box_masks(boxes, HEIGHT, WIDTH)
    sources = data.images[members]
    assert torch.equal(ex["pasted"], moving.transplant(ex["originals"], sources, masks)[:len(ex["pasted"])])
    assert torch.equal(ex["removed"], moving.ring_fill(sources, masks, 3))  # 64x48's ring: 3 px


def test_a_whole_audit_of_non_square_images_finds_the_planted_patch_in_their_pixels():
    torch.manual_seed(0)
    model = SmallCNN().eval()  # untrained: it calls every image one class, whose maps light up the bright patch
    images = _random_images(150)
    top, left, bottom, right = PATCH
    images[:, :, top:bottom, left:right] = 255
    data = EvalSet(images, torch.arange(150) % 10, tuple("abcdefghij"))
    result, _ = spray.audit_model(model, data, spray.AuditSettings(layer="conv2", transplant_images=50), CPU)
    assert result["settings"]["image_hw_px"] == [64, 48] and result["settings"]["fixed_place_px"] == 192
    fixed = [c for c in result["candidates"] if c["test"] == spray.FIXED_TEST]
    assert fixed and fixed[0]["box_tlbr_px"] == list(PATCH) and fixed[0]["kind"] == "constant pixels"
