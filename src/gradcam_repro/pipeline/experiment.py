"""Training one experiment spec into its folder, resuming it, or reusing it when it is already finished.

The folder's files are `pipeline.folders.ExperimentFolder`'s: model.pt (a plain state_dict), history.json
(one record per epoch; history.csv the same as a table), spec.json (the spec, the full config, data,
environment and timings; written last, so its presence marks the experiment finished) and checkpoint.pt
(the per-epoch training state while it runs, removed when it finishes).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradcam_repro import store
from gradcam_repro.config import Config
from gradcam_repro.data.artefact import Artefact, decorrelate
from gradcam_repro.data.bias import bias_dataset, patch_artefact
from gradcam_repro.data.cifar10 import CIFAR10_CLASSES
from gradcam_repro.data.images import ImageData
from gradcam_repro.errors import UserError
from gradcam_repro.measure.predict import accuracy, predict_logits
from gradcam_repro.model.arch import TRAINABLE
from gradcam_repro.model.resnet import load_model, resnet18_cifar, save_model
from gradcam_repro.model.sources import ModelSource, contract_of
from gradcam_repro.model.train import TrainHooks, TrainSettings, train_model
from gradcam_repro.pipeline.folders import ExperimentFolder, model_files
from gradcam_repro.pipeline.progress import epoch_progress
from gradcam_repro.pipeline.spec import DEFAULT_ARCH, ExperimentSpec
from gradcam_repro.runtime import Runtime, seed_everything

RANDOM_WEIGHTS = "random"  # `explain random --arch NAME ...`: the architecture with random weights (a smoke test)


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


def architecture(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised `arch` (a name in `model.arch.TRAINABLE`) for `num_classes` classes, in train mode."""
    if arch == DEFAULT_ARCH:
        return resnet18_cifar(num_classes)
    if arch not in TRAINABLE:
        raise UserError(f"unknown --arch {arch!r} to train; fix: pass one of {', '.join(TRAINABLE)}")
    return ModelSource(arch, num_classes).build().train()


def load_trained(path: Path, num_classes: int, device, arch: str = DEFAULT_ARCH) -> nn.Module:
    """A model.pt this project wrote for `arch` (the seed's ResNet-18 by default), in eval mode on `device`."""
    if arch == DEFAULT_ARCH:
        return load_model(path, num_classes, device)
    return ModelSource(arch, num_classes).load(path, device)


def _arch_of(folder: ExperimentFolder) -> str:
    """The architecture an experiment folder's spec.json names (the seed's where it names none or is missing)."""
    return folder.read_record().get("spec", {}).get("arch", DEFAULT_ARCH) if folder.spec_json.is_file() else DEFAULT_ARCH


def load_experiment(folder: ExperimentFolder, num_classes: int, runtime: Runtime) -> Experiment:
    """A finished experiment from its folder (one-line `UserError` naming the file if anything is missing)."""
    fix = "fix: rerun `gradcam-repro run` with the same flags; it retrains only what is missing"
    record = folder.read_record(fix)
    spec = ExperimentSpec.from_dict(record["spec"])
    model = load_trained(folder.model_pt, num_classes, runtime.device, spec.arch)
    history = folder.read_history(fix)
    return Experiment(spec, model, history, record)


def load_models(target: str | Path, device: torch.device, source: ModelSource | None = None
                ) -> tuple[dict[str, nn.Module], tuple[str, ...]]:
    """{name: model} and the class names from a run folder (every experiment), an experiment folder or a model.pt
    (the classes from its spec.json where there is one, else CIFAR-10's); with `source` (--arch), `target` is a
    state-dict checkpoint of that architecture ("random" for random weights) and the classes are "0".."N-1"
    unless its contract names them."""
    if source is not None:
        path = None if str(target) == RANDOM_WEIGHTS else Path(target)
        model = source.load(path, device)
        names = contract_of(model).classes or (CIFAR10_CLASSES if source.family == "project" and source.num_classes == 10
                                               else tuple(str(i) for i in range(source.num_classes)))
        return {path.stem if path else source.arch: model}, tuple(names)
    paths = model_files(target)
    folder = ExperimentFolder(next(iter(paths.values())).parent)
    classes = tuple(folder.read_record()["dataset"]["classes"]) if folder.spec_json.is_file() else CIFAR10_CLASSES
    return {name: load_trained(path, len(classes), device, _arch_of(ExperimentFolder(path.parent)))
            for name, path in paths.items()}, classes


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


