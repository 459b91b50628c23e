"""What a command shows: bounded plain progress lines in logs, a tqdm bar in a terminal, nothing when quiet,
one JSON document with --json, and a final line that says where to look."""

import io
import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.io import write_png

from gradcam_repro.cli import main
from gradcam_repro.config import Config
from gradcam_repro.data.cifar10 import CIFAR10_CLASSES, load_cifar10
from gradcam_repro.measure.results import PATCHED_TARGET, CamScores, Interval, ModelShortcut, RunMetrics, ShortcutResults, Verdict
from gradcam_repro.model.train import TrainHooks, train_model
from gradcam_repro.pipeline.progress import PlainTask, Reporter, Task, as_reporter, run_final_line

# Five training steps (OneCycleLR needs more than four) on a 300-image shapes set.
TINY_RUN = ["run", "--preset", "smoke", "--dataset", "shapes", "--train-subset", "80", "--batch-size", "16",
            "--eval-subset", "50", "--shapes-train", "200", "--shapes-test", "100", "--test-subset", "100",
            "--counterfactual-images", "40", "--cam-images", "20", "--figure-images", "2"]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


def run_task(reporter, clock, steps=1000, step_s=0.5):  # exact in binary: no rounding at the edges
    with reporter.task("[biased] epoch 2/3", steps, "img") as task:
        for _ in range(steps):
            clock.now += step_s
            task.update(1)


def test_plain_progress_is_a_few_lines_each_with_percentage_rate_and_eta():
    clock, err, out = FakeClock(), io.StringIO(), io.StringIO()
    reporter = Reporter("auto", stream=err, out=out, clock=clock)  # a pipe, not a terminal: plain lines
    run_task(reporter, clock)  # 1000 steps of 0.5 s: a tenth takes 50 s
    lines = err.getvalue().splitlines()
    progress, closing = lines[:-1], lines[-1]
    # One line per tenth, then the closing line: not one per step, nor a bar's \r redraws.
    assert len(progress) == 9, lines
    assert "\r" not in err.getvalue() and out.getvalue() == ""
    for line in progress:
        assert line.startswith("[biased] epoch 2/3: ") and "/1000 img (" in line
        assert "%)" in line and "img/s" in line and "ETA" in line
    assert progress[0] == "[biased] epoch 2/3: 100/1000 img (10%), 2.0 img/s, ETA 450 s"
    assert progress[-1] == "[biased] epoch 2/3: 900/1000 img (90%), 2.0 img/s, ETA 50 s"
    assert closing == "[biased] epoch 2/3: 1000/1000 img (100%), 2.0 img/s, done in 500 s"


def test_a_fast_task_prints_at_most_one_line_per_30_s():
    clock, err = FakeClock(), io.StringIO()
    run_task(Reporter("plain", stream=err, out=io.StringIO(), clock=clock), clock, steps=1000, step_s=0.0625)
    assert err.getvalue().splitlines() == [  # 62.5 s in all
        "[biased] epoch 2/3: 480/1000 img (48%), 16 img/s, ETA 32 s",
        "[biased] epoch 2/3: 960/1000 img (96%), 16 img/s, ETA 2 s",
        "[biased] epoch 2/3: 1000/1000 img (100%), 16 img/s, done in 62 s"]


def test_a_slow_task_still_prints_a_line_every_5_min():
    clock, err = FakeClock(), io.StringIO()
    reporter = Reporter("plain", stream=err, out=io.StringIO(), clock=clock)
    run_task(reporter, clock, steps=100, step_s=60.0)  # 100 min: a tenth takes 10 min
    progress = err.getvalue().splitlines()[:-1]
    assert progress[0] == "[biased] epoch 2/3: 5/100 img (5%), 0.017 img/s, ETA 5700 s"
    assert 15 <= len(progress) <= 20  # every 5 min and at each tenth


def test_a_short_task_prints_no_progress_line():
    clock, err = FakeClock(), io.StringIO()
    run_task(Reporter("plain", stream=err, out=io.StringIO(), clock=clock), clock, steps=100, step_s=0.25)  # 25 s
    assert err.getvalue() == ""


def test_in_a_terminal_progress_is_a_tqdm_bar_with_rate_and_eta():
    clock, err, out = FakeClock(), Terminal(), io.StringIO()
    reporter = Reporter("auto", stream=err, out=out, clock=clock)
    with reporter.task("[biased] epoch 2/3", 1000, "img") as task:
        assert type(task).__name__ == "BarTask"
        task.bar.mininterval = 0  # redraw on every update, whatever the real clock says
        task.update(250)
        task.update(250)
        reporter.log("a log line while the bar is up")
    drawn = err.getvalue()
    assert "\r" in drawn and "[biased] epoch 2/3:" in drawn
    assert " 50%|" in drawn and "500/1000" in drawn and "img/s" in drawn and "<" in drawn  # [elapsed<ETA, rate]
    assert out.getvalue() == "a log line while the bar is up\n"


