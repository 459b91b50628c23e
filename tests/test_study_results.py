"""A study's typed results: a cell file and study.json read back exactly what was written (key order included),
nothing mutates them, and a file an older version wrote is one clear error that names the fix."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from test_regression import PATCH, tiny_net, tiny_test_set

from gradcam_repro.errors import UserError
from gradcam_repro.measure.aggregate import aggregate_cells, agreement, agreement_counts, detection_thresholds
from gradcam_repro.measure.shortcut import ShortcutProtocol, measure_methods
from gradcam_repro.measure.study_results import Against, CellStatus, StudyCellResult, StudyResult
from gradcam_repro.pipeline.folders import StudyFolder
from gradcam_repro.pipeline.study import _verdict_line, finished_cells, reference_conditions
from gradcam_repro.runtime import Runtime

METHODS = ("gradcam", "hirescam")


@pytest.fixture(scope="module")
def measured():
    """measure_methods' results on the regression test's tiny network (through JSON, as a worker hands them on)."""
    protocol = ShortcutProtocol(target=6, patch=PATCH, layers=("conv1", "conv2"), seed=0, counterfactual_images=30,
                                cam_images=10, cam_batch_size=16)
    results = measure_methods(tiny_net(), tiny_test_set(), protocol, METHODS, Runtime(torch.device("cpu")))
    return json.loads(json.dumps(results))


def cell_dict(measured: dict, seed: int, fraction: float) -> dict:
    """cells/<key>.json as `study` writes it, around real measurements."""
    return {"key": f"cell{seed}{fraction}", "axes": {"seed": seed, "bias_fraction": fraction}, "spec_key": f"spec{seed}",
            "model_sha256": "ab" * 32, "methods": list(METHODS), "config": {"preset": "smoke", "seed": seed},
            "metrics": measured["model"], "uniform": measured["uniform"], "n": measured["n"],
            "settings": {"confidence": 0.95}, "node_id": "node", "threads": 1, "environment": {"torch": "x"},
            "seconds": {"train": 2.5, "evaluate": 1.25}, "restored_experiment": seed == 1}


def a_study(measured: dict) -> StudyResult:
    """Four cells (2 seeds x fractions 0 and 1; the same numbers each, so the seed intervals have zero width), a
    failed and a missing cell, compared with itself (--against), as written once the figures are saved."""
    cells = [StudyCellResult.from_dict(cell_dict(measured, s, f)) for f in (0.0, 1.0) for s in (0, 1)]
    conditions = aggregate_cells(cells)
    shared = agreement(conditions, conditions)
    statuses = {c.key: CellStatus.of(c.axes, c.spec_key, c, None) for c in cells}
    statuses["failed"] = CellStatus.of({"seed": 2, "bias_fraction": 0.0}, "spec2", None, "UserError: training diverged")
    statuses["missing"] = CellStatus.of({"seed": 2, "bias_fraction": 1.0}, "spec3", None, None)
    return StudyResult({"settings": {"preset": "smoke"}, "axes": {"seed": [0, 1, 2], "bias_fraction": [0.0, 1.0]},
                        "methods": list(METHODS)}, ["seed", "bias_fraction"], list(METHODS), "tiny", "c6", statuses,
                       {"confidence": 0.95, "cam_images": [10]}, conditions, detection_thresholds(conditions),
                       Against("elsewhere", shared, agreement_counts(shared)), 12.5, ["figures/a.png"])


def test_a_cell_file_reads_back_exactly_what_was_written_key_order_included(measured):
    stored = json.dumps(cell_dict(measured, 0, 1.0), indent=2)
    cell = StudyCellResult.from_dict(json.loads(stored))
    assert json.dumps(cell.to_dict(), indent=2) == stored
    assert set(cell.metrics.methods) == set(METHODS) and cell.metrics.flip_to_target["patch"].n > 0
    assert cell.metrics.methods["gradcam"].localisation is not None  # the tiny test set has object masks


def test_study_json_reads_back_exactly_what_was_written_in_the_order_study_writes_it(measured):
    study = a_study(measured)
    stored = json.dumps(study.to_dict(), indent=2)
    again = StudyResult.from_dict(json.loads(stored))
    assert json.dumps(again.to_dict(), indent=2) == stored
    written = json.loads(stored)
    assert list(written) == ["grid", "axes", "methods", "dataset", "bias_class", "cells", "settings", "conditions",
                             "thresholds", "against", "seconds", "figures"]
    assert list(written["cells"]["cell00.0"]) == ["axes", "spec_key", "status", "node_id", "seconds", "n"]
    assert written["cells"]["failed"] == {"axes": {"seed": 2, "bias_fraction": 0.0}, "spec_key": "spec2",
                                          "status": "failed", "error": "UserError: training diverged"}
    assert list(written["cells"]["missing"]) == ["axes", "spec_key", "status"]
    assert again.n_done == 4 and all(c.same for c in again.against.conditions)
    # Before it is written (no time, no figures, no --against), those keys are absent, not null.
    bare = dataclasses.replace(study, against=None, seconds=None, figures=None).to_dict()
    assert list(bare)[-2:] == ["conditions", "thresholds"]


def test_study_results_are_frozen_and_a_later_step_builds_a_new_one(measured):
    study = a_study(measured)
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.seconds = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.conditions[0].uniform_energy = 0.0
    cell = StudyCellResult.from_dict(cell_dict(measured, 0, 0.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.node_id = "elsewhere"
    later = dataclasses.replace(study, figures=["figures/b.png"])
    assert later.figures == ["figures/b.png"] and study.figures == ["figures/a.png"]


def test_a_cell_file_from_an_older_version_is_one_line_naming_the_fix(measured, tmp_path):
    old = cell_dict(measured, 0, 1.0)
    del old["restored_experiment"]
    with pytest.raises(UserError, match=r"older gradcam-repro \(no 'restored_experiment'\); fix: .*--force") as e:
        StudyCellResult.from_dict(old)
    assert "\n" not in str(e.value)
    nested = json.loads(json.dumps(cell_dict(measured, 0, 1.0)))
    del nested["metrics"]["methods"]["gradcam"]["cam"]["conv1"]["patched_target"]["energy"]["high"]
    with pytest.raises(UserError, match=r"\(no 'high'\); fix: .*--force"):
        StudyCellResult.from_dict(nested)
    # Read by a rerun of the study: the error names the file.
    StudyFolder(tmp_path).write_cell("old", old)
    with pytest.raises(UserError, match=r"old\.json was written by an older gradcam-repro"):
        finished_cells(SimpleNamespace(cells=[SimpleNamespace(key="old")]), str(tmp_path), {}, {})


def test_an_against_study_from_an_older_version_is_one_line_naming_it(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps({"conditions": [{"axes": {}, "seeds": [0], "uniform_energy": 0.1,
                                                                      "metrics": {}}]}))
    with pytest.raises(UserError, match=r"--against .*study\.json was written by an older gradcam-repro \(no "
                                        r"'verdicts'\); fix: ") as e:
        reference_conditions(str(tmp_path))
    assert "\n" not in str(e.value)


def test_a_study_over_architectures_reports_each_architectures_own_layers(measured):
    # An arch axis: the VGG's cells were scored at other layers than the ResNet's; STUDY.md and the figures show
    # each condition at its own layers (they used to read the first condition's layers for every condition).
    from gradcam_repro.report.study_report import study_figures, study_markdown

    def renamed(values: dict) -> dict:
        out = json.loads(json.dumps(values))
        for method in out["metrics"]["methods"].values():
            method["cam"] = {"features." + layer[-1]: v for layer, v in method["cam"].items()}
        return out

    cells = []
    for arch in ("resnet18_cifar", "vgg11_cifar"):
        for seed in (0, 1):
            values = cell_dict(measured, seed, 1.0) | {"key": f"{arch}{seed}", "spec_key": f"{arch}{seed}"}
            values["axes"] = {"seed": seed, "bias_fraction": 1.0, "arch": arch}
            cells.append(StudyCellResult.from_dict(renamed(values) if arch == "vgg11_cifar" else values))
    conditions = aggregate_cells(cells)
    statuses = {c.key: CellStatus.of(c.axes, c.spec_key, c, None) for c in cells}
    study = StudyResult({"settings": {"preset": "smoke"}, "axes": {"arch": ["resnet18_cifar", "vgg11_cifar"]},
                         "methods": list(METHODS)}, ["seed", "bias_fraction", "arch"], list(METHODS), "tiny", "c6",
                        statuses, {"confidence": 0.95, "cam_images": [10], "counterfactual_images": [30],
                                   "seed_ci": "t", "image_ci": "b"}, conditions, detection_thresholds(conditions),
                        None, 1.0, [])
    report = study_markdown(study)
    assert report.count("| condition | conv1 | conv2 |") == len(METHODS)
    assert report.count("| condition | features.1 | features.2 |") == len(METHODS)
    vgg_row = next(line for line in report.splitlines() if line.startswith("| bias_fraction=1.0, arch=vgg11_cifar |")
                   and "points" in line)
    assert vgg_row.count("points") == 2
    assert len(study_figures(study)) == 3  # the reliance figure and one energy figure per architecture
    line = _verdict_line(study)  # the command's last line names each series
    assert "arch=resnet18_cifar: " in line and "arch=vgg11_cifar: " in line
    assert _verdict_line(a_study(measured)).startswith("4/6 cells done, relies from fraction")  # one series: as before
