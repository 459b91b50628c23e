"""`gradcam-repro compare`: every method x layer, sanity check and faithfulness on a finished run."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from gradcam_repro.cli import main
from gradcam_repro.data.images import EvalSet
from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import GradCAM
from gradcam_repro.explain.registry import CAM_METHODS, PIXEL_METHODS, explain_images, make_explainer, map_layers
from gradcam_repro.measure import comparison
from gradcam_repro.measure.comparison import MethodSweep, compare_settings, faithfulness_check, flags_shortcut
from gradcam_repro.measure.results import CamScores, Interval
from gradcam_repro.model.resnet import normalize
from gradcam_repro.pipeline.compare import CompareOptions, compare_methods
from gradcam_repro.runtime import Runtime

TINY = {"images": 4, "scorecam_images": 1, "sanity_images": 2, "faithfulness_images": 4}
TINY_FLAGS = ["--images", "4", "--scorecam-images", "1", "--sanity-images", "2", "--faithfulness-images", "4"]
CPU = Runtime(torch.device("cpu"))


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def compared(shapes_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("compare") / "run"
    shutil.copytree(shapes_run, run)
    returned = compare_methods(run, CompareOptions(**TINY), log=_quiet)
    saved = json.loads((run / "methods.json").read_text())
    assert returned.experiments == saved["experiments"] and list(returned.figures) == saved["figures"]
    return run, saved


def test_every_method_and_layer_is_measured_for_both_models(compared):
    _, c = compared
    assert c["methods"] == [*CAM_METHODS, *PIXEL_METHODS]
    for method in CAM_METHODS:
        assert list(c["shortcut"][method]) == c["layers"]
    for method in PIXEL_METHODS:
        assert list(c["shortcut"][method]) == ["input"]
    for by_layer in c["shortcut"].values():
        for by_model in by_layer.values():
            assert set(by_model) == {"baseline", "biased"}
            for r in by_model.values():
                e = r["energy"]
                assert e["n"] == 0 or 0.0 <= e["low"] <= e["mean"] <= e["high"] <= 1.0


def test_methods_json_names_the_experiments_it_measured(compared):
    run, c = compared
    metrics = json.loads((run / "metrics.json").read_text())
    assert c["experiments"] == metrics["experiments"] and set(c["experiments"]) == {"baseline", "biased"}
    assert "models" not in c  # the old sha256 fingerprints are gone


def test_score_cam_uses_its_own_smaller_sample(compared):
    _, c = compared
    ns = {m: c["localisation"][m][map_layers(m, ["layer4.1.conv2"])[0]]["energy"]["n"] for m in c["methods"]}
    assert ns["scorecam"] == 1
    assert all(n == 4 for m, n in ns.items() if m != "scorecam")


def test_shapes_run_adds_localisation_against_masks(compared):
    run, c = compared
    assert 0 < c["uniform"]["energy_in_mask"] < 1
    assert set(c["localisation"]) == set(c["methods"])
    assert c["shapes_run"] == str(run)  # a shapes run localises on itself


def test_sanity_and_faithfulness_for_every_method(compared):
    _, c = compared
    for method in c["methods"]:
        s = c["sanity"][method]
        assert [st["name"] for st in s["steps"]][:2] == ["fc", "layer4.1"] and s["steps"][-1]["name"] == "stem"
        assert isinstance(s["verdict"]["passes"], bool)
        assert s["verdict"]["step"] == ("fc" if method in PIXEL_METHODS else "layer4.1")
        assert s["layer"] == ("input" if method in PIXEL_METHODS else "layer4.1.conv2")
    assert set(c["faithfulness"]) == {*c["methods"], "random"}
    for r in c["faithfulness"].values():
        assert 0.0 <= r["deletion_auc"]["mean"] <= 1.0 and 0.0 <= r["insertion_auc"]["mean"] <= 1.0
    assert c["settings"]["pixels_per_step"] == comparison.PIXELS_PER_STEP


def test_pixels_per_step_recorded_is_the_one_used(resnet, monkeypatch):
    monkeypatch.setattr(comparison, "PIXELS_PER_STEP", 200)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    test = EvalSet(images, torch.tensor([1, 2]), tuple(str(i) for i in range(10)))
    options = CompareOptions(methods=("gradcam",), faithfulness_images=2)
    result = faithfulness_check(resnet, test, MethodSweep(options, ("layer4",), "layer4", 0, CPU))
    assert len(result["curves"]["random"]["fractions"]) == math.ceil(32 * 32 / 200) + 1
    assert len(result["curves"]["gradcam"]["fractions"]) == math.ceil(32 * 32 / 200) + 1
    assert compare_settings(options, CPU).pixels_per_step == 200


def test_report_gets_the_section_and_the_figures_exist(compared):
    run, c = compared
    report = (run / "REPORT.md").read_text()
    assert "## Which method and layer see the shortcut" in report
    assert "## Sanity check: cascading model parameter randomisation" in report
    assert "| Integrated Gradients |" in report and "| random map |" in report
    for rel in c["figures"]:
        assert (run / rel).is_file(), rel
    assert "figures/methods_layers.png" in c["figures"] and "figures/deletion_insertion.png" in c["figures"]
    assert sum(f.startswith("figures/sanity_") for f in c["figures"]) == len(c["methods"])
    # `report` rebuilds the same section from the saved files.
    assert main(["report", str(run)]) == 0
    assert "## Which method and layer see the shortcut" in (run / "REPORT.md").read_text()


def test_a_retrained_experiment_makes_the_section_say_it_is_stale(compared, tmp_path):
    run, _ = compared
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    # A retrained biased model (same spec, other weights, e.g. --force) has another model hash in metrics.json.
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["experiments"]["biased"]["model_sha256"] = "0" * 64
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(copy)]) == 0
    report = (copy / "REPORT.md").read_text()
    assert "was measured on other models" in report and "| Integrated Gradients |" not in report


def test_explain_images_grad_cam_equals_the_grad_cam_class(resnet):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3])
    maps = explain_images("gradcam", resnet, images, targets, ["layer3", "layer4"], CPU, batch_size=2)
    expected = GradCAM(resnet, ["layer3", "layer4"]).per_layer(normalize(images), targets)
    for layer in ("layer3", "layer4"):
        torch.testing.assert_close(maps[layer], expected[layer].maps, atol=1e-5, rtol=0)
    pixel = explain_images("saliency", resnet, images, targets, ["layer3"], CPU)
    assert list(pixel) == ["input"] and pixel["input"].shape == (3, 32, 32)
    # explain_images hands the model channels_last input; the direct call gets the same memory format, since
    # the two formats round differently and a pre-activation within that rounding of 0 flips the ReLU's gradient.
    direct = make_explainer("saliency", resnet, ["layer3"]).maps(
        normalize(images).contiguous(memory_format=torch.channels_last), targets)
    torch.testing.assert_close(pixel["input"], direct["input"], atol=1e-5, rtol=0)


def test_the_flag_rule_needs_both_the_uniform_and_the_baseline_bound():
    def energy(low, high, n=4):
        return CamScores(Interval((low + high) / 2, low, high, n), Interval(0.5, 0.4, 0.6, n))

    uniform = 0.05
    assert flags_shortcut({"biased": energy(0.2, 0.3), "baseline": energy(0.0, 0.1)}, uniform)
    assert not flags_shortcut({"biased": energy(0.09, 0.3), "baseline": energy(0.0, 0.05)}, uniform)  # < 2x uniform
    assert not flags_shortcut({"biased": energy(0.2, 0.3), "baseline": energy(0.1, 0.25)}, uniform)  # overlaps baseline
    assert not flags_shortcut({"biased": energy(0.2, 0.3, n=0), "baseline": energy(0.0, 0.1)}, uniform)
    assert flags_shortcut({"biased": energy(0.2, 0.3)}, uniform)


@pytest.mark.parametrize("options, message", [
    ({"methods": ["gradcam", "nope"]}, "unknown methods ['nope']"),
    ({"images": 0}, "--images must be >= 1"),
    ({"scorecam_images": 0}, "--scorecam-images must be >= 1"),
    ({"sanity_images": 0}, "--sanity-images must be >= 1"),
    ({"faithfulness_images": 0}, "--faithfulness-images must be >= 1"),
    ({"shapes_run": "/nonexistent"}, "--shapes-run: no run.json at /nonexistent/run.json; fix:"),
])
def test_bad_options_are_one_line_errors_before_anything_is_written(shapes_run, options, message):
    with pytest.raises(UserError) as info:
        compare_methods(shapes_run, CompareOptions(**options), log=_quiet)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not (shapes_run / "methods.json").exists()  # nothing written


def test_the_cli_builds_the_options_from_its_flags(shapes_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(shapes_run, run)
    assert main(["compare", str(run), "--methods", "gradcam", "saliency", *TINY_FLAGS]) == 0
    c = json.loads((run / "methods.json").read_text())
    assert c["methods"] == ["gradcam", "saliency"]
    assert {k: c["settings"][k] for k in TINY} == TINY
    capsys.readouterr()
    assert main(["compare", str(shapes_run), "--images", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--images must be >= 1" in err and len(err.splitlines()) == 1
    assert not (shapes_run / "methods.json").exists()


def test_run_with_another_cam_method_names_it_in_the_report(shapes_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shapes_run, run)
    assert main(["evaluate", str(run), "--cam", "layercam"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["cam"] == "layercam"
    assert "LayerCAM" in (run / "REPORT.md").read_text()
