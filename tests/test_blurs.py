"""The audit's shared-blur test (`measure.blurs`, audit rules 8; its fit by rules 9): a region where a class's
images lack fine detail, found without relevance (a blur adds no colour and no pattern), blurred on other images to
transplant its effect."""

import pytest
import torch
from audit_helpers import coded_set, effect_audit, effect_test, grey_noise, one_cluster_finding
from torch import nn

from benchmarks import blur_fit
from gradcam_repro.data.images import EvalSet
from gradcam_repro.data.zoo import Planted, gaussian_blur
from gradcam_repro.measure import blurs, patterns, spray
from gradcam_repro.measure.moving import grow_box
from gradcam_repro.model.sources import InputContract, attach
from gradcam_repro.report import audit_report
from gradcam_repro.runtime import Runtime

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Runtime(torch.device("cpu"))
SIDE = 16
BOX = (4, 4, 12, 12)  # the planted blur: an 8x8 px square in the middle of 16x16 images
SIGMA = 2.0


def backgrounds(n: int, seed: int) -> torch.Tensor:
    return grey_noise(n, seed, SIDE)


def blurred(images: torch.Tensor, box=BOX, sigma: float = SIGMA) -> torch.Tensor:
    return blurs.blur_inside(images, blurs.mask_of(box, SIDE, SIDE), sigma)


def test_detail_is_the_mean_absolute_residual_and_a_blur_takes_it_away_inside_its_box_only():
    flat = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    assert blurs.detail(flat).eq(0).all()
    dot = flat.clone()
    dot[0, 0, 4, 4] = 190  # 90 levels on one channel: residual 80 there, 90 / 3 channels of it ...
    assert blurs.detail(dot)[0, 4, 4].item() == pytest.approx(80 / 3)
    assert blurs.detail(dot)[0, 3, 3].item() == pytest.approx(10 / 3)  # ... and -10 at a neighbour (90 / 9)
    images = backgrounds(20, 1)
    out = blurred(images)
    inside = blurs.mask_of(BOX, SIDE, SIDE)
    assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])  # nothing changes outside the box
    assert torch.equal(out[:, :, inside], gaussian_blur(images, SIGMA)[:, :, inside])  # as the zoo renders a blur
    assert blurs.detail(out)[:, 6:10, 6:10].mean() < 0.3 * blurs.detail(images)[:, 6:10, 6:10].mean()


def test_the_rolled_mask_is_the_same_box_half_the_image_away():
    mask = blurs.mask_of((0, 0, 2, 3), 8, 8)
    assert mask.sum().item() == 6
    assert patterns.rolled(mask).nonzero().tolist() == [[4, 4], [4, 5], [4, 6], [5, 4], [5, 5], [5, 6]]


def test_the_carriers_are_exactly_the_blurred_images_and_a_class_without_a_blur_has_none():
    members = backgrounds(80, 1)
    members[:40] = blurred(members[:40])
    carried, summary = blurs.carriers(members, backgrounds(80, 2), seed=0)
    assert carried[:40].all() and not carried[40:].any()
    assert summary["threshold"] > summary["reference_mean"]
    plain, _ = blurs.carriers(backgrounds(80, 3), backgrounds(80, 4), seed=0)
    assert int(plain.sum()) < spray.MIN_CLUSTER_IMAGES
    few, summary = blurs.carriers(members, members[:3], seed=0)  # 3 other images: no spread to compare with
    assert not few.any() and summary["threshold"] != summary["threshold"]


def test_an_image_flat_all_over_is_no_carrier():
    """Detail is weighed against the image's own detail elsewhere: a plain image is not a blurred one."""
    members = backgrounds(80, 1)
    members[:40] = blurred(members[:40])
    members[40:50] = 100  # ten flat images in the class, flat in the box as a blurred one is
    carried, _ = blurs.carriers(members, backgrounds(80, 2), seed=0)
    assert carried[:40].all() and not carried[40:].any()


def test_the_found_region_is_the_blurred_box_and_its_strength_is_read_off_the_images():
    members = backgrounds(80, 1)
    members[:40] = blurred(members[:40])
    found = blurs.shared_blur(members, backgrounds(80, 2), seed=0)
    assert found["box"] == BOX and found["sigma"] == SIGMA
    assert found["detail"]["carriers"] < 0.3 * found["detail"]["reference"]
    reference = backgrounds(30, 5)
    for box, sigma in (((5, 5, 11, 11), 0.5), ((4, 4, 12, 12), 3.0), ((6, 5, 10, 12), 1.5)):
        # The same images blurred at a ladder sigma over the box grown from the found one: that box and sigma, exactly.
        found = (box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1) if box != BOX else BOX
        wanted = blurs.detail(blurred(reference, box, sigma)).mean(dim=0)
        assert blurs.extent(wanted, reference, found) == (box, sigma)
    assert grow_box((0, 3, 14, 16), 2, (SIDE, SIDE)) == (0, 1, 16, 16)  # clipped to the image
    nothing = blurs.shared_blur(backgrounds(80, 3), backgrounds(80, 4), seed=0)
    assert nothing["box"] is None and nothing["sigma"] is None



def layered(n: int, seed: int, side: int = 32) -> torch.Tensor:
    """(n, 3, side, side) uint8 grey images with detail at every scale (uniform noise at 4, 8, 16 and 32 cells a side,
    each upsampled and summed), as a photo has: a blur of any sigma of the ladder leaves a different amount."""
    generator, out = torch.Generator().manual_seed(seed), torch.zeros((n, 1, side, side))
    for cells in (4, 8, 16, 32):
        layer = torch.rand((n, 1, cells, cells), generator=generator) - 0.5
        out += nn.functional.interpolate(layer, size=(side, side), mode="bilinear", align_corners=False)
    return (128 + 40 * out).round().clamp(0, 255).to(torch.uint8).expand(n, 3, side, side).contiguous()


