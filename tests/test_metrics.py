"""Scores of a trained model: CAM energy inside the patch box, and accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from cam_helpers import seeded_resnet

from gradcam_repro.measure.predict import accuracy, batch_size_for, predict_logits
from gradcam_repro.measure.scores import cam_energy_in_box
from gradcam_repro.measure.scores import uniform_energy as uniform_energy_in_box
from gradcam_repro.runtime import Runtime

BOX = (0, 0, 6, 6)  # the default 6 px top-left patch on a 32 px image


def test_map_entirely_inside_the_box_scores_one():
    maps = torch.zeros(2, 32, 32)
    maps[0, :6, :6] = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) + 0.1
    maps[1, 2, 3] = 0.7
    # float32 sums of the same values in a different reduction order may differ by an ulp.
    torch.testing.assert_close(cam_energy_in_box(maps, BOX), torch.ones(2), atol=1e-6, rtol=0)
    # With dyadic values every sum is exact, so the score is exactly 1.
    exact = torch.zeros(1, 32, 32)
    exact[0, :6, :6] = 0.5
    assert cam_energy_in_box(exact, BOX).tolist() == [1.0]


def test_uniform_map_scores_the_area_ratio():
    # 36 / 1024 = 9 / 256 = 0.03515625, exact in binary floating point.
    for value in (1.0, 0.25):
        score = cam_energy_in_box(torch.full((1, 32, 32), value), BOX)
        assert score.tolist() == [0.03515625]
    assert uniform_energy_in_box(BOX, 32) == 0.03515625
    box = (26, 20, 32, 30)  # 6 x 10 px elsewhere
    assert cam_energy_in_box(torch.ones(1, 32, 32), box).item() == pytest.approx(60 / 1024, abs=1e-7)
    assert uniform_energy_in_box(box, 32) == 60 / 1024


def test_all_zero_map_scores_zero_without_nan():
    score = cam_energy_in_box(torch.zeros(3, 32, 32), BOX)
    assert score.tolist() == [0.0, 0.0, 0.0]


def test_map_entirely_outside_the_box_scores_zero():
    maps = torch.ones(1, 32, 32)
    maps[0, :6, :6] = 0
    assert cam_energy_in_box(maps, BOX).tolist() == [0.0]


def test_known_mass_split_and_batch_independence():
    maps = torch.zeros(3, 8, 8)
    maps[0, 0, 0] = 3.0   # inside (0, 0, 2, 2)
    maps[0, 5, 5] = 1.0   # outside
    maps[1, 1, 1] = 1.0
    maps[1, 2, 2] = 1.0   # row/col 2 is outside: the box is exclusive
    # maps[2] stays zero and must not affect its neighbours
    assert cam_energy_in_box(maps, (0, 0, 2, 2)).tolist() == [0.75, 0.5, 0.0]


def test_scores_are_within_unit_interval_for_random_maps():
    maps = torch.rand(16, 32, 32, generator=torch.Generator().manual_seed(1)) ** 4
    score = cam_energy_in_box(maps, (10, 4, 20, 30))
    assert score.shape == (16,) and (score >= 0).all() and (score <= 1).all()
    expected = maps[:, 10:20, 4:30].sum((1, 2)) / maps.sum((1, 2))
    torch.testing.assert_close(score, expected, atol=1e-7, rtol=0)


def test_accuracy_on_known_logits():
    logits = torch.tensor([
        [0.1, 2.0, -1.0],   # argmax 1
        [3.0, 0.0, 0.0],    # argmax 0
        [-1.0, -2.0, -0.5], # argmax 2
        [0.0, 0.2, 0.1],    # argmax 1
    ])
    assert accuracy(logits, torch.tensor([1, 0, 2, 1])) == 1.0
    assert accuracy(logits, torch.tensor([1, 0, 2, 2])) == 0.75
    assert accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.0
    assert accuracy(logits[:3], torch.tensor([1, 1, 1])) == pytest.approx(1 / 3)


def test_accuracy_of_an_empty_set_is_nan():
    assert math.isnan(accuracy(torch.empty(0, 10), torch.empty(0, dtype=torch.int64)))


def test_predictions_do_not_depend_on_the_batch_size_and_large_images_get_smaller_cpu_batches():
    model, runtime = seeded_resnet(), Runtime(torch.device("cpu"), None)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    whole = predict_logits(model, images, runtime, batch_size=20)
    for batched in (predict_logits(model, images, runtime, batch_size=7), predict_logits(model, images, runtime)):
        # 7 + 7 + 6, then the CPU default; bit for bit on the CPUs measured, within rounding anywhere
        torch.testing.assert_close(batched, whole, rtol=1e-5, atol=1e-5)
    assert batch_size_for(runtime) == 128
    assert batch_size_for(runtime, 64, 64) == 32
    assert batch_size_for(runtime, 224, 224) == 8
    assert batch_size_for(Runtime(torch.device("cuda"), None), 224, 224) == 512
