"""Typed results: each type's to_dict/from_dict pair defines the JSON schema, reads what it writes, and a file
from an older version is one clear error, never a KeyError deep in a renderer."""

import dataclasses
import json
import math

import pytest
import torch
from test_regression import PATCH, tiny_net, tiny_test_set

from gradcam_repro.errors import UserError
from gradcam_repro.measure.comparison_results import MethodsResult
from gradcam_repro.measure.results import CamScores, Interval, ModelShortcut, RunMetrics, ShortcutResults
from gradcam_repro.measure.shortcut import ShortcutProtocol, measure_shortcut
from gradcam_repro.pipeline.folders import RunFolder
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


def _stat(mean: float, n: int = 4) -> dict:
    return {"mean": mean, "low": mean - 0.01, "high": mean + 0.01, "n": n}


NOTHING = {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}


def methods_dict(with_localisation: bool) -> dict:
    """A methods.json as `gradcam-repro compare` writes it (keys in its order), for Grad-CAM and Saliency."""
    scores = {"energy": _stat(0.43), "pointing": _stat(0.75)}
    empty = {"energy": NOTHING, "pointing": NOTHING}
    step = {"name": "fc", "spearman": _stat(0.1, 2), "abs_spearman": _stat(0.2, 2), "ssim": _stat(0.3, 2),
            "undefined_spearman": 0}
    verdict = {"step": "fc", "spearman": _stat(0.1, 2), "ssim": _stat(0.3, 2), "passes": True, "threshold": 0.5}
    out = {"methods": ["gradcam", "saliency"], "layers": ["layer3", "layer4"], "cam_layer": "layer4",
           "experiments": {"baseline": {"key": "a", "model_sha256": "b"}, "biased": {"key": "c", "model_sha256": "d"}},
           "settings": {"images": 8, "scorecam_images": 1, "sanity_images": 2, "faithfulness_images": 4,
                        "pixels_per_step": 64, "deletion_baseline": "mean colour", "insertion_canvas": "blur",
                        "sanity_max_spearman": 0.5, "precision": "float32"},
           "seconds": {"shortcut": 2.0, **({"localisation": 1.5} if with_localisation else {}), "sanity": 3.0,
                       "faithfulness": 4.0, "total": 11.0},
           "shortcut": {"gradcam": {"layer3": {"baseline": scores, "biased": scores}, "layer4": {"baseline": scores}},
                        "saliency": {"input": {"baseline": empty, "biased": empty}}},
           "uniform": {"energy_in_box": 0.035, "pointing": 0.098, **({"energy_in_mask": 0.12} if with_localisation else {})},
           "flags_shortcut": {"gradcam": {"layer3": True, "layer4": False}, "saliency": {"input": False}}}
    if with_localisation:
        out |= {"localisation": {"gradcam": {"layer3": scores, "layer4": scores}, "saliency": {"input": empty}},
                "shapes_run": "runs/shapes"}
    return out | {"sanity": {m: {"layer": "input", "steps": [step, {**step, "name": "stem"}], "verdict": verdict}
                             for m in ("gradcam", "saliency")},
                  "faithfulness": {m: {"deletion_auc": _stat(0.25), "insertion_auc": _stat(0.14)}
                                   for m in ("gradcam", "saliency", "random")},
                  "figures": ["figures/methods_layers.png"], "environment": {"device": "cpu", "processor": "x86_64"}}


@pytest.mark.parametrize("with_localisation", [True, False])
def test_methods_result_reads_back_exactly_what_was_written_key_order_included(with_localisation):
    stored = json.dumps(methods_dict(with_localisation), indent=2)
    methods = MethodsResult.from_dict(json.loads(stored))
    assert json.dumps(methods.to_dict(), indent=2) == stored
    assert (methods.localisation is not None) == with_localisation
    assert isinstance(methods.shortcut["gradcam"]["layer3"]["biased"], CamScores)
    assert math.isnan(methods.shortcut["saliency"]["input"]["biased"].energy.mean)


def test_methods_result_is_frozen_and_a_later_step_builds_a_new_one():
    methods = MethodsResult.from_dict(methods_dict(True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        methods.figures = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        methods.settings.images = 1
    drawn = dataclasses.replace(methods, figures=("figures/a.png",), seconds={**methods.seconds, "total": 1.0})
    assert methods.figures == ("figures/methods_layers.png",) and methods.seconds["total"] == 11.0
    assert drawn.to_dict()["figures"] == ["figures/a.png"]


@pytest.mark.parametrize("path", [("environment",), ("settings", "precision"), ("sanity", "gradcam", "steps"),
                                  ("faithfulness", "random", "insertion_auc")])
def test_a_methods_json_from_an_older_version_is_one_line_naming_the_fix(tmp_path, path):
    values = methods_dict(False)
    parent = values
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    (tmp_path / "methods.json").write_text(json.dumps(values))
    with pytest.raises(UserError) as info:
        RunFolder(tmp_path).read_methods()
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "methods.json" in message and "older gradcam-repro" in message
    assert repr(path[-1]) in message and "rerun `gradcam-repro compare RUN`" in message


def test_a_run_without_methods_json_reads_none_and_a_written_one_reads_back(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_methods() is None
    methods = MethodsResult.from_dict(methods_dict(True))
    run.write_methods(methods)
    assert json.dumps(run.read_methods().to_dict()) == json.dumps(methods.to_dict())
