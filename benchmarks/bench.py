"""`python -m benchmarks.bench` (`make bench`): the product's speed and memory against simple references, in one run.

Sections (each a table in BENCHMARKS.md; the raw numbers go to BENCHMARKS.json):
  1. training throughput: the product's training step (`model.train.make_batch` + `train_step`)
     against a per-sample DataLoader reference;
  2. Grad-CAM throughput: batched `explain.cam.GradCAM` against a per-image loop and pytorch-grad-cam;
  3. peak resident memory of a (partial) paper-preset epoch, in a child process;
  4. a finished paper run's wall times and accuracies (`--paper-run`);
  5. bf16 against fp32 clean accuracy of two finished runs (`--accuracy-runs`, or `--accuracy-check`).
Sections 1 and 2 run on the CPU and, when there is one, on the GPU.

Every throughput is the median of `repeats` steady-state measurements (warm-up
first) with its min-max spread; ratios are of medians. The references are
written here, in the style they stand for, so that the comparison is explicit.
This module lives outside the `gradcam_repro` package: the product never imports
it, nor pytorch-grad-cam (a test extra) that it compares against.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from gradcam_repro import store
from gradcam_repro.config import SEED_LAYER, Config, preset_config
from gradcam_repro.data.cifar10 import load_cifar10, resolve_data_root
from gradcam_repro.errors import UserError, report_error
from gradcam_repro.explain.cam import get_layer
from gradcam_repro.explain.registry import explain_images
from gradcam_repro.measure.predict import accuracy, predict_logits
from gradcam_repro.model.resnet import CIFAR10_MEAN, CIFAR10_STD, normalize, resnet18_cifar
from gradcam_repro.model.train import TrainSettings, make_batch, plan_epoch, prepare_training, train_step
from gradcam_repro.pipeline.spec import TRAINING_FIELDS
from gradcam_repro.runtime import Runtime, autocast_dtype, choose_device

# The memory check's child runs `python -m benchmarks.bench` from here, whatever the caller's cwd.
REPO_ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m benchmarks.bench"

# Targets, as ratios of medians (or absolute limits).
TRAIN_TARGET_X = 2.5  # product / faster naive reference
CAM_PER_IMAGE_TARGET_X = 10.0  # product / one forward+backward per image
CAM_PYTORCH_GRAD_CAM_TARGET_X = 1.2  # product / pytorch-grad-cam
RSS_TARGET_MB = 4096.0
PAPER_END_TO_END_TARGET_MIN = 75.0
ACCURACY_DIFF_TARGET_POINTS = 1.5
# 2 is the PyTorch CIFAR-10 tutorial's default; 0 can win on a 2-core machine, so both run.
NAIVE_WORKERS = (0, 2)
# Config fields two runs may differ in and still isolate the effect of precision.
PRECISION_ONLY_IGNORED = frozenset({"precision", "out", "preset"})

Timer = Callable[[], float]  # one timed measurement -> items per second


@dataclass
class BenchOptions:
    """All knobs of one `python -m benchmarks.bench`; each maps onto the flag of the same name."""

    data_root: str | None = None  # None: synthetic random uint8 images
    device: str = "auto"  # auto: the CPU, plus the GPU when there is one
    repeats: int = 3
    warmup_steps: int = 3
    train_steps: int = 10
    batch_size: int = 128
    cam_batch: int = 256
    rss_steps: int = 20
    rss_images: int = 50_000  # synthetic training images for the memory check (small only in tests)
    no_rss: bool = False
    paper_run: str | None = None
    accuracy_runs: tuple[str, str] | None = None
    accuracy_check: str | None = None  # folder: train the quick baseline in bf16 and fp32 there, then compare
    compile: bool = False
    out: str = "BENCHMARKS.md"
    threads: int | None = None

    def validate(self) -> BenchOptions:
        """Raise `UserError` naming the first bad value and the fix; checks the run folders exist."""
        checks = [
            (self.repeats >= 1, f"--repeats must be >= 1, got {self.repeats}"),
            (self.warmup_steps >= 1,
             f"--warmup-steps must be >= 1 (the first steps carry one-off costs), got {self.warmup_steps}"),
            (self.train_steps >= 1, f"--train-steps must be >= 1, got {self.train_steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.cam_batch >= 1, f"--cam-batch must be >= 1, got {self.cam_batch}"),
            (self.rss_steps >= 1, f"--rss-steps must be >= 1, got {self.rss_steps}"),
            (self.rss_images >= 10, f"--rss-images must be >= 10, got {self.rss_images}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.accuracy_runs is not None and self.accuracy_check is not None:
            raise UserError("--accuracy-runs and --accuracy-check both set the bf16-vs-fp32 comparison; "
                            "fix: pass only one of them")
        if self.paper_run is not None:
            metrics_path(self.paper_run, "--paper-run")
        for run_dir in self.accuracy_runs or ():
            if finished_baseline(run_dir) is None:  # a finished baseline is enough here
                metrics_path(run_dir, "--accuracy-runs")
        return self


def metrics_path(run_dir: str | Path, flag: str) -> Path:
    """`run_dir/metrics.json`; `UserError` naming `flag` if the folder or the file is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{flag} folder {run_dir} does not exist; fix: pass the folder of a finished "
                        f"`gradcam-repro run` (e.g. runs/paper) or leave {flag} out")
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise UserError(f"{flag} folder {run_dir} has no metrics.json (unfinished, or not a run folder); "
                        f"fix: finish it by rerunning its `gradcam-repro run` command, or leave {flag} out")
    return path


def read_metrics(run_dir: str | Path, flag: str) -> dict:
    """A finished run's metrics.json; a one-line `UserError` naming `flag` if it is missing or unreadable."""
    return store.read_json(metrics_path(run_dir, flag),
                               fix=f"fix: rerun `gradcam-repro evaluate {run_dir}` to rewrite it, or leave {flag} out")


# --------------------------------------------------------------------------- data


