"""Training: SGD on uint8 images held on the device, augmented a whole batch at a time.

No DataLoader and no per-sample Python: each batch is gathered from one uint8
tensor, randomly cropped (pad 4) and flipped with tensor ops, then normalised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gradcam_repro.config import Config
from gradcam_repro.errors import UserError
from gradcam_repro.model import normalize
from gradcam_repro.runtime import autocast

CROP_PADDING_PX = 4


def random_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = CROP_PADDING_PX) -> torch.Tensor:
    """Batched RandomCrop(size, padding) + RandomHorizontalFlip on uint8 images.

    images: (N, C, H, W) uint8; offsets: (N, 2) int64 (row, col) in [0, 2*padding];
    flips: (N,) bool. Zero padding, as torchvision's RandomCrop(padding=p) does.
    Returns (N, C, H, W) uint8.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (offsets[:, 0:1] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (offsets[:, 1:2] + torch.arange(w, device=images.device))
    # A flipped crop reads its columns right-to-left.
    cols = torch.where(flips[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def sample_augmentation(n: int, generator: torch.Generator, padding: int = CROP_PADDING_PX) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (n, 2) uniform over 0..2*padding, and flips (n,) with probability 0.5."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def epoch_resolution(config: Config, epoch: int, full: int = 32) -> int:
    """Training input side in px for 1-based `epoch` (progressive resizing; the last value repeats)."""
    sizes = config.train_resolutions
    return sizes[min(epoch, len(sizes)) - 1] if sizes else full


def make_optimizer(model: nn.Module, config: Config, steps_total: int):
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay,
    )
    if config.lr_schedule == "onecycle":
        # Linear warm-up over the first quarter, then linear decay; momentum is
        # kept at the seed's 0.9 rather than cycled.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=max(steps_total, 1), pct_start=0.25,
            anneal_strategy="linear", cycle_momentum=False,
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: Config,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    evaluate: Callable[[nn.Module], float] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    resume: dict | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    max_steps: int | None = None,
) -> list[dict]:
    """Train `model` in place on (N, 3, 32, 32) uint8 `images` with (N,) int64 `labels`.

    `evaluate(model) -> clean test accuracy` is called after each epoch. Returns
    the history: one dict per epoch (epoch, loss, train_acc, test_acc, lr, seconds).
    After each epoch `on_epoch_end(state)` receives everything needed to resume
    (model, optimiser, scheduler and shuffling-RNG states, epoch, history);
    passing that `state` back as `resume` continues exactly where it stopped.
    `max_steps` (for benchmarks) ends each epoch after that many batches; the
    epoch's record then counts only the images actually seen. With
    `config.compile` the steps run through `torch.compile(model)`, which shares
    `model`'s parameters.
    """
    from tqdm.auto import tqdm

    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    generator = torch.Generator().manual_seed(config.seed)
    images = images.to(device)
    labels = labels.to(device)
    model.to(device).to(memory_format=torch.channels_last)
    n = len(labels)
    steps_per_epoch = math.ceil(n / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch * config.epochs)
    # The schedule still spans full epochs: a capped epoch does the same per-step work as the start of a real one.
    steps = steps_per_epoch if max_steps is None else min(steps_per_epoch, max_steps)
    seen = min(n, steps * config.batch_size)
    net = torch.compile(model) if config.compile else model
    history, first_epoch = [], 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        history, first_epoch = list(resume["history"]), resume["epoch"] + 1
        log(f"resuming after epoch {resume['epoch']}/{config.epochs} from the last checkpoint")
    for epoch in range(first_epoch, config.epochs + 1):
        side = epoch_resolution(config, epoch)
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        offsets, flips = sample_augmentation(n, generator)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        bar = tqdm(total=seen, desc=f"epoch {epoch}/{config.epochs}", unit="img", leave=False, disable=not progress or None)
        for step in range(steps):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = images[idx.to(device)]
            if config.augment:
                x = random_crop_flip(x, offsets[idx].to(device), flips[idx].to(device))
            x = normalize(x)
            if side != x.shape[-1]:
                x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx.to(device)]
            with autocast(device, amp_dtype):
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().float() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            if step % 20 == 0 and not torch.isfinite(loss.detach()):
                _diverged(epoch, step, config)
            bar.update(len(idx))
        bar.close()
        mean_loss = loss_sum.item() / seen
        if not math.isfinite(mean_loss):
            _diverged(epoch, steps, config)
        train_s = time.perf_counter() - start
        record = {
            "epoch": epoch,
            "loss": mean_loss,
            "train_acc": correct.item() / seen,
            "test_acc": evaluate(model) if evaluate is not None else float("nan"),
            "lr": optimizer.param_groups[0]["lr"],
            "train_px": side,
            "train_seconds": train_s,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "history": history})
        log(
            f"epoch {epoch}/{config.epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.3f}  "
            f"clean test acc {record['test_acc']:.3f}  {record['seconds']:.1f} s ({seen / train_s:.0f} img/s at {side} px)"
        )
    model.eval()
    return history


def _diverged(epoch: int, step: int, config: Config):
    raise UserError(
        f"training diverged: the loss became non-finite in epoch {epoch} (step {step}) at lr {config.lr}; "
        "fix: lower --lr or use --precision fp32"
    )
