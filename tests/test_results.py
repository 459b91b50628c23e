"""Typed results: each type's to_dict/from_dict pair defines the JSON schema, reads what it writes, and a file
from an older version is one clear error, never a KeyError deep in a renderer."""

import dataclasses
import json
import math

import pytest
import torch
from test_regression import PATCH, tiny_net, tiny_test_set

from gradcam_repro.errors import UserError
from gradcam_repro.measure.results import Interval, ModelShortcut, RunMetrics, ShortcutResults
from gradcam_repro.measure.shortcut import ShortcutProtocol, measure_shortcut
from gradcam_repro.runtime import Runtime


@pytest.fixture(scope="module")
def shortcut_dict():
    """measure_shortcut's JSON-ready results on the regression test's tiny network (through JSON, as stored)."""
    protocol = ShortcutProtocol(target=6, patch=PATCH, layers=("conv1", "conv2"), seed=0, counterfactual_images=30,
                                cam_images=10, cam_batch_size=16)
    results, _ = measure_shortcut({"tiny": tiny_net()}, tiny_test_set(), protocol, Runtime(torch.device("cpu")))
    return json.loads(json.dumps(results))


def run_metrics_dict(shortcut: dict) -> dict:
    """A metrics.json as `run` writes it, around real shortcut results."""
    facts = {"config": {"preset": "smoke", "bias_class": "c6"}, "experiments": {"tiny": {"key": "k", "model_sha256": "s"}},
             "dataset": {"name": "tiny", "classes": [f"c{i}" for i in range(10)]}, "environment": {"torch": "x"},
             "precision": "float32", "box_tlbr_px": [0, 0, 6, 6], "cam_layer": "conv2", "layers": ["conv1", "conv2"],
             "settings": {"confidence": 0.95}}
    rest = {"histories": {"tiny": [{"epoch": 1, "loss": 1.0}]}, "repairs": {}, "seconds": {"evaluate": 1.5},
            "figures": ["figures/a.png"], "peak_rss_mb": 100.0}
    return {**facts, **shortcut, **rest}


def test_run_metrics_read_back_exactly_what_was_written_key_order_included(shortcut_dict):
    stored = json.dumps(run_metrics_dict(shortcut_dict), indent=2)
    metrics = RunMetrics.from_dict(json.loads(stored))
    assert json.dumps(metrics.to_dict(), indent=2) == stored
    assert metrics.models["tiny"].verdict.relies_on_patch
    assert metrics.models["tiny"].energy("conv1").n > 0


def test_shortcut_results_round_trip_and_nan_stays_nan(shortcut_dict):
    results = ShortcutResults.from_dict(shortcut_dict)
    assert results.to_dict() == shortcut_dict
    empty = Interval(math.nan, math.nan, math.nan, 0)
    assert not empty.measured and math.isnan(Interval.from_dict(empty.to_dict()).mean)


def test_results_are_frozen_and_a_later_step_builds_a_new_one(shortcut_dict):
    metrics = RunMetrics.from_dict(run_metrics_dict(shortcut_dict))
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.cam_layer = "conv1"
    later = metrics.timed(end_to_end=9.0)
    assert later.seconds == {"evaluate": 1.5, "end_to_end": 9.0} and metrics.seconds == {"evaluate": 1.5}


def test_a_file_from_an_older_version_is_one_line_naming_the_missing_key_and_the_fix(shortcut_dict):
    old = run_metrics_dict(shortcut_dict)
    del old["models"]["tiny"]["verdict"]
    with pytest.raises(UserError) as error:
        RunMetrics.from_dict(old)
    message = str(error.value)
    assert "written by an older gradcam-repro" in message and "'verdict'" in message and "fix:" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="older gradcam-repro"):
        ModelShortcut.from_dict({"clean_test_acc": {"mean": 0.5}})
