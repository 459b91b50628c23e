"""Two of the three repairs of a shortcut, as training steps on tensors (the third, `augment`, is data: see
`data.artefact.decorrelate`, then ordinary training).

rrr         Right for the Right Reasons (Ross et al. 2017): fine-tune with cross-entropy plus `weight` times the
            squared input gradient of the summed log-probabilities inside the artefact's mask. The gradient of
            that penalty needs a second backward pass through the first (double backprop).
last-layer  Deep Feature Reweighting (Kirichenko et al. 2023): keep every layer but `fc`, and refit `fc` on
            the penultimate features of a small set balanced over class x artefact present/absent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradcam_repro.errors import UserError
from gradcam_repro.model.sources import model_input
from gradcam_repro.runtime import Runtime, autocast


def rrr_penalty(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, penalty) for normalised inputs `x` (N, C, H, W) and a `mask` broadcastable to `x` (1 inside the
    region, 0 outside): penalty = sum over masked input elements of (d sum_k log p_k / dx)^2, averaged over
    the N images. The penalty keeps its graph, so backpropagating it trains the model (double backprop)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    wide = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits are summed in fp32; fp64 stays fp64
    log_probs = F.log_softmax(logits.to(wide), dim=1).sum()
    (grad,) = torch.autograd.grad(log_probs, x, create_graph=True)
    penalty = (grad.to(wide) * mask).pow(2).sum() / len(x)
    return logits, penalty


@dataclass(frozen=True)
class FinetuneSettings:
    """RRR fine-tuning: SGD (momentum 0.9, Nesterov) at a constant `lr`, `epochs` passes in batches of
    `batch_size`, penalty `weight`, order drawn from `seed`; no augmentation (the mask stays where it is)."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    weight: float = 1.0
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0


def rrr_finetune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                 settings: FinetuneSettings, runtime: Runtime, progress: Callable[[int, int, int], None] | None = None,
                 on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Fine-tune `model` in place on (N, 3, H, W) uint8 `images` with the RRR penalty inside `mask` (H, W) bool;
    leaves it in eval mode. Returns one record per epoch (loss, penalty, train_acc, seconds), each also passed
    to `on_epoch` as that epoch ends."""
    device = runtime.device
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                                weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    region = mask.to(device=device, dtype=torch.float32)[None, None]
    history = []
    for epoch in range(1, settings.epochs + 1):
        start, order = time.perf_counter(), torch.randperm(len(labels), generator=generator)
        totals = torch.zeros(3, dtype=torch.float64)  # summed loss, summed penalty, correct
        for done in range(0, len(order), settings.batch_size):
            idx = order[done:done + settings.batch_size]
            x, y = model_input(model, images[idx].to(device)), labels[idx].to(device)
            totals += _rrr_step(model, optimizer, x, y, region, settings, runtime.amp_dtype)
            if progress is not None:
                progress(epoch, min(done + settings.batch_size, len(order)), len(order))
        loss, penalty, correct = (totals / len(labels)).tolist()
        if not math.isfinite(loss):
            raise UserError(f"RRR fine-tuning diverged in epoch {epoch} (penalty weight {settings.weight}, lr "
                            f"{settings.lr}); fix: lower --rrr-weight or --repair-lr")
        history.append({"epoch": epoch, "loss": loss, "penalty": penalty, "train_acc": correct,
                        "lr": settings.lr, "seconds": time.perf_counter() - start})
        if on_epoch is not None:
            on_epoch(history[-1])
    model.eval()
    return history


def _rrr_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              region: torch.Tensor, settings: FinetuneSettings, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One step; returns (summed loss, summed penalty, correct) of the batch as a float64 CPU tensor."""
    with autocast(x.device, amp_dtype):
        logits, penalty = rrr_penalty(model, x, region)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=settings.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    (loss + settings.weight * penalty).backward()
    optimizer.step()
    n = len(y)
    return torch.tensor([loss.item() * n, penalty.item() * n, (logits.argmax(1) == y).sum().item()], dtype=torch.float64)


def classifier_of(model: nn.Module) -> nn.Linear:
    """The linear layer that makes `model`'s logits: `fc` (this project's and torchvision's ResNets), timm's
    `get_classifier()`, else the last `nn.Linear` registered; `UserError` where there is none."""
    head = getattr(model, "fc", None)
    if not isinstance(head, nn.Linear) and hasattr(model, "get_classifier"):
        head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if head is None:
        raise UserError(f"{type(model).__name__} has no nn.Linear classifier to refit; fix: use the rrr strategy, which "
                        "fine-tunes any model")
    return head


def penultimate_features(model: nn.Module, images: torch.Tensor, device: torch.device,
                         amp_dtype: torch.dtype | None = None, batch_size: int = 512) -> torch.Tensor:
    """(N, D) float32 inputs of `model`'s classifier (`classifier_of`) for (N, 3, H, W) uint8 `images` (eval
    mode, no gradients)."""
    head, captured = classifier_of(model), []
    handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].float().cpu()))
    try:
        model.eval()
        with torch.no_grad(), autocast(device, amp_dtype):
            for start in range(0, len(images), batch_size):
                model(model_input(model, images[start:start + batch_size].to(device)))
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0, head.in_features)


def refit_last_layer(fc: nn.Linear, features: torch.Tensor, labels: torch.Tensor, weight_decay: float = 1e-3,
                     steps: int = 200) -> dict:
    """Refit `fc` in place: full-batch L-BFGS on cross-entropy + `weight_decay` * ||W||^2 over `features`
    (N, D) with `labels` (N,), starting from its current weights. Returns {"loss", "train_acc", "steps"}."""
    x, y = features.to(fc.weight.device), labels.to(fc.weight.device)
    fc.train()
    optimizer = torch.optim.LBFGS(fc.parameters(), lr=1.0, max_iter=steps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fc(x), y) + weight_decay * fc.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    fc.eval()
    with torch.no_grad():
        logits = fc(x)
        return {"loss": F.cross_entropy(logits, y).item(), "train_acc": (logits.argmax(1) == y).float().mean().item(),
                "steps": steps}