def bench_images(data_root: str | None, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """`n` training images (n, 3, 32, 32) uint8, their (n,) int64 labels, and a line saying where they came from."""
    gen = torch.Generator().manual_seed(seed)
    if data_root is None:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        return images, labels, "synthetic random uint8 images (no --data-root given; speed does not depend on content)"
    data = load_cifar10(resolve_data_root(data_root))
    total = len(data.train_labels)
    pick = torch.randperm(total, generator=gen)[torch.arange(n) % total]  # repeats only if n > the training set
    return data.train_images[pick], data.train_labels[pick], f"CIFAR-10 training images from {data.source}"


# --------------------------------------------------------------------------- references


def naive_transform():
    """The per-sample augmentation of the PyTorch CIFAR-10 examples: PIL image -> (3, 32, 32) normalised float."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ])


class PerSampleCIFAR(Dataset):
    """CIFAR-10 as torchvision.datasets.CIFAR10 serves it: a PIL image per item, then `transform`.

    images: (N, 32, 32, 3) uint8 numpy (HWC, as in CIFAR-10's pickles); labels: (N,) ints.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def per_image_gradcam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM the seed's way: one forward and one backward pass per image, fp32.

    images: (N, 3, H, W) normalised float on the model's device; targets: (N,) class
    indices. Returns (N, H, W) maps in [0, 1], each divided by its maximum (the
    product's scaling). Puts `model` in eval mode and leaves weight gradients on it.
    """
    captured = {}

    def keep_activation(module, inputs, output):
        captured["activation"] = output
        output.register_hook(lambda grad: captured.__setitem__("gradient", grad))

    model.eval()
    handle = get_layer(model, layer).register_forward_hook(keep_activation)
    maps = []
    try:
        for x, target in zip(images, targets.tolist()):
            model.zero_grad()
            logits = model(x[None])
            logits[0, target].backward()
            activation, gradient = captured["activation"].detach()[0], captured["gradient"][0]
            weights = gradient.mean(dim=(1, 2), keepdim=True)
            cam = F.relu((weights * activation).sum(dim=0))
            cam = F.interpolate(cam[None, None], size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
            peak = cam.max()
            maps.append(cam / peak if peak > 0 else cam)
    finally:
        handle.remove()
    return torch.stack(maps)


# --------------------------------------------------------------------------- timers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ProductSteps:
    """The product's own training steps, driven one at a time.

    Set up as `train_model` sets up a run (`prepare_training`: model on the device
    in channels_last, optimiser, schedule, `torch.compile` when `config.compile`),
    then each step is the product's `make_batch` + `train_step`, the code its epoch
    loop runs. `images`: (N, 3, 32, 32) uint8 and `labels`: (N,) int64, moved to `device`.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: Config,
                 device: torch.device, amp_dtype: torch.dtype | None):
        self.images, self.labels = images.to(device), labels.to(device)
        self.config = TrainSettings.of(config)
        self.state = prepare_training(model, self.config, device, amp_dtype, len(self.labels))
        model.train()
        self.new_epoch()

    def new_epoch(self) -> None:
        """Draw a fresh epoch (order, crops, flips) from the product's shuffling generator; steps restart at 0."""
        self.plan = plan_epoch(self.config, 1, len(self.labels), self.state.generator)
        self.next_step = 0

    def run(self, steps: int) -> int:
        """Take the next `steps` steps of the current epoch; returns the images trained on."""
        if self.next_step + steps > self.plan.steps:
            raise ValueError(f"{steps} more steps do not fit in an epoch of {self.plan.steps}; call new_epoch() first")
        seen = 0
        for step in range(self.next_step, self.next_step + steps):
            x, y = make_batch(self.images, self.labels, self.plan, step)
            train_step(self.state, x, y)
            seen += len(y)
        self.next_step += steps
        return seen


def product_training_timer(images: torch.Tensor, labels: torch.Tensor, config: Config, device: torch.device,
                           amp_dtype: torch.dtype | None, warmup_steps: int, train_steps: int, seed: int = 0) -> Timer:
    """Images/s of the product's training steps, after `warmup_steps` discarded ones.

    Each measurement draws a new epoch (off the clock: once per epoch, not per
    step), then times `train_steps` steps. Needs len(labels) >= train_steps * batch size.
    """
    torch.manual_seed(seed)
    steps = ProductSteps(resnet18_cifar(), images, labels, config, device, amp_dtype)
    steps.run(warmup_steps)  # one-off costs: first allocations, oneDNN kernel choice, torch.compile

    def measure() -> float:
        steps.new_epoch()
        _sync(device)
        start = time.perf_counter()
        seen = steps.run(train_steps)
        _sync(device)
        return seen / (time.perf_counter() - start)

    return measure


def naive_training_timer(images: torch.Tensor, labels: torch.Tensor, batch_size: int, num_workers: int,
                         device: torch.device, warmup_steps: int, train_steps: int, seed: int = 0) -> Timer:
    """Images/s of the tutorial-style loop: PIL + torchvision transforms per sample, DataLoader, fp32, NCHW.

    Each measurement creates the DataLoader iterator (which starts the workers)
    and runs `warmup_steps` steps before the clock starts, so worker start-up is
    not counted: steady state, the reference's best case.
    """
    dataset = PerSampleCIFAR(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy(), naive_transform())
    torch.manual_seed(seed)
    model = resnet18_cifar().to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(batch) -> float:
        x, y = batch[0].to(device), batch[1].to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()  # the tutorial's running loss: one host sync per step

    def measure() -> float:
        batches = iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True))
        for _ in range(warmup_steps):
            step(next(batches))
        _sync(device)
        start = time.perf_counter()
        for _ in range(train_steps):
            step(next(batches))
        _sync(device)
        elapsed = time.perf_counter() - start
        del batches  # stops the workers before the next row runs
        return train_steps * batch_size / elapsed

    return measure


def _timed_calls(call: Callable[[], object], items: int, device: torch.device) -> Timer:
    """A timer of `call` (items per second), after one discarded warm-up call."""
    call()

    def measure() -> float:
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        return items / (time.perf_counter() - start)

    return measure


def pytorch_grad_cam_call(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str) -> Callable[[], object]:
    """One batched pytorch-grad-cam GradCAM call; its hooks are registered and released inside each call."""
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = get_layer(model, layer)
    wanted = [ClassifierOutputTarget(t) for t in targets.tolist()]

    def call():
        with ReferenceGradCAM(model=model, target_layers=[module]) as cam:
            maps = cam(input_tensor=x, targets=wanted)
        model.zero_grad(set_to_none=True)  # it accumulates weight gradients
        return maps

    return call