def _training_time(history: list[dict], resume: dict | None, seconds: float) -> dict:
    """The record's training time: this call's `seconds`, plus the wall time of the epochs trained before a resume
    (their history's own seconds, so a model trained over several sessions counts all of its epochs)."""
    if resume is None:
        return {"train_seconds": seconds}
    earlier = sum(h["seconds"] for h in history[:resume["epoch"]])
    return {"train_seconds": earlier + seconds, "resumed_after_epoch": resume["epoch"]}


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
        artefact = patch_artefact(spec.bias.patch, tuple(images.shape[-2:]), spec.bias.class_name)
        images, patched = bias_dataset(images, labels, target, spec.bias.fraction, spec.seed, artefact=artefact)
        planted = {"class": spec.bias.class_name, "class_index": target, "patched_train_images": int(patched.sum())}
    if spec.repair is not None and spec.repair.decorrelates:
        share = dict(spec.repair.params)["share"]
        images, pasted = decorrelate(images, Artefact.from_dict(spec.repair.artefact), share, spec.seed)
        planted["artefact_pasted_train_images"] = int(pasted.sum())
    return images, labels, planted


def train_experiment(spec: ExperimentSpec, ts: TrainingSet, folder: ExperimentFolder, name: str, log=print,
                     force: bool = False) -> Experiment:
    """Train `spec` into `folder`, or reuse the finished experiment there (unless `force`).

    An interrupted experiment resumes from its last per-epoch checkpoint.
    """
    record = None if force else folder.finished_record(spec.key)
    if record is not None:
        log(f"[{name}] reusing the finished experiment {spec.key} in {folder.path} (same spec; --force retrains)")
        return load_experiment(folder, len(ts.data.classes), ts.runtime)
    images, labels, bias = training_images(spec, ts)
    eval_x, eval_y = ts.data.test_images[ts.eval_index], ts.data.test_labels[ts.eval_index]
    checkpoint = folder.checkpoint_pt
    hooks = TrainHooks(
        evaluate=lambda model: accuracy(predict_logits(model, eval_x, ts.runtime), eval_y),
        log=lambda line: log(f"[{name}] {line}"),
        progress=epoch_progress(log, f"[{name}]", ts.config.epochs),
        on_epoch_end=lambda state: store.torch_save(checkpoint, {**state, "spec_key": spec.key}))
    log(f"[{name}] training experiment {spec.key} on {len(labels)} images for {ts.config.epochs} epoch(s), "
        f"device {ts.runtime.device}, precision {'bf16' if ts.runtime.amp_dtype else 'fp32'}")
    seed_everything(spec.seed)  # every experiment of a seed starts from the same initial weights
    model = architecture(spec.arch, len(ts.data.classes))
    resume = None if force else _resume_state(checkpoint, spec, log)
    start = time.perf_counter()
    history = train_model(model, images, labels, TrainSettings.of(ts.config), ts.runtime.device, ts.runtime.amp_dtype, hooks,
                          resume=resume)
    record = experiment_record(spec, ts, name, {"bias": bias, **_training_time(history, resume, time.perf_counter() - start)})
    record = save_experiment(folder, model, history, record)
    checkpoint.unlink(missing_ok=True)
    return Experiment(spec, model.eval(), history, record)


def save_experiment(folder: ExperimentFolder, model: nn.Module, history: list[dict], record: dict) -> dict:
    """Write model.pt, history.json (and history.csv when there are epochs) and spec.json, which goes last and
    marks the experiment finished and reusable; returns `record` with the model's sha256 added."""
    record = {**record, "model_sha256": save_model(model, folder.model_pt)}
    folder.write_record(history, _history_csv(history) if history else None, record)
    return record


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
