"""Scores of the shortcut study on hand-made maps with known answers."""

import math

import numpy as np
import pytest
import torch

from gradcam_repro.measure import scores as metrics
from gradcam_repro.measure.shortcut import counterfactual_patches, opposite_corner, seeded_cap

BOX = (0, 0, 6, 6)


def peak_at(row, col, size=32):
    maps = torch.zeros(1, size, size)
    maps[0, row, col] = 1.0
    return maps


def test_pointing_game_tolerance_edges():
    tol = metrics.POINTING_TOLERANCE_PX
    # The box covers rows/cols 0..5; grown by the tolerance it covers 0..5+tol.
    assert metrics.pointing_game(peak_at(5 + tol, 0), BOX).tolist() == [True]
    assert metrics.pointing_game(peak_at(6 + tol, 0), BOX).tolist() == [False]
    assert metrics.pointing_game(peak_at(0, 5 + tol), BOX).tolist() == [True]
    assert metrics.pointing_game(peak_at(0, 6 + tol), BOX).tolist() == [False]
    assert metrics.pointing_game(peak_at(5 + tol, 5 + tol), BOX).tolist() == [True]
    # A box in the middle is grown on all four sides.
    mid = (10, 10, 16, 16)
    assert metrics.pointing_game(peak_at(10 - tol, 12), mid).tolist() == [True]
    assert metrics.pointing_game(peak_at(9 - tol, 12), mid).tolist() == [False]
    assert metrics.pointing_game(peak_at(15, 15 + tol), mid, tolerance_px=tol).tolist() == [True]
    assert metrics.pointing_game(peak_at(15, 16 + tol), mid, tolerance_px=tol).tolist() == [False]
    assert metrics.pointing_game(peak_at(6, 6), BOX, tolerance_px=0).tolist() == [False]
    assert metrics.pointing_game(peak_at(5, 5), BOX, tolerance_px=0).tolist() == [True]


def test_pointing_game_zero_map_never_hits_and_batches():
    maps = torch.cat([torch.zeros(1, 32, 32), peak_at(2, 2), peak_at(30, 30)])
    assert metrics.pointing_game(maps, BOX).tolist() == [False, True, False]
    assert metrics.pointing_game(torch.empty(0, 32, 32), BOX).shape == (0,)


def test_uniform_pointing_is_the_grown_box_area():
    tol = metrics.POINTING_TOLERANCE_PX
    assert metrics.uniform_pointing(BOX) == (6 + tol) ** 2 / 1024
    assert metrics.uniform_pointing((10, 10, 16, 16)) == (6 + 2 * tol) ** 2 / 1024


def test_energy_in_mask_known_answers():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # a quarter of the image
    maps = torch.stack([torch.ones(4, 4), torch.zeros(4, 4)])
    maps[1, 0, 0] = 3.0
    maps[1, 3, 3] = 1.0
    assert metrics.cam_energy_in_mask(maps, masks).tolist() == [0.25, 0.75]
    assert metrics.uniform_energy(masks) == 0.25
    assert metrics.pointing_game_mask(maps[1:], masks[1:]).tolist() == [True]
    assert metrics.cam_energy_in_mask(torch.zeros(1, 4, 4), masks[:1]).tolist() == [0.0]


def test_energy_in_box_equals_energy_in_the_box_mask():
    maps = torch.rand(5, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(5, 32, 32, dtype=torch.bool)
    mask[:, 0:6, 0:6] = True
    torch.testing.assert_close(metrics.cam_energy_in_box(maps, BOX), metrics.cam_energy_in_mask(maps, mask))


def test_bootstrap_ci_covers_the_known_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(10.0, 2.0, 100)
    large = rng.normal(10.0, 2.0, 2500)
    a, b = metrics.bootstrap_ci(small), metrics.bootstrap_ci(large)
    for ci, x in ((a, small), (b, large)):
        assert ci["low"] < ci["mean"] < ci["high"] and ci["mean"] == pytest.approx(x.mean())
        # The percentile interval of a mean is close to mean +- 1.96 standard errors.
        se = x.std(ddof=1) / math.sqrt(len(x))
        assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert a["low"] < 10.0 < a["high"] and b["low"] < 10.0 < b["high"]
    assert (b["high"] - b["low"]) < (a["high"] - a["low"]) / 3
    assert metrics.bootstrap_ci(small) == a  # seeded: the same interval every time


def test_bootstrap_ci_of_a_rate_and_degenerate_samples():
    rate = metrics.bootstrap_ci(torch.tensor([True] * 30 + [False] * 70))
    assert rate["mean"] == pytest.approx(0.3) and 0.2 < rate["low"] < 0.3 < rate["high"] < 0.4 and rate["n"] == 100
    assert metrics.bootstrap_ci(torch.ones(50)) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 50}
    empty = metrics.bootstrap_ci(torch.empty(0))
    assert empty["n"] == 0 and math.isnan(empty["mean"])


def test_flip_to_target_rate_counts_only_non_target_images():
    labels = torch.tensor([6, 6, 0, 1, 2, 3])
    patched_preds = torch.tensor([6, 6, 6, 6, 2, 6])
    flips = metrics.flip_to_target_rate(patched_preds, labels, target=6)
    assert flips.tolist() == [True, True, False, True]


def ci(mean, low, high, n=100):
    return {"mean": mean, "low": low, "high": high, "n": n}


def test_verdict_rules_use_the_lower_confidence_bound():
    uniform = 36 / 1024
    model = {
        "flip_to_target": {"patch": ci(0.55, 0.50, 0.60)},
        "cam": {
            "layer2": {"patched_target": {"energy": ci(0.30, 2 * uniform, 0.35)}},   # bound exactly at 2x: points
            "layer4": {"patched_target": {"energy": ci(0.10, 0.06, 0.14)}},          # mean > 2x but bound below
            "layer9": {"patched_target": {"energy": ci(float("nan"), float("nan"), float("nan"), 0)}},
        },
    }
    v = metrics.verdicts(model, uniform)
    assert v["relies_on_patch"] is True
    assert v["points_at_patch"] == {"layer2": True, "layer4": False, "layer9": False}
    assert v["agrees"] == {"layer2": True, "layer4": False, "layer9": False}
    model["flip_to_target"]["patch"] = ci(0.55, 0.49, 0.60)
    v = metrics.verdicts(model, uniform)
    assert v["relies_on_patch"] is False and v["agrees"] == {"layer2": False, "layer4": True, "layer9": True}


def test_counterfactual_patches_change_one_thing_each():
    patch = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
    v = counterfactual_patches(patch)
    assert v["patch"] == patch
    assert v["other_color"] == {**patch, "color": (0, 0, 255)}
    assert v["other_corner"] == {**patch, "corner": "bottom-right"}
    assert opposite_corner("top-right") == "bottom-left" and opposite_corner("bottom-left") == "top-right"


def test_seeded_cap_is_a_deterministic_ordered_subset():
    index = torch.arange(100, 200)
    a = seeded_cap(index, 10, seed=3)
    assert torch.equal(a, seeded_cap(index, 10, seed=3)) and len(a.unique()) == 10
    assert torch.equal(a, a.sort().values) and set(a.tolist()) <= set(index.tolist())
    assert torch.equal(seeded_cap(index, None, 0), index) and torch.equal(seeded_cap(index, 500, 0), index)


