"""The audit's shared-pixel test (`measure.shared`, audit rules 5): pixels that a class's images share more than other
classes' images do, found without relevance, and what the audit does with them."""

import numpy as np
import pytest
import torch
from torch import nn

from gradcam_repro.data.images import EvalSet
from gradcam_repro.measure import shared, spray
from gradcam_repro.measure.predict import predict
from gradcam_repro.model.sources import InputContract, attach
from gradcam_repro.runtime import Runtime

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Runtime(torch.device("cpu"))
# A two-part mark (two 3x2 px blocks 1 px apart, like two glyphs) at the bottom-right of 16x16 images.
MARK = torch.zeros(16, 16, dtype=torch.bool)
MARK[12:15, 10:12] = MARK[12:15, 13:15] = True
MARK_BOX = (12, 10, 15, 15)
MARK_RGB = (250, 250, 250)


def backgrounds(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 16, 16) uint8 noise in [0, 200): no colour is shared by many images anywhere."""
    return torch.randint(0, 200, (n, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def with_mark(images: torch.Tensor, jitter: int = 0, seed: int = 0) -> torch.Tensor:
    """`images` with MARK painted in MARK_RGB, each pixel moved by up to +-`jitter` levels (a JPEG's smear)."""
    out = images.clone()
    noise = torch.randint(-jitter, jitter + 1, (len(out), 3, 16, 16), generator=torch.Generator().manual_seed(seed))
    colour = (torch.tensor(MARK_RGB).view(1, 3, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
    out[:, :, MARK] = colour[:, :, MARK]
    return out


def test_mode_share_is_the_largest_share_of_images_within_the_tolerance_of_one_colour():
    images = backgrounds(10, 0)
    images[:4, :, 0, 0] = torch.tensor([200, 10, 10], dtype=torch.uint8)  # 4 of 10 share one colour ...
    images[4, :, 0, 0] = torch.tensor([216, 26, 0], dtype=torch.uint8)  # ... a 5th lies 16 levels off: it counts
    images[5, :, 0, 0] = torch.tensor([217, 10, 10], dtype=torch.uint8)  # 17 off from 200 (but 1 from the 5th)
    images[6:, :, 0, 0] = torch.tensor([[0, 100, 250], [100, 250, 0], [250, 0, 100], [50, 200, 150]], dtype=torch.uint8)
    share, colour = shared.mode_share(images)
    assert share[0, 0].item() == pytest.approx(0.6)  # the 5th's colour reaches 200 and 217 as well: 6 of 10
    assert colour[:, 0, 0].tolist() == [216, 26, 0]
    same = torch.full((7, 3, 2, 2), 77, dtype=torch.uint8)
    assert shared.mode_share(same)[0].eq(1.0).all()


def test_parts_within_the_bridge_are_one_group_and_the_largest_group_wins():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: two parts without a bridge, one with it
    mask[1, 6] = True  # a gap of 3 px from (2, 2): bridged by 4 px, not by 2 px
    mask[8:11, 8:11] = True  # 9 px, a gap of 5 rows below: apart at 4 px
    labelled, count = shared.bridged_labels(mask, None)
    assert count == 4 and labelled[1, 1] != labelled[2, 2]
    labelled, count = shared.bridged_labels(mask, 4)
    assert count == 2 and labelled[1, 1] == labelled[2, 2] == labelled[1, 6] != labelled[9, 9]
    assert (labelled[~mask] == 0).all()
    labelled, _ = shared.bridged_labels(mask, 2)
    assert labelled[1, 1] == labelled[2, 2] != labelled[1, 6]
    assert (shared.largest_group(mask, 4) == (labelled == labelled[9, 9]) & mask).all()
    assert shared.largest_group(mask, 4).sum() == 9
    assert not shared.largest_group(np.zeros((4, 4), dtype=bool), 4).any()


def test_the_shared_region_is_the_mark_that_part_of_the_class_carries_with_its_pixels_and_carriers():
    members = backgrounds(60, 1)
    members[:20] = with_mark(members[:20], jitter=8)  # a third of the class carries it, smeared by +-8 levels
    region = shared.shared_region(members, backgrounds(60, 2), bridge_px=2, min_px=1)
    assert region is not None and region["box"] == MARK_BOX  # both blocks, joined across their 1 px gap
    top, left, bottom, right = MARK_BOX
    assert torch.equal(region["keep"], MARK[top:bottom, left:right])  # the gap between them is not pasted
    assert region["constant_px"] == int(MARK.sum())
    assert region["carriers"].tolist() == [True] * 20 + [False] * 40
    inside = region["pixels"][:, region["keep"]].int()
    assert (inside - 250).abs().max() <= 8  # the median of the smeared colours: close to the mark's own
    assert region["share"][MARK].min() >= 20 / 60 - 1e-6


def test_pixels_shared_as_often_by_other_classes_or_by_too_few_images_are_no_region():
    members, reference = backgrounds(60, 3), backgrounds(60, 4)
    members[:20], reference[:20] = with_mark(members[:20]), with_mark(reference[:20])
    assert shared.shared_region(members, reference, bridge_px=2, min_px=1) is None  # the same share: ratio 1 < 2
    few = backgrounds(60, 5)
    few[:6] = with_mark(few[:6])  # 6 of 60 = 0.1 < MIN_SHARE
    assert shared.shared_region(few, backgrounds(60, 6), bridge_px=2, min_px=1) is None


class MarkAndBrightCorner(nn.Module):
    """Class 0 where MARK is (nearly) white and pixel (0, 15)'s red value is above 128 (the model relies on the mark
    partly: only for such images); else the class coded in pixel (0, 0)'s green value (80 x class)."""

    def __init__(self):
        super().__init__()
        attach(self, InputContract(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)))  # the model sees 0-255

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = (x[:, 1, 0, 0] / 80).round().long().clamp(0, 2)
        logits = nn.functional.one_hot(code, 3).float()
        mark = x[:, :, MARK].amin(dim=(1, 2)) > 230
        return torch.where((mark & (x[:, 0, 0, 15] > 128))[:, None], torch.tensor([1.0, 0.0, 0.0]), logits)


def test_a_partly_relied_on_mark_that_relevance_misses_is_found_and_its_transplant_equals_the_flip_rate():
    images = backgrounds(180, 7)
    labels = torch.arange(3).repeat_interleave(60)
    images[:, 1, 0, 0] = (labels * 80).to(torch.uint8)
    images[:30] = with_mark(images[:30], jitter=4)  # half of class 0's test images carry the mark
    patched = torch.zeros(180, dtype=torch.bool)
    patched[:30] = True
    data = EvalSet(images, labels, ("a", "b", "c"), patched=patched, planted_box=MARK_BOX)
    model = MarkAndBrightCorner()
    predictions = predict(model, images, CPU)
    assert (predictions == labels).all()
    # The relevance points elsewhere: the class's one cluster's region is its middle, which decides nothing.
    members = torch.arange(60)
    record = {"clusters": [{"cluster": 0, "n": 60, "score": 5.0, "region": {
        "box": (6, 6, 10, 10), "kind": "relevance only", "relevance_box": (6, 6, 10, 10), "constant_px": 0}}],
        "peak_clusters": []}
    examples = {"members": members, "cluster_ids": torch.zeros(60, dtype=torch.long), "peak_ids": torch.zeros(60, dtype=torch.long)}
    best, ex = spray.test_class(model, data, (predictions, torch.zeros(180, 16, 16)), "a", record, examples,
                                spray.AuditSettings(), CPU)
    assert (best["test"], best["cluster"], best["kind"], best["n"]) == (spray.SHARED_TEST, None, spray.SHARED_KIND, 30)
    assert best["box_tlbr_px"] == list(MARK_BOX) and best["iou_with_planted_box"] == 1.0
    others = labels != 0
    expected = (images[others, 0, 0, 15] > 128).float().mean().item()  # the model's flip rate with the mark pasted
    assert best["transplant_flip"]["mean"] == pytest.approx(expected)
    assert best["verdict"] == (spray.CONFIRMED if best["transplant_flip"]["low"] >= 0.5 else spray.CANDIDATE)
    assert best["removal_change"]["mean"] == 0.0  # without the mark a carrier is still class 0 by its own code
    assert set(ex["carriers"].tolist()) == set(range(30))
    # The mark's residual is a pattern its carriers share too (rules 7); at the same or a weaker verdict the pixels win.
    also = [(t["test"], t["verdict"]) for t in best["also_tested"]]
    assert [t for t, _ in also] == [spray.PATTERN_TEST, spray.FIXED_TEST] and also[1][1] == spray.NONE
    assert spray.VERDICT_ORDER.index(also[0][1]) >= spray.VERDICT_ORDER.index(best["verdict"])


def test_a_colour_that_a_few_images_of_a_small_class_share_by_chance_is_no_region():
    members = backgrounds(50, 8)
    members[:10, :, 5, 5] = 120  # 10 of 50 (0.2) share one pixel's colour: the bar, but not its lower bound
    share, _ = shared.mode_share(members)
    assert share[5, 5].item() == pytest.approx(0.2)
    assert shared.wilson_low(torch.tensor([0.2]), 50).item() == pytest.approx(0.1124, abs=1e-4)  # Wilson, z = 1.96
    assert shared.shared_region(members, backgrounds(50, 9), bridge_px=2, min_px=1) is None


def test_removing_shared_pixels_is_no_evidence_by_itself_but_pasting_them_is():
    def rate(mean):
        return {"mean": mean, "low": mean - 0.05, "high": mean + 0.05, "n": 200}

    quiet, changed = rate(0.02), rate(0.9)
    assert spray.verdict(rate(0.08), quiet, quiet, changed, spray.SHARED_KIND)[0] == spray.NONE
    assert spray.verdict(rate(0.08), quiet, quiet, changed, "constant pixels")[0] == spray.CANDIDATE
    assert spray.verdict(rate(0.3), quiet, quiet, quiet, spray.SHARED_KIND)[0] == spray.CANDIDATE
    assert spray.verdict(rate(0.8), quiet, quiet, quiet, spray.SHARED_KIND)[0] == spray.CONFIRMED
