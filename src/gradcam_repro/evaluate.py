"""Measuring a trained model: batched predictions, batched Grad-CAM, and CAM scores.

Pure functions on tensors; every pass over a dataset goes in large batches
(no per-image forward or backward passes).
"""

from __future__ import annotations

import torch
from torch import nn

from gradcam_repro.gradcam import GradCAM
from gradcam_repro.model import normalize
from gradcam_repro.runtime import autocast


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> (N, num_classes) float32 logits on the CPU (model in eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label (nan for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(1) == labels).float().mean().item()


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    layers: str | list[str],
    device: torch.device,
    targets: torch.Tensor | None = None,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Grad-CAM for (N, 3, H, W) uint8 `images` at each layer, one forward/backward per batch.

    Returns {layer: {"maps": (N, H, W) in [0, 1], "raw": (N, h, w) >= 0,
    "targets": (N,) int64, "logits": (N, C)}}, all on the CPU. `targets` None
    explains the predicted class.
    """
    cam = GradCAM(model, layers, autocast_dtype=amp_dtype)
    parts: dict[str, dict[str, list]] = {name: {"maps": [], "raw": [], "targets": [], "logits": []} for name in cam.layers}
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        t = None if targets is None else targets[start:start + batch_size].to(device)
        for name, result in cam.per_layer(x, t).items():
            for key in parts[name]:
                parts[name][key].append(getattr(result, key).cpu())
    return {name: {k: torch.cat(v) if v else torch.empty(0) for k, v in d.items()} for name, d in parts.items()}


def cam_energy_in_box(maps: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Fraction of each non-negative map's total mass inside `box` (top, left, bottom, right; exclusive).

    maps: (N, H, W) >= 0 -> (N,) in [0, 1]; an all-zero map scores 0. A uniform
    map scores the box's area fraction, (box area) / (H * W).
    """
    top, left, bottom, right = box
    total = maps.sum(dim=(1, 2))
    inside = maps[:, top:bottom, left:right].sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(total))


def uniform_energy_in_box(box: tuple[int, int, int, int], image_size: int) -> float:
    top, left, bottom, right = box
    return (bottom - top) * (right - left) / image_size**2