def measure_rows(builders: dict[str, Callable[[], Timer | str]], repeats: int, unit: str, log) -> dict[str, dict]:
    """Build each row's timer (warm-up included), then time the rows round-robin `repeats` times.

    A builder returns a `Timer`, or a string saying why the row is not measured.
    Interleaving makes drifting machine load hit every row alike.
    Returns {row: {"median", "min", "max", "runs"}} or {row: {"skipped": reason}}, in builder order.
    """
    timers, skipped = {}, {}
    for name, build in builders.items():
        log(f"  warming up: {name}")
        timer = build()
        if isinstance(timer, str):
            skipped[name] = timer
            log(f"  {name}: not measured ({timer})")
        else:
            timers[name] = timer
    runs = {name: [] for name in timers}
    for r in range(repeats):
        for name, timer in timers.items():
            runs[name].append(timer())
            log(f"  {name}: repeat {r + 1}/{repeats}: {runs[name][-1]:,.1f} {unit}")
    return {name: ({"skipped": skipped[name]} if name in skipped else spread(runs[name])) for name in builders}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def _median(rows: dict, name: str) -> float | None:
    return rows.get(name, {}).get("median")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def check(what: str, value: float | None, limit: float, at_least: bool, unit: str, digits: int = 2) -> dict:
    """A target line: {"what", "value", "target", "verdict"}; the verdict says by how much a miss misses."""
    if value is None or not math.isfinite(value):
        value, shown, verdict = None, "–", "not measured"
    else:
        shown = f"{value:,.{digits}f}{unit}"
        ok = value >= limit if at_least else value <= limit
        verdict = "PASS" if ok else f"MISS by {abs(value - limit):,.{digits}f}{unit}"
    return {"what": what, "value": value, "measured": shown, "target": f"{'>=' if at_least else '<='} {limit:g}{unit}",
            "verdict": verdict}


# --------------------------------------------------------------------------- sections 1 and 2


def bench_training(images: torch.Tensor, labels: torch.Tensor, device: torch.device, amp: torch.dtype | None,
                   options: BenchOptions, log) -> dict:
    """Section 1 on one device: images/s of the product (bf16, fp32) and the naive reference (0 and 2 workers)."""
    # The seed protocol's step: SGD lr 0.01 momentum 0.9, crop+flip, 32 px. The lr is constant,
    # so the schedule's length (one epoch of the pool) does not matter.
    base = Config(epochs=1, batch_size=options.batch_size, seed=0, device=str(device))
    steps = {"warmup_steps": options.warmup_steps, "train_steps": options.train_steps}

    def product(precision: str, dtype: torch.dtype | None, compiled: bool = False) -> Callable[[], Timer | str]:
        def build():
            config = replace(base, precision=precision, compile=compiled)
            try:
                return product_training_timer(images, labels, config, device, dtype, **steps)
            except Exception as exc:
                if not compiled:
                    raise
                return f"torch.compile failed: {_first_line(exc)}"  # e.g. no C++ compiler for inductor; keep the other rows

        return build

    no_bf16 = f"this {device.type} has no native bf16 (product default there is fp32)"
    builders = {"product bf16": product("bf16", amp) if amp else (lambda: no_bf16),
                "product fp32": product("fp32", None)}
    if options.compile:
        builders[f"product {'bf16' if amp else 'fp32'} + torch.compile"] = product("auto", amp, compiled=True)
    for workers in NAIVE_WORKERS:
        builders[f"naive, {workers} workers"] = (
            lambda w=workers: naive_training_timer(images, labels, options.batch_size, w, device, **steps))
    rows = measure_rows(builders, options.repeats, "img/s", log)
    naive = {name: row["median"] for name, row in rows.items() if name.startswith("naive") and "median" in row}
    reference = max(naive, key=naive.get)
    shipped = "product bf16" if amp else "product fp32"  # what `--precision auto` trains with here
    ratios = {name: _ratio(_median(rows, name), naive[reference]) for name in rows}
    targets = [check(f"training ({device.type}): {shipped} / {reference}", ratios[shipped], TRAIN_TARGET_X, True, "x")]
    if amp:
        targets.append(check(f"training ({device.type}): product fp32 / {reference} (pipeline alone, no bf16)",
                             ratios["product fp32"], TRAIN_TARGET_X, True, "x"))
    return {"rows": rows, "reference": reference, "ratios": ratios, "targets": targets}


def bench_gradcam(images: torch.Tensor, labels: torch.Tensor, device: torch.device, amp: torch.dtype | None,
                  options: BenchOptions, log, layer: str = SEED_LAYER) -> dict:
    """Section 2 on one device: maps/s of the product (bf16, fp32), a per-image loop and pytorch-grad-cam."""
    torch.manual_seed(0)
    model = resnet18_cifar().to(device).eval()  # untrained: speed does not depend on the weights
    n = len(images)
    x = normalize(images.to(device))
    targets = labels.to(device)

    def product(dtype):
        # The path `gradcam-repro run` takes: uint8 in, normalise on the device, one batched
        # forward+backward (`GradCAM`), maps back on the CPU.
        runtime = Runtime(device, dtype)
        return lambda: _timed_calls(lambda: explain_images("gradcam", model, images, labels, layer, runtime, batch_size=n),
                                    n, device)

    def per_image():
        def call():
            per_image_gradcam(model, x, targets, layer)
            model.zero_grad(set_to_none=True)

        return _timed_calls(call, n, device)

    def reference():
        try:
            call = pytorch_grad_cam_call(model, x, targets, layer)
        except ImportError:
            log("  note: pytorch-grad-cam is not installed, so its row is not measured; `pip install grad-cam` adds it")
            return "not installed (pip install grad-cam)"
        return _timed_calls(call, n, device)

    builders = {"product bf16": product(amp) if amp else (lambda: f"this {device.type} has no native bf16"),
                "product fp32": product(None),
                "per-image loop fp32": per_image,
                "pytorch-grad-cam fp32": reference}
    rows = measure_rows(builders, options.repeats, "maps/s", log)
    loop, pgc = _median(rows, "per-image loop fp32"), _median(rows, "pytorch-grad-cam fp32")
    ratios = {name: {"vs_per_image": _ratio(_median(rows, name), loop), "vs_pytorch_grad_cam": _ratio(_median(rows, name), pgc)}
              for name in rows}
    targets = []
    # `gradcam-repro run` computes its CAMs in the run's precision: the bf16 row where bf16 is native, else fp32.
    for name in ("product fp32", "product bf16"):
        targets.append(check(f"Grad-CAM ({device.type}): {name} / per-image loop", ratios[name]["vs_per_image"],
                             CAM_PER_IMAGE_TARGET_X, True, "x"))
        targets.append(check(f"Grad-CAM ({device.type}): {name} / pytorch-grad-cam", ratios[name]["vs_pytorch_grad_cam"],
                             CAM_PYTORCH_GRAD_CAM_TARGET_X, True, "x"))
    return {"rows": rows, "ratios": ratios, "targets": targets, "layer": layer, "batch": n,
            "pytorch_grad_cam_version": _package_version("grad-cam")}


