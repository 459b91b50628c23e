"""`gradcam-repro benchmark`: its rules on hand-built cells, its bad input, and a tiny run end to end."""

import json
import math
from dataclasses import replace

import pytest

from gradcam_repro.cli import main
from gradcam_repro.measure import detection, spray
from gradcam_repro.measure.study_results import StudyCellResult


def ci(mean: float, low: float, high: float, n: int = 100) -> dict:
    return {"mean": mean, "low": low, "high": high, "n": n}


def cell(kind="logo", seed=0, fraction=1.0, flip=(0.9, 0.85, 0.95), none=(0.02, 0.01, 0.04), energy=(0.3, 0.25, 0.35),
         uniform=0.05, audit=None) -> StudyCellResult:
    """A finished benchmark cell with the given flip rates, Grad-CAM energy at layer2 and audit summary."""
    scores = {"energy": ci(*energy), "pointing": ci(0.9, 0.8, 1.0)}
    metrics = {"clean_test_acc": ci(0.6, 0.55, 0.65), "per_class_acc": {}, "biased_test_acc": ci(0.6, 0.55, 0.65),
               "target_recall_clean": ci(0.5, 0.4, 0.6), "target_recall_patched": ci(0.9, 0.8, 1.0),
               "flip_to_target": {"none": ci(*none), "patch": ci(*flip)},
               "methods": {"gradcam": {"cam": {"layer2": {"patched_target": scores}},
                                       "verdict": {"relies_on_patch": True, "points_at_patch": {}, "agrees": {}}}}}
    values = {"key": f"{kind}{seed}{fraction}", "axes": {"kind": kind, "seed": seed, "bias_fraction": fraction},
              "spec_key": "0" * 16, "model_sha256": None, "methods": ["gradcam"], "config": {}, "metrics": metrics,
              "uniform": {"energy_in_box": uniform, "pointing": 0.2}, "n": {}, "settings": {}, "node_id": "n",
              "threads": 1, "environment": {}, "seconds": {"train": 1.0, "evaluate": 1.0}, "restored_experiment": False}
    if audit is not None:
        values["audit"] = {"target": "frog", "confirmed": [], "target_verdict": "none", "target_test": None,
                           "target_iou": None, "target_transplant": None, "unexplained": [], "seconds": 1.0} | audit
    return StudyCellResult.from_dict(values)


CONTROL = {"flip": (0.03, 0.01, 0.05), "energy": (0.06, 0.05, 0.07), "fraction": 0.0}


def test_reliance_partial_reliance_and_ignoring_follow_the_flip_rates_intervals():
    assert detection.relies(cell(flip=(0.6, 0.5, 0.7)))
    assert not detection.relies(cell(flip=(0.6, 0.49, 0.7)))
    assert detection.relies_partly(cell(flip=(0.3, 0.2, 0.4)))
    assert not detection.relies_partly(cell(flip=(0.05, 0.03, 0.07)))  # inside the base rate's interval
    assert detection.ignores(cell(flip=(0.05, 0.03, 0.07))) and not detection.ignores(cell(flip=(0.3, 0.2, 0.4)))


def test_detection_needs_twice_uniform_and_more_than_the_control_false_alarms_count_only_on_ignoring_controls():
    control = cell(**CONTROL)
    assert detection.detects(cell(energy=(0.3, 0.25, 0.35)), control, "gradcam", "layer2")
    assert not detection.detects(cell(energy=(0.3, 0.09, 0.35)), control, "gradcam", "layer2")  # < 2x uniform 0.05
    assert not detection.detects(cell(energy=(0.3, 0.25, 0.35)), cell(**{**CONTROL, "energy": (0.3, 0.26, 0.34)}),
                                 "gradcam", "layer2")  # the control points there as much
    found = detection.detections("logo", 1.0, [cell(seed=s) for s in (0, 1, 2)] + [cell(seed=3, flip=(0.2, 0.1, 0.3))],
                                 {0: control, 1: cell(seed=1, **{**CONTROL, "energy": (0.3, 0.2, 0.4)}),
                                  2: cell(seed=2, **{**CONTROL, "flip": (0.4, 0.3, 0.5), "energy": (0.3, 0.2, 0.4)})},
                                 {"gradcam": ["layer2"]})
    (d,) = found
    # Seed 3 does not rely: not counted. Only seed 0 beats its control: seed 1's and seed 2's controls point there too.
    assert (d.detected.k, d.detected.n) == (1, 3)
    assert (d.false_alarm.k, d.false_alarm.n) == (1, 2)  # seed 2's control relies partly: not a control that ignores it


