"""Batched predictions of a trained model (no per-image forward passes)."""

from __future__ import annotations

import torch
from torch import nn

from gradcam_repro.model.sources import model_input
from gradcam_repro.runtime import Runtime, autocast, eval_mode

# Images per forward pass: a GPU wants large batches; on a CPU 128 images at 32x32 keep a ResNet-18's activations
# nearer the caches than 512 do, with the same logits (1.20x on one thread; measured in docs/speed.md, Runs), and
# larger images get proportionally fewer (32 at 64x64, 8 at 224x224), never fewer than 8.
GPU_BATCH = 512
CPU_BATCH = 128
CPU_BATCH_AREA = 32 * 32
MIN_CPU_BATCH = 8


def batch_size_for(runtime: Runtime, height: int = 32, width: int = 32) -> int:
    """Images per forward pass of `predict_logits` on `runtime.device` for `height` x `width` images."""
    if runtime.device.type != "cpu":
        return GPU_BATCH
    return max(MIN_CPU_BATCH, min(CPU_BATCH, CPU_BATCH * CPU_BATCH_AREA // (height * width)))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int | None = None) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> (N, num_classes) float32 logits on the CPU (model in eval mode).

    The model runs on `runtime.device` in the runtime's precision, like training and the CAMs, `batch_size`
    images at a time (default `batch_size_for(runtime)`).
    """
    batch_size = batch_size or batch_size_for(runtime, *images.shape[-2:])
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