def test_quiet_prints_nothing_but_the_final_line():
    clock, err, out = FakeClock(), Terminal(), io.StringIO()
    reporter = Reporter("quiet", stream=err, out=out, clock=clock)
    reporter.log("training ...")
    reporter.notice("notice: converted to RGB")
    run_task(reporter, clock)
    with reporter.tracker("[data] decoding", "img") as decoding:
        decoding(500, 1000)
        decoding(1000, 1000)
    assert err.getvalue() == "" and out.getvalue() == ""
    reporter.final("done in 3 s")
    reporter.summary({"ignored": True})  # not --json: no document
    assert out.getvalue() == "done in 3 s\n" and err.getvalue() == ""


def test_json_mode_keeps_stdout_for_one_strict_json_document():
    err, out = io.StringIO(), io.StringIO()
    reporter = Reporter("auto", json=True, stream=err, out=out)
    reporter.log("a log line")
    reporter.final("done in 3 s")
    reporter.summary({"accuracy": 0.5, "energy": math.nan, "ci": [math.inf, 1.0]})
    assert json.loads(out.getvalue()) == {"accuracy": 0.5, "energy": None, "ci": [None, 1.0]}
    assert err.getvalue() == "a log line\ndone in 3 s\n"


def test_a_plain_log_callable_still_works_and_shows_no_progress():
    lines = []
    reporter = as_reporter(lines.append)
    reporter("a line")
    assert type(reporter.task("x", 10)) is Task
    reporter.final("the end")
    assert lines == ["a line", "the end"]


def test_tracker_starts_a_task_per_stage_and_closes_it_at_the_total():
    clock, err = FakeClock(), io.StringIO()
    reporter = Reporter("plain", stream=err, out=io.StringIO(), clock=clock)
    progress = reporter.tracker("[biased]", "img")
    for epoch in (1, 2):
        for done in range(0, 1001, 100):
            progress(done, 1000, f"epoch {epoch}/2")
            clock.now += 40.0
    lines = err.getvalue().splitlines()
    assert [line for line in lines if "(100%)" in line] == [
        "[biased] epoch 1/2: 1000/1000 img (100%), 2.5 img/s, done in 400 s",
        "[biased] epoch 2/2: 1000/1000 img (100%), 2.5 img/s, done in 400 s"]
    assert len(lines) == 2 * 10
    assert progress.task is None


def test_training_reports_each_epochs_images_through_a_plain_callback():
    calls = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    images, labels = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.arange(40) % 2
    train_model(model, images, labels, Config(epochs=2, batch_size=16, lr=0.01), torch.device("cpu"), None,
                TrainHooks(log=lambda line: None, progress=lambda *args: calls.append(args)))
    assert calls == [(1, 0, 40), (1, 16, 40), (1, 32, 40), (1, 40, 40), (2, 0, 40), (2, 16, 40), (2, 32, 40), (2, 40, 40)]


