"""Training one experiment spec into its folder, resuming it, or reusing it when it is already finished.

Layout of `<root>/experiments/<key>/`:
    model.pt      plain state_dict of the CIFAR ResNet-18
    history.json  one record per epoch (history.csv: the same as a table)
    spec.json     the spec, the full config, data, environment and timings; written last, so its
                  presence marks the experiment finished
    checkpoint.pt per-epoch training state while it runs (removed when it finishes)
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradcam_repro import store
from gradcam_repro.config import Config
from gradcam_repro.data.artefact import Artefact, decorrelate
from gradcam_repro.data.bias import bias_dataset
from gradcam_repro.data.images import ImageData
from gradcam_repro.errors import UserError
from gradcam_repro.measure.predict import accuracy, predict_logits
from gradcam_repro.model.resnet import load_model, resnet18_cifar, save_model
from gradcam_repro.model.train import TrainHooks, TrainSettings, train_model
from gradcam_repro.pipeline.progress import epoch_progress
from gradcam_repro.pipeline.spec import ExperimentSpec
from gradcam_repro.runtime import Runtime, seed_everything


@dataclass
class TrainingSet:
    """What an experiment trains and evaluates on: the data, its training rows and per-epoch test rows."""

    config: Config
    data: ImageData
    runtime: Runtime
    train_index: torch.Tensor
    eval_index: torch.Tensor


@dataclass
class Experiment:
    """A finished experiment: its spec, trained model (eval mode), history and the record in spec.json."""

    spec: ExperimentSpec
    model: nn.Module
    history: list[dict]
    record: dict


def experiment_ids(experiments: dict[str, Experiment]) -> dict[str, dict]:
    """{name: {"key", "model_sha256"}}: which trained models a result was measured on (its staleness check)."""
    return {name: {"key": e.spec.key, "model_sha256": e.record.get("model_sha256")} for name, e in experiments.items()}


def read_finished(folder: Path) -> dict | None:
    """The spec.json of the finished experiment in `folder` (all its files there and readable), else None."""
    if not all((folder / f).is_file() for f in ("model.pt", "history.json", "spec.json")):
        return None
    try:
        return store.read_json(folder / "spec.json")
    except UserError:
        return None


def finished_record(folder: Path, spec: ExperimentSpec) -> dict | None:
    """The spec.json of a finished experiment of exactly `spec` in `folder`, else None."""
    record = read_finished(folder)
    return record if record is not None and record.get("key") == spec.key else None


def load_experiment(folder: Path, num_classes: int, runtime: Runtime) -> Experiment:
    """A finished experiment from its folder (one-line `UserError` naming the file if anything is missing)."""
    fix = "fix: rerun `gradcam-repro run` with the same flags; it retrains only what is missing"
    record = store.read_json(folder / "spec.json", fix=fix)
    model = load_model(folder / "model.pt", num_classes, runtime.device)
    history = store.read_json(folder / "history.json", fix=fix)
    return Experiment(ExperimentSpec.from_dict(record["spec"]), model, history, record)


def _resume_state(path: Path, spec: ExperimentSpec, log) -> dict | None:
    """The per-epoch checkpoint at `path` if it belongs to `spec`."""
    if not path.is_file():
        return None
    try:
        state = store.torch_load(path)
        if state.get("spec_key") == spec.key:
            return state
    except (UserError, AttributeError):
        pass
    log(f"ignoring {path}: it belongs to another experiment or is unreadable")
    return None


def _history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def training_images(spec: ExperimentSpec, ts: TrainingSet) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The (N, 3, H, W) uint8 training images with the spec's bias planted (and, for an `augment` repair, the
    artefact decorrelated from the class), labels, and what was planted."""
    images, labels = ts.data.train_images[ts.train_index], ts.data.train_labels[ts.train_index]
    planted = {}
    if spec.bias is not None:
        target = ts.data.class_index(spec.bias.class_name)
        images, patched = bias_dataset(images, labels, target, spec.bias.fraction, spec.seed, **spec.bias.patch)
        planted = {"class": spec.bias.class_name, "class_index": target, "patched_train_images": int(patched.sum())}
    if spec.repair is not None and spec.repair.strategy == "augment":
        share = dict(spec.repair.params)["share"]
        images, pasted = decorrelate(images, Artefact.from_dict(spec.repair.artefact), share, spec.seed)
        planted["artefact_pasted_train_images"] = int(pasted.sum())
    return images, labels, planted


def train_experiment(spec: ExperimentSpec, ts: TrainingSet, root: Path, name: str, log=print,
                     force: bool = False) -> Experiment:
    """Train `spec` into `spec.folder(root)`, or reuse the finished experiment there (unless `force`).

    An interrupted experiment resumes from its last per-epoch checkpoint.
    """
    folder = spec.folder(root)
    record = None if force else finished_record(folder, spec)
    if record is not None:
        log(f"[{name}] reusing the finished experiment {spec.key} in {folder} (same spec; --force retrains)")
        return load_experiment(folder, len(ts.data.classes), ts.runtime)
    images, labels, bias = training_images(spec, ts)
    eval_x, eval_y = ts.data.test_images[ts.eval_index], ts.data.test_labels[ts.eval_index]
    checkpoint = folder / "checkpoint.pt"
    hooks = TrainHooks(
        evaluate=lambda model: accuracy(predict_logits(model, eval_x, ts.runtime), eval_y),
        log=lambda line: log(f"[{name}] {line}"),
        progress=epoch_progress(log, f"[{name}]", ts.config.epochs),
        on_epoch_end=lambda state: store.torch_save(checkpoint, {**state, "spec_key": spec.key}))
    log(f"[{name}] training experiment {spec.key} on {len(labels)} images for {ts.config.epochs} epoch(s), "
        f"device {ts.runtime.device}, precision {'bf16' if ts.runtime.amp_dtype else 'fp32'}")
    seed_everything(spec.seed)  # every experiment of a seed starts from the same initial weights
    model = resnet18_cifar(len(ts.data.classes))
    start = time.perf_counter()
    history = train_model(model, images, labels, TrainSettings.of(ts.config), ts.runtime.device, ts.runtime.amp_dtype, hooks,
                          resume=None if force else _resume_state(checkpoint, spec, log))
    record = experiment_record(spec, ts, name, {"bias": bias, "train_seconds": time.perf_counter() - start})
    save_experiment(folder, model, history, record)
    checkpoint.unlink(missing_ok=True)
    return Experiment(spec, model.eval(), history, record)


def save_experiment(folder: Path, model: nn.Module, history: list[dict], record: dict) -> None:
    """Write model.pt, history.json (and history.csv when there are epochs) and spec.json, which goes last and
    marks the experiment finished and reusable; adds the model file's sha256 to `record`."""
    save_model(model, folder / "model.pt")
    record["model_sha256"] = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    store.write_json(folder / "history.json", history)
    if history:
        store.write_text(folder / "history.csv", _history_csv(history))
    store.write_json(folder / "spec.json", record)


def experiment_record(spec: ExperimentSpec, ts: TrainingSet, name: str, extra: dict) -> dict:
    """What spec.json holds: the spec and its key, the full config, the data, the environment, `extra`."""
    d = ts.data
    return {
        "key": spec.key,
        "name": name,
        "spec": spec.to_dict(),
        "config": ts.config.to_dict(),
        "dataset": {"name": d.name, "fingerprint": d.fingerprint, "source": d.source, "classes": list(d.classes),
                    "n_train_used": len(ts.train_index), "n_test": len(d.test_labels)},
        "environment": store.environment_info(str(ts.runtime.device)),
        "precision": ts.runtime.precision,
        **extra,
    }
