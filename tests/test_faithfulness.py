"""Deletion and insertion (Petsiuk et al., 2018, RISE) in gradcam_repro.faithfulness.

The method's claim: a map that ranks pixels by what the model uses makes the
class probability fall fast when those pixels are deleted (low deletion AUC)
and rise fast when they are inserted into a blurred image (high insertion AUC).
These tests check that claim on a hand-built model whose evidence sits in a
known box, and check the curves' end points, step count, area and batching.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn

from gradcam_repro.measure.faithfulness import (
    DELETION_BASELINE,
    blurred_canvas,
    deletion_insertion,
    random_maps,
    saliency_rank,
    step_fractions,
    summarise_faithfulness,
)
from gradcam_repro.report import figures

BOX = (4, 4, 12, 12)  # top, left, bottom, right: an 8x8 = 64 px region of a 32x32 image

# --------------------------------------------------------------------------- helpers


class BoxEvidence(nn.Module):
    """Two classes; the logit of class 0 is 4x the mean of the pixels in BOX, class 1's is 0."""

    def forward(self, x):
        top, left, bottom, right = BOX
        evidence = 4.0 * x[:, :, top:bottom, left:right].mean(dim=(1, 2, 3))
        return torch.stack([evidence, torch.zeros_like(evidence)], dim=1)


class ConstantLogits(nn.Module):
    """Four classes with equal logits whatever the input: every probability is 0.25."""

    def forward(self, x):
        return torch.zeros(len(x), 4)