def test_discovery_needs_the_right_class_confirmed_where_the_artefact_is_and_never_counts_a_placeless_kind():
    hit = {"confirmed": ["frog"], "target_verdict": "confirmed shortcut", "target_iou": 0.8}
    assert detection.discovered(cell(audit=hit), localisable=True)
    assert not detection.discovered(cell(audit={**hit, "target_iou": 0.3}), localisable=True)
    assert not detection.discovered(cell(audit=hit), localisable=False)
    assert detection.flagged(cell(audit={"target_verdict": "moving region"}))
    assert detection.flagged(cell(audit={"unexplained": ["frog"]}))
    assert not detection.flagged(cell(audit={"confirmed": ["ship"]}))
    summary = detection.kind_summary("tint", 1.0, [cell(audit=hit)], [cell(audit={"confirmed": ["ship"]}, **CONTROL)],
                                     localisable=False)
    assert (summary.discovery.k, summary.class_confirmed.k, summary.false_discovery.k) == (0, 1, 1)
    assert (summary.false_flag.k, summary.false_flag.n) == (0, 1)  # the control confirmed ship, not the target
    flagging = detection.kind_summary("tint", 1.0, [], [cell(audit={"unexplained": ["frog"]}, **CONTROL)], False)
    assert (flagging.false_flag.k, flagging.false_discovery.k) == (1, 0)  # a false flag, though nothing confirmed


def test_not_cleared_counts_candidates_too_and_is_compared_between_partly_relying_models_and_controls():
    candidate = {"target_verdict": spray.CANDIDATE}
    assert detection.not_cleared(cell(audit=candidate)) and not detection.flagged(cell(audit=candidate))
    assert detection.not_cleared(cell(audit={"unexplained": ["frog"]}))
    assert not detection.not_cleared(cell(audit={"unexplained": ["horse"], "confirmed": ["ship"]}))
    partly = {"flip": (0.22, 0.18, 0.26)}
    biased = [cell(seed=0, **partly, audit={"unexplained": ["frog"]}), cell(seed=1, **partly, audit={}),
              cell(seed=2, audit=candidate)]  # seed 2 relies (flip 0.9): not a partly relying model
    controls = [cell(seed=s, **CONTROL, audit=a) for s, a in ((0, candidate), (1, {}), (2, {"unexplained": ["frog"]}))]
    summary = detection.kind_summary("text", 0.3, biased, controls, localisable=True)
    assert (summary.partly_not_cleared.k, summary.partly_not_cleared.n) == (1, 2)
    assert (summary.false_flag.k, summary.false_flag.n) == (2, 3)  # the candidate on seed 0's control counts
    assert (summary.false_discovery.k, summary.flagged.text()) == (0, "0/1")  # the relying seed 2: candidate only
    again = detection.KindSummary.from_dict(json.loads(json.dumps(summary.to_dict())))
    assert again.partly_not_cleared == summary.partly_not_cleared
    # A BENCHMARK.json written before the rate was counted reads back with no model counted.
    old = {k: v for k, v in summary.to_dict().items() if k != "partly_not_cleared"}
    assert detection.KindSummary.from_dict(old).partly_not_cleared.n == 0


def test_partial_reliance_agrees_when_the_transplant_and_flip_intervals_overlap():
    partly = {"flip": (0.22, 0.18, 0.26)}
    assert detection.transplant_agrees(cell(**partly, audit={"target_transplant": ci(0.21, 0.19, 0.24)}))
    assert not detection.transplant_agrees(cell(**partly, audit={"target_transplant": ci(0.05, 0.03, 0.07)}))


