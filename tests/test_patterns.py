"""The audit's shared-pattern test (`measure.patterns`, audit rules 7): a faint pattern that a class's images share in
their fine detail, found without relevance (a sensor's fixed noise has no region and no constant pixels), and what the
audit does with it."""

import pytest
import torch
from audit_helpers import coded_set, effect_audit, effect_test, grey_noise, one_cluster_finding
from torch import nn

from gradcam_repro.data.images import EvalSet
from gradcam_repro.measure import patterns, spray
from gradcam_repro.model.sources import InputContract, attach
from gradcam_repro.report import audit_report
from gradcam_repro.runtime import Runtime

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Runtime(torch.device("cpu"))
SIDE = 16
# A fixed +-1 pattern (a sensor's), the same on every image that carries it, pushed +A on red and green, -A on blue.
SIGN = (torch.randint(0, 2, (1, SIDE, SIDE), generator=torch.Generator().manual_seed(99)) * 2 - 1).float()
DIRECTION = torch.tensor([1.0, 1.0, -1.0]).view(3, 1, 1)
LEVELS = 8


def backgrounds(n: int, seed: int) -> torch.Tensor:
    return grey_noise(n, seed, SIDE)


def with_pattern(images: torch.Tensor, levels: float = LEVELS) -> torch.Tensor:
    return (images.float() + levels * SIGN * DIRECTION).round().clamp(0, 255).to(torch.uint8)


def test_a_residual_is_the_image_less_its_local_mean_and_a_line_boxes_to_its_own_row():
    flat = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    assert patterns.residuals(flat).eq(0).all()  # edge-replicated: no border effect on a flat image
    line = flat.clone()
    line[0, :, 4, :] = 190  # a 1 px line 90 levels above the background
    res = patterns.residuals(line)[0, 0]
    assert res[4, 3].item() == pytest.approx(60.0)  # 90 - 90 / 3: three of the nine neighbours are on the line
    assert res[3, 3].item() == pytest.approx(-30.0) and res[5, 3].item() == pytest.approx(-30.0)  # exactly half
    assert res[1, 3].item() == 0.0
    assert patterns.pattern_box(patterns.residuals(line)[0]) == (4, 0, 5, 8)  # the half either side is not the line


def test_the_carriers_are_exactly_the_images_with_the_fixed_pattern_and_a_class_without_one_has_none():
    members = backgrounds(80, 1)
    members[:40] = with_pattern(members[:40])
    carried, summary = patterns.carriers(members, backgrounds(80, 2), seed=0)
    assert carried[:40].all() and not carried[40:].any()
    assert summary["threshold"] == pytest.approx(summary["reference_mean"] + patterns.CARRIER_SIGMAS * summary["reference_sd"])
    plain, _ = patterns.carriers(backgrounds(80, 3), backgrounds(80, 4), seed=0)
    assert int(plain.sum()) < spray.MIN_CLUSTER_IMAGES  # chance alone: about 1 in 2,000 images
    few, summary = patterns.carriers(members, members[:3], seed=0)  # 3 other images: no spread to compare with
    assert not few.any() and summary["threshold"] != summary["threshold"]


def test_the_found_pattern_is_the_planted_one_over_the_whole_image():
    members = backgrounds(80, 1)
    members[:40] = with_pattern(members[:40])
    found = patterns.shared_pattern(members, backgrounds(80, 2), seed=0)
    truth = patterns.residuals(with_pattern(torch.full((1, 3, SIDE, SIDE), 100, dtype=torch.uint8)))[0]
    cosine = nn.functional.cosine_similarity(found["pattern"].flatten(), truth.flatten(), dim=0)
    assert cosine.item() > 0.95
    assert found["box"] == (0, 0, SIDE, SIDE)
    assert found["rms"] == pytest.approx(truth.pow(2).mean().sqrt().item(), rel=0.15)
    plain = patterns.shared_pattern(backgrounds(80, 3), backgrounds(80, 4), seed=0)
    assert int(plain["carriers"].sum()) < spray.MIN_CLUSTER_IMAGES


def test_adding_subtracting_and_rolling_a_pattern():
    images = torch.tensor([[[[0, 250]]] * 3], dtype=torch.uint8)  # (1, 3, 1, 2)
    shift = torch.tensor([[[-3.4, 9.6]]] * 3)
    assert patterns.add(images, shift)[0, 0].tolist() == [[0, 255]]  # rounded and clipped both ways
    assert patterns.add(images, shift, sign=-1.0)[0, 0].tolist() == [[3, 240]]
    grid = torch.arange(16.0).view(1, 4, 4)
    assert patterns.rolled(grid)[0, 2, 2].item() == 0.0 and patterns.rolled(grid)[0, 0, 0].item() == 10.0
    assert patterns.visible(torch.tensor([[[-2.0, 0.0, 4.0]]])).tolist() == [[[64, 128, 255]]]