class Spy(nn.Module):
    """Wraps a model and keeps every batch it is given."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.model(x)


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, num_classes)).eval()


def box_images(n: int = 3) -> torch.Tensor:
    """Bright (+1) inside BOX, dark (-1) elsewhere, with a little noise: class 0 with p = sigmoid(4) ~ 0.98."""
    g = torch.Generator().manual_seed(0)
    x = -torch.ones(n, 3, 32, 32) + 0.05 * torch.randn(n, 3, 32, 32, generator=g)
    top, left, bottom, right = BOX
    x[:, :, top:bottom, left:right] += 2.0
    return x


def box_map(inside: bool) -> torch.Tensor:
    """(32, 32) map that is 1 on BOX (inside=True) or 1 everywhere but BOX (inside=False)."""
    m = torch.zeros(32, 32)
    top, left, bottom, right = BOX
    m[top:bottom, left:right] = 1.0
    return m if inside else 1.0 - m


def target_probability(model, images, targets):
    with torch.no_grad():
        return model(images).softmax(dim=1).gather(1, targets[:, None])[:, 0]


# --------------------------------------------------------------------------- the claim of the method


def test_a_map_on_the_evidence_deletes_faster_and_inserts_faster_than_a_map_elsewhere():
    model, images = BoxEvidence(), box_images(3)
    targets = torch.zeros(3, dtype=torch.long)
    on_box = deletion_insertion(model, images, targets, box_map(True).expand(3, 32, 32))
    elsewhere = deletion_insertion(model, images, targets, box_map(False).expand(3, 32, 32))
    assert (on_box["deletion_auc"] < elsewhere["deletion_auc"] - 0.3).all()
    assert (on_box["insertion_auc"] > elsewhere["insertion_auc"] + 0.3).all()
    # With 64 px per step, the on-box map has deleted the whole box after one step: no evidence left.
    assert on_box["deletion"][:, 1] == pytest.approx(torch.full((3,), 0.5), abs=1e-6)


def test_random_maps_sit_between_the_right_map_and_the_wrong_map():
    model, images = BoxEvidence(), box_images(4)
    targets = torch.zeros(4, dtype=torch.long)
    on_box = deletion_insertion(model, images, targets, box_map(True).expand(4, 32, 32))
    elsewhere = deletion_insertion(model, images, targets, box_map(False).expand(4, 32, 32))
    random = deletion_insertion(model, images, targets, random_maps(4, 32, seed=0))
    assert (on_box["deletion_auc"] < random["deletion_auc"]).all()
    assert (random["deletion_auc"] < elsewhere["deletion_auc"]).all()


# --------------------------------------------------------------------------- the curves


def test_deletion_runs_from_the_image_to_the_all_baseline_image():
    model = small_cnn()
    g = torch.Generator().manual_seed(1)
    images, targets = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 3, 5, 9])
    result = deletion_insertion(model, images, targets, random_maps(4, 32, seed=1))
    baseline = torch.full_like(images, DELETION_BASELINE)
    assert result["deletion"][:, 0] == pytest.approx(target_probability(model, images, targets), abs=1e-5)
    assert result["deletion"][:, -1] == pytest.approx(target_probability(model, baseline, targets), abs=1e-5)


def test_insertion_runs_from_the_blurred_image_to_the_image():
    model = small_cnn()
    g = torch.Generator().manual_seed(2)
    images, targets = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([1, 2, 4, 8])
    result = deletion_insertion(model, images, targets, random_maps(4, 32, seed=2))
    blurred = blurred_canvas(images)
    assert result["insertion"][:, 0] == pytest.approx(target_probability(model, blurred, targets), abs=1e-5)
    assert result["insertion"][:, -1] == pytest.approx(target_probability(model, images, targets), abs=1e-5)
    assert not torch.allclose(blurred, images, atol=0.1)  # the canvas really is blurred


def test_there_are_ceil_hw_over_step_plus_one_steps_from_zero_to_one():
    for hw, per_step in ((1024, 64), (100, 30), (100, 100), (100, 1)):
        fractions = step_fractions(hw, per_step)
        assert len(fractions) == math.ceil(hw / per_step) + 1
        assert fractions[0] == 0.0 and fractions[-1] == 1.0
        assert (fractions.diff() > 0).all()
    assert step_fractions(100, 30).tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])


def test_the_area_under_a_constant_curve_is_that_constant():
    images = torch.randn(2, 3, 10, 10)
    result = deletion_insertion(ConstantLogits(), images, torch.tensor([0, 3]), torch.rand(2, 10, 10), pixels_per_step=30)
    assert result["fractions"].tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])
    assert result["deletion"].shape == result["insertion"].shape == (2, 5)
    assert result["deletion_auc"].tolist() == pytest.approx([0.25, 0.25])
    assert result["insertion_auc"].tolist() == pytest.approx([0.25, 0.25])


def test_pixels_go_most_salient_first_and_ties_in_raster_order():
    spy = Spy(small_cnn())
    image = torch.randn(1, 3, 8, 8)
    saliency = torch.zeros(1, 8, 8)
    saliency[0, 7, 7], saliency[0, 0, 5] = 1.0, 0.5  # the two most salient pixels, then 62 ties
    deletion_insertion(spy, image, torch.tensor([0]), saliency, pixels_per_step=4)
    deleted = torch.cat(spy.inputs)[:17]  # deletion variants come first: steps 0..16 of the one image
    changed = (deleted[2] != image[0]).any(dim=0)  # after two steps: 8 pixels gone
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[7, 7] = expected[0, 5] = True
    expected.view(-1)[[0, 1, 2, 3, 4, 6]] = True  # the first six tied pixels in raster order
    assert torch.equal(changed, expected)
    assert (deleted[2][:, changed] == DELETION_BASELINE).all()
    assert torch.equal(saliency_rank(torch.zeros(1, 2, 2)), torch.tensor([[0, 1, 2, 3]]))


def test_curves_do_not_depend_on_the_batch_size():
    model = small_cnn()
    g = torch.Generator().manual_seed(3)
    images, targets = torch.randn(5, 3, 32, 32, generator=g), torch.arange(5)
    maps = random_maps(5, 32, seed=3)
    big = deletion_insertion(model, images, targets, maps, pixels_per_step=128, batch_size=512)
    small = deletion_insertion(model, images, targets, maps, pixels_per_step=128, batch_size=7)
    for key in ("deletion", "insertion", "deletion_auc", "insertion_auc"):
        assert torch.allclose(big[key], small[key], atol=1e-5), key


def test_bfloat16_autocast_gives_nearly_the_same_curves():
    model = small_cnn()
    g = torch.Generator().manual_seed(4)
    images, targets = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([1, 7])
    maps = random_maps(2, 32, seed=4)
    fp32 = deletion_insertion(model, images, targets, maps, pixels_per_step=256)
    bf16 = deletion_insertion(model, images, targets, maps, pixels_per_step=256, amp_dtype=torch.bfloat16)
    assert bf16["deletion"].dtype == torch.float32
    assert torch.allclose(fp32["deletion"], bf16["deletion"], atol=0.02)


def test_mismatched_maps_are_refused():
    with pytest.raises(ValueError, match="maps"):
        deletion_insertion(ConstantLogits(), torch.zeros(2, 3, 10, 10), torch.tensor([0, 1]), torch.zeros(2, 8, 8))


# --------------------------------------------------------------------------- the random baseline and the summary


def test_random_maps_are_uniform_in_zero_one_and_fixed_by_the_seed():
    a = random_maps(3, 32, seed=7)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, random_maps(3, 32, seed=7))
    assert not torch.equal(a, random_maps(3, 32, seed=8))
    assert random_maps(2, (4, 6), seed=0).shape == (2, 4, 6)
    assert a.mean().item() == pytest.approx(0.5, abs=0.02)


def test_the_summary_reports_the_mean_auc_with_an_interval_around_it():
    result = {"deletion_auc": torch.tensor([0.1, 0.2, 0.3, 0.4]), "insertion_auc": torch.tensor([0.9, 0.8, 0.7, 0.6])}
    summary = summarise_faithfulness(result, seed=0)
    assert summary["deletion_auc"]["mean"] == pytest.approx(0.25)
    assert summary["insertion_auc"]["mean"] == pytest.approx(0.75)
    for ci in summary.values():
        assert ci["low"] <= ci["mean"] <= ci["high"] and ci["n"] == 4


# --------------------------------------------------------------------------- the figure


def test_the_curves_figure_has_a_deletion_and_an_insertion_panel_with_aucs_in_the_legend():
    fractions = torch.linspace(0, 1, 5)
    curves = {
        "Grad-CAM": {"fractions": fractions, "deletion": torch.full((3, 5), 0.2), "insertion": torch.full((3, 5), 0.8)},
        "random": {"fractions": fractions, "deletion": torch.full((3, 5), 0.5), "insertion": torch.full((3, 5), 0.5)},
    }
    fig = figures.deletion_insertion_curves(curves, "faithfulness")
    try:
        deletion_ax, insertion_ax = fig.axes[:2]
        assert "deletion" in deletion_ax.get_title() and "insertion" in insertion_ax.get_title()
        labels = [t.get_text() for t in deletion_ax.get_legend().get_texts()]
        assert labels == ["Grad-CAM (AUC 0.200)", "random (AUC 0.500)"]
    finally:
        figures.close(fig)
