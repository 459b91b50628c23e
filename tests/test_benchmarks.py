"""`python -m benchmarks.bench`: its references are what they claim to be, and its report holds what it promises.

Everything runs on tiny settings (a few images, one or two steps, one thread);
the numbers are not benchmarks, only the plumbing and the references are checked.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from PIL import Image
from torch import nn

from benchmarks import bench
from gradcam_repro.config import Config, preset_config
from gradcam_repro.explain.cam import GradCAM
from gradcam_repro.model.resnet import normalize, resnet18_cifar
from gradcam_repro.model.train import TrainHooks, random_crop_flip, train_model

TINY = ["--repeats", "1", "--warmup-steps", "1", "--train-steps", "1", "--batch-size", "8", "--cam-batch", "4",
        "--threads", "1"]


@pytest.fixture
def one_thread():
    """The bench sets torch's thread count; put it back for the tests that follow."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the references are fair


def test_naive_transform_draws_from_the_same_augmentations_as_the_product():
    image = random_images(1)[0]
    # Every crop offset (0..8 px each way) with and without flip, through the product's batched augmentation.
    offsets = torch.cartesian_prod(torch.arange(9), torch.arange(9)).repeat(2, 1)
    flips = torch.arange(162) >= 81
    candidates = normalize(random_crop_flip(image.expand(162, -1, -1, -1), offsets, flips))
    transform = bench.naive_transform()
    matched = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out = transform(Image.fromarray(image.permute(1, 2, 0).numpy()))
        distance = (candidates - out).abs().amax(dim=(1, 2, 3))
        assert distance.min() < 1e-5, f"seed {seed}: not one of the product's crops/flips"
        matched.add(int(distance.argmin()))
    assert len(matched) >= 3  # the draws really vary, so the match above is not the identity crop every time


