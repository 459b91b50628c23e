"""Where a model comes from, and the input contract that goes with it.

A model is named by `--arch`:
- `resnet18_cifar`: this project's CIFAR ResNet-18 (the default; `model.resnet`), or another architecture this
  project trains (`model.arch`: resnet18_imagenet, vgg11_cifar, vit_tiny_p4);
- `torchvision:NAME`: any `torchvision.models` architecture, e.g. `torchvision:resnet50`;
- `timm:NAME`: any timm architecture, e.g. `timm:vit_tiny_patch16_224` (timm is optional: `pip install timm`);
- `module:function`: a Python entry point that returns an `nn.Module`, for anything else.

Nothing downloads weights: every architecture is built randomly initialised, and a state-dict checkpoint
(`--checkpoint`) is loaded into it. The model's *input contract* (`InputContract`: input size, per-channel
normalisation, class names) travels with the module as an attribute, so every prediction and explanation
normalises uint8 images the way this model expects (`model_input`); a module without one gets CIFAR-10's.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from gradcam_repro import store
from gradcam_repro.errors import UserError
from gradcam_repro.model.arch import TRAINABLE
from gradcam_repro.model.resnet import CIFAR10_MEAN, CIFAR10_STD

PROJECT_ARCH = "resnet18_cifar"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONTRACT_ATTR = "gradcam_input"  # the attribute of an nn.Module that holds its InputContract


@dataclass(frozen=True)
class InputContract:
    """What a model expects: (H, W) input size (None: any), per-channel mean/std of [0, 1] pixels, class names."""

    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    size: tuple[int, int] | None = None
    classes: tuple[str, ...] | None = None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 in [0, 255] -> float32 normalised with this contract's statistics."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "size": list(self.size) if self.size else None,
                "classes": list(self.classes) if self.classes else None}


CIFAR_CONTRACT = InputContract()


def contract_of(model: nn.Module) -> InputContract:
    """The model's input contract (CIFAR-10's for a module built elsewhere without one)."""
    return getattr(model, CONTRACT_ATTR, CIFAR_CONTRACT)


def attach(model: nn.Module, contract: InputContract) -> nn.Module:
    """Give `model` its input contract; returns the same module."""
    setattr(model, CONTRACT_ATTR, contract)
    return model


def model_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> the float input `model` expects (its contract's normalisation)."""
    return contract_of(model).normalize(images)


@dataclass(frozen=True)
class ModelSource:
    """A model by `--arch` name, its class count, optionally the input size to build it for ((H, W)), and keyword
    arguments for the architecture's constructor (`--arch-option patch_size=4`: torchvision, timm, entry points)."""

    arch: str = PROJECT_ARCH
    num_classes: int = 10
    image_size: tuple[int, int] | None = None
    options: tuple[tuple[str, object], ...] = ()

    @property
    def family(self) -> str:
        """'project' (an architecture this project trains), 'torchvision', 'timm' or 'entry point'."""
        if self.arch in TRAINABLE:
            return "project"
        prefix = self.arch.split(":", 1)[0]
        return prefix if prefix in ("torchvision", "timm") else "entry point"

    def build(self) -> nn.Module:
        """The randomly initialised architecture with its input contract attached (eval mode)."""
        if self.num_classes < 2:
            raise UserError(f"--num-classes must be >= 2, got {self.num_classes}; fix: pass the data's class count")
        builders = {"project": _project, "torchvision": _torchvision, "timm": _timm, "entry point": _entry_point}
        model = builders[self.family](self)
        if not isinstance(model, nn.Module):
            raise UserError(f"--arch {self.arch} returned {type(model).__name__}, not a torch nn.Module; "
                            "fix: make the function return the model")
        if not hasattr(model, CONTRACT_ATTR):
            attach(model, InputContract(*_default_stats(self.family), size=self.image_size))
        return model.eval()

    def load(self, checkpoint: str | Path | None, device: str | torch.device = "cpu") -> nn.Module:
        """`build()` with the state dict of `checkpoint` loaded (None: random weights), on `device`."""
        model = self.build()
        if checkpoint is not None:
            load_state(model, checkpoint, self.arch)
        return model.to(device).eval()


def _default_stats(family: str) -> tuple[tuple, tuple]:
    return (CIFAR10_MEAN, CIFAR10_STD) if family == "project" else (IMAGENET_MEAN, IMAGENET_STD)


def _project(source: ModelSource) -> nn.Module:
    """One of `model.arch.TRAINABLE`, with CIFAR-10's normalisation (what this project trains them on)."""
    return attach(_call(TRAINABLE[source.arch], source, source.num_classes), InputContract(size=source.image_size))