class PatternOrCode(nn.Module):
    """Class 0 when the input's residual goes more than half of the planted pattern's way along the pattern (a model
    that relies on the sensor pattern, if `relies`); else the class coded in the mean green level (0-2 for 80-120)."""

    def __init__(self, relies: bool = True):
        super().__init__()
        attach(self, InputContract(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)))  # the model sees 0-255
        truth = patterns.residuals(with_pattern(torch.full((1, 3, SIDE, SIDE), 100, dtype=torch.uint8)))[0]
        self.register_buffer("unit", truth / truth.norm())
        self.bar = 0.5 * truth.norm().item()
        self.relies = relies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = ((x[:, 1].mean(dim=(1, 2)) - 80) / 20).round().long().clamp(0, 2)
        logits = nn.functional.one_hot(code, 3).float()
        if not self.relies:
            return logits
        pixels = x.clamp(0, 255).round().to(torch.uint8)
        along = (patterns.residuals(pixels) * self.unit).flatten(1).sum(dim=1)
        return torch.where((along > self.bar)[:, None], torch.tensor([1.0, 0.0, 0.0]), logits)


def pattern_set() -> EvalSet:
    """60 images per class, coded by their green level; half of class 0's carry the pattern."""
    images, labels, patched = coded_set(with_pattern, side=SIDE)
    masks = torch.zeros(180, SIDE, SIDE, dtype=torch.bool)
    masks[:30] = True  # the pattern covers the whole image
    return EvalSet(images, labels, ("a", "b", "c"), patched=patched, planted_masks=masks)


def test_a_relied_on_pattern_is_confirmed_by_adding_it_and_removed_by_subtracting_it():
    data, model = pattern_set(), PatternOrCode()
    (record, ex), predictions = effect_test(spray.confirm_pattern, model, data)
    assert (predictions == data.labels).all()
    assert record["kind"] == spray.PATTERN_KIND and record["box_tlbr_px"] == [0, 0, SIDE, SIDE]
    assert sorted(ex["carriers"].tolist()) == list(range(30))
    # Added to every other image, the found pattern goes nearly all the planted one's way: all become class 0 ...
    assert record["transplant_flip"]["mean"] == 1.0 and record["untouched"]["mean"] == 0.0
    assert record["verdict"] == spray.CONFIRMED
    # ... and out of place it does not go that way at all.
    assert record["rolled_flip"]["mean"] == 0.0 and record["occluded_flip"] is None
    assert "fewer: the model answers this exact pattern" in record["reason"]
    # Subtracted from the carriers, the pattern is gone (their residual no longer goes its way); they stay class 0 by
    # their own code, so no prediction changes.
    along = (patterns.residuals(ex["removed"]) * model.unit).flatten(1).sum(dim=1)
    assert (along < 0.25 * model.bar).all()
    assert record["removal_change"]["mean"] == 0.0
    assert record["iou_with_planted_box"] == 1.0


def test_a_pattern_the_model_ignores_is_no_finding_and_a_class_without_one_is_not_tested():
    data, model = pattern_set(), PatternOrCode(relies=False)
    (record, _), _ = effect_test(spray.confirm_pattern, model, data)
    assert record["transplant_flip"]["mean"] == 0.0 and record["removal_change"]["mean"] == 0.0
    assert record["verdict"] == spray.NONE and record["rolled_flip"] is None  # below the candidate bar: not measured
    assert effect_test(spray.confirm_pattern, model, data, first=60)[0] is None


def test_the_class_keeps_its_pattern_finding_and_the_report_says_what_was_added():
    best, candidate = one_cluster_finding(PatternOrCode(), pattern_set(), (6, 6, 10, 10), CPU)
    assert (best["test"], best["cluster"], best["n"], best["verdict"]) == (spray.PATTERN_TEST, None, 30, spray.CONFIRMED)
    assert [t["test"] for t in best["also_tested"]] == [spray.FIXED_TEST]
    assert candidate.pattern and not candidate.per_image and candidate.pixels is None
    assert audit_report.region_text(candidate) == f"a faint pattern added over rows 0-15, cols 0-15, RMS {best['pattern_rms']:.1f} levels"


def test_a_pattern_finding_is_drawn_and_written_as_what_was_added_with_its_rolled_control():
    data = pattern_set()
    (record, ex), predictions = effect_test(spray.confirm_pattern, PatternOrCode(), data)
    result, examples = effect_audit(record, ex, spray.PATTERN_TEST, data, predictions)
    lines = audit_report.summary_lines(result)
    assert "a faint pattern added over rows 0-15, cols 0-15" in lines[0] and "rolled out of place 0.0%" in lines[0]
    markdown = audit_report.audit_markdown(result)
    assert "**A shared faint pattern**" in markdown and "10. **Unexplained concentration**" in markdown
    # Both ways the flag fires are described (relevance concentrated, or regions whose transplant stands out), and
    # what it is worth: measured on the benchmark, it fires on clean models as often (docs/findings/benchmark.md).
    flag_rule = markdown.split("10. **Unexplained concentration**")[1]
    assert "median class's (fixed-place or peak score)" in flag_rule and "median tested class's rate" in flag_rule
    assert "a lead, not a finding" in flag_rule
    figure = audit_report.candidate_figure(result, examples, 1)
    titles = [ax.get_title() for ax in figure.axes]
    assert "pattern subtracted -> frog" in titles and any(t.startswith("added pattern") for t in titles)
    assert "rolled out of place: 0.0%" in figure._suptitle.get_text()
