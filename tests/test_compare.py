"""`gradcam-repro compare`: every method x layer, sanity check and faithfulness on a finished run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gradcam_repro.attribution import PIXEL_METHODS
from gradcam_repro.cli import main
from gradcam_repro.compare import method_maps
from gradcam_repro.gradcam import CAM_METHODS, GradCAM
from gradcam_repro.model import normalize

TINY = ["--images", "4", "--scorecam-images", "1", "--sanity-images", "2", "--faithfulness-images", "4"]


@pytest.fixture(scope="module")
def compared(shapes_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("compare") / "run"
    shutil.copytree(shapes_run, run)
    assert main(["compare", str(run), *TINY]) == 0
    return run, json.loads((run / "methods.json").read_text())


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


def test_score_cam_uses_its_own_smaller_sample(compared):
    _, c = compared
    ns = {m: c["localisation"][m]["layer4.1.conv2" if m in CAM_METHODS else "input"]["energy"]["n"] for m in c["methods"]}
    assert ns["scorecam"] == 1
    assert all(n == 4 for m, n in ns.items() if m != "scorecam")


def test_shapes_run_adds_localisation_against_masks(compared):
    _, c = compared
    assert 0 < c["uniform"]["energy_in_mask"] < 1
    assert set(c["localisation"]) == set(c["methods"])


def test_sanity_and_faithfulness_for_every_method(compared):
    _, c = compared
    for method in c["methods"]:
        s = c["sanity"][method]
        assert [st["name"] for st in s["steps"]][:2] == ["fc", "layer4.1"] and s["steps"][-1]["name"] == "stem"
        assert isinstance(s["verdict"]["passes"], bool)
        assert s["verdict"]["step"] == ("fc" if method in PIXEL_METHODS else "layer4.1")
    assert set(c["faithfulness"]) == {*c["methods"], "random"}
    for r in c["faithfulness"].values():
        assert 0.0 <= r["deletion_auc"]["mean"] <= 1.0 and 0.0 <= r["insertion_auc"]["mean"] <= 1.0


def test_report_gets_the_section_and_the_figures_exist(compared):
    run, c = compared
    report = (run / "REPORT.md").read_text()
    assert "## Which method and layer see the shortcut" in report
    assert "## Sanity check: cascading model parameter randomisation" in report
    assert "| Integrated Gradients |" in report and "| random map |" in report
    for rel in c["figures"]:
        assert (run / rel).is_file(), rel
    assert "figures/methods_layers.png" in c["figures"] and "figures/deletion_insertion.png" in c["figures"]
    # `report` rebuilds the same section from the saved files.
    assert main(["report", str(run)]) == 0
    assert "## Which method and layer see the shortcut" in (run / "REPORT.md").read_text()


def test_a_retrained_model_makes_the_section_say_it_is_stale(compared, tmp_path):
    run, _ = compared
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = torch.load(copy / "biased" / "model.pt", weights_only=True)
    state["fc.bias"] += 1.0
    torch.save(state, copy / "biased" / "model.pt")
    assert main(["report", str(copy)]) == 0
    report = (copy / "REPORT.md").read_text()
    assert "was measured on other model files" in report and "| Integrated Gradients |" not in report


def test_method_maps_grad_cam_equals_the_grad_cam_class(resnet):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3])
    maps = method_maps(resnet, images, targets, "gradcam", ["layer3", "layer4"], torch.device("cpu"), batch_size=2)
    expected = GradCAM(resnet, ["layer3", "layer4"]).per_layer(normalize(images), targets)
    for layer in ("layer3", "layer4"):
        torch.testing.assert_close(maps[layer], expected[layer].maps, atol=1e-5, rtol=0)
    pixel = method_maps(resnet, images, targets, "saliency", ["layer3"], torch.device("cpu"))
    assert list(pixel) == ["input"] and pixel["input"].shape == (3, 32, 32)


@pytest.mark.parametrize("args, message", [
    (["--methods", "gradcam", "nope"], "unknown methods ['nope']"),
    (["--images", "0"], "--images must be >= 1"),
    (["--shapes-run", "/nonexistent"], "has no baseline/model.pt"),
])
def test_bad_arguments_are_one_line_errors(shapes_run, capsys, args, message):
    assert main(["compare", str(shapes_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (shapes_run / "methods.json").exists()  # nothing written


def test_run_with_another_cam_method_names_it_in_the_report(shapes_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(shapes_run, run)
    assert main(["evaluate", str(run), "--cam", "layercam"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["cam"] == "layercam"
    assert "LayerCAM" in (run / "REPORT.md").read_text()
