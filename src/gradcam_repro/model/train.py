"""Training: SGD on uint8 images held on the device, augmented a whole batch at a time.

No DataLoader and no per-sample Python: each batch is gathered from one uint8
tensor, randomly cropped (pad 4) and flipped with tensor ops, then normalised.

`train_model` runs whole epochs. Its per-step pieces are public so that a
benchmark can time exactly the code the product runs: `prepare_training` builds
the optimiser, schedule and shuffling RNG, `plan_epoch` draws one epoch's order
and augmentations, `make_batch` builds a step's input and `train_step` takes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from gradcam_repro.errors import UserError
from gradcam_repro.model.resnet import normalize
from gradcam_repro.runtime import autocast

CROP_PADDING_PX = 4
# How often (in steps) the loss is checked for divergence: each check waits for the device.
DIVERGENCE_CHECK_EVERY = 20


@dataclass(frozen=True)
class TrainSettings:
    """What one training run needs to know: the optimiser, its schedule, the batches, augmentation and the seed.

    The names and meanings are those of the run's config fields (`Config`: defaults there are the seed protocol,
    e.g. 5 epochs of SGD at lr 0.01, momentum 0.9, batch 128), so `TrainSettings.of(config)` takes them from it.
    lr_schedule: "constant" | "onecycle"; train_resolutions: progressive resizing, the side per epoch (the last
    repeating; () for full size throughout).
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    lr_schedule: str
    label_smoothing: float
    augment: bool
    train_resolutions: tuple[int, ...]
    compile: bool
    seed: int

    @classmethod
    def of(cls, settings) -> TrainSettings:
        """The training settings of any object with these field names (a run's config, a study cell's)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


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


def epoch_resolution(config: TrainSettings, epoch: int, full: int = 32) -> int:
    """Training input side in px for 1-based `epoch` (progressive resizing; the last value repeats)."""
    sizes = config.train_resolutions
    return sizes[min(epoch, len(sizes)) - 1] if sizes else full


# One-cycle schedule: the share of steps spent warming up to the peak lr.
ONECYCLE_WARMUP = 0.25


def make_optimizer(model: nn.Module, config: TrainSettings, steps_total: int):
    """SGD with `config`'s lr, momentum, Nesterov flag and weight decay, and its per-step LR schedule.

    "onecycle": linear warm-up over the first quarter of `steps_total` steps, then
    linear decay; momentum is not cycled, it stays at `config.momentum`. Runs of
    fewer than 8 steps warm up over 1.5 steps (OneCycleLR divides by the warm-up
    length minus one step), and a single step uses the constant lr.
    "constant": the lr throughout. Returns (optimizer, scheduler).
    """
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay,
    )
    if config.lr_schedule == "onecycle" and steps_total >= 2:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=steps_total, pct_start=max(ONECYCLE_WARMUP, 1.5 / steps_total),
            anneal_strategy="linear", cycle_momentum=False,
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


@dataclass
class TrainHooks:
    """What the caller sees of training; none of it changes the numbers.

    evaluate(model) -> clean test accuracy, called after each epoch (None: nan);
    log receives one line per epoch;
    progress(epoch, done, total) is called after each step with the images done of the epoch's total
    (the pipeline shows it as a bar or plain lines; None: nothing);
    on_epoch_end(state) receives a checkpoint that `train_model(resume=state)` continues from.
    """

    evaluate: Callable[[nn.Module], float] | None = None
    log: Callable[[str], None] = print
    progress: Callable[[int, int, int], None] | None = None
    on_epoch_end: Callable[[dict], None] | None = None


@dataclass
class TrainState:
    """Everything one training run updates or needs per step, built by `prepare_training`.

    `net` is what the steps run through: `model` itself, or `torch.compile(model)`,
    which shares `model`'s parameters. `generator` (CPU) draws every epoch's order
    and augmentations, so saving it makes a resumed run draw what an unbroken one would.
    """

    model: nn.Module
    net: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    config: TrainSettings
    device: torch.device
    amp_dtype: torch.dtype | None
    last_lr: float = float("nan")  # the lr the latest step used (the scheduler has moved past it by then)

    def checkpoint(self, epoch: int, history: list[dict]) -> dict:
        """The state after 1-based `epoch`, as `restore` (and `train_model(resume=...)`) reads it."""
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(), "history": history}

    def restore(self, saved: dict) -> list[dict]:
        """Load a `checkpoint`; returns a copy of its history (the epochs already done)."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        return list(saved["history"])


