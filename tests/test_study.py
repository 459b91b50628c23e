"""`gradcam-repro study`: a grid trained once per spec on Ray, the same numbers as `run`, resumable, aggregated
across seeds with t-intervals, k-of-n verdicts and detection thresholds."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch

from gradcam_repro.cli import main
from gradcam_repro.config import preset_config
from gradcam_repro.errors import UserError
from gradcam_repro.measure.aggregate import (
    aggregate_cells,
    agreement,
    agreement_counts,
    detection_thresholds,
    seed_interval,
)
from gradcam_repro.measure.results import CamScores, Interval, Verdict
from gradcam_repro.measure.study_results import (
    AgreementCounts,
    CellMetrics,
    ConditionAgreement,
    MethodScores,
    StudyCellResult,
    Tally,
)
from gradcam_repro.pipeline.engine import join_error
from gradcam_repro.pipeline.eta import EtaPace, progress_line
from gradcam_repro.pipeline.grid import StudyGrid, plan_study, read_study_file, study_grid
from gradcam_repro.pipeline.run import run
from gradcam_repro.pipeline.study import run_study
from gradcam_repro.pipeline.study_tasks import StudyOptions, cell_seconds

# Tiny shapes cells: 200 training images, one epoch, 100 test images (every non-target image is flipped),
# 8 images per CAM set. A constant lr: onecycle needs more steps than 200 images / 64 per batch give.
SETTINGS = {"preset": "smoke", "dataset": "shapes", "shapes_train": 200, "shapes_test": 100, "epochs": 1,
            "batch_size": 64, "lr_schedule": "constant", "eval_subset": 50, "cam_images": 8, "cam_batch_size": 64}
AXES = {"seed": (0, 1), "bias_fraction": (0.0, 1.0)}
METHODS = ("gradcam", "inputxgradient")
CLI_SETTINGS = ["--preset", "smoke", "--dataset", "shapes", "--shapes-train", "200", "--shapes-test", "100",
                "--epochs", "1", "--batch-size", "64", "--lr-schedule", "constant", "--eval-subset", "50",
                "--cam-images", "8", "--cam-batch-size", "64", "--methods", *METHODS]


def cells_of(out: Path) -> dict[str, dict]:
    """{cell key: cell record} of a study folder."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))}