def tiny_net():
    """A seeded conv + linear net whose only CAM layer is "conv"."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 8, 3, padding=1))
    net.add_module("pool", nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)))
    return net


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_shortcut_cams_are_computed_in_the_runs_precision(amp_dtype, monkeypatch):
    # The maps behind every energy and pointing score use the same precision as the predictions.

    from gradcam_repro.measure import shortcut as evaluate
    from gradcam_repro.runtime import Runtime

    seen = []
    real = evaluate.explain_images_by_method

    def recording(methods, model, images, targets, layers, runtime, batch_size=256, progress=None):
        seen.append(runtime.amp_dtype)
        return real(methods, model, images, targets, layers, runtime, batch_size, progress)

    monkeypatch.setattr(evaluate, "explain_images_by_method", recording)
    net = tiny_net()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 10
    patch = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
    classes = tuple(f"c{i}" for i in range(10))
    masks = torch.zeros(40, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    test = evaluate.EvalSet(images, labels, classes, masks)
    protocol = evaluate.ShortcutProtocol(6, patch, ("conv",))
    out, _ = evaluate.measure_shortcut({"net": net}, test, protocol, Runtime(torch.device("cpu"), amp_dtype))
    assert len(seen) >= 2 and all(dtype == amp_dtype for dtype in seen)  # the CAM sets and the localisation set
    assert 0.0 <= out["models"]["net"]["cam"]["conv"]["clean_target"]["energy"]["mean"] <= 1.0


def test_every_explanation_pass_reports_progress_named_by_model_and_image_set():

    from gradcam_repro.measure import shortcut as evaluate
    from gradcam_repro.runtime import Runtime

    net = tiny_net()
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(60) % 10
    masks = torch.zeros(60, 32, 32, dtype=torch.bool)
    test = evaluate.EvalSet(images, labels, tuple(f"c{i}" for i in range(10)), masks)
    patch = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
    protocol = evaluate.ShortcutProtocol(6, patch, ("conv",), cam_batch_size=4)
    calls = []
    evaluate.measure_shortcut({"a": net, "b": net}, test, protocol, Runtime(torch.device("cpu"), None),
                              lambda done, total, stage="": calls.append((stage, done, total)))
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages[0] == "a patched_target"
    assert {"a patched_target", "a clean_target", "a localisation", "b patched_target", "b localisation"} <= set(stages)
    for stage in stages:  # each pass starts at 0 and ends at its total, in batches of at most 4
        seen = [(done, total) for s, done, total in calls if s == stage]
        assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1]
        assert all(b - a <= 4 for (a, _), (b, _) in zip(seen, seen[1:], strict=False))
    localisation = [total for s, _, total in calls if s == "a localisation"]
    assert localisation[0] == 60


def test_measuring_several_methods_at_once_gives_each_methods_own_scores_and_verdicts():
    # measure_methods explains each image set once for all methods (the gradient CAMs share a pass); every
    # method's scores must be exactly those of explaining it alone.
    from gradcam_repro.measure import shortcut as evaluate
    from gradcam_repro.runtime import Runtime

    net = tiny_net()
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(60) % 10
    masks = torch.zeros(60, 32, 32, dtype=torch.bool)
    masks[:, 4:20, 10:30] = True
    test = evaluate.EvalSet(images, labels, tuple(f"c{i}" for i in range(10)), masks)
    patch = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
    protocol = evaluate.ShortcutProtocol(6, patch, ("conv",), cam_batch_size=7)
    runtime = Runtime(torch.device("cpu"), None)
    methods = ("gradcam", "hirescam", "layercam", "eigencam", "inputxgradient")
    together = evaluate.measure_methods(net, test, protocol, methods, runtime)["model"]["methods"]
    probes = evaluate.make_probes(test, protocol)
    m, preds = evaluate.prediction_metrics(net, test, probes, protocol, runtime)
    for method in methods:
        alone, _ = evaluate.judged_explanations(net, test, (probes, preds, m), evaluate.replace(protocol, method=method),
                                                runtime)
        assert together[method] == alone, method
        assert set(alone) == {"cam", "localisation", "verdict"}
    assert together["gradcam"]["cam"] != together["hirescam"]["cam"]  # the methods still differ
