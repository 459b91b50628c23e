"""Which layer to explain, for any architecture, and a check that a chosen layer can be explained at all.

The rule, written down once (`default_layers`), from one probe pass of two seeded random images at the model's
input size (`probe_layers`: every module whose output is a feature map (N, K, h, w) or tokens (N, T, K), in the
order they finish, one name per output tensor: the shortest, so `layer4` rather than `layer4.1` or `layer4.1.relu`;
pooling modules left out):

- this project's CIFAR ResNet-18: the seed's `layer4.1.conv2` to explain, `layer2` (16x16) for the audit, as before;
- CNNs: among the modules of the shallowest depth whose feature maps take at least 3 resolutions (the stages:
  `layer1`..`layer4`, `features.N`, `stages.N`), the last stage, i.e. the last feature map at the coarsest
  resolution that still has at least 2x2 cells, to explain; the last at the second-finest resolution for the
  audit (`layer2` of the CIFAR ResNet-18, whose first stages run at full and half size; `layer1` of an
  ImageNet-stem ResNet, whose stem halves the image twice), so that the audit can place a small artefact;
- transformers (token outputs): the last layer norm inside the encoder whose patch tokens still receive gradient
  from the class score (a late block's `norm1` in timm, `ln_1` in torchvision): the final norm feeds only the class
  token, and the last block's MLP norm is token-wise, so both give all-zero maps. The tokens are laid out on the
  patch grid by the explainer (`explain.cam.tokens_to_grid`); the audit uses the same layer.

`check_layer` makes a user's own choice fail early, with one line naming the layer and the fix: an unknown
name, an output that is neither a feature map nor tokens, tokens that no grid of the input fits, or a layer
that gets no gradient from the class score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gradcam_repro.config import SEED_LAYER
from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import get_layer, tokens_to_grid
from gradcam_repro.model.resnet import resnet18_cifar
from gradcam_repro.runtime import eval_mode

# The CIFAR ResNet-18's stages (32, 16, 8 and 4 px at 32x32) and the seed's layer: what a run scores every CAM at.
PROJECT_STAGES = ("layer1", "layer2", "layer3", "layer4", SEED_LAYER)
PROJECT_AUDIT_LAYER = "layer2"  # measure.spray.AUDIT_LAYER: the CIFAR ResNet-18's 16x16 stage
PROBE_IMAGES = 2
POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Probed:
    """One explainable output of the probe pass: the module's name, its output shape, whether it is tokens."""

    name: str
    shape: tuple[int, ...]

    @property
    def tokens(self) -> bool:
        return len(self.shape) == 3

    @property
    def cells(self) -> tuple[int, int]:
        return (self.shape[2], self.shape[3]) if not self.tokens else (0, 0)


@dataclass(frozen=True)
class DefaultLayers:
    """The layers `default_layers` picked: `explain` for the CAM commands, `audit` for the audit; `family` says
    which part of the rule applied ('project', 'cnn' or 'transformer')."""

    explain: str
    audit: str
    family: str