def test_every_sigma_of_the_ladder_is_read_off_even_where_the_blur_leaves_almost_no_detail():
    # Rules version 9: the misfit is between logarithms. Between the maps themselves, sigma 4 and 5 (under 0.3 levels
    # of detail left inside, against 7 outside) were read as 3 and 4 on these images.
    box, reference = (8, 8, 24, 24), layered(60, 1)
    for sigma in blurs.SIGMA_LADDER:
        carriers = blurs.blur_inside(layered(60, 2), blurs.mask_of(box, 32, 32), sigma)
        assert blurs.extent(blurs.detail(carriers).mean(dim=0), reference, box) == (box, sigma)


def test_the_model_free_blur_check_plants_finds_and_fits_as_the_audit_does():
    images, labels = layered(200, 3), torch.arange(2).repeat_interleave(100)
    for sigma in (1.5, 5.0):
        case = blur_fit.one_case(images, labels, 0, Planted(kind="blur", size=16, placement="centre", strength=sigma))
        assert case["carriers"] == case["planted"] == 50  # half of class 0's 100 images, every one found
        assert case["logarithms"] == (1.0, sigma) and case["maps"][0] == 1.0
    assert "maps" not in blur_fit.one_case(images, labels, 0, Planted(kind="tint"))  # no detail lost: nothing to fit

class BlurOrCode(nn.Module):
    """Class 0 when the input has under a third of its usual detail in BOX (a model that relies on the blur, if
    `relies`); else the class coded in the mean green level (0-2 for 80-120)."""

    def __init__(self, relies: bool = True):
        super().__init__()
        attach(self, InputContract(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)))  # the model sees 0-255
        self.relies = relies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = ((x[:, 1].mean(dim=(1, 2)) - 80) / 20).round().long().clamp(0, 2)
        logits = nn.functional.one_hot(code, 3).float()
        if not self.relies:
            return logits
        top, left, bottom, right = BOX
        inside = blurs.detail(x.clamp(0, 255).round().to(torch.uint8))[:, top + 1:bottom - 1, left + 1:right - 1]
        return torch.where((inside.mean(dim=(1, 2)) < 4.0 / 3)[:, None], torch.tensor([1.0, 0.0, 0.0]), logits)


def blur_set() -> EvalSet:
    """60 images per class, coded by their green level; half of class 0's carry the blur."""
    images, labels, patched = coded_set(blurred, side=SIDE)
    return EvalSet(images, labels, ("a", "b", "c"), patched=patched, planted_box=BOX)


def test_a_relied_on_blur_is_confirmed_by_blurring_its_box_on_other_images_and_there_is_no_removal():
    data = blur_set()
    (record, ex), predictions = effect_test(spray.confirm_blur, BlurOrCode(), data)
    assert (predictions == data.labels).all()
    assert record["kind"] == spray.BLUR_KIND and record["box_tlbr_px"] == list(BOX) and record["blur_sigma"] == SIGMA
    assert sorted(ex["carriers"].tolist()) == list(range(30))
    # Blurred where the carriers are, every other image becomes class 0; blurred half the image away, none does.
    assert record["transplant_flip"]["mean"] == 1.0 and record["untouched"]["mean"] == 0.0
    assert record["verdict"] == spray.CONFIRMED and record["iou_with_planted_box"] == 1.0
    assert record["rolled_flip"]["mean"] == 0.0 and record["occluded_flip"] is None
    assert record["removal_change"] is None and "a blur cannot be undone" in record["reason"]
    assert "fewer: the model answers a blur at this place" in record["reason"]


def test_a_blur_the_model_ignores_is_no_finding_and_a_class_without_one_is_not_tested():
    data, model = blur_set(), BlurOrCode(relies=False)
    (record, _), _ = effect_test(spray.confirm_blur, model, data)
    assert record["transplant_flip"]["mean"] == 0.0 and record["verdict"] == spray.NONE
    assert record["rolled_flip"] is None  # below the candidate bar: not measured
    assert effect_test(spray.confirm_blur, model, data, first=60)[0] is None


def test_the_class_keeps_its_blur_finding_and_the_report_says_what_was_blurred():
    best, candidate = one_cluster_finding(BlurOrCode(), blur_set(), (0, 0, 3, 3), CPU)
    assert (best["test"], best["cluster"], best["n"], best["verdict"]) == (spray.BLUR_TEST, None, 30, spray.CONFIRMED)
    assert spray.FIXED_TEST in [t["test"] for t in best["also_tested"]]
    assert candidate.blurred and candidate.effect and not candidate.pattern and candidate.removal_change is None
    assert audit_report.region_text(candidate) == "region rows 4-11, cols 4-11 blurred at sigma 2 px"


def test_a_blur_finding_is_drawn_and_written_with_its_rolled_control_and_no_removal():
    data = blur_set()
    (record, ex), predictions = effect_test(spray.confirm_blur, BlurOrCode(), data)
    result, examples = effect_audit(record, ex, spray.BLUR_TEST, data, predictions)
    line = audit_report.summary_lines(result)[0]
    assert "blurred at sigma 2 px" in line and "rolled out of place 0.0%" in line and "not possible (a blur)" in line
    markdown = audit_report.audit_markdown(result)
    assert "**A shared blur**" in markdown and "10. **Unexplained concentration**" in markdown
    assert "nearest the carriers' (least squares of the logarithms)" in markdown  # rules version 9's fit
    figure = audit_report.candidate_figure(result, examples, 1)
    assert "blurred out of place: 0.0%" in figure._suptitle.get_text()
    assert any("a blur cannot" in t.get_text() for ax in figure.axes for t in ax.texts)
