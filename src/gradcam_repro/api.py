"""The Python API, for notebooks: any `nn.Module`, any image size, tensors in and typed results out.

>>> import gradcam_repro as gr
>>> model = gr.load_model("timm:vit_tiny_patch16_224", num_classes=10, image_size=(32, 32))  # or any nn.Module
>>> result = gr.explain(model, images, method="gradcam")      # images: (N, 3, H, W) uint8 (or floats in [0, 1])
>>> result.maps.shape, result.layer                            # (N, H, W) in [0, 1], the layer the rule chose
>>> found = gr.audit(model, (images, labels, classes))         # an AuditResult, as audit.json holds it
>>> shortcut = gr.measure_shortcut(model, images, labels, {"kind": "text", "patch_size": 10}, target=6)
>>> shortcut.models["model"].flip_to_target["patch"], shortcut.models["model"].energy("layer4")  # ShortcutResults
>>> fixed = gr.repair(model, (train_images, train_labels), {"kind": "text", "patch_size": 10}, target=6,
...                   strategy="last-layer", test=(images, labels))  # a repaired copy, measured before and after
>>> fixed.before.models["model"].flip_to_target["patch"], fixed.after.models["model"].flip_to_target["patch"]

Images are uint8 pixels (or floats in [0, 1]); the model's input contract (`model.sources`: normalisation,
size, classes) turns them into what it expects, CIFAR-10's statistics for a module that carries none
(`gr.with_contract` sets one). Layers default by the written rule of `explain.layers.default_layers`, and a
chosen one is checked (`explain.layers.check_layer`). The CLI commands call the same functions.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import torch
from torch import nn

from gradcam_repro import store
from gradcam_repro.config import MAX_SEED, valid_seed
from gradcam_repro.data.bias import DEFAULT_PATCH, ZOO_KEYS, patch_artefact
from gradcam_repro.data.images import EvalSet, ImageData, tensor_fingerprint
from gradcam_repro.data.zoo import Planted, box_masks
from gradcam_repro.errors import UserError
from gradcam_repro.explain.layers import check_layer, chosen_layer, stage_layers
from gradcam_repro.explain.registry import PIXEL_METHODS, explain_images, get_explainer
from gradcam_repro.measure import shortcut, spray
from gradcam_repro.measure.audit_results import AuditResult
from gradcam_repro.measure.predict import predict_logits
from gradcam_repro.measure.results import ShortcutResults
from gradcam_repro.measure.shortcut import ShortcutProtocol
from gradcam_repro.model import finetune
from gradcam_repro.model.sources import InputContract, ModelSource, attach, contract_of
from gradcam_repro.options import COLORS, rgb_of
from gradcam_repro.pipeline.audit import write_audit
from gradcam_repro.pipeline.folders import AuditFolder
from gradcam_repro.pipeline.repair import refit_on_balanced
from gradcam_repro.runtime import Runtime, choose_device


@dataclass(frozen=True)
class Explanation:
    """What `explain` returns: (N, H, W) float maps in [0, 1] of `method` at `layer` ("input" for pixel methods),
    the (N,) explained classes, the (N, num_classes) logits and the class names (None where unknown)."""

    method: str
    layer: str
    maps: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    classes: tuple[str, ...] | None

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(1)


def load_model(arch: str = "resnet18_cifar", checkpoint: str | Path | None = None, num_classes: int = 10,
               image_size: tuple[int, int] | None = None, device: str = "cpu", **options) -> nn.Module:
    """A model by name (`resnet18_cifar`, `torchvision:NAME`, `timm:NAME`, `module:function`), randomly
    initialised or with the state dict of `checkpoint`, its input contract attached (eval mode); `options` go to
    the architecture's constructor (e.g. patch_size=4 for a timm ViT)."""
    source = ModelSource(arch, num_classes, tuple(image_size) if image_size else None, tuple(sorted(options.items())))
    return source.load(checkpoint, choose_device(device))


def with_contract(model: nn.Module, mean=None, std=None, classes=None, size=None) -> nn.Module:
    """Attach (or change) `model`'s input contract: per-channel mean/std of [0, 1] pixels, class names, (H, W)."""
    now = contract_of(model)
    contract = InputContract(tuple(mean or now.mean), tuple(std or now.std), tuple(size) if size else now.size,
                             tuple(classes) if classes else now.classes)
    return attach(model, contract)