def test_the_audit_table_says_how_each_biased_models_target_was_found_and_round_trips():
    from gradcam_repro.report.benchmark_report import benchmark_markdown

    moving = cell("text-random", seed=1, audit={"target_verdict": spray.MOVING, "target_test": spray.PER_IMAGE_TEST,
                                                "target_transplant": ci(0.7, 0.635, 0.765), "target_iou": 0.29,
                                                "unexplained": ["horse"], "rules": 4})
    missed = cell("text-random", seed=0, audit={"unexplained": ["frog"]})
    rows = detection.audit_rows([moving, cell("text-random", **CONTROL, audit={}), missed, cell("logo")])
    assert [(r.seed, r.audit.target_verdict, r.audit.target_unexplained) for r in rows] == [(0, "none", True),
                                                                                     (1, spray.MOVING, False)]
    assert rows[1].flip == moving.metrics.flip_to_target["patch"] and rows[1].audit is moving.audit
    result = detection.BenchmarkResult({}, (0, 1), (1.0,), {}, (), (), {"total": 4, "done": 4, "failed": 0},
                                       {"train_per_model": 1, "models": 2, "evaluate_per_cell": 1, "grid_worker_s": 4,
                                        "wall": 4}, "smoke", {}, {}, tuple(rows))
    again = detection.BenchmarkResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    markdown = benchmark_markdown(again)
    assert ("| text-random | 1 | 1 | 90.0% [85.0%, 95.0%] | moving region | per image | 70.0% [63.5%, 76.5%] | 0.29 | no "
            "| none |") in markdown
    assert "| text-random | 1 | 0 | 90.0% [85.0%, 95.0%] | none | - | - | - | yes | none |" in markdown
    assert "The audit, model by model" not in benchmark_markdown(replace(again, audits=()))


def test_rates_are_k_of_n_with_a_clopper_pearson_interval():
    r = detection.Rate.of([False, False, False])
    assert (r.k, r.n, r.low) == (0, 3, 0.0) and r.high == pytest.approx(0.7076, abs=1e-4)
    assert detection.Rate.of([True, True, True]).low == pytest.approx(0.2924, abs=1e-4)
    empty = detection.Rate.of([])
    assert empty.n == 0 and math.isnan(empty.low) and empty.text() == "-"