def _torchvision(source: ModelSource) -> nn.Module:
    name = source.arch.split(":", 1)[1]
    if name not in torchvision.models.list_models():
        raise UserError(f"unknown torchvision architecture {name!r}; fix: pass --arch torchvision:NAME with NAME from "
                        "torchvision.models.list_models(), e.g. torchvision:resnet50")
    return _call(torchvision.models.get_model, source, name, weights=None, num_classes=source.num_classes)


def _timm(source: ModelSource) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError(f"--arch {source.arch} needs timm; fix: pip install timm") from None
    name = source.arch.split(":", 1)[1]
    if not timm.is_model(name):
        raise UserError(f"unknown timm architecture {name!r}; fix: pass --arch timm:NAME with NAME from "
                        "timm.list_models(), e.g. timm:vit_tiny_patch16_224")
    kwargs = {"pretrained": False, "num_classes": source.num_classes}
    if source.image_size is not None and "vit" in name:
        kwargs["img_size"] = source.image_size  # ViTs build their position embedding for the input size
    model = _call(timm.create_model, source, name, **kwargs)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    built_for = getattr(getattr(model, "patch_embed", None), "img_size", None)  # a ViT's own (H, W), options included
    size = source.image_size or (tuple(built_for) if built_for else tuple(cfg.get("input_size", (3, None, None))[1:]))
    contract = InputContract(tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                             size if size and None not in size else None)
    return attach(model, contract)


def _entry_point(source: ModelSource) -> nn.Module:
    module_name, _, function = source.arch.partition(":")
    if not module_name or not function:
        raise UserError(f"--arch {source.arch!r} is not a model name; fix: pass resnet18_cifar, torchvision:NAME, "
                        "timm:NAME or a Python entry point module:function")
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import --arch {source.arch} ({type(exc).__name__}: {str(exc)[:120]}); fix: make "
                        "the module importable (PYTHONPATH) and name a function in it") from None
    takes_classes = "num_classes" in inspect.signature(fn).parameters
    return _call(fn, source, **({"num_classes": source.num_classes} if takes_classes else {}))


def _call(build, source: ModelSource, *args, **kwargs):
    """build(*args, **kwargs, **source.options); a constructor that rejects them is a one-line `UserError`."""
    try:
        return build(*args, **kwargs, **dict(source.options))
    except Exception as exc:  # a user's constructor may raise anything: name it, with the fix
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"building --arch {source.arch} failed ({type(exc).__name__}: {first}); fix: check "
                        "--arch-option and --num-classes, or the entry point's code") from None


def load_state(model: nn.Module, checkpoint: str | Path, arch: str) -> nn.Module:
    """Load a state-dict file (or a training checkpoint's "model"/"state_dict" entry) into `model`; `UserError` with
    the first mismatch when it does not fit."""
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; fix: pass the path of a saved state_dict")
    state = store.torch_load(path, fix="pass a file written by torch.save(model.state_dict(), path)")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if isinstance(state, nn.Module):
        state = state.state_dict()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        detail = " ".join(str(exc).split())[len(first):][:160]
        raise UserError(f"checkpoint {path} does not fit --arch {arch} ({first[:100]}{detail}); fix: pass the --arch "
                        "and --num-classes the checkpoint was trained with") from None
    return model


def parse_option(text: str) -> tuple[str, object]:
    """`--arch-option KEY=VALUE` -> (key, value): an int, float, true/false/none where it reads as one, else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise UserError(f"--arch-option {text!r} is not KEY=VALUE; fix: e.g. --arch-option patch_size=4")
    lowered = value.lower()
    if lowered in ("true", "false", "none"):
        return key, {"true": True, "false": False, "none": None}[lowered]
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def source_from_flags(arch: str | None, num_classes: int | None, options: list[str] | None,
                      image_size: tuple[int, int] | None = None) -> ModelSource | None:
    """The ModelSource named by --arch/--num-classes/--arch-option (None: the command's own checkpoints)."""
    if arch is None:
        if num_classes is not None or options:
            raise UserError("--num-classes and --arch-option describe an --arch; fix: add --arch (e.g. "
                            "--arch torchvision:resnet50) or drop them")
        return None
    return ModelSource(arch, num_classes or 10, image_size, tuple(sorted(parse_option(o) for o in options or ())))


def with_classes(model: nn.Module, classes: tuple[str, ...]) -> nn.Module:
    """Record the class names in the model's contract (e.g. from the image folders it is used on)."""
    return attach(model, replace(contract_of(model), classes=tuple(classes)))