# --------------------------------------------------------------------------- section 3: memory


def rss_data(data_root: str | None, synthetic_images: int, device: torch.device) -> dict:
    """The paper preset's config and data, as `gradcam-repro run --preset paper` loads them.

    Without `data_root`: `synthetic_images` random (N, 3, 32, 32) uint8 training images
    and a fifth as many test images. Returns {"config", "amp_dtype", "train_x", "train_y", "test_x", "source"}.
    """
    if data_root is not None:
        # Imported here: the pipeline pulls in matplotlib, which the synthetic check does not need to hold.
        from gradcam_repro.pipeline.prepare import prepare

        with tempfile.TemporaryDirectory() as out:  # prepare() checks --out is writable; nothing is written
            p = prepare(preset_config("paper", data_root=data_root, device=str(device), out=out),
                        log=lambda line: print(line, file=sys.stderr))
        index, data = p.training.train_index, p.data
        return {"config": p.config, "amp_dtype": p.runtime.amp_dtype, "train_x": data.train_images[index],
                "train_y": data.train_labels[index], "test_x": data.test_images, "source": f"CIFAR-10 from {data.source}"}
    config = preset_config("paper", device=str(device))
    gen = torch.Generator().manual_seed(0)
    return {"config": config, "amp_dtype": autocast_dtype(config.precision, device),
            "train_x": torch.randint(0, 256, (synthetic_images, 3, 32, 32), dtype=torch.uint8, generator=gen),
            "train_y": torch.randint(0, 10, (synthetic_images,), generator=gen),
            "test_x": torch.randint(0, 256, (synthetic_images // 5, 3, 32, 32), dtype=torch.uint8, generator=gen),
            "source": "synthetic random uint8 images"}


def rss_child(data_root: str | None, steps: int, synthetic_images: int, device_flag: str = "cpu") -> dict:
    """Load data as the paper preset does, take `steps` product training steps, predict the test set once.

    Returns the peak RSS (MiB) and what was done. `steps` is capped at one epoch. Meant to
    run in a fresh process, so that the peak belongs to this work alone.
    """
    device = choose_device(device_flag)
    start = time.perf_counter()
    d = rss_data(data_root, synthetic_images, device)
    model = resnet18_cifar()
    training = ProductSteps(model, d["train_x"], d["train_y"], d["config"], device, d["amp_dtype"])
    seen = training.run(min(steps, training.plan.steps))
    predict_logits(model, d["test_x"], Runtime(device, d["amp_dtype"]))
    return {"peak_rss_mb": store.peak_rss_mb(), "steps": steps, "images_seen": seen,
            "train_images": len(d["train_y"]), "test_images": len(d["test_x"]), "data": d["source"],
            "precision": "bf16" if d["amp_dtype"] else "fp32", "device": str(device),
            "seconds": time.perf_counter() - start}


def bench_rss(options: BenchOptions, device: torch.device, log) -> dict:
    """Section 3: run `rss_child` in a fresh interpreter; a failure is reported, not raised."""
    command = [sys.executable, "-m", "benchmarks.bench", "--rss-child", "--rss-steps", str(options.rss_steps),
               "--rss-images", str(options.rss_images), "--device", str(device)]
    if options.data_root is not None:
        command += ["--data-root", options.data_root]
    if options.threads is not None:
        command += ["--threads", str(options.threads)]
    log(f"  child process: {_plural(options.rss_steps, 'paper-preset training step')} and one test-set prediction")
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)  # `-m benchmarks` resolves from the root
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        log(f"  memory check failed: {reason}")
        return {"error": reason, "targets": [check("peak RSS, paper-preset training", None, RSS_TARGET_MB, False, " MB", 0)]}
    result = json.loads(lines[-1])
    result["targets"] = [check("peak RSS, paper-preset training", result["peak_rss_mb"], RSS_TARGET_MB, False, " MB", 0)]
    return result


# --------------------------------------------------------------------------- sections 4 and 5: finished runs


def paper_run_summary(run_dir: str | Path) -> dict:
    """Section 4: wall times, peak RSS and clean accuracies recorded in a finished run's metrics.json."""
    m = read_metrics(run_dir, "--paper-run")
    seconds = m.get("seconds", {})
    histories = m.get("histories", {})
    train_parts = [v for k, v in seconds.items() if k.startswith("train_") and v is not None and math.isfinite(v)]
    end_to_end = seconds.get("end_to_end")
    peak = m.get("peak_rss_mb")
    # Time inside the training steps alone (each epoch's `seconds` also holds its test-set check).
    step_s = [h.get("train_seconds") for history in histories.values() for h in history]
    n_train = m.get("dataset", {}).get("n_train_used")
    images_trained = n_train * sum(len(h) for h in histories.values()) if n_train else None
    steps_total = sum(step_s) if step_s and all(v is not None for v in step_s) else None
    return {
        "run": str(run_dir),
        "preset": m.get("config", {}).get("preset"),
        "epochs": {name: [{"epoch": h.get("epoch"), "seconds": h.get("seconds"), "train_seconds": h.get("train_seconds"),
                           "train_px": h.get("train_px"), "test_acc": h.get("test_acc")} for h in history]
                   for name, history in histories.items()},
        "seconds": seconds,
        "train_total_s": sum(train_parts) if train_parts else None,
        "images_trained": images_trained,
        "train_steps_s": steps_total,
        "train_img_per_s": images_trained / steps_total if images_trained and steps_total else None,
        "peak_rss_mb": peak,
        "clean_test_acc": {name: {k: model["clean_test_acc"].get(k) for k in ("mean", "low", "high")}
                           for name, model in m.get("models", {}).items() if "clean_test_acc" in model},
        "environment": m.get("environment"),
        "targets": [
            check("paper run: end-to-end wall time", end_to_end / 60 if end_to_end is not None else None,
                  PAPER_END_TO_END_TARGET_MIN, False, " min", 1),
            check("paper run: peak RSS", peak, RSS_TARGET_MB, False, " MB", 0),
        ],
    }


def finished_baseline(run_dir: str | Path) -> Path | None:
    """RUN/experiments/<key>/ of the baseline that RUN/run.json names, if it finished training; else None."""
    manifest = Path(run_dir) / "run.json"
    if not manifest.is_file():
        return None
    try:
        key = store.read_json(manifest)["experiments"]["baseline"]
    except (UserError, KeyError, TypeError):
        return None
    folder = Path(run_dir) / "experiments" / str(key)
    return folder if all((folder / f).is_file() for f in ("model.pt", "spec.json")) else None


def baseline_accuracy(run_dir: str | Path) -> dict:
    """Clean accuracy of a run's finished baseline experiment on the run's test set, in its own precision.

    The same measurement as `metrics.json`'s clean_test_acc, for a folder where only
    the baseline was trained (e.g. an fp32 reference of the quick preset).
    """
    from gradcam_repro.pipeline.run import load_run  # the pipeline (and matplotlib) only where a run is read

    p, experiments = load_run(run_dir, log=lambda line: None)
    baseline = experiments["baseline"]
    logits = predict_logits(baseline.model, p.data.test_images, p.runtime)
    return {"run": str(run_dir), "clean_test_acc": accuracy(logits, p.data.test_labels),
            "precision": baseline.record.get("precision"), "config": p.config.to_dict(),
            "train_seconds": baseline.record.get("train_seconds")}


def _training_fields(config: dict) -> dict:
    """The fields of a recorded config that shape a model's weights, as an experiment spec counts them
    (dataset, seed, `pipeline.spec.TRAINING_FIELDS`); defaults filled in, tuples as the lists JSON writes."""
    known = {k: v for k, v in config.items() if k in Config.__dataclass_fields__}
    full = Config.from_dict({**Config().to_dict(), **known}).to_dict()
    return {k: list(full[k]) if isinstance(full[k], tuple) else full[k] for k in ("dataset", "seed", *TRAINING_FIELDS)}


def train_accuracy_runs(folder: str | Path, data_root: str | None, device: str, log=print, preset: str = "quick",
                        **overrides) -> tuple[str, str]:
    """Train `preset`'s baseline in bf16 and in fp32 (same seed, same data) under `folder`.

    Returns the two run folders (bf16 first) for `accuracy_comparison`. Each holds a
    run.json naming only its baseline, so it reads like a run's folder; a finished
    baseline of the same spec is reused, as `gradcam-repro run` does.
    `overrides` are config fields (tests use a tiny preset and dataset).
    """
    from gradcam_repro.pipeline.experiment import train_experiment
    from gradcam_repro.pipeline.folders import RunFolder
    from gradcam_repro.pipeline.prepare import prepare

    runs = []
    for precision in ("bf16", "fp32"):
        out = Path(folder) / f"{preset}-{precision}"
        config = preset_config(preset, precision=precision, out=str(out), data_root=data_root, device=device, **overrides)
        p = prepare(config, log=lambda line: None)
        spec = p.specs["baseline"]
        run = RunFolder(out)
        with run.lock():
            run.write_manifest(p.config, {"baseline": spec.key})
            train_experiment(spec, p.training, run.experiment(spec.key), "baseline",
                             log=lambda line, tag=precision: log(f"  [{tag}] {line}"))
        runs.append(str(out))
    return runs[0], runs[1]


def accuracy_comparison(bf16_run: str | Path, fp32_run: str | Path) -> dict:
    """Section 5: baseline clean accuracy of a bf16 and an fp32 run, and whether their configs differ otherwise."""
    runs = {}
    for label, run_dir in (("bf16", bf16_run), ("fp32", fp32_run)):
        if not (Path(run_dir) / "metrics.json").is_file() and finished_baseline(run_dir) is not None:
            runs[label] = baseline_accuracy(run_dir)
            continue
        m = read_metrics(run_dir, "--accuracy-runs")
        try:
            acc = float(m["models"]["baseline"]["clean_test_acc"]["mean"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{run_dir}/metrics.json has no baseline clean accuracy; fix: pass folders written by "
                            "`gradcam-repro run` to --accuracy-runs") from None
        runs[label] = {"run": str(run_dir), "clean_test_acc": acc, "precision": m.get("precision"), "config": m.get("config", {}),
                       "train_seconds": m.get("seconds", {}).get("train_baseline")}
    # Only what shapes the trained weights counts; evaluation sample sizes and the like do not.
    # Runs made before a field existed lack it: compare them as if they had its default.
    a, b = (_training_fields(runs[k]["config"]) for k in ("bf16", "fp32"))
    other = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if k not in PRECISION_ONLY_IGNORED and a.get(k) != b.get(k)}
    diff_points = 100 * (runs["bf16"]["clean_test_acc"] - runs["fp32"]["clean_test_acc"])
    return {
        "runs": {k: {key: v for key, v in r.items() if key != "config"} for k, r in runs.items()},
        "diff_points": diff_points,
        "other_config_differences": other,
        "targets": [check("bf16 vs fp32: absolute clean accuracy difference", abs(diff_points), ACCURACY_DIFF_TARGET_POINTS,
                          False, " points")],
    }


# --------------------------------------------------------------------------- orchestration


def bench_devices(flag: str) -> list[torch.device]:
    """`auto`: the CPU, plus the GPU when there is one; otherwise just the device named."""
    if flag == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [choose_device(flag)]


def run_bench(options: BenchOptions, command: str, log=print) -> dict:
    """Measure every section, print each table as it is done, write BENCHMARKS.md and .json; returns the results."""
    options.validate()
    out = Path(options.out)
    store.check_writable(out.parent)
    # Finished runs are read first: a bad folder fails now, not after the measurements.
    paper = paper_run_summary(options.paper_run) if options.paper_run else None
    accuracy = accuracy_comparison(*options.accuracy_runs) if options.accuracy_runs else None
    if options.accuracy_check is not None and autocast_dtype("auto", choose_device(options.device)) is None:
        raise UserError("--accuracy-check compares bf16 with fp32, but this machine has no native bf16; "
                        "fix: leave --accuracy-check out")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    devices = bench_devices(options.device)
    pool = max(options.batch_size * (options.warmup_steps + options.train_steps), options.cam_batch)
    images, labels, data_note = bench_images(options.data_root, pool)
    gpu = next((d for d in devices if d.type == "cuda"), None)
    machine = store.environment_info(str(gpu or devices[0]))
    machine["device"] = ", ".join(str(d) for d in devices)
    results = {
        "command": command,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "data": data_note,
        "options": asdict(options),
        "devices": {},
        "rss": None,
        "paper_run": paper,
        "accuracy": accuracy,
        "gpu": (f"GPU: {machine.get('gpu', gpu)} (sections 1 and 2 also ran on it)" if gpu is not None
                else "No GPU in this run" + (" (one is available; --device excluded it)" if torch.cuda.is_available() else "")),
    }
    log(f"data: {data_note}")
    for device in devices:
        amp = autocast_dtype("auto", device)
        section = results["devices"][str(device)] = {"bf16": amp is not None}
        log(f"[{device}] 1. training throughput, batch {options.batch_size}, "
            f"{_plural(options.train_steps, 'step')} x {_plural(options.repeats, 'repeat')}")
        section["training"] = bench_training(images, labels, device, amp, options, log)
        log(training_markdown(section["training"], str(device)))
        log(f"[{device}] 2. Grad-CAM throughput, batch {options.cam_batch}")
        section["gradcam"] = bench_gradcam(images[:options.cam_batch], labels[:options.cam_batch], device, amp, options, log)
        log(gradcam_markdown(section["gradcam"], str(device)))
    if not options.no_rss:
        log("3. peak resident memory of paper-preset training")
        results["rss"] = bench_rss(options, devices[0], log)
        log(rss_markdown(results["rss"]))
    if options.accuracy_check is not None:
        log(f"5. bf16 vs fp32: training the quick preset's baseline twice under {options.accuracy_check}")
        accuracy = results["accuracy"] = accuracy_comparison(
            *train_accuracy_runs(options.accuracy_check, options.data_root, options.device, log))
    for text in (paper_markdown(paper) if paper else None, accuracy_markdown(accuracy) if accuracy else None):
        if text:
            log(text)
    store.write_text(out, benchmarks_markdown(results))
    store.write_json(out.with_suffix(".json"), results)
    log(f"wrote {out} and {out.with_suffix('.json')}")
    return results


# --------------------------------------------------------------------------- markdown


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _num(value, fmt: str = ",.1f") -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _seconds(value) -> str:
    return "not recorded" if value is None else f"{_num(value)} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _rate_cells(row: dict) -> list[str]:
    if "skipped" in row:
        return [f"not measured: {row['skipped']}", "–"]
    return [_num(row["median"]), f"{_num(row['min'])}–{_num(row['max'])}"]


def targets_markdown(targets: list[dict]) -> str:
    return _table(["target", "measured", "wanted", "verdict"],
                  [[t["what"], t["measured"], t["target"], f"**{t['verdict']}**"] for t in targets])


def training_markdown(section: dict, device: str) -> str:
    rows = [[name, *_rate_cells(row), _x(section["ratios"].get(name))] for name, row in section["rows"].items()]
    return (f"### Training throughput ({device})\n\n"
            + _table(["pipeline", "img/s (median)", "min–max", f"vs reference ({section['reference']})"], rows)
            + "\n\n" + targets_markdown(section["targets"]))


def gradcam_markdown(section: dict, device: str) -> str:
    rows = [[name, *_rate_cells(row), _x(section["ratios"][name]["vs_per_image"]),
             _x(section["ratios"][name]["vs_pytorch_grad_cam"])] for name, row in section["rows"].items()]
    version = section.get("pytorch_grad_cam_version")
    return (f"### Grad-CAM throughput ({device}, {section['batch']} images, {section['layer']}"
            f"{f', pytorch-grad-cam {version}' if version else ''})\n\n"
            + _table(["method", "maps/s (median)", "min–max", "vs per-image loop", "vs pytorch-grad-cam"], rows)
            + "\n\n" + targets_markdown(section["targets"]))


def rss_markdown(rss: dict) -> str:
    if "error" in rss:
        return f"Memory check failed: {rss['error']}\n\n" + targets_markdown(rss["targets"])
    rows = [["peak RSS", f"{rss['peak_rss_mb']:,.0f} MB"],
            ["data", f"{rss['data']} ({rss['train_images']:,} train / {rss['test_images']:,} test)"],
            ["work", f"{_plural(rss['steps'], 'training step')} "
                     f"({rss['images_seen']:,} images, {rss['precision']}, {rss['device']}) "
                     f"+ one prediction pass over the test set, {rss['seconds']:.0f} s"],
            ["note", "a partial epoch: data and model are resident from the start, so the peak comes in the first steps"]]
    return _table(["quantity", "value"], rows) + "\n\n" + targets_markdown(rss["targets"])


def paper_markdown(paper: dict) -> str:
    names = list(paper["epochs"])
    n_epochs = max((len(v) for v in paper["epochs"].values()), default=0)
    epoch_rows = []
    for i in range(n_epochs):
        cells = [str(i + 1)]
        for name in names:
            e = paper["epochs"][name][i] if i < len(paper["epochs"][name]) else {}
            cells.append(f"{_num(e.get('seconds'))} s ({e.get('train_px', '–')} px, test acc {_num(e.get('test_acc'), '.3f')})")
        epoch_rows.append(cells)
    s = paper["seconds"]
    totals = [[f"training {k.removeprefix('train_')}", _seconds(v)] for k, v in s.items() if k.startswith("train_")]
    totals += [["training, total", _seconds(paper["train_total_s"])],
               ["evaluation", _seconds(s.get("evaluate"))], ["figures", _seconds(s.get("figures"))],
               ["end to end", _seconds(s.get("end_to_end"))
                + (f" ({s['end_to_end'] / 60:.1f} min)" if s.get("end_to_end") else "")],
               ["peak RSS", "not recorded" if paper["peak_rss_mb"] is None else f"{paper['peak_rss_mb']:,.0f} MB"]]
    if paper.get("train_img_per_s"):
        totals.insert(len(names) + 1, ["training steps alone (without the per-epoch test check)",
                                       f"{_seconds(paper['train_steps_s'])} for {paper['images_trained']:,} images = "
                                       f"{paper['train_img_per_s']:.1f} img/s"])
    totals += [[f"clean test accuracy, {name}", f"{a['mean']:.4f} (95% CI {a['low']:.4f}–{a['high']:.4f})"]
               for name, a in paper["clean_test_acc"].items()]
    env = paper.get("environment") or {}
    return (f"Run `{paper['run']}` (preset {paper['preset']}), recorded on {env.get('processor', '?')} with "
            f"{env.get('cpu_count', '?')} cores, device {env.get('device', '?')}.\n\n"
            + _table(["epoch", *(f"{name}: wall s" for name in names)], epoch_rows) + "\n\n"
            + _table(["quantity", "value"], totals) + "\n\n" + targets_markdown(paper["targets"]))


def accuracy_markdown(acc: dict) -> str:
    rows = [[label, f"`{r['run']}`", str(r["precision"]), f"{100 * r['clean_test_acc']:.2f}%", _seconds(r.get("train_seconds"))]
            for label, r in acc["runs"].items()]
    other = acc["other_config_differences"]
    same = ("The two configs differ only in `precision` (ignoring `out`, `preset` and evaluation-only settings)." if not other else
            "**The configs also differ in** " + ", ".join(f"`{k}` ({a!r} vs {b!r})" for k, (a, b) in other.items())
            + ", so the difference is not precision alone.")
    recorded = (acc["runs"]["bf16"]["precision"], acc["runs"]["fp32"]["precision"])
    if recorded != ("bfloat16", "float32"):
        same += (f" **Warning:** the runs recorded precisions {recorded[0]} and {recorded[1]}, so this is not bf16 "
                 "against fp32 (expected: the bf16 run first, then the fp32 run).")
    return (_table(["run", "folder", "precision recorded", "baseline clean test acc", "baseline training time"], rows)
            + f"\n\nDifference bf16 − fp32: {acc['diff_points']:+.2f} points. {same}\n\n" + targets_markdown(acc["targets"]))


def benchmarks_markdown(results: dict) -> str:
    """BENCHMARKS.md from the results of `run_bench`."""
    o, m = results["options"], results["machine"]
    parts = [
        "# Benchmarks",
        f"Produced by `{results['command']}` on {results['date_utc']}.",
        _table(["machine", ""], [
            ["CPU", f"{m['processor']} ({m['cpu_count']} cores)"], ["torch threads", str(m["torch_threads"])],
            ["torch / torchvision", f"{m['torch']} / {m['torchvision']}"], ["python", m["python"]],
            ["devices benchmarked", m["device"]], ["GPU", results["gpu"]], ["data", results["data"]],
        ]),
        "## Targets", targets_markdown(all_targets(results)),
        "## 1. Training throughput", training_intro(o),
        *(training_markdown(section["training"], device) for device, section in results["devices"].items()),
        "## 2. Grad-CAM throughput", gradcam_intro(o),
        *(gradcam_markdown(section["gradcam"], device) for device, section in results["devices"].items()),
        "## 3. Peak resident memory, paper-preset training",
        *(["Not measured (--no-rss)."] if results["rss"] is None else [rss_intro(o), rss_markdown(results["rss"])]),
        "## 4. Paper run",
        paper_markdown(results["paper_run"]) if results["paper_run"] else "Not measured (no --paper-run RUN_DIR).",
        *filter(None, [paper_time_budget(results)]),
        "## 5. bf16 vs fp32 clean accuracy",
        *filter(None, [accuracy_intro(o) if results["accuracy"] else None]),
        accuracy_markdown(results["accuracy"]) if results["accuracy"] else
        "Not measured (no --accuracy-check DIR or --accuracy-runs BF16_RUN FP32_RUN).",
        "## GPU", results["gpu"] + ".",
    ]
    return "\n\n".join(parts) + "\n"


def training_intro(o: dict) -> str:
    """How section 1 measures, from the options `o` it ran with."""
    return (
        f"Steady-state images per second at 32 px, batch {o['batch_size']}, the same `resnet18_cifar`, SGD lr 0.01 "
        "momentum 0.9, cross-entropy, random crop (zero pad 4) + horizontal flip. **Product** rows: the product's own "
        "training step, `model.train.make_batch` (gather, crop/flip, normalise on the device) + `model.train.train_step` "
        "(forward, loss, backward, SGD and schedule step), set up by `model.train.prepare_training` as `train_model` sets "
        f"up a run; after {_plural(o['warmup_steps'], 'discarded warm-up step')}, each timed call draws a new epoch "
        "(order, crops, flips; off the clock, once per epoch) and then takes the timed steps. **Naive reference** "
        "(written in `benchmarks/bench.py`): a `Dataset` over an HWC uint8 numpy array that builds a PIL image per item, "
        "torchvision `RandomCrop(32, padding=4)`, `RandomHorizontalFlip`, `ToTensor`, `Normalize`, a "
        "`DataLoader(shuffle=True)`, fp32, NCHW, and `loss.item()` each step as in the PyTorch CIFAR-10 tutorial. Its "
        f"DataLoader iterator (and so its workers) is created and {_plural(o['warmup_steps'], 'warm-up step')} run "
        f"before the clock starts, so worker start-up is not counted. It runs with {' and '.join(map(str, NAIVE_WORKERS))} "
        "workers and the faster one is the reference (conservative). Every row: median and min–max over "
        f"{_plural(o['repeats'], 'repeat')} of {_plural(o['train_steps'], 'timed step')}, repeats interleaved across "
        "rows so that changing machine load hits all rows alike; ratios are of medians. The bf16 rows use autocast; "
        "fp32 rows show how much of the gain is the pipeline rather than the precision."
        + (" The torch.compile row trains through `torch.compile(model)` (`--compile`); compilation happens in its "
           "warm-up steps." if o["compile"] else "")
    )


def gradcam_intro(o: dict) -> str:
    """How section 2 measures."""
    return (
        f"Maps per second for one batch of {o['cam_batch']} images at `{SEED_LAYER}`, each explaining its label, "
        "on an untrained `resnet18_cifar` (speed does not depend on the weights). **Product**: "
        "`explain.registry.explain_images(\"gradcam\", ...)`, the path `gradcam-repro run` takes (batched "
        "`explain.cam.GradCAM`: one forward and one backward pass for the whole batch, uint8 images in, maps on the CPU "
        "out), under bf16 autocast or in fp32; `gradcam-repro run` computes its CAMs in the run's precision (bf16 "
        "autocast where the device has native bf16, as training and predictions; `--precision fp32` for fp32). "
        "**Per-image loop** (in `benchmarks/bench.py`, the seed's style): a forward hook keeps the activation and "
        "`register_hook` its gradient, backward of the target logit, channel weights = spatial mean of the gradient, "
        "ReLU, bilinear upsampling; one forward and backward per image, fp32; tests check its maps equal the "
        "product's. **pytorch-grad-cam**: `pytorch_grad_cam.GradCAM(model, target_layers=[layer])` with a "
        "`ClassifierOutputTarget` per image on the same normalised batch, fp32, hooks released after each call. One "
        f"discarded warm-up call per row, then {_plural(o['repeats'], 'timed call')}, interleaved across rows."
    )


def rss_intro(o: dict) -> str:
    """How section 3 measures."""
    return (
        f"A child process (`{PROG} --rss-child`) loads the data as `gradcam-repro run --preset paper` does (without "
        "--data-root: 50,000 + 10,000 synthetic CIFAR-shaped uint8 images), takes "
        f"{_plural(o['rss_steps'], 'product training step')} of the paper config, predicts the whole test set once and "
        "reports its peak resident set size (`getrusage`). This is a partial epoch: the dataset and the model are fully "
        "resident from the start, so the peak is reached in the first steps. A full run also holds the second model "
        "and the evaluation sets; section 4 shows a finished run's recorded peak when --paper-run is given."
    )


def accuracy_intro(o: dict) -> str | None:
    """What `--accuracy-check` trained; None when the runs were given (`--accuracy-runs`)."""
    if not o.get("accuracy_check"):
        return None
    quick = preset_config("quick")  # what train_accuracy_runs trains
    schedule = "one-cycle" if quick.lr_schedule == "onecycle" else quick.lr_schedule
    return (f"The quick preset's baseline (its class-balanced {quick.train_subset:,}-image subset, {quick.epochs} "
            f"epochs at {'/'.join(map(str, quick.train_resolutions))} px, {schedule} SGD) trained twice from the same "
            f"seed under `{o['accuracy_check']}`: once under bf16 autocast, once in fp32. Clean accuracy on all "
            "10,000 test images, each model in its own precision.")


def paper_time_budget(results: dict) -> str | None:
    """Where a paper run's minutes went, against section 1's throughput: how much of the miss is compute."""
    paper, cpu = results.get("paper_run"), results["devices"].get("cpu")
    if not paper or not paper.get("images_trained") or not cpu:
        return None
    env = paper.get("environment") or {}
    if env.get("device") != "cpu" or env.get("processor") != results["machine"].get("processor") \
            or env.get("cpu_count") != results["machine"].get("cpu_count"):
        return None  # a run made on another machine: this bench's throughput says nothing about its minutes
    rows = cpu["training"]["rows"]
    best = max((rows[n]["median"] for n in ("product bf16", "product fp32") if "median" in rows.get(n, {})), default=None)
    end_to_end = paper["seconds"].get("end_to_end")
    if not best or not end_to_end:
        return None
    floor_min = paper["images_trained"] / best / 60
    return (f"Time budget: the run trained on {paper['images_trained']:,} images. At the product's best steady-state "
            f"training throughput measured in section 1 on this machine ({best:.1f} img/s) the training steps alone "
            f"take {floor_min:.1f} min, against {end_to_end / 60:.1f} min measured end to end and a target of "
            f"{PAPER_END_TO_END_TARGET_MIN:.0f} min.")


def all_targets(results: dict) -> list[dict]:
    targets = []
    for section in results["devices"].values():
        targets += section["training"]["targets"] + section["gradcam"]["targets"]
    for key in ("rss", "paper_run", "accuracy"):
        if results[key] is not None:
            targets += results[key]["targets"]
    return targets


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def build_parser() -> argparse.ArgumentParser:
    """The flags of `python -m benchmarks.bench`; each maps onto the `BenchOptions` field of the same name."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Measure, in one run on this machine, training and Grad-CAM throughput of the product against a "
                    "naive DataLoader pipeline, a per-image Grad-CAM loop and pytorch-grad-cam, and the peak memory of "
                    "paper-preset training; print ratios and write BENCHMARKS.md and BENCHMARKS.json.")
    add = parser.add_argument
    add("--data-root", help="CIFAR-10 folder for the measured images and the memory check "
                            "(default: synthetic random uint8 images, stated in the output)")
    add("--device", help="auto (default: the CPU, plus CUDA when available), cpu, cuda or cuda:N")
    add("--repeats", type=int, help="timed repeats per row; medians and min-max are reported (default 3)")
    add("--warmup-steps", type=int, help="discarded training steps before timing (default 3)")
    add("--train-steps", type=int, help="timed training steps per repeat (default 10)")
    add("--batch-size", type=int, help="training batch size (default 128)")
    add("--cam-batch", type=int, help="images in the Grad-CAM batch (default 256)")
    add("--rss-steps", type=int, help="paper-preset training steps in the memory check (default 20)")
    add("--rss-images", type=int, help=argparse.SUPPRESS)  # synthetic training images of the memory check (tests)
    add("--no-rss", action="store_true", default=None, help="skip the memory check (section 3)")
    add("--paper-run", metavar="RUN_DIR", help="a finished `gradcam-repro run --preset paper` folder: tabulate its "
                                               "wall times, peak memory and accuracies")
    add("--accuracy-runs", nargs=2, metavar=("BF16_RUN", "FP32_RUN"),
        help="two finished run folders differing only in --precision: compare their clean accuracies")
    add("--accuracy-check", metavar="DIR",
        help="train the quick preset's baseline in bf16 and in fp32 (same seed) under DIR and compare "
             "their clean accuracies (about 15 min on a 2-core CPU; finished folders are reused)")
    add("--compile", action="store_true", default=None,
        help="add a 'product + torch.compile' training row (measured slower on a 2-core CPU; helps mainly on GPUs)")
    add("--out", help="where to write the report (default ./BENCHMARKS.md; the JSON goes beside it)")
    add("--threads", type=int, help="torch.set_num_threads for the measurements (default: leave as is)")
    add("--debug", action="store_true", help="show full tracebacks on errors")
    # Internal: section 3's child process (see `bench_rss`), run with the flags above that it reads.
    add("--rss-child", action="store_true", help=argparse.SUPPRESS)
    return parser


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """`BenchOptions` from parsed flags; a flag left out keeps the field's default."""
    names = {f.name for f in fields(BenchOptions)}
    options = BenchOptions(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    if options.accuracy_runs is not None:
        options.accuracy_runs = tuple(options.accuracy_runs)
    return options


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.bench [flags]`: 0 when the report is written, 2 (one line on stderr) on bad input."""
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    try:
        if args.rss_child:  # prints one JSON line for the parent to read
            if options.threads is not None:
                torch.set_num_threads(options.threads)
            print(json.dumps(rss_child(options.data_root, options.rss_steps, options.rss_images, args.device or "cpu")))
        else:
            run_bench(options, f"{PROG} " + shlex.join(sys.argv[1:] if argv is None else argv))
        return 0
    except UserError as exc:
        return report_error(exc, PROG, args.debug)


if __name__ == "__main__":
    sys.exit(main())