def cell_at(out: Path, **axes) -> dict:
    (cell,) = [c for c in cells_of(out).values() if c["axes"] == axes]
    return cell


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The 4-cell shapes study (2 seeds x fractions 0 and 1) on a local Ray with 2 workers."""
    out = tmp_path_factory.mktemp("study") / "local"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    lines = []
    try:
        study = run_study(StudyGrid(SETTINGS, AXES, METHODS), StudyOptions(out=str(out)), log=lines.append)
    finally:
        ray.shutdown()
    return out, study, lines


# --- aggregation across seeds (pure) --------------------------------------------------------------------------


def test_the_seed_interval_is_the_student_t_interval_and_undefined_for_one_seed():
    ci = seed_interval([0.5, 0.7, 0.9])
    half = 4.302652729911275 * 0.2 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert ci["mean"] == pytest.approx(0.7) and ci["n"] == 3
    assert (ci["low"], ci["high"]) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))
    one = seed_interval([0.4])
    assert one["mean"] == 0.4 and math.isnan(one["low"]) and math.isnan(one["high"])
    assert seed_interval([0.3, 0.3]) == {"mean": 0.3, "low": 0.3, "high": 0.3, "n": 2, "sd": 0.0}
    assert seed_interval([float("nan"), 0.2])["n"] == 1  # a seed where nothing was measurable does not count


def ci(mean, half=0.01, n=100):
    return Interval(mean, mean - half, mean + half, n)


def fake_cell(seed, fraction, flip, energy, uniform=0.05):
    """A cell with a flip-to-target rate and a Grad-CAM energy at layer4 (image-level CIs of +-0.01); what the
    aggregation does not read is a placeholder."""
    points = energy - 0.01 >= 2 * uniform
    cam = {"layer4": {"patched_target": CamScores(ci(energy), ci(0.5))}}
    metrics = CellMetrics(ci(0.6), {}, ci(0.6), ci(0.6), ci(0.6),
                          {"none": ci(0.0), "patch": ci(flip), "other_color": ci(0.0), "other_corner": ci(0.0)},
                          {"gradcam": MethodScores(cam, Verdict(flip - 0.01 >= 0.5, {"layer4": points}, {}))})
    return StudyCellResult(f"{seed}-{fraction}", {"seed": seed, "bias_fraction": fraction}, "spec", None, ["gradcam"],
                           {}, metrics, {"energy_in_box": uniform}, {}, {}, "node", 1, {}, {}, False)


def test_verdicts_are_counted_per_seed_and_thresholds_need_the_lower_seed_bound_to_clear_the_rule():
    # Reliance: fraction 0.1 is above 0.5 in two of three seeds but its seed interval reaches below 0.5;
    # fraction 0.3 clears it in every seed. The energy clears 2x uniform (0.1) and the baseline from 0.1 on.
    flips = {0.0: (0.0, 0.0, 0.0), 0.1: (0.9, 0.8, 0.1), 0.3: (0.9, 0.92, 0.88)}
    energies = {0.0: (0.05, 0.06, 0.04), 0.1: (0.30, 0.32, 0.31), 0.3: (0.5, 0.5, 0.52)}
    cells = [fake_cell(s, f, flips[f][s], energies[f][s]) for f in flips for s in range(3)]
    conditions = aggregate_cells(cells)
    assert [c.axes for c in conditions] == [{"bias_fraction": f} for f in flips]
    mid = conditions[1]
    assert mid.seeds == [0, 1, 2]
    assert mid.verdicts["relies_on_patch"] == Tally(k=2, n=3)
    assert mid.verdicts["flags/gradcam/layer4"] == Tally(k=3, n=3)
    assert "flags/gradcam/layer4" not in conditions[0].verdicts  # the baseline is not compared with itself
    assert mid.metrics["flip_to_target/patch"].mean == pytest.approx(0.6)
    assert mid.metrics["flip_to_target/patch"].image_half_width == pytest.approx(0.01)
    assert mid.metrics["energy_ratio/gradcam/layer4"].mean == pytest.approx(0.31 / 0.05)
    (t,) = detection_thresholds(conditions)
    assert t.fractions == [0.0, 0.1, 0.3] and t.n_seeds == 3
    assert t.relies_on_patch == 0.3
    assert t.flags == {"gradcam": {"layer4": 0.1}}
    # One seed: no interval, so no threshold is claimed, whatever the means.
    (single,) = detection_thresholds(aggregate_cells([c for c in cells if c.axes["seed"] == 0]))
    assert single.relies_on_patch is None and single.flags == {"gradcam": {"layer4": None}}


def test_agreement_lists_the_verdicts_robust_in_one_study_and_not_in_the_same_way_in_the_other():
    flips = {0.0: (0.0, 0.0, 0.0), 1.0: (0.9, 0.95, 0.99)}
    energies = {0.0: (0.05, 0.06, 0.04), 1.0: (0.30, 0.32, 0.31)}
    here = aggregate_cells([fake_cell(s, f, flips[f][s], energies[f][s]) for f in flips for s in range(3)])
    same = agreement(here, here)[1]
    assert same.same and same.differs == [] and same.seeds == (3, 3)
    assert same.tallies == {n: (t, t) for n, t in here[1].verdicts.items()}
    # The reference: 2 seeds; seed 0's baseline already points (0.35), so at fraction 1 both seeds point but
    # only seed 1 flags the patch (1 of 2). At fraction 0 "points" is 1 of 2 there, 0 of 3 here.
    there = aggregate_cells([fake_cell(s, 0.0, 0.0, (0.35, 0.05)[s]) for s in range(2)]
                            + [fake_cell(s, 1.0, 0.99, 0.30) for s in range(2)])
    (base, full) = agreement(here, there)
    assert base.differs == ["points_at_patch/gradcam/layer4"] and base.states["points_at_patch/gradcam/layer4"] == (
        "none", "some")
    assert full.seeds == (3, 2) and full.tallies["flags/gradcam/layer4"] == (Tally(k=3, n=3), Tally(k=1, n=2))
    assert full.differs == ["flags/gradcam/layer4"] and not full.same and full.contradicted == []
    never = aggregate_cells([fake_cell(s, f, 0.99 if f else 0.0, 0.05) for f in (0.0, 1.0) for s in range(2)])
    assert set(agreement(here, never)[1].contradicted) == {"points_at_patch/gradcam/layer4", "flags/gradcam/layer4"}
    assert agreement(here, [c for c in there if c.axes["bias_fraction"] == 0.5]) == []


def test_agreement_counts_the_verdicts_robust_in_each_study_and_those_the_same_in_both():
    def states(**pairs):  # an agreement where only the states count
        return ConditionAgreement({}, (1, 1), {}, {n: tuple(pair) for n, pair in pairs.items()}, [], [], True)

    shared = [states(a=["every", "every"], b=["none", "some"], c=["some", "every"], d=["some", "some"]),
              states(a=["every", "none"], b=["none", "none"], e=["none", "some"])]
    assert agreement_counts(shared) == AgreementCounts(same=2, robust_here=5, robust_there=4)
    assert agreement_counts([]) == AgreementCounts(same=0, robust_here=0, robust_there=0)


def test_the_progress_line_counts_cells_and_rounds_the_eta():
    assert progress_line(2, 2, 0, 21, 2760.0) == "cells: 2/21 done, 2 running, 0 failed, ETA 46 min"
    assert progress_line(20, 1, 0, 21, 45.2) == "cells: 20/21 done, 1 running, 0 failed, ETA 45 s"
    assert progress_line(0, 2, 0, 21, None).endswith("ETA unknown")
    assert progress_line(21, 0, 0, 21, None).endswith("all finished")
    assert progress_line(20, 0, 1, 21, 0.0).endswith("all finished")


def test_the_eta_is_the_mean_cell_time_over_the_workers_counting_down_between_finishes():
    pace = EtaPace([SimpleNamespace(cells=((f"c{i}", None),), experiment_files=None) for i in range(21)], slots=2)
    assert pace.eta_s(100.0) is None
    # The first of two side-by-side cells ends 300 s in (290 s of worker time): 20 cells left, two at a time.
    # "Time so far / cells done" would say 20 x 300 s = 100 min, twice the real remainder.
    pace.ended(SimpleNamespace(cells=(("c0", None),), experiment_files=None), [290.0], 300.0)
    assert pace.eta_s(300.0) == 20 * 290 / 2
    assert pace.eta_s(400.0) == 20 * 290 / 2 - 100  # counts down between finishes, does not grow
    pace.ended(SimpleNamespace(cells=(("c1", None),), experiment_files=None), [310.0], 302.0)
    assert pace.eta_s(302.0) == 19 * 300 / 2
    assert pace.eta_s(10_000.0) == 0.0


def test_the_eta_is_paced_by_trainings_not_by_cells_that_only_restore_a_model():
    restore = [SimpleNamespace(cells=((f"r{i}", None),), experiment_files={"model.pt": b""}) for i in range(2)]
    train = [SimpleNamespace(cells=((f"t{i}", None),), experiment_files=None) for i in range(4)]
    pace = EtaPace(restore + train, slots=2)
    pace.ended(restore[0], [30.0], 30.0)  # measured only
    # Pacing by it would say 4 x 30 s / 2 = 60 s for four trainings of ~290 s each, two at a time.
    assert pace.eta_s(40.0) is None
    pace.ended(train[0], [290.0], 320.0)
    assert pace.eta_s(320.0) == 3 * 290 / 2
    pace.ended(train[1], [], 330.0)  # failed: one training fewer to wait for, and it sets no pace
    assert pace.eta_s(330.0) == 2 * 290 / 2 - 10
    pace.ended(train[2], [290.0], 600.0)
    assert pace.eta_s(600.0) == 290.0  # the last training: one cell, however many workers
    pace.ended(train[3], [290.0], 900.0)
    assert pace.eta_s(900.0) == 30.0  # only the restored cell left: paced by restored cells


def test_a_task_shares_its_training_time_among_its_cells():
    result = {"seconds": {"train": 200.0, "evaluate": {"a": 30.0, "b": 50.0}}}
    assert cell_seconds(result) == [130.0, 150.0]


# --- the grid ---------------------------------------------------------------------------------------------------


def test_grid_comes_from_a_toml_file_and_flags_win(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text('preset = "smoke"\nmethods = ["gradcam"]\n[settings]\ndataset = "shapes"\nepochs = 2\n'
                    '[grid]\nseed = [0, 1, 2]\nbias_fraction = [0, 0.5]\npatch_color = [[255, 255, 0], [255, 0, 0]]\n')
    grid = study_grid(read_study_file(path), {"epochs": 1}, {"bias_fraction": (0.0, 1.0)}, None)
    assert grid.settings == {"dataset": "shapes", "epochs": 1, "preset": "smoke"}
    assert grid.axes == {"seed": (0, 1, 2), "bias_fraction": (0.0, 1.0), "patch_color": ([255, 255, 0], [255, 0, 0])}
    assert grid.methods == ("gradcam",) and len(grid.combinations()) == 12
    # A fixed flag removes the axis of the same field; no axis at all is the default 7 x 3 grid.
    assert "seed" not in study_grid(read_study_file(path), {"seed": 4}, {}, None).axes
    assert len(study_grid({}, {}, {}, None).combinations()) == 21
    assert study_grid({}, {"seed": 3}, {}, None).axes == {"bias_fraction": (0.0, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0)}
    with pytest.raises(UserError, match=r"unknown study settings \['epoch'\]"):
        study_grid({"settings": {"epoch": 3}}, {}, {}, None)
    path.write_text("[grid\nseed = 1")
    with pytest.raises(UserError, match="cannot read .*study.toml"):
        read_study_file(path)


def test_an_arch_axis_plans_one_training_per_architecture_each_explained_at_its_rules_layer(tmp_path):
    settings = {"preset": "smoke", "dataset": "shapes", "seed": 0, "bias_fraction": 1.0}
    grid = study_grid({}, settings, {"arch": ("resnet18_cifar", "vgg11_cifar")}, ("gradcam",))
    plan = plan_study(grid, str(tmp_path), log=lambda *a: None)
    seeds, vgg = plan.cells
    assert (seeds.config.arch, vgg.config.arch) == ("resnet18_cifar", "vgg11_cifar")
    assert seeds.config.cam_layer == "layer4.1.conv2" and vgg.config.cam_layer == "features"
    assert vgg.spec.to_dict()["arch"] == "vgg11_cifar" and seeds.spec.key != vgg.spec.key
    plain = plan_study(study_grid({}, settings, {}, ("gradcam",)), str(tmp_path), log=lambda *a: None).cells[0]
    assert plain.spec.key == seeds.spec.key  # the seed's architecture as an axis value trains the same model
    assert len(plan.data) == 1  # one dataset for both


def test_bad_study_input_is_one_line_exit_2_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "study"
    code = main(["study", *CLI_SETTINGS, "--out", str(out), "--fractions", "0", "1.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "gradcam-repro: error: --bias-fraction must be in [0, 1], got 1.5"
    assert not (out / "grid.json").exists()


def test_an_address_where_no_cluster_answers_is_one_line_exit_2_without_waiting_on_ray(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "study"
    code = main(["study", *CLI_SETTINGS, "--out", str(out), "--seeds", "0", "--fractions", "0",
                 "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"gradcam-repro: error: no Ray cluster answers at 127.0.0.1:{port}") and "fix:" in err
    assert not ray.is_initialized() and not (out / "study.json").exists() and not (out / "cells").exists()


def test_a_cluster_that_wants_an_auth_token_gets_a_one_line_error_naming_the_fix():
    try:  # what ray.init raises when `ray start` (Ray >= 2.59) turned token authentication on
        try:
            raise RuntimeError("Failed to connect to GCS. RPC error: InvalidAuthToken: Authentication token is missing")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause
    except ConnectionError as e:
        message = join_error("10.0.0.1:6379", e)
    assert "\n" not in message and "RAY_AUTH_MODE=token" in message and "fix:" in message
    other = join_error("10.0.0.1:6379", ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))
    assert "RAY_AUTH_MODE" not in other and "ray status" in other


# --- the engine -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_four_cell_study_on_local_ray_writes_every_cell_shared_baselines_and_the_reports(local_study):
    out, study, lines = local_study
    cells = cells_of(out)
    assert len(cells) == 4 and all(c.status == "done" for c in study.cells.values())
    assert any("2 dataset(s) put into the object store" in line for line in lines)  # one per shapes seed
    assert len({c["spec_key"] for c in cells.values()}) == 4 == len(list((out / "experiments").iterdir()))
    for c in cells.values():
        record = json.loads((out / "experiments" / c["spec_key"] / "spec.json").read_text())
        assert (record["spec"]["bias"] is None) == (c["axes"]["bias_fraction"] == 0)
        assert record["model_sha256"] == c["model_sha256"] and c["threads"] == 1
        assert set(c["metrics"]["flip_to_target"]) == {"none", "patch", "other_color", "other_corner"}
        # Flip tests on every non-target test image; CAM sets capped at 8.
        assert c["metrics"]["flip_to_target"]["patch"]["n"] == c["n"]["counterfactual_non_target"] == 90
        assert set(c["metrics"]["methods"]) == set(METHODS)
        assert set(c["metrics"]["methods"]["inputxgradient"]["cam"]) == {"input"}
        assert c["metrics"]["methods"]["gradcam"]["cam"]["layer1"]["clean_target"]["energy"]["n"] == 8
    assert [cond.axes for cond in study.conditions] == [{"bias_fraction": 0.0}, {"bias_fraction": 1.0}]
    assert all(cond.seeds == [0, 1] for cond in study.conditions)
    assert json.loads((out / "study.json").read_text())["conditions"] == json.loads(json.dumps(study.to_dict()["conditions"]))
    report = (out / "STUDY.md").read_text()
    for section in ("## Does the model rely on the patch?", "### Input x Gradient", "## Detection thresholds",
                    "Student t-interval over seeds", "figures/dose_response_reliance.png"):
        assert section in report
    for rel in study.figures:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))


def test_against_another_study_reports_where_the_every_seed_verdicts_differ(local_study, tmp_path, capsys):
    local_out, study, _ = local_study
    here = tmp_path / "here"
    shutil.copytree(local_out, here)  # every cell finished: the rerun only aggregates and reports
    lines = []
    again = run_study(StudyGrid(SETTINGS, AXES, METHODS), StudyOptions(out=str(here), against=str(local_out)),
                      log=lines.append)
    assert [c.same for c in again.against.conditions] == [True, True]
    assert f"## Against `{local_out}`" in (here / "STUDY.md").read_text()
    robust = sum(state[0] != "some" for c in again.against.conditions for state in c.states.values())
    assert f"at 2 shared condition(s): {robust} of its {robust} seed-robust verdicts hold the same way here" in lines[-1]
    assert f"Of the {robust} verdicts seed-robust there, **{robust} hold the same way here**" in (here / "STUDY.md").read_text()
    # A reference where a verdict that does not hold in every seed here holds in every seed there.
    reference = tmp_path / "reference"
    reference.mkdir()
    edited = json.loads((local_out / "study.json").read_text())
    full = edited["conditions"][1]
    name, tally = next((n, dict(t)) for n, t in full["verdicts"].items() if t["k"] < t["n"])
    full["verdicts"][name]["k"] = full["verdicts"][name]["n"]
    (reference / "study.json").write_text(json.dumps(edited))
    again = run_study(StudyGrid(SETTINGS, AXES, METHODS), StudyOptions(out=str(here), against=str(reference)),
                      log=lines.append)
    (_, differs) = again.against.conditions
    assert not differs.same and differs.differs == [name]
    assert differs.contradicted == ([name] if tally["k"] == 0 else [])
    note = "no seed here, every seed there (contradicted)" if tally["k"] == 0 else "some seeds here, every seed there"
    assert f"| {name} | {tally['k']}/2 | 2/2 | {note} |" in (here / "STUDY.md").read_text()
    against = json.loads((here / "study.json").read_text())["against"]
    assert against["conditions"][1]["differs"] == [name]
    assert against["counts"] == {"same": robust - (tally["k"] == 0), "robust_here": robust,
                                 "robust_there": robust + (tally["k"] > 0)}
    # The edited verdict is seed-robust there; here it is robust only when it held in no seed (contradicted).
    assert (f"{robust - (tally['k'] == 0)} of its {robust + (tally['k'] > 0)} seed-robust verdicts hold the same way "
            f"here ({robust} are seed-robust here)") in lines[-1]
    # A folder without a study.json: one line, exit 2, before anything is written.
    before = (here / "study.json").read_bytes()
    code = main(["study", *CLI_SETTINGS, "--out", str(here), "--seeds", "0", "1", "--fractions", "0", "1",
                 "--against", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--against" in err and "fix:" in err, err
    assert (here / "study.json").read_bytes() == before


@pytest.mark.slow
def test_a_cell_has_exactly_the_numbers_of_gradcam_repro_run_with_the_same_settings_and_threads(local_study, tmp_path):
    out, _, _ = local_study
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the study's cpus_per_cell
    try:
        metrics = run(preset_config("smoke", **{**SETTINGS, "seed": 0, "bias_fraction": 1.0, "out": str(tmp_path / "run")}),
                      log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    metrics = metrics.to_dict()  # as metrics.json holds them
    for name, fraction in (("baseline", 0.0), ("biased", 1.0)):
        cell = cell_at(out, seed=0, bias_fraction=fraction)
        assert cell["spec_key"] == metrics["experiments"][name]["key"]
        assert cell["model_sha256"] == metrics["experiments"][name]["model_sha256"]
        expected = metrics["models"][name]
        measured = {k: v for k, v in cell["metrics"].items() if k != "methods"} | cell["metrics"]["methods"]["gradcam"]
        assert json.loads(json.dumps(measured)) == json.loads(json.dumps(expected))


@pytest.mark.slow
def test_run_parallel_trains_both_models_side_by_side_into_the_files_a_one_thread_run_writes(local_study, tmp_path):
    out, _, _ = local_study
    lines = []
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        metrics = run(preset_config("smoke", **{**SETTINGS, "seed": 0, "bias_fraction": 1.0, "out": str(tmp_path / "run")}),
                      log=lines.append, parallel=True)
    finally:
        ray.shutdown()
    assert "training baseline, biased side by side on a local Ray (1 thread each)" in lines
    for name, fraction in (("baseline", 0.0), ("biased", 1.0)):  # the same model files as `run` on one thread
        assert metrics.experiments[name]["model_sha256"] == cell_at(out, seed=0, bias_fraction=fraction)["model_sha256"]
        assert any(line.startswith(f"[{name}] reusing the finished experiment") for line in lines)


@pytest.mark.slow
def test_the_same_study_on_a_two_node_cluster_uses_both_nodes_and_gives_the_same_results(local_study, tmp_path):
    from ray.cluster_utils import Cluster

    local_out, _, _ = local_study
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    address, out, lines = cluster.address, tmp_path / "cluster", []
    try:
        run_study(StudyGrid(SETTINGS, AXES, METHODS), StudyOptions(out=str(out), address=address), log=lines.append)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert f"ray: joined the cluster at {address}" in lines, "\n".join(lines)
    on_cluster, local = cells_of(out), cells_of(local_out)
    assert set(on_cluster) == set(local)
    assert len({c["node_id"] for c in on_cluster.values()}) == 2
    for key, cell in on_cluster.items():
        assert cell["metrics"] == local[key]["metrics"]
        assert cell["model_sha256"] == local[key]["model_sha256"]


@pytest.mark.slow
def test_a_study_interrupted_after_its_first_cell_reruns_without_retraining_it(tmp_path):
    out = tmp_path / "study"
    # Two cells, one task at a time (2 CPUs per cell on 2 cores), so the second is in flight at the interrupt.
    command = [sys.executable, "-m", "gradcam_repro", "study", *CLI_SETTINGS, "--out", str(out), "--seeds", "0",
               "--fractions", "0", "1", "--cpus-per-cell", "2"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "RAY_ADDRESS": ""})
    deadline = time.monotonic() + 900  # a tiny cell takes seconds, minutes when the 2 cores are shared
    while not list((out / "cells").glob("*.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((out / "cells").glob("*.json")), "no cell finished within 15 min: nothing to interrupt after"
    first.send_signal(signal.SIGINT)
    log = first.communicate(timeout=120)[0]
    assert first.returncode == 130, log
    (done,) = (out / "cells").glob("*.json")
    spec_json = out / "experiments" / json.loads(done.read_text())["spec_key"] / "spec.json"
    stamps = (done.stat().st_mtime_ns, spec_json.stat().st_mtime_ns)
    second = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""}, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 cells, 2 distinct trainings, 1 already finished" in second.stdout
    assert "1 task(s) for 1 cell(s)" in second.stdout
    assert "Token authentication" not in second.stdout + second.stderr  # Ray >= 2.59's notice at every local start is quieted
    assert len(list((out / "cells").glob("*.json"))) == 2
    assert (done.stat().st_mtime_ns, spec_json.stat().st_mtime_ns) == stamps  # neither retrained nor rewritten


@pytest.mark.slow
def test_a_cell_that_raises_is_retried_then_reported_and_the_others_finish(tmp_path):
    out = tmp_path / "study"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:  # lr 1e12 makes the loss non-finite: training raises "training diverged"
        with pytest.raises(UserError, match="1 of 2 cells failed"):
            run_study(StudyGrid(SETTINGS, {"lr": (0.05, 1e12), "bias_fraction": (1.0,)}, ("gradcam",)),
                      StudyOptions(out=str(out), max_retries=1), log=lambda line: None)
    finally:
        ray.shutdown()
    study = json.loads((out / "study.json").read_text())
    status = {c["axes"]["lr"]: c for c in study["cells"].values()}
    assert status[0.05]["status"] == "done" and status[1e12]["status"] == "failed"
    assert status[1e12]["error"].startswith("UserError: training diverged")
    assert len(cells_of(out)) == 1
    assert "training diverged" in (out / "STUDY.md").read_text()