def test_per_image_loop_is_the_same_grad_cam_as_the_product():
    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    images, targets = random_images(4, seed=1), torch.tensor([0, 3, 6, 9])
    ours = GradCAM(model, "layer4.1.conv2").per_layer(normalize(images), targets)["layer4.1.conv2"].maps
    theirs = bench.per_image_gradcam(model, normalize(images), targets, "layer4.1.conv2")
    assert (ours.amax(dim=(1, 2)) > 0).sum() >= 2  # non-zero maps, or the comparison proves little
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert not any(m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- the product rows time the product's steps


def counting_net() -> tuple[nn.Module, list[int]]:
    seen: list[int] = []
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    net.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    return net, seen


def test_product_steps_are_the_steps_of_train_model():
    cpu, config = torch.device("cpu"), Config(epochs=1, batch_size=8, lr=0.05)
    images, labels = random_images(20), torch.arange(20) % 10
    torch.manual_seed(0)
    expected, _ = counting_net()
    train_model(expected, images, labels, config, cpu, None, hooks=TrainHooks(log=lambda s: None, progress=False))
    torch.manual_seed(0)
    net, seen = counting_net()
    steps = bench.ProductSteps(net, images, labels, config, cpu, None)
    assert steps.run(2) == 16 and steps.run(1) == 4 and seen == [8, 8, 4]
    # The same epoch, step by step, leaves exactly the weights train_model leaves.
    for a, b in zip(expected.parameters(), net.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="call new_epoch"):
        steps.run(1)
    steps.new_epoch()
    assert steps.run(3) == 20 and len(seen) == 6


def test_compile_flag_trains_through_torch_compile(monkeypatch):
    calls = []

    def fake_compile(model):
        calls.append(model)
        return lambda x: model(x)  # a wrapper that shares the parameters, as torch.compile's does

    monkeypatch.setattr(torch, "compile", fake_compile)
    net, seen = counting_net()
    before = [p.detach().clone() for p in net.parameters()]
    train_model(net, random_images(16), torch.arange(16) % 10, Config(epochs=1, batch_size=8, compile=True),
                torch.device("cpu"), None, hooks=TrainHooks(log=lambda s: None, progress=False))
    assert calls == [net] and sum(seen) == 16
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    from gradcam_repro.cli import build_parser, config_from_args  # only this test needs the product's CLI

    assert config_from_args(build_parser().parse_args(["run", "--compile"])).compile is True
    assert config_from_args(build_parser().parse_args(["run"])).compile is False


# --------------------------------------------------------------------------- the report


def fake_run(folder, precision: str, acc: float, end_to_end_s: float, **config):
    """A run folder holding just the metrics.json fields the bench reads."""
    folder.mkdir(parents=True)
    history = [{"epoch": 1, "seconds": 600.0, "train_seconds": 590.0, "test_acc": acc, "train_px": 32}]
    metrics = {
        "config": {"preset": "paper", "out": str(folder), "precision": precision, "lr": 0.01, **config},
        "precision": "bfloat16" if precision == "bf16" else "float32",
        "seconds": {"train_baseline": 600.0, "train_biased": 610.0, "evaluate": 120.0, "figures": 5.0,
                    "end_to_end": end_to_end_s},
        "peak_rss_mb": 2500.0,
        "histories": {"baseline": history, "biased": history},
        "models": {name: {"clean_test_acc": {"mean": acc, "low": acc - 0.01, "high": acc + 0.01}}
                   for name in ("baseline", "biased")},
        "environment": {"processor": "test CPU", "cpu_count": 2, "device": "cpu"},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_bench_writes_tables_command_and_machine(tmp_path, one_thread, capsys):
    paper = fake_run(tmp_path / "paper", "bf16", 0.80, end_to_end_s=80 * 60)
    fp32 = fake_run(tmp_path / "fp32", "fp32", 0.79, end_to_end_s=60 * 60)
    out = tmp_path / "report" / "BENCHMARKS.md"
    argv = [*TINY, "--no-rss", "--out", str(out), "--paper-run", str(paper), "--accuracy-runs", str(paper), str(fp32)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    text = out.read_text()
    assert "| product fp32 |" in printed and "| per-image loop fp32 |" in printed  # tables printed as measured
    assert f"`python -m benchmarks.bench {' '.join(argv)}`" in text
    from gradcam_repro.store import environment_info

    assert environment_info()["processor"] in text and "torch / torchvision" in text
    for heading in ("## 1. Training throughput", "### Training throughput (cpu)", "### Grad-CAM throughput (cpu, 4 images",
                    "## 3. Peak resident memory", "Not measured (--no-rss)", "## 4. Paper run", "## 5. bf16 vs fp32"):
        assert heading in text, heading
    if not torch.cuda.is_available():
        assert "No GPU in this run" in text
    # Paper run: 80 min misses the 75 min target by 5; the accuracy runs differ by 1 point and only in precision.
    assert "paper run: end-to-end wall time | 80.0 min | <= 75 min | **MISS by 5.0 min**" in text
    assert "+1.00 points" in text and "differ only in `precision`" in text
    assert "bf16 vs fp32: absolute clean accuracy difference | 1.00 points | <= 1.5 points | **PASS**" in text

    results = json.loads(out.with_suffix(".json").read_text())
    cpu = results["devices"]["cpu"]
    training, cams = cpu["training"]["rows"], cpu["gradcam"]["rows"]
    assert {"product fp32", "naive, 0 workers", "naive, 2 workers"} <= set(training)
    assert {"product fp32", "per-image loop fp32", "pytorch-grad-cam fp32"} <= set(cams)
    measured = [row for row in [*training.values(), *cams.values()] if "skipped" not in row]
    assert len(measured) >= 6 and all(row["median"] > 0 and row["min"] <= row["median"] <= row["max"] for row in measured)
    reference = cpu["training"]["reference"]
    assert training[reference]["median"] == max(training[n]["median"] for n in ("naive, 0 workers", "naive, 2 workers"))
    expected = training["product fp32"]["median"] / training[reference]["median"]
    assert cpu["training"]["ratios"]["product fp32"] == pytest.approx(expected)


def test_accuracy_runs_that_differ_in_more_than_precision_are_flagged(tmp_path):
    a = fake_run(tmp_path / "a", "bf16", 0.70, 3600, lr=0.01)
    b = fake_run(tmp_path / "b", "fp32", 0.72, 3600, lr=0.1)
    result = bench.accuracy_comparison(a, b)
    assert result["diff_points"] == pytest.approx(-2.0)
    assert result["other_config_differences"] == {"lr": [0.01, 0.1]}
    assert result["targets"][0]["verdict"] == "MISS by 0.50 points"
    assert "not precision alone" in bench.accuracy_markdown(result)
    assert "Warning" in bench.accuracy_markdown(bench.accuracy_comparison(b, a))  # passed in the wrong order


def test_accuracy_runs_differing_only_in_evaluation_settings_count_as_precision_only(tmp_path):
    # Evaluation sample sizes do not touch training, and JSON gives lists where the config holds tuples.
    a = fake_run(tmp_path / "a", "bf16", 0.70, 3600, cam_images=500, train_resolutions=[16, 24, 32])
    b = fake_run(tmp_path / "b", "fp32", 0.71, 3600, cam_images=300, train_resolutions=(16, 24, 32))
    result = bench.accuracy_comparison(a, b)
    assert result["other_config_differences"] == {}
    assert "differ only in `precision`" in bench.accuracy_markdown(result)
    c = fake_run(tmp_path / "c", "fp32", 0.71, 3600, cam_images=300, train_resolutions=[16, 32])
    assert bench.accuracy_comparison(a, c)["other_config_differences"] == {"train_resolutions": [[16, 24, 32], [16, 32]]}


@pytest.mark.slow
def test_accuracy_check_trains_one_baseline_per_precision_from_the_same_seed(tmp_path, one_thread):
    torch.set_num_threads(1)
    lines = []
    if not bench.autocast_dtype("auto", torch.device("cpu")):
        # No bf16 on this CPU: the check must say so in one line rather than compare fp32 with itself.
        with pytest.raises(bench.UserError, match="--precision bf16 is not supported"):
            bench.train_accuracy_runs(tmp_path, None, "cpu", lines.append, preset="smoke", dataset="shapes")
        return
    runs = bench.train_accuracy_runs(tmp_path, None, "cpu", lines.append, preset="smoke", dataset="shapes")
    assert runs == (str(tmp_path / "smoke-bf16"), str(tmp_path / "smoke-fp32"))
    result = bench.accuracy_comparison(*runs)
    assert {k: r["precision"] for k, r in result["runs"].items()} == {"bf16": "bfloat16", "fp32": "float32"}
    assert result["other_config_differences"] == {}
    assert all(0.0 <= r["clean_test_acc"] <= 1.0 and r["train_seconds"] > 0 for r in result["runs"].values())
    assert result["diff_points"] == pytest.approx(100 * (result["runs"]["bf16"]["clean_test_acc"]
                                                         - result["runs"]["fp32"]["clean_test_acc"]))
    assert len(list((tmp_path / "smoke-bf16" / "experiments").iterdir())) == 1  # the baseline only
    # A second call reuses both finished baselines instead of training again.
    lines.clear()
    assert bench.train_accuracy_runs(tmp_path, None, "cpu", lines.append, preset="smoke", dataset="shapes") == runs
    assert sum("reusing the finished experiment" in line for line in lines) == 2


def test_time_budget_compares_a_paper_run_with_the_measured_throughput(tmp_path):
    from gradcam_repro.store import environment_info

    env = {**environment_info("cpu"), "device": "cpu"}
    paper = {"images_trained": 500_000, "seconds": {"end_to_end": 80 * 60.0}, "environment": env}
    results = {"paper_run": paper, "machine": env,
               "devices": {"cpu": {"training": {"rows": {"product bf16": {"median": 125.0}, "product fp32": {"median": 60.0}}}}}}
    text = bench.paper_time_budget(results)
    assert "(125.0 img/s)" in text and "take 66.7 min" in text and "80.0 min measured" in text
    other_machine = {**results, "paper_run": {**paper, "environment": {**env, "processor": "another CPU"}}}
    assert bench.paper_time_budget(other_machine) is None


@pytest.mark.parametrize("flags, expected", [
    (["--paper-run", "{tmp}/missing"], "--paper-run folder {tmp}/missing does not exist; fix:"),
    (["--accuracy-runs", "{tmp}", "{tmp}"], "--accuracy-runs folder {tmp} has no metrics.json"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--warmup-steps", "0"], "--warmup-steps must be >= 1"),
    (["--accuracy-check", "{tmp}/acc", "--accuracy-runs", "{tmp}", "{tmp}"], "pass only one of them"),
])
def test_bad_input_is_one_line_exit_2_before_measuring(flags, expected, tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    code = bench.main([*TINY, "--no-rss", "--out", str(out), *(f.format(tmp=tmp_path) for f in flags)])
    captured = capsys.readouterr()
    assert code == 2
    assert expected.format(tmp=tmp_path) in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == "" and not out.exists()  # nothing measured, nothing written


@pytest.mark.slow
def test_memory_check_runs_in_a_child_and_reports_peak_rss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the child finds `benchmarks` from the repository root, not the caller's folder
    n = 4_000  # 12 MiB of training images: a unit slip (KiB or bytes read as MiB) shows against it
    options = bench.BenchOptions(rss_images=n, rss_steps=1, threads=1)
    result = bench.bench_rss(options, torch.device("cpu"), log=lambda s: None)
    assert "error" not in result, result.get("error")
    batch = preset_config("paper").batch_size
    assert (result["train_images"], result["test_images"], result["images_seen"]) == (n, n // 5, batch)
    peak, data_mib = result["peak_rss_mb"], (n + n // 5) * 3 * 32 * 32 / 2**20
    physical_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    # The child held the images, so its peak exceeds them; no process peaks above the machine's memory.
    assert math.isfinite(peak) and data_mib < peak < physical_mib
    target = result["targets"][0]
    assert target == bench.check("peak RSS, paper-preset training", peak, bench.RSS_TARGET_MB, False, " MB", 0)
    assert target["verdict"] == ("PASS" if peak <= 4096 else f"MISS by {peak - 4096:,.0f} MB")


def test_baseline_accuracy_of_a_run_folder_equals_its_metrics(shapes_run):
    # The fallback for a folder where only the baseline was trained must be the same
    # measurement as the run's own clean_test_acc (same test subset, same precision).
    from benchmarks.bench import baseline_accuracy

    metrics = json.loads((shapes_run / "metrics.json").read_text())
    measured = baseline_accuracy(shapes_run)
    assert measured["clean_test_acc"] == pytest.approx(metrics["models"]["baseline"]["clean_test_acc"]["mean"], abs=1e-6)  # float32 vs float64 mean
    assert measured["precision"] == metrics["precision"]
