"""The measurement path pinned on a tiny fixed network: bias injection, predictions, CAMs, scores and verdicts.

The expected numbers in data/regression_expected.json were computed by the code as it stood before the
package was restructured (commit a02c23a), in float32 on the CPU; any change to the science shows up
here as a difference above 1e-5. The network is hand-wired to detect a yellow square and push class 6
from the top-left quadrant, so that every CAM set is non-empty and the verdicts are not trivial.
"""

import json
import math
from pathlib import Path

import torch
from torch import nn

from gradcam_repro.data.bias import bias_dataset
from gradcam_repro.measure.shortcut import EvalSet, ShortcutProtocol, measure_shortcut
from gradcam_repro.runtime import Runtime

EXPECTED = Path(__file__).parent / "data" / "regression_expected.json"
PATCH = {"patch_size": 6, "color": (255, 255, 0), "corner": "top-left", "offset": 0}
TOLERANCE = 1e-5


def tiny_net() -> nn.Module:
    """Two convolutions and a linear head, seeded, with a yellow detector wired into class 6."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 6, 3, padding=1))
    net.add_module("relu1", nn.ReLU())
    net.add_module("conv2", nn.Conv2d(6, 8, 3, stride=2, padding=1))
    net.add_module("head", nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)))
    with torch.no_grad():
        net.conv1.weight[0] = 0
        net.conv1.weight[0, :, 1, 1] = torch.tensor([1.0, 1.0, -1.0])  # R + G - B: high only on yellow
        net.conv1.bias[0] = -5.0
        net.conv2.weight[0] = 0
        net.conv2.weight[0, 0] = 1.0
        net.conv2.bias[0] = 0.0
        net.head[3].weight[6, 0] = 20.0  # (channel 0, top-left cell) -> class 6
    return net.eval()


def tiny_test_set() -> EvalSet:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (80, 3, 32, 32), dtype=torch.uint8, generator=g)
    masks = torch.zeros(80, 32, 32, dtype=torch.bool)
    masks[:, 8:20, 10:26] = True
    return EvalSet(images, torch.arange(80) % 10, tuple(f"c{i}" for i in range(10)), masks)


def assert_close_tree(actual, expected, path="metrics"):
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_close_tree(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_tree(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        if math.isnan(expected):
            assert math.isnan(actual), f"{path}: {actual} is not nan"
        else:
            assert abs(actual - expected) <= TOLERANCE, f"{path}: {actual} != {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def test_the_measurement_path_reproduces_the_stored_numbers():
    expected = json.loads(EXPECTED.read_text())
    test = tiny_test_set()
    biased, patched = bias_dataset(test.images, test.labels, 6, 0.5, 0, **PATCH)
    assert {"patched": int(patched.sum()), "pixel_sum": int(biased.long().sum())} == expected["bias"]
    protocol = ShortcutProtocol(target=6, patch=PATCH, layers=("conv1", "conv2"), method="gradcam", seed=0,
                                counterfactual_images=50, cam_images=20, cam_batch_size=16)
    metrics, _ = measure_shortcut({"tiny": tiny_net()}, test, protocol, Runtime(torch.device("cpu")))
    # Through JSON, as metrics.json stores them (tuples become lists).
    assert_close_tree(json.loads(json.dumps(metrics)), expected["metrics"])
    verdict = metrics["models"]["tiny"]["verdict"]
    assert verdict["relies_on_patch"] and verdict["points_at_patch"] == {"conv1": True, "conv2": True}