def test_decoding_an_image_tree_reports_progress(tmp_path):
    for split in ("train", "test"):
        for i, name in enumerate(CIFAR10_CLASSES):
            (tmp_path / split / name).mkdir(parents=True)
            write_png(torch.full((3, 32, 32), i, dtype=torch.uint8), str(tmp_path / split / name / "0.png"))
    calls = []
    load_cifar10(tmp_path, cache_dir=tmp_path / "cache", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 20), (20, 20)]
    calls.clear()
    load_cifar10(tmp_path, cache_dir=tmp_path / "cache", progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # from the cache: nothing to decode


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "gradcam_repro", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run with --json (trains both models); its folder is reused by the --quiet test."""
    out = tmp_path_factory.mktemp("progress") / "run"
    return out, cli(*TINY_RUN, "--out", str(out), "--json")


@pytest.mark.slow
def test_json_run_prints_one_document_with_metrics_numbers(tiny_run):
    out, result = tiny_run
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON document
    metrics = json.loads((out / "metrics.json").read_text())
    layer = metrics["cam_layer"]
    assert set(summary["models"]) == {"baseline", "biased"}
    for name, m in metrics["models"].items():
        s = summary["models"][name]
        expected = {"clean_test_acc": m["clean_test_acc"], "target_recall_clean": m["target_recall_clean"],
                    "target_recall_patched": m["target_recall_patched"], "flip_to_target": m["flip_to_target"]["patch"],
                    "energy_in_box": m["cam"][layer]["patched_target"]["energy"]}
        for key, ci in expected.items():
            assert {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in ci.items()} == s[key], key
    assert summary["uniform_energy_in_box"] == metrics["uniform"]["energy_in_box"]
    assert summary["run_dir"] == str(out) and summary["report_md"] == str(out / "REPORT.md")
    assert summary["report_html"] == str(out / "REPORT.html")
    assert summary["seconds"]["end_to_end"] == metrics["seconds"]["end_to_end"] > 0
    # Log lines and the final line went to stderr instead.
    assert "[biased] training experiment" in result.stderr and "done in" in result.stderr


@pytest.mark.slow
def test_quiet_run_prints_only_the_final_line(tiny_run):
    out, _ = tiny_run
    result = cli(*TINY_RUN, "--out", str(out), "--quiet")  # reuses the trained models: measuring only
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    metrics = RunMetrics.from_dict(json.loads((out / "metrics.json").read_text()))
    assert lines[0] == run_final_line(metrics, out, float(lines[0].split()[2]))
    assert lines[0].startswith("done in ") and f"gradcam-repro view {out} ({out / 'REPORT.html'})" in lines[0]
    assert "flip-to-hbar" in lines[0] and "clean acc" in lines[0] and "energy in patch at layer4.1.conv2" in lines[0]


def _headline_metrics(biased_energy: Interval, layer: str = "layer4.1.conv2") -> RunMetrics:
    """A run's metrics holding only what the final line reads: accuracies, flips, energy at `layer`, verdicts."""
    def ci(mean: float) -> Interval:
        return Interval(mean, mean, mean, 100)

    def model(acc: float, flip: float, energy: Interval, relies: bool) -> ModelShortcut:
        cam = {layer: {PATCHED_TARGET: CamScores(energy, ci(0.5))}}
        return ModelShortcut(ci(acc), {}, ci(acc), ci(acc), ci(acc), {"patch": ci(flip)}, cam,
                             Verdict(relies, {layer: relies}, {layer: True}))

    models = {"baseline": model(0.616, 0.01, ci(0.02), False), "biased": model(0.57, 0.999, biased_energy, True)}
    shortcut = ShortcutResults(models, {"energy_in_box": 0.035}, {}, {})
    return RunMetrics({"bias_class": "frog", "cam": "gradcam"}, {}, {}, {}, "float32", [0, 0, 4, 4], layer, [layer], {},
                      shortcut, {}, {}, {})


def test_final_line_names_the_three_headline_numbers():
    assert run_final_line(_headline_metrics(Interval(0.412, 0.412, 0.412, 100)), "runs/quick", 806.2) == (
        "done in 806 s: biased model relies on the patch (flip-to-frog 99.9%), clean acc 61.6% / 57.0% "
        "(baseline / biased), Grad-CAM energy in patch at layer4.1.conv2 0.412 vs uniform 0.035; "
        "view: gradcam-repro view runs/quick (runs/quick/REPORT.html)")
    metrics = _headline_metrics(Interval(math.nan, math.nan, math.nan, 0))
    assert "energy in patch at layer4.1.conv2 not measurable (no patched frog image was called frog)" in run_final_line(
        metrics, "runs/my run", 1.0)
    assert "gradcam-repro view 'runs/my run'" in run_final_line(metrics, "runs/my run", 1.0)


def test_plain_task_line_format_on_its_own():
    clock, lines = FakeClock(), []
    task = PlainTask("[data] decoding cifar10", 60000, "img", lines.append, clock)
    clock.now = 36.0
    task.update(30000)
    assert lines == ["[data] decoding cifar10: 30000/60000 img (50%), 833 img/s, ETA 36 s"]


def test_json_explain_lists_the_written_files_and_each_models_top3(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    image = tmp_path / "square.png"
    write_png(torch.zeros((3, 40, 40), dtype=torch.uint8), str(image))  # 40x40: resized, with a notice
    result = cli("explain", str(run_dir), str(image), "--out", str(tmp_path / "out"), "--json")
    summary = json.loads(result.stdout)
    assert summary["files"] == [str(tmp_path / "out" / "square_gradcam.png")]
    assert (tmp_path / "out" / "square_gradcam.png").is_file()
    (record,) = summary["images"]
    assert record["image"] == str(image) and set(record["top3"]) == {"baseline", "biased"}
    for top3 in record["top3"].values():
        assert len(top3) == 3 and all(isinstance(c, str) and 0 <= p <= 1 for c, p in top3)
    assert "notice:" in result.stderr and "wrote 1 file(s)" in result.stderr


def test_json_errors_stay_one_line_on_stderr_and_leave_stdout_empty(tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(tmp_path), "--epochs", "0", "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == "gradcam-repro: error: --epochs must be >= 1, got 0\n"