@pytest.mark.parametrize("flags, expected", [
    (["--kinds", "text", "logo", "text"], "the benchmark grid names kind 'text' twice"),
    (["--kinds", "sticker"], "unknown benchmark kind 'sticker'"),
    (["--doses", "0"], "--doses must be in (0, 1]"),
    (["--seeds", "1", "1"], "names seed 1 twice"),
    (["--seeds", "0", "-1"], "--seeds must be in 0..4294967295, got [0, -1]"),  # it used to fail every cell on Ray
])
def test_bad_benchmark_grids_are_one_line_errors_that_write_nothing(tmp_path, capsys, flags, expected):
    out = tmp_path / "bench"
    assert main(["benchmark", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "fix:" in err
    assert not out.exists()


@pytest.mark.slow  # trains 3 tiny models on Ray and audits 6 cells
def test_a_tiny_benchmark_writes_its_rates_shares_the_control_and_resumes(tmp_path):
    import ray

    from gradcam_repro.pipeline.benchmark import BenchmarkOptions, run_benchmark
    from gradcam_repro.pipeline.study_tasks import StudyOptions

    settings = {"dataset": "shapes", "shapes_train": 200, "shapes_test": 100, "epochs": 1, "batch_size": 64,
                "lr_schedule": "constant", "eval_subset": 50, "cam_images": 8, "cam_batch_size": 64}
    options = BenchmarkOptions(kinds=("square", "text-random"), seeds=(0,), doses=(1.0, 0.5), preset="smoke",
                               methods=("gradcam", "inputxgradient"))
    out = tmp_path / "bench"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        first = run_benchmark(options, StudyOptions(out=str(out)), settings, log=lambda line: None)
        lines = []
        again = run_benchmark(options, StudyOptions(out=str(out)), settings, log=lines.append)
    finally:
        ray.shutdown()
    assert first.cells == {"total": 6, "done": 6, "failed": 0} and again.cells == first.cells
    assert any("6 already finished" in line for line in lines)  # resumed: nothing trained or measured again
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    controls = {c["spec_key"] for c in cells if c["axes"]["bias_fraction"] == 0}
    assert len(controls) == 1  # one clean control per seed, shared by every kind
    assert all("audit" in c and c["audit"]["target"] == "hbar" for c in cells)
    # Each cell's whole audit is kept beside it: the per-class scores and candidates its summary was read from.
    for c in cells:
        full = json.loads((out / "audits" / f"{c['key']}.json").read_text())
        assert [u["class"] for u in full["unexplained"]] == c["audit"]["unexplained"]
        assert full["confirmed"] == c["audit"]["confirmed"] and full["settings"]["rules_version"] == spray.RULES_VERSION
        assert full["classes"] and all("transplant_flip" in t for t in full["candidates"])
    from gradcam_repro.runtime import Runtime

    precision = Runtime.choose("cpu", "auto").precision  # what this CPU measures (and trains) in
    assert {c["environment"]["precision"] for c in cells} == {precision} and precision in ("bfloat16", "float32")
    written = json.loads((out / "BENCHMARK.json").read_text())
    assert [(s["kind"], s["dose"]) for s in written["summaries"]] == [
        ("square", 1.0), ("square", 0.5), ("text-random", 1.0), ("text-random", 0.5)]
    layers = {(d["method"], d["layer"]) for d in written["detections"]}
    assert ("gradcam", "layer4.1.conv2") in layers and ("inputxgradient", "input") in layers
    markdown = (out / "BENCHMARK.md").read_text()
    assert "| square | 1 |" in markdown and (out / "figures" / "benchmark_dose_1.png").is_file()
    audits = [c["audit"]["seconds"] for c in cells]
    assert 0 < written["seconds"]["audit_per_cell"] == pytest.approx(sum(audits) / len(audits))
    assert written["seconds"]["audit_per_cell"] <= written["seconds"]["evaluate_per_cell"]  # the audit is part of a cell
    assert f"({written['seconds']['audit_per_cell']:.0f} s of them the audit)" in markdown
    assert written["rules"]["cells_by_audit_rules"] == {str(spray.RULES_VERSION): 6}
    _reaudit_redoes_only_the_cells_audited_by_older_rules(options, settings, out)


def _reaudit_redoes_only_the_cells_audited_by_older_rules(options, settings, out):
    import ray

    from gradcam_repro.pipeline.benchmark import run_benchmark
    from gradcam_repro.pipeline.study_tasks import StudyOptions

    files = sorted((out / "cells").glob("*.json"))
    before = {p.name: p.read_bytes() for p in files}
    stale = json.loads(files[0].read_text())
    stale["audit"] = {k: v for k, v in stale["audit"].items() if k != "rules"} | {"confirmed": ["made up"]}
    files[0].write_text(json.dumps(stale))  # as a cell written before the rules were versioned
    (out / "audits" / files[0].name).unlink()  # and before whole audits were kept
    lines = []
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        result = run_benchmark(replace(options, reaudit=True), StudyOptions(out=str(out)), settings, log=lines.append)
    finally:
        ray.shutdown()
    assert any("--reaudit: 1 finished cell(s)" in line for line in lines)
    again = json.loads(files[0].read_text())
    original = json.loads(before[files[0].name])
    assert again["audit"]["rules"] == spray.RULES_VERSION and again["audit"]["confirmed"] != ["made up"]
    assert {k: v for k, v in again.items() if k != "audit"} == {k: v for k, v in original.items() if k != "audit"}
    assert {k: v for k, v in again["audit"].items() if k != "seconds"} == {
        k: v for k, v in original["audit"].items() if k != "seconds"}  # the same rules give the same audit
    assert all(p.read_bytes() == before[p.name] for p in files[1:])  # up-to-date cells are left alone
    full = json.loads((out / "audits" / files[0].name).read_text())  # the re-audit keeps its whole audit too
    assert [u["class"] for u in full["unexplained"]] == again["audit"]["unexplained"]
    assert result.rules["cells_by_audit_rules"] == {str(spray.RULES_VERSION): 6}