def prepare_training(model: nn.Module, config: TrainSettings, device: torch.device, amp_dtype: torch.dtype | None,
                     n_images: int) -> TrainState:
    """Move `model` to `device` (channels_last) and build what its steps need.

    The LR schedule spans `config.epochs` epochs of `n_images` images in batches of
    `config.batch_size`; the shuffling generator is seeded with `config.seed`.
    """
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device).to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(n_images / config.batch_size)
    optimizer, scheduler = make_optimizer(model, config, steps_per_epoch * config.epochs)
    net = torch.compile(model) if config.compile else model
    return TrainState(model, net, optimizer, scheduler, generator, config, device, amp_dtype)


@dataclass
class EpochPlan:
    """One epoch's batches, drawn up front (CPU tensors).

    order: (N,) int64, a permutation of the training images; offsets: (N, 2) int64
    and flips: (N,) bool, image i's crop and flip (used only when `augment`);
    side: the input side in px; step k trains on order[k*batch_size:(k+1)*batch_size].
    """

    order: torch.Tensor
    offsets: torch.Tensor
    flips: torch.Tensor
    side: int
    batch_size: int
    augment: bool

    @property
    def steps(self) -> int:
        """Batches in the epoch; the last one may be smaller."""
        return math.ceil(len(self.order) / self.batch_size)


def plan_epoch(config: TrainSettings, epoch: int, n_images: int, generator: torch.Generator) -> EpochPlan:
    """Draw 1-based `epoch`'s order, then its augmentations, from `generator`.

    The augmentations are drawn even when `config.augment` is off, so that the
    generator's stream (and so every later epoch) does not depend on it.
    """
    order = torch.randperm(n_images, generator=generator)
    offsets, flips = sample_augmentation(n_images, generator)
    return EpochPlan(order, offsets, flips, epoch_resolution(config, epoch), config.batch_size, config.augment)


