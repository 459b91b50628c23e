"""Batched predictions of a trained model (no per-image forward passes)."""

from __future__ import annotations

import torch
from torch import nn

from gradcam_repro.model.sources import model_input
from gradcam_repro.runtime import Runtime, autocast, eval_mode


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int = 512) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> (N, num_classes) float32 logits on the CPU (model in eval mode).

    The model runs on `runtime.device` in the runtime's precision, like training and the CAMs.
    """
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = model_input(model, images[start:start + batch_size].to(runtime.device)).contiguous(memory_format=torch.channels_last)
            with autocast(runtime.device, runtime.amp_dtype):
                out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def predict(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> (N,) int64 predicted classes on the CPU."""
    logits = predict_logits(model, images, runtime)
    return logits.argmax(1) if len(logits) else torch.empty(0, dtype=torch.int64)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label (nan for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(1) == labels).float().mean().item()
