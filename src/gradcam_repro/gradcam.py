"""Grad-CAM (Selvaraju et al., 2017), batched: one forward and one backward pass per batch.

For class c and a layer with activations A^k (k = channels), Grad-CAM weights
each channel by the spatial mean of the gradient of the class logit,
alpha_k = mean_ij dy^c / dA^k_ij, and the map is ReLU(sum_k alpha_k A^k).

Works on any torch model whose target layer outputs an (N, K, h, w) tensor.
Hooks exist only for the duration of a call, the model's train/eval mode and
`requires_grad` flags are restored afterwards, and several layers can be
explained from the same single forward/backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradcam_repro.errors import UserError
from gradcam_repro.runtime import autocast, eval_mode

DEFAULT_LAYER = "layer4.1.conv2"  # the seed's layer4[-1].conv2


@dataclass
class CAMResult:
    """Maps for one layer and one batch.

    maps: (N, H, W) float32 in [0, 1], upsampled bilinearly to the input size and
        divided by each image's maximum (an all-zero map stays all zero);
    raw: (N, h, w) float32 >= 0, the map at the layer's own resolution before scaling;
    logits: (N, num_classes) float32; targets: (N,) int64, the explained classes.
    """

    maps: torch.Tensor
    raw: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule, e.g. ['conv1', ..., 'layer4.1.conv2', 'fc']."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted `path`; `UserError` listing valid paths if there is none."""
    modules = dict(model.named_modules())
    if not path or path not in modules:
        valid = [n for n in layer_names(model) if n.count(".") <= 2]
        raise UserError(
            f"unknown layer {path!r}; fix: pass --cam-layer as one of {', '.join(valid)}"
        )
    return modules[path]


def upsample_and_scale(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) non-negative maps -> (N, H, W) bilinear-upsampled maps, each divided by its maximum."""
    up = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = up.amax(dim=(1, 2), keepdim=True)
    return up / torch.where(peak > 0, peak, torch.ones_like(peak))


class GradCAM:
    """Batched Grad-CAM at one or more layers of `model`.

    >>> with GradCAM(model, "layer4.1.conv2") as cam:
    ...     result = cam(images)            # explains the predicted classes
    ...     result = cam(images, targets)   # or one given class per image

    `images`: (N, C, H, W) float, already normalised as the model expects.
    `targets`: None (predicted class), or N class indices (tensor or sequence).
    With several layers, `per_layer` returns {layer: CAMResult} from one pass.
    `autocast_dtype` (e.g. torch.bfloat16) runs the pass under autocast; the
    default float32 is the reference precision.
    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str] = DEFAULT_LAYER, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError("GradCAM needs at least one layer")
        self.modules = {name: get_layer(model, name) for name in self.layers}
        self.autocast_dtype = autocast_dtype

    def __enter__(self) -> GradCAM:
        return self

    def __exit__(self, *exc) -> None:
        # Hooks are registered and removed inside each call; nothing is left to release.
        return None

    def __call__(self, images: torch.Tensor, targets=None) -> CAMResult:
        if len(self.layers) != 1:
            raise ValueError("this GradCAM has several layers; use per_layer()")
        return self.per_layer(images, targets)[self.layers[0]]

    def cam_from(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) activations and gradients -> (N, h, w) map before ReLU. The method's seam."""
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1)

    def per_layer(self, images: torch.Tensor, targets=None) -> dict[str, CAMResult]:
        if images.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
        activations: dict[str, torch.Tensor] = {}

        def make_hook(name):
            def hook(module, inputs, output):
                if not torch.is_tensor(output) or output.dim() != 4:
                    raise ValueError(f"layer {name!r} must output an (N, K, h, w) tensor to be explained")
                if not output.requires_grad:
                    # Nothing upstream needs gradients: start the graph here, so
                    # backward stops at the earliest explained layer.
                    output = output.detach().requires_grad_(True)
                activations[name] = output
                # Downstream in-place ops (e.g. the residual `out += identity`)
                # must not alter the stored activation.
                return output.clone()

            return hook

        model = self.model
        grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        handles = [module.register_forward_hook(make_hook(name)) for name, module in self.modules.items()]
        try:
            with eval_mode(model):
                for p, _ in grad_flags:
                    p.requires_grad_(False)  # no weight gradients: only d(logit)/d(activation) is needed
                with torch.enable_grad(), autocast(images.device, self.autocast_dtype):
                    logits = model(images)
                logits = logits.float()
                targets = self._check_targets(targets, logits)
                missing = [n for n in self.layers if n not in activations]
                if missing:
                    raise ValueError(f"layers {missing} were not used in the forward pass")
                score = logits.gather(1, targets[:, None]).sum()
                acts = [activations[n] for n in self.layers]
                grads = torch.autograd.grad(score, acts, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
            for p, flag in grad_flags:
                p.requires_grad_(flag)

        size = tuple(images.shape[-2:])
        results = {}
        for name, act, grad in zip(self.layers, acts, grads):
            act = act.detach().float()
            grad = torch.zeros_like(act) if grad is None else grad.float()
            raw = F.relu(self.cam_from(act, grad))
            results[name] = CAMResult(upsample_and_scale(raw, size), raw, logits.detach(), targets)
        return results

    @staticmethod
    def _check_targets(targets, logits: torch.Tensor) -> torch.Tensor:
        n, num_classes = logits.shape
        if targets is None:
            return logits.argmax(dim=1)
        targets = torch.as_tensor(targets, device=logits.device).long().flatten()
        if len(targets) != n:
            raise ValueError(f"got {len(targets)} targets for {n} images; pass exactly one target class per image")
        if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"targets must be class indices in [0, {num_classes}), got {targets.tolist()[:10]}")
        return targets