def make_batch(images: torch.Tensor, labels: torch.Tensor, plan: EpochPlan, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s input: (B, 3, h, w) normalised float, channels_last, and its (B,) int64 labels.

    images: (N, 3, H, W) uint8 and labels: (N,) int64, both on the training device; the batch is built there
    (gather, crop/flip, normalise, resize). `plan.side` is a side of a 32 px image and scales with the images':
    (h, w) = (H, W) x side / 32 (`epoch_size`), so 16 px is half size at any size and 32 px none.
    """
    idx = plan.order[step * plan.batch_size:(step + 1) * plan.batch_size]
    on_device = idx.to(images.device)
    x = images[on_device]
    if plan.augment:
        x = random_crop_flip(x, plan.offsets[idx].to(images.device), plan.flips[idx].to(images.device))
    x = normalize(x)
    size = epoch_size(plan.side, tuple(x.shape[-2:]))
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last), labels[on_device]


def epoch_size(side: int, image_hw: tuple[int, int], reference: int = 32) -> tuple[int, int]:
    """The (h, w) an epoch trains (H, W) images at: `side` is given for a `reference` px image, and the images'
    size scales by side / reference (16 of 32: 64x48 images train at 32x24), at least 1 px."""
    return tuple(max(1, round(n * side / reference)) for n in image_hw)


def train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step (and one schedule step) on a `make_batch` batch.

    Returns the batch's mean loss (0-d float32) and its number of correct
    predictions (0-d int64), both left on the device so the step does not wait for it.
    """
    with autocast(state.device, state.amp_dtype):
        logits = state.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=state.config.label_smoothing)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    state.last_lr = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step()
    return loss.detach().float(), (logits.argmax(1) == y).sum()


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainSettings,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    hooks: TrainHooks | None = None,
    resume: dict | None = None,
) -> list[dict]:
    """Train `model` in place on (N, 3, 32, 32) uint8 `images` with (N,) int64 `labels`; leaves it in eval mode.

    Returns the history: one dict per epoch (epoch, loss, train_acc, test_acc, lr,
    train_px, train_seconds, seconds), where test_acc comes from `hooks.evaluate`.
    Passing a state that `hooks.on_epoch_end` received back as `resume` continues
    exactly where it stopped. With `config.compile` the steps run through
    `torch.compile(model)`, which shares `model`'s parameters.
    """
    hooks = hooks if hooks is not None else TrainHooks()
    images, labels = images.to(device), labels.to(device)
    state = prepare_training(model, config, device, amp_dtype, len(labels))
    history, first_epoch = [], 1
    if resume is not None:
        history, first_epoch = state.restore(resume), resume["epoch"] + 1
        hooks.log(f"resuming after epoch {resume['epoch']}/{config.epochs} from the last checkpoint")
    for epoch in range(first_epoch, config.epochs + 1):
        record = _run_epoch(state, images, labels, epoch, hooks)
        history.append(record)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(state.checkpoint(epoch, history))
        hooks.log(
            f"epoch {epoch}/{config.epochs}  loss {record['loss']:.4f}  train acc {record['train_acc']:.3f}  "
            f"clean test acc {record['test_acc']:.3f}  {record['seconds']:.1f} s "
            f"({len(labels) / record['train_seconds']:.0f} img/s at {record['train_px']} px)"
        )
    model.eval()
    return history


def _run_epoch(state: TrainState, images: torch.Tensor, labels: torch.Tensor, epoch: int, hooks: TrainHooks) -> dict:
    """Train one epoch, then evaluate; returns its history record (seconds include the evaluation)."""
    state.model.train()
    start = time.perf_counter()
    plan = plan_epoch(state.config, epoch, len(labels), state.generator)
    loss_sum, correct = _train_epoch(state, images, labels, plan, epoch, hooks.progress)
    n = len(labels)
    mean_loss = loss_sum / n
    if not math.isfinite(mean_loss):
        _diverged(epoch, plan.steps, state.config)
    train_s = time.perf_counter() - start
    return {
        "epoch": epoch,
        "loss": mean_loss,
        "train_acc": correct / n,
        "test_acc": hooks.evaluate(state.model) if hooks.evaluate is not None else float("nan"),
        "lr": state.last_lr,  # of the epoch's last step
        "train_px": plan.side,
        "train_seconds": train_s,
        "seconds": time.perf_counter() - start,
    }


def _train_epoch(state: TrainState, images: torch.Tensor, labels: torch.Tensor, plan: EpochPlan, epoch: int,
                 progress: Callable[[int, int, int], None] | None) -> tuple[float, int]:
    """Every step of `plan`; returns the summed per-image loss and the number of correct predictions."""
    # Totals stay on the device: reading them each step would wait for every step to finish.
    loss_sum = torch.zeros((), device=state.device)
    correct = torch.zeros((), device=state.device, dtype=torch.int64)
    done = 0
    if progress:  # False (the old way to hide the bar) also means none
        progress(epoch, 0, len(labels))
    for step in range(plan.steps):
        x, y = make_batch(images, labels, plan, step)
        loss, hits = train_step(state, x, y)
        loss_sum += loss * len(y)
        correct += hits
        if step % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss):
            _diverged(epoch, step, state.config)
        done += len(y)
        if progress:
            progress(epoch, done, len(labels))
    return loss_sum.item(), correct.item()


def _diverged(epoch: int, step: int, config: TrainSettings):
    raise UserError(
        f"training diverged: the loss became non-finite in epoch {epoch} (step {step}) at lr {config.lr}; "
        "fix: lower --lr or use --precision fp32"
    )