def as_images(images) -> torch.Tensor:
    """(N, 3, H, W) uint8 from uint8 (or other integer) pixels in 0..255 or float tensors in [0, 1] (a single
    (3, H, W) image too); `UserError` else."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}; fix: stack RGB images "
                        "channels first")
    if not len(images):
        raise UserError("no images given (N = 0); fix: pass at least one image")
    if images.dtype == torch.uint8:
        return images
    if images.is_floating_point():
        if not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1:
            raise UserError("float images must hold finite pixels in [0, 1]; fix: pass uint8 pixels, or divide by 255 "
                            "(do not normalise them: the model's input contract does that)")
        return (images.float() * 255).round().to(torch.uint8)
    if images.dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        if images.min() < 0 or images.max() > 255:
            raise UserError("integer images must hold pixels in 0..255; fix: pass uint8 pixels, or floats in [0, 1]")
        return images.to(torch.uint8)
    raise UserError(f"images of dtype {images.dtype} cannot be read as pixels; fix: pass uint8 pixels, or floats "
                    "in [0, 1]")


def explain(model: nn.Module, images, method: str = "gradcam", layer: str | None = None, targets=None,
            device: str = "cpu", batch_size: int = 64) -> Explanation:
    """Explain `images` (the predicted class, or `targets`) with `method` at `layer` (None: the written rule)."""
    get_explainer(method)
    images = as_images(images)
    size = tuple(images.shape[-2:])
    runtime = Runtime(choose_device(device))
    model = model.to(runtime.device).eval()
    if method in PIXEL_METHODS:
        layer = "input"
    else:
        layer = chosen_layer(model, layer, size, "explain")
    logits = predict_logits(model, images, runtime)
    chosen = logits.argmax(1) if targets is None else torch.as_tensor(targets).long().flatten()
    if len(chosen) != len(images):
        raise UserError(f"got {len(chosen)} targets for {len(images)} images; fix: pass one class index per image")
    if chosen.min() < 0 or chosen.max() >= logits.shape[1]:
        raise UserError(f"targets must be class indices in [0, {logits.shape[1]}), got {chosen.tolist()[:10]}; fix: "
                        "pass indices of the model's outputs")
    maps = explain_images(method, model, images, chosen, [] if layer == "input" else [layer], runtime, batch_size)
    return Explanation(method, layer, maps[layer], chosen, logits, contract_of(model).classes)


def measure_shortcut(model: nn.Module, images, labels, artefact: dict | Planted, target: int | str,
                     layers: list[str] | None = None, method: str = "gradcam", seed: int = 0) -> ShortcutResults:
    """How much `model` relies on `artefact` pasted on test `images` (flip-to-`target` rates against controls) and
    where `method` puts its mass (energy in each image's artefact mask, pointing game) at `layers` (None: the
    model's stages, `explain.layers.stage_layers`), as a run measures its models: `ShortcutResults` for one model
    named "model". `artefact`: a `data.zoo.Planted`, or the bias flags as a dict (kind, patch_size, color, corner,
    offset, text, opacity, strength, jpeg_quality; the seed's yellow square where left out); `target`: a class
    index, or a name from the model's contract. Runs on the model's device."""
    patch = _patch(artefact)
    _check_seed(seed)
    data = as_eval_set((images, labels, contract_of(model).classes) if contract_of(model).classes else (images, labels))
    target = data.classes.index(target) if isinstance(target, str) and target in data.classes else target
    if not isinstance(target, int) or not 0 <= target < len(data.classes):
        raise UserError(f"target {target!r} is not a class of the data; fix: pass a class index or one of its names")
    size = tuple(data.images.shape[-2:])
    runtime = Runtime(next((p.device for p in model.parameters()), torch.device("cpu")))
    model = model.eval()
    layers = list(layers) if layers else stage_layers(model, size)
    for layer in layers:
        check_layer(model, layer, size, "layers")
    outputs = _outputs(model, data.images, runtime)
    if int(data.labels.max()) >= outputs:
        raise UserError(f"labels go up to {int(data.labels.max())} but the model has {outputs} outputs; fix: pass the "
                        "labels of the classes the model was trained on")
    protocol = ShortcutProtocol(target, patch, tuple(layers), method, seed)
    protocol.artefact(size)  # an artefact that cannot be drawn on these images: fail before measuring
    measured, _ = shortcut.measure_shortcut({"model": model}, data, protocol, runtime)
    return ShortcutResults.from_dict(measured)


def _patch(artefact: dict | Planted) -> dict:
    """The artefact as `ShortcutProtocol.patch` takes it (`data.bias.patch_artefact`'s keys)."""
    if isinstance(artefact, Planted):
        return {"patch_size": artefact.size, "color": tuple(artefact.color), "corner": artefact.placement,
                "offset": artefact.offset, "kind": artefact.kind, "text": artefact.text, "opacity": artefact.opacity,
                "strength": artefact.strength, "jpeg_quality": artefact.jpeg_quality}
    keys = (*DEFAULT_PATCH, *ZOO_KEYS)
    if not isinstance(artefact, dict):
        raise UserError(f"an artefact is a data.zoo.Planted or a dict, got a {type(artefact).__name__}; fix: pass "
                        f"a dict of {', '.join(keys)}")
    unknown = sorted(set(artefact) - set(keys))
    if unknown:
        raise UserError(f"unknown artefact key(s) {', '.join(map(repr, unknown))}; fix: use {', '.join(keys)}")
    patch = {**DEFAULT_PATCH, **artefact}  # what is left out is the seed's yellow square's
    rgb = rgb_of(patch["color"])
    checks = [
        (isinstance(patch["patch_size"], Integral) and patch["patch_size"] >= 1,
         f"patch_size must be an integer >= 1 (px), got {patch['patch_size']!r}"),
        (isinstance(patch["offset"], Integral) and patch["offset"] >= 0,
         f"offset must be an integer >= 0 (px), got {patch['offset']!r}"),
        (rgb is not None,
         f"color must be three integers in 0..255 like (255, 255, 0) or one of {', '.join(COLORS)}, "
         f"got {patch['color']!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"{message}; fix: correct the artefact's {message.split()[0]}")
    return {**patch, "patch_size": int(patch["patch_size"]), "offset": int(patch["offset"]), "color": rgb}


def _outputs(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> int:
    """How many classes `model` scores: the width of its logits on the first image."""
    return predict_logits(model, images[:1], runtime).shape[1]


def _check_seed(seed) -> None:
    if not valid_seed(seed):
        raise UserError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}; fix: pass e.g. seed=0")


def as_eval_set(dataset, classes=None) -> EvalSet:
    """An EvalSet from an EvalSet, an ImageData (its test split) or an (images, labels[, classes]) tuple."""
    if isinstance(dataset, EvalSet):
        return dataset
    if isinstance(dataset, ImageData):
        return EvalSet(dataset.test_images, dataset.test_labels, tuple(dataset.classes))
    if isinstance(dataset, (tuple, list)) and len(dataset) in (2, 3):
        images, labels = as_images(dataset[0]), torch.as_tensor(dataset[1]).long()
        names = dataset[2] if len(dataset) == 3 else classes
        names = tuple(names) if names else tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels; fix: pass one label per image")
        if labels.min() < 0 or labels.max() >= len(names):
            raise UserError(f"labels must be class indices in [0, {len(names)}), got {int(labels.min())}.."
                            f"{int(labels.max())}; fix: pass one index per image into the {len(names)} class names")
        return EvalSet(images, labels, names)
    raise UserError(f"cannot audit a {type(dataset).__name__}; fix: pass an EvalSet, an ImageData or "
                    "(images, labels, classes)")


def audit(model: nn.Module, dataset, method: str | None = None, layer: str | None = None, seed: int = 0,
          out: str | Path | None = None, device: str = "cpu", colour_casts: bool = True) -> AuditResult:
    """The shortcut audit of `model` on `dataset` (see `as_eval_set`; class names come with it, as an
    (images, labels, classes) tuple): clusters, regions, causal tests, verdicts, as audit.json holds them, and
    (`colour_casts`) the classes a faint global colour cast turns other images into; with `out`, audit.json,
    AUDIT.md and the figures are written there too."""
    _check_seed(seed)
    data = as_eval_set(dataset)
    size = tuple(data.images.shape[-2:])
    runtime = Runtime(choose_device(device))
    model = model.to(runtime.device).eval()
    outputs = _outputs(model, data.images, runtime)
    if outputs != len(data.classes):
        raise UserError(f"the model has {outputs} classes but the dataset has {len(data.classes)}; fix: pass the data "
                        "the model was trained on, with its class names")
    method = method or spray.AUDIT_METHOD
    # A pixel method explains the input, so no layer is probed for it (a model without feature maps can be
    # audited so); the layer is only recorded, as the CLI does.
    layer = (layer or spray.AUDIT_LAYER) if method in PIXEL_METHODS else chosen_layer(model, layer, size, "audit")
    if out is not None:
        store.check_writable(Path(out))
    start = time.perf_counter()
    found, examples = spray.audit_model(model, data, spray.AuditSettings(method, layer, seed, colour_casts=colour_casts),
                                         runtime)
    result = AuditResult.from_dict({
        "target": "python", "model": type(model).__name__, "experiment": type(model).__name__,
        "dataset": {"name": "python", "source": "python", "fingerprint": tensor_fingerprint(data.images, data.labels),
                    "n_test": len(data.labels), "classes": list(data.classes)},
        "default_method_layer": method == spray.AUDIT_METHOD, "precision": runtime.precision,
        "environment": store.environment_info(str(runtime.device)), **found,
        "seconds": {"audit": time.perf_counter() - start, "end_to_end": time.perf_counter() - start}})
    return write_audit(AuditFolder(Path(out)), result, examples) if out is not None else result


# What `repair` takes beyond its arguments, with the CLI's defaults (`pipeline.repair.RepairOptions`).
REPAIR_OPTIONS = {"per_class": 250, "epochs": 1, "lr": 0.01, "rrr_weight": 1.0, "batch_size": 128}
API_STRATEGIES = ("last-layer", "rrr")


@dataclass(frozen=True)
class Repaired:
    """What `repair` returns: the repaired model (a copy: the given one is left as it was), the strategy, what its
    fit recorded, and `measure_shortcut` of the model before and after on the held-out images."""

    model: nn.Module
    strategy: str
    fit: dict
    before: ShortcutResults
    after: ShortcutResults


def repair(model: nn.Module, dataset, artefact: dict | Planted, target: int | str, strategy: str = "last-layer",
           test=None, seed: int = 0, **options) -> Repaired:
    """Repair a copy of `model` against `artefact` (as `measure_shortcut` takes it; at one fixed place): "last-layer"
    refits its classifier on `dataset`'s images balanced over class x artefact present/absent, "rrr" fine-tunes it
    with an input-gradient penalty inside the artefact's box. `dataset`: what it is repaired on (an ImageData's
    training split, or (images, labels[, classes])); `test`: where it is measured before and after (default: the
    ImageData's test split, else `dataset`). `options`: `REPAIR_OPTIONS`' keys. Runs on the model's device."""
    unknown = sorted(set(options) - set(REPAIR_OPTIONS))
    if unknown or strategy not in API_STRATEGIES:
        raise UserError(f"unknown repair {'option ' + unknown[0] if unknown else 'strategy ' + repr(strategy)}; fix: "
                        f"strategy from {', '.join(API_STRATEGIES)} (augment retrains from scratch: `gradcam-repro "
                        f"repair`), options from {', '.join(REPAIR_OPTIONS)}")
    settings, patch = {**REPAIR_OPTIONS, **options}, _patch(artefact)
    _check_seed(seed)
    fit_set = _training_set(dataset)
    held_out = as_eval_set(test if test is not None else dataset)
    target = held_out.classes.index(target) if isinstance(target, str) and target in held_out.classes else target
    planted = patch_artefact(patch, tuple(fit_set.images.shape[-2:]))
    if planted.box is None:
        raise UserError("the artefact has no one fixed box to repair against; fix: give it a fixed corner or place")
    def measured(m: nn.Module) -> ShortcutResults:
        return measure_shortcut(m, held_out.images, held_out.labels, artefact, target, seed=seed)

    before, repaired = measured(model), copy.deepcopy(model).eval()
    runtime = Runtime(next((p.device for p in model.parameters()), torch.device("cpu")))
    if strategy == "last-layer":
        fit = refit_on_balanced(repaired, fit_set.images, fit_set.labels, planted, settings["per_class"], seed, runtime)
    else:
        mask = box_masks(torch.tensor([planted.box]), *fit_set.images.shape[-2:])[0]
        tuning = finetune.FinetuneSettings(settings["epochs"], settings["lr"], settings["batch_size"],
                                           settings["rrr_weight"], seed=seed)
        fit = {"history": finetune.rrr_finetune(repaired, fit_set.images, fit_set.labels, mask, tuning, runtime)}
    return Repaired(repaired, strategy, fit, before, measured(repaired))


def _training_set(dataset) -> EvalSet:
    """The images a repair fits on: an ImageData's training split, else `as_eval_set(dataset)`."""
    if isinstance(dataset, ImageData):
        return EvalSet(dataset.train_images, dataset.train_labels, tuple(dataset.classes))
    return as_eval_set(dataset)