def probe_input(model: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """Two seeded random normalised images of `size` (H, W), on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    return torch.randn(PROBE_IMAGES, 3, *size, generator=generator).to(device)


def probe_layers(model: nn.Module, size: tuple[int, int]) -> list[Probed]:
    """Every explainable output of one forward pass at `size`, in the order the modules finish (see above)."""
    seen: dict[int, tuple[str, tuple]] = {}
    order: list[int] = []
    alive: list[torch.Tensor] = []  # every recorded output stays referenced, so no id is reused during the pass

    def hook(name):
        def record(module, inputs, output):
            if isinstance(module, POOLING) or not torch.is_tensor(output) or output.dim() not in (3, 4):
                return
            key = id(output)
            if key not in seen:
                order.append(key)
                alive.append(output)
            if key not in seen or len(name) < len(seen[key][0]):
                seen[key] = (name, tuple(output.shape))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), eval_mode(model):
            _forward(model, probe_input(model, size), size)
    finally:
        for handle in handles:
            handle.remove()
    return [Probed(*seen[key]) for key in order]


def default_layers(model: nn.Module, size: tuple[int, int]) -> DefaultLayers:
    """The layers to explain and to audit by the rule above, for `model` on (H, W) inputs."""
    if _is_project_resnet(model):
        return DefaultLayers(SEED_LAYER, PROJECT_AUDIT_LAYER, "project")
    probed = probe_layers(model, size)
    if any(p.tokens for p in probed):
        layer = _last_norm_with_gradient(model, probed, size)
        return DefaultLayers(layer, layer, "transformer")
    maps = _stages([p for p in probed if min(p.cells) >= 2] or probed)
    if not maps:
        raise UserError("the model has no layer that outputs a feature map or tokens; fix: explain a CNN or a ViT, "
                        "or pass --layer")
    sides = sorted({p.cells for p in maps}, key=lambda c: c[0] * c[1], reverse=True)
    finer = sides[1] if len(sides) > 1 else sides[0]
    last = [p for p in maps if p.cells == sides[-1]][-1]
    audit = [p for p in maps if p.cells == finer][-1]
    return DefaultLayers(last.name, audit.name, "cnn")


def stage_layers(model: nn.Module, size: tuple[int, int]) -> list[str]:
    """The layers a study measures every CAM at, shallow to deep, for `model` on (H, W) inputs: this project's
    ResNet-18's `layer1`..`layer4` and the seed's layer; a CNN's stages (`_stages`), the last module at each
    resolution (a 1x1 one included: its map is flat, which is the point where the map cannot place anything);
    a transformer's default layer in every block (`blocks.0.norm1` .. `blocks.11.norm1`)."""
    if _is_project_resnet(model):
        return list(PROJECT_STAGES)
    probed = probe_layers(model, size)
    if any(p.tokens for p in probed):
        last = _last_norm_with_gradient(model, probed, size)
        head, index, tail = _numbered(last)
        if index is None:
            return [last]
        names = {p.name for p in probed}
        return [n for n in (f"{head}.{i}.{tail}" if tail else f"{head}.{i}" for i in range(int(index) + 1)) if n in names]
    maps = _stages(probed)
    return [p.name for i, p in enumerate(maps) if i + 1 == len(maps) or maps[i + 1].cells != p.cells]


def _numbered(name: str) -> tuple[str, str | None, str]:
    """'blocks.11.norm1' -> ('blocks', '11', 'norm1'): the last numeric part of a dotted name and what surrounds it."""
    parts = name.split(".")
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    if not numeric:
        return name, None, ""
    i = numeric[-1]
    return ".".join(parts[:i]), parts[i], ".".join(parts[i + 1:])


def _stages(maps: list[Probed]) -> list[Probed]:
    """The feature maps of the shallowest module depth at which they take >= 3 resolutions (a network's stages:
    `layer1`..`layer4` of a ResNet, `features.N` of a VGG, `stages.N` of a ConvNeXt), else all of them."""
    for depth in range(max((p.name.count(".") for p in maps), default=0) + 1):
        level = [p for p in maps if p.name.count(".") <= depth]
        if len({p.cells for p in level}) >= 3:
            return level
    return maps


def _is_project_resnet(model: nn.Module) -> bool:
    reference = resnet18_cifar(getattr(getattr(model, "fc", None), "out_features", 10) or 10)
    if type(model) is not type(reference) or not isinstance(getattr(model, "maxpool", None), nn.Identity):
        return False
    return [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def _last_norm_with_gradient(model: nn.Module, probed: list[Probed], size: tuple[int, int]) -> str:
    norms = [p.name for p in probed if p.tokens and isinstance(get_layer(model, p.name), nn.LayerNorm)]
    candidates = norms or [p.name for p in probed if p.tokens]
    for name in reversed(candidates):
        if _gradient_reaches(model, name, size):
            return name
    raise UserError("no token layer of this transformer gets a gradient from the class score; fix: pass --layer")


def _gradient_reaches(model: nn.Module, layer: str, size: tuple[int, int]) -> bool:
    """Whether the predicted class's logit has a non-zero gradient at `layer`'s (grid-laid) output."""
    return _reaches(*_probe_layer(model, layer, size), size, layer)


def _reaches(shape: tuple[int, ...] | None, grad: torch.Tensor | None, size: tuple[int, int], layer: str) -> bool:
    if grad is None:
        return False
    grid = tokens_to_grid(grad, size, layer) if grad.dim() == 3 else grad
    return bool(grid.abs().amax() > 0)


def _probe_layer(model: nn.Module, layer: str, size: tuple[int, int]) -> tuple[tuple[int, ...] | None, torch.Tensor | None]:
    """One forward and backward pass of the probe images: `layer`'s output shape (None if it is no tensor) and the
    predicted class's gradient there (None if the output is not a feature map or tokens, or does not reach it)."""
    captured = {}
    handle = get_layer(model, layer).register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with eval_mode(model), torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(False)
            logits = _forward(model, probe_input(model, size).requires_grad_(True), size)
            out = captured.get("out")
            if not torch.is_tensor(out):
                return None, None
            if out.dim() not in (3, 4) or not out.requires_grad:
                return tuple(out.shape), None
            grad, = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), out, allow_unused=True)
            return tuple(out.shape), grad
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


def _forward(model: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """model(x), with an input size the model rejects as the one-line `UserError` that names the fix."""
    try:
        return model(x)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:  # timm asserts the input size
        raise UserError(f"the model rejects {size[0]}x{size[1]} inputs ({str(exc).splitlines()[0][:120]}); fix: pass "
                        "the input size the model was built for (--image-size)") from None


def check_layer(model: nn.Module, layer: str, size: tuple[int, int], flag: str = "--cam-layer") -> None:
    """`UserError` (one line: the layer and the fix) unless `layer` of `model` can be explained on (H, W) inputs;
    `flag` is the option the fix names. One probe pass (forward and backward) answers every check."""
    get_layer(model, layer, flag)  # unknown names list the valid ones
    shape, grad = _probe_layer(model, layer, size)
    if shape is None or len(shape) not in (3, 4):
        raise UserError(f"layer {layer!r} outputs {shape or 'nothing tensor-shaped'}, not a feature map (N, K, h, w) "
                        "or tokens (N, T, K); fix: pick a convolutional stage or a transformer block's norm")
    if len(shape) == 3:
        tokens_to_grid(torch.zeros(1, *shape[1:]), size, layer)  # raises when no grid fits
    if not _reaches(shape, grad, size, layer):
        hint = default_layers(model, size).explain
        raise UserError(f"layer {layer!r} gets no gradient from the class score (its maps would be all zero); fix: "
                        f"pick a layer that every position of the output depends on, e.g. {hint}")


def chosen_layer(model: nn.Module, layer: str | None, size: tuple[int, int], use: str, flag: str = "--cam-layer") -> str:
    """`layer`, checked, or the rule's default for `use` ("explain" or "audit"): what `explain`, `audit` and the
    Python API explain with a CAM method."""
    layer = layer or getattr(default_layers(model, size), use)
    check_layer(model, layer, size, flag)
    return layer
