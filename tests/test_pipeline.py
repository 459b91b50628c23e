"""End to end: `gradcam-repro run --preset smoke` on shapes and on a real CIFAR-10 subset."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from gradcam_repro.cli import main
from gradcam_repro.data.bias import inject_patch
from gradcam_repro.explain.cam import GradCAM
from gradcam_repro.model.resnet import load_model, normalize, resnet18_cifar

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg"
EXPECTED_FILES = [
    "run.json", "figures/baseline_cam_grid.png", "figures/baseline_training_curves.png",
    "figures/biased_cam_grid.png", "figures/biased_training_curves.png",
    "figures/side_by_side.png", "figures/training_curves.png", "figures/layers_one_image.png",
    "figures/energy_distribution.png", "figures/per_class_accuracy.png", "figures/layer_sweep.png",
    "metrics.json", "summary.md", "REPORT.md",
]
EXPERIMENT_FILES = ["model.pt", "spec.json", "history.json", "history.csv"]


def experiment_dir(run: Path, name: str) -> Path:
    """The folder of experiment `name` of a run: experiments/<spec key>/, named in run.json."""
    return run / "experiments" / json.loads((run / "run.json").read_text())["experiments"][name]


def check_run_folder(out: Path, dataset: str) -> dict:
    for rel in EXPECTED_FILES:
        assert (out / rel).is_file(), f"missing {rel}"
    for png in out.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == dataset and len(metrics["dataset"]["fingerprint"]) == 64
    assert metrics["environment"]["torch"] == torch.__version__
    for name in ("baseline", "biased"):
        folder = experiment_dir(out, name)
        for rel in EXPERIMENT_FILES:
            assert (folder / rel).is_file(), f"missing {name}: {rel}"
        record = json.loads((folder / "spec.json").read_text())
        assert record["name"] == name and record["spec"]["seed"] == 0 and record["key"] == folder.name
        assert metrics["experiments"][name] == {"key": record["key"], "model_sha256": record["model_sha256"]}
        assert hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest() == record["model_sha256"]
        assert record["dataset"]["fingerprint"] == metrics["dataset"]["fingerprint"] == record["spec"]["data_fingerprint"]
        assert (record["spec"]["bias"] is None) == (name == "baseline")
        history = json.loads((folder / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1]
        # model.pt is a plain state_dict of exactly the CIFAR ResNet-18.
        state = torch.load(folder / "model.pt", weights_only=True)
        assert set(state) == set(resnet18_cifar().state_dict())
        m = metrics["models"][name]
        for key in ("clean_test_acc", "biased_test_acc", "target_recall_clean", "target_recall_patched"):
            assert m[key]["low"] <= m[key]["mean"] <= m[key]["high"] and 0.0 <= m[key]["mean"] <= 1.0
        assert set(m["flip_to_target"]) == {"none", "patch", "other_color", "other_corner"}
        assert set(m["cam"]) == {"layer1", "layer2", "layer3", "layer4", "layer4.1.conv2"}
        assert set(m["verdict"]["points_at_patch"]) == set(m["cam"])
    assert json.loads((experiment_dir(out, "biased") / "spec.json").read_text())["bias"]["patched_train_images"] > 0
    summary = (out / "summary.md").read_text()
    base = metrics["models"]["baseline"]
    assert f"{100 * base['clean_test_acc']['mean']:.1f}%" in summary
    assert f"{metrics['uniform']['energy_in_box']:.4f}" in summary
    report = (out / "REPORT.md").read_text()
    for section in ("## Counterfactual tests", "## Verdicts", "## Accuracy", "fingerprint"):
        assert section in report
    return metrics


@pytest.mark.slow
def test_smoke_run_on_shapes_writes_checkpoints_figures_metrics_and_reports(shapes_run):
    metrics = check_run_folder(shapes_run, "shapes")
    assert metrics["config"]["bias_class"] == "hbar"
    assert set(metrics["models"]["baseline"]["localisation"]) == set(metrics["layers"])


@pytest.mark.slow
def test_evaluate_recomputes_the_same_metrics_from_the_checkpoints(shapes_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shapes_run, copy)
    (copy / "metrics.json").unlink()
    assert main(["evaluate", str(copy)]) == 0
    before = json.loads((shapes_run / "metrics.json").read_text())
    after = json.loads((copy / "metrics.json").read_text())
    assert after["models"] == before["models"]
    assert after["config"] == {**before["config"], "out": str(copy)}
    assert after["experiments"] == before["experiments"]


@pytest.mark.slow
def test_report_is_rebuilt_from_metrics_and_follows_the_numbers(shapes_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shapes_run, copy)
    original = (copy / "REPORT.md").read_text()
    (copy / "REPORT.md").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "REPORT.md").read_text() == original
    # Conclusions are generated from metrics.json, not fixed: change the numbers, the words change.
    metrics = json.loads((copy / "metrics.json").read_text())
    biased = metrics["models"]["biased"]
    biased["flip_to_target"]["patch"] = {"mean": 0.97, "low": 0.95, "high": 0.99, "n": 200}
    biased["verdict"]["relies_on_patch"] = True
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(copy)]) == 0
    report = (copy / "REPORT.md").read_text()
    assert "The biased model relies on the patch" in report and "97.0%" in report
    assert "The biased model relies on the patch" not in original


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_dir() and not os.environ.get("CI"),
                    reason=f"offline CIFAR-10 copy not found at {SHARED_CIFAR} (in CI this test fails instead)")
def test_smoke_run_on_real_cifar_subset_and_independent_gradcam_reproduces_its_maps(tmp_path):
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from gradcam_repro.data.cifar10 import load_cifar10

    assert SHARED_CIFAR.is_dir(), f"CI needs the offline CIFAR-10 copy at {SHARED_CIFAR}"
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--data-root", str(SHARED_CIFAR), "--out", str(out)]) == 0
    metrics = check_run_folder(out, "cifar10")
    assert metrics["n"]["test"] == 500

    # An independent Grad-CAM on the saved checkpoint reproduces the project's maps.
    data = load_cifar10(SHARED_CIFAR)
    frogs = inject_patch(data.test_images[data.test_labels == 6][:8])
    x = normalize(frogs)
    model = load_model(experiment_dir(out, "biased") / "model.pt")
    ours = GradCAM(model, "layer4.1.conv2")(x)
    with ReferenceGradCAM(model=model, target_layers=[model.layer4[-1].conv2]) as reference:
        theirs = torch.from_numpy(reference(x, [ClassifierOutputTarget(int(t)) for t in ours.targets]))

    def minmax(maps):
        lo = maps.amin(dim=(1, 2), keepdim=True)
        return (maps - lo) / (maps.amax(dim=(1, 2), keepdim=True) - lo + 1e-7)

    assert (minmax(ours.maps) - minmax(theirs)).abs().max().item() <= 1e-4
