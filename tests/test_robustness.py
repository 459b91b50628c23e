"""Losing nothing: interrupt and resume, reuse, locking, atomic files, explain's bad inputs, no leaks."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from gradcam_repro import store
from gradcam_repro.cli import main
from gradcam_repro.errors import UserError

# Evaluation-only settings (not in any experiment's key) that keep a run's measuring short.
SMALL_EVALUATION = ["--counterfactual-images", "40", "--cam-images", "20", "--figure-images", "2"]
TINY_RUN = ["run", "--preset", "smoke", "--dataset", "shapes", "--epochs", "3", "--train-subset", "128", "--batch-size", "32",
            "--test-subset", "100", *SMALL_EVALUATION]


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "gradcam_repro", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def comparable(run: Path) -> dict:
    """The results of a run without timings and paths."""
    metrics = json.loads((run / "metrics.json").read_text())
    histories = {name: [{k: v for k, v in h.items() if "seconds" not in k} for h in hist]
                 for name, hist in metrics["histories"].items()}
    return {"models": metrics["models"], "histories": histories}


@pytest.mark.slow
def test_sigterm_mid_training_then_rerun_gives_the_uninterrupted_result(tmp_path):
    full = cli(*TINY_RUN, "--out", str(tmp_path / "full"))
    assert full.wait(timeout=600) == 0, full.stderr.read()

    part = tmp_path / "part"
    proc = cli(*TINY_RUN, "--out", str(part))
    deadline = time.monotonic() + 300
    checkpoint = None
    while checkpoint is None and proc.poll() is None and time.monotonic() < deadline:
        checkpoint = next(part.glob("experiments/*/checkpoint.pt"), None)
        time.sleep(0.02)
    assert checkpoint is not None, "no per-epoch checkpoint appeared"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert "rerun the same command to resume" in proc.stderr.read()
    assert not list(part.glob("experiments/*/model.pt"))  # interrupted before the end of training
    assert not list(part.rglob("*.tmp")) and not (part / ".lock").exists()

    resumed = cli(*TINY_RUN, "--out", str(part))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "[baseline] resuming after epoch" in out
    assert not checkpoint.exists()  # removed once the experiment finished
    # The training time counts the epochs trained before the interruption too.
    record = json.loads((checkpoint.parent / "spec.json").read_text())
    history = json.loads((checkpoint.parent / "history.json").read_text())
    assert record["resumed_after_epoch"] >= 1 and record["train_seconds"] >= sum(h["seconds"] for h in history)
    assert comparable(part) == comparable(tmp_path / "full")


@pytest.mark.slow
def test_finished_experiment_is_reused_unless_forced(shapes_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shapes_run, copy)
    baseline = copy / "experiments" / json.loads((copy / "run.json").read_text())["experiments"]["baseline"]
    model_bytes = (baseline / "model.pt").read_bytes()
    smoke = ["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(copy), *SMALL_EVALUATION]
    assert main(smoke) == 0
    log = capsys.readouterr().out
    assert "[baseline] reusing the finished experiment" in log and "[biased] reusing" in log and "epoch 1/1" not in log
    assert (baseline / "model.pt").read_bytes() == model_bytes
    # A different training config is not reused.
    assert main([*smoke, "--lr", "0.02"]) == 0
    assert "[baseline] epoch 1/1" in capsys.readouterr().out
    # Evaluation-only settings and a different patch keep the baseline: its spec has no patch in it.
    assert main([*smoke, "--lr", "0.02", "--patch-color", "red", "--cam", "layercam", "--cam-images", "10"]) == 0
    log = capsys.readouterr().out
    assert "[baseline] reusing the finished experiment" in log and "[biased] epoch 1/1" in log


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_holds_it(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom gradcam_repro import store\n"
                               "with store.run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)",
                               str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "run" / "summary.md").write_text("first run's results")
        code = main(["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and f"another gradcam-repro process (pid {holder.pid}) is writing to" in err
        assert err.count("\n") == 1 and (tmp_path / "run" / "summary.md").read_text() == "first run's results"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(str(dead.pid))
    with store.run_lock(tmp_path) as lock:
        assert lock.read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_an_interrupted_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("previous complete file")
    with pytest.raises(KeyboardInterrupt):
        with store.atomic_path(target) as tmp:
            tmp.write_text("half of a new fi")
            raise KeyboardInterrupt
    assert target.read_text() == "previous complete file"
    assert list(tmp_path.iterdir()) == [target]


# ----------------------------------------------------------------------------- explain


def png_claiming_size(path: Path, width: int, height: int) -> None:
    """A small PNG file whose header declares a width x height canvas (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.slow
def test_explain_writes_overlays_and_top3_for_any_size_image(shapes_run, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (120, 80), (200, 30, 30)).save(tmp_path / "red.jpg")
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "black.png"))
    out = tmp_path / "explained"
    assert main(["explain", str(shapes_run), str(tmp_path / "red.jpg"), str(tmp_path / "black.png"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["black_gradcam.png", "red_gradcam.png"]
    assert "notice:" in captured.err and "resized from 120x80 to 32x32" in captured.err
    assert captured.out.count(": baseline: ") == 2 and captured.out.count(": biased: ") == 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_explain_converts_grayscale_and_rgba_with_a_notice(shapes_run, tmp_path, capsys, mode):
    from PIL import Image

    Image.new(mode, (32, 32)).save(tmp_path / "img.png")
    biased = shapes_run / "experiments" / json.loads((shapes_run / "run.json").read_text())["experiments"]["biased"]
    assert main(["explain", str(biased), str(tmp_path / "img.png"), "--out", str(tmp_path / "o")]) == 0
    assert f"{mode} image converted to RGB" in capsys.readouterr().err
    assert (tmp_path / "o" / "img_gradcam.png").is_file()


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "folder", "is a folder, not an image; fix: pass image files"),
        (lambda d: d / "notes.txt", "not an image file: .*notes.txt; fix: pass PNG or JPEG images"),
        (lambda d: d / "bomb.png", r"bomb.png is 20000x20000 = 400,000,000 pixels, above the limit of 40,000,000"),
        (lambda d: d / "missing.png", "no such image file"),
    ],
    ids=["directory", "text-file", "decompression-bomb", "missing"],
)
def test_explain_bad_images_exit_2_and_write_nothing(tmp_path, capsys, make, expected):
    import re

    from gradcam_repro.model.resnet import resnet18_cifar, save_model

    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    png_claiming_size(tmp_path / "bomb.png", 20000, 20000)
    save_model(resnet18_cifar(), tmp_path / "model.pt")
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "model.pt"), str(make(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and re.search(expected, err) and err.count("\n") == 1
    assert not out.exists()


def test_explain_refuses_a_checkpoint_of_another_architecture(tmp_path, capsys):
    from torchvision.models import resnet18

    torch.save(resnet18(num_classes=10).state_dict(), tmp_path / "model.pt")
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(tmp_path / "a.png"))
    code = main(["explain", str(tmp_path / "model.pt"), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "does not match the CIFAR ResNet-18" in err and not (tmp_path / "out").exists()


def test_load_user_image_rejects_a_bomb_before_decoding(tmp_path):
    from gradcam_repro.pipeline.explain_files import load_user_image

    png_claiming_size(tmp_path / "bomb.png", 7000, 7000)
    with pytest.raises(UserError, match="above the limit"):
        load_user_image(tmp_path / "bomb.png")


# ----------------------------------------------------------------------------- leaks


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_thousand_gradcam_calls_leave_no_hooks_and_no_growing_memory():
    from torch import nn

    from gradcam_repro.explain.cam import GradCAM

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x = torch.randn(4, 3, 16, 16)
    cam = GradCAM(model, "2")
    for _ in range(10):
        cam(x)
    baseline = resident_bytes()
    for _ in range(990):
        cam(x)
    assert resident_bytes() <= 1.2 * baseline
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks
