"""Training loop: it learns, it is deterministic, it resumes exactly, it stops on divergence, it resizes progressively."""

import copy

import pytest
import torch
from torch import nn

from gradcam_repro.config import PRESETS, Config, preset_config
from gradcam_repro.errors import UserError
from gradcam_repro.model.train import (
    TrainHooks,
    epoch_resolution,
    make_batch,
    make_optimizer,
    plan_epoch,
    prepare_training,
    train_model,
    train_step,
)


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def bright_vs_dark(n=256, seed=0):
    """Class 1 images are bright, class 0 dark: learnable in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    base = torch.where(labels[:, None, None, None] == 1, 170, 60)
    noise = torch.randint(-40, 41, (n, 3, 32, 32), generator=gen)
    return (base + noise).clamp(0, 255).to(torch.uint8), labels


def train(config, images, labels, seed=0, evaluate=None):
    torch.manual_seed(seed)
    model = tiny_net()
    history = train_model(model, images, labels, config, torch.device("cpu"), None,
                          hooks=TrainHooks(evaluate=evaluate, log=lambda line: None, progress=False))
    return model, history


def test_training_learns_a_learnable_problem():
    images, labels = bright_vs_dark()
    config = Config(epochs=4, batch_size=32, lr=0.05)
    model, history = train(config, images, labels, evaluate=lambda m: 0.5)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["train_acc"] > 0.9
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and all(h["test_acc"] == 0.5 for h in history)
    assert not model.training


def test_same_seed_gives_identical_training():
    images, labels = bright_vs_dark(128)
    config = Config(epochs=2, batch_size=32, lr=0.05, lr_schedule="onecycle")
    a, ha = train(config, images, labels)
    b, hb = train(config, images, labels)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c, hc = train(Config(epochs=2, batch_size=32, lr=0.05, lr_schedule="onecycle", seed=1), images, labels)
    assert [h["loss"] for h in hc] != [h["loss"] for h in ha]
    assert 0 < ha[-1]["lr"] < ha[0]["lr"] <= 0.05  # the lr the epoch's last step used, never past the schedule's end


def test_non_finite_loss_stops_training_with_a_clear_message():
    images, labels = bright_vs_dark(64)
    with pytest.raises(UserError, match="training diverged: the loss became non-finite.*fix: lower --lr"):
        train(Config(epochs=3, batch_size=32, lr=1e30), images, labels)


def test_progressive_resizing_schedule_and_history():
    config = Config(epochs=4, train_resolutions=(16, 24, 32))
    assert [epoch_resolution(config, e) for e in (1, 2, 3, 4)] == [16, 24, 32, 32]
    assert epoch_resolution(Config(epochs=2), 1) == 32
    images, labels = bright_vs_dark(64)
    _, history = train(Config(epochs=2, batch_size=32, lr=0.05, train_resolutions=(16,)), images, labels)
    assert [h["train_px"] for h in history] == [16, 16]


def test_presets_are_valid_configs_that_only_differ_from_the_seed_protocol_where_listed():
    seed = Config()
    assert (seed.epochs, seed.batch_size, seed.lr, seed.momentum) == (5, 128, 0.01, 0.9)
    for name, changes in PRESETS.items():
        config = preset_config(name).validate()
        for field, default in seed.to_dict().items():
            if field not in changes and field != "preset":
                assert getattr(config, field) == (tuple(default) if isinstance(default, list) else default)
    assert preset_config("quick", epochs=7, lr=None).epochs == 7  # flags override; None means "not given"
    assert preset_config("paper").train_subset is None
    full = preset_config("full")  # the well-trained pair: every training image, its last epochs at full size
    assert full.train_subset is None and full.test_subset is None and full.epochs >= 10
    assert [epoch_resolution(full, e) for e in range(1, full.epochs + 1)][-4:] == [32] * 4


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"bias_fraction": 1.2}, {"patch_color": (300, 0, 0)},
                                 {"train_resolutions": (4,)}, {"precision": "fp8"}, {"lr_schedule": "cosine"}])
def test_out_of_range_config_values_are_refused(bad):
    with pytest.raises(UserError, match="must be"):
        Config(**bad).validate()


class Poisonable(nn.Module):
    """tiny_net whose outputs turn NaN once `poisoned` is set: a divergence on demand."""

    def __init__(self):
        super().__init__()
        self.net, self.poisoned = tiny_net(), False

    def forward(self, x):
        out = self.net(x)
        return out * float("nan") if self.poisoned else out


def test_divergence_after_a_good_epoch_keeps_that_epochs_checkpoint():
    images, labels = bright_vs_dark(64)
    torch.manual_seed(0)
    model = Poisonable()
    saved = []

    def checkpoint_then_diverge(state):
        saved.append((state["epoch"], {k: v.clone() for k, v in state["model"].items()}))
        model.poisoned = True  # the next epoch blows up

    with pytest.raises(UserError, match="training diverged: the loss became non-finite in epoch 2"):
        train_model(model, images, labels, Config(epochs=3, batch_size=32, lr=0.05), torch.device("cpu"), None,
                    hooks=TrainHooks(log=lambda line: None, progress=False, on_epoch_end=checkpoint_then_diverge))
    assert [epoch for epoch, _ in saved] == [1]
    assert all(torch.isfinite(v).all() for v in saved[0][1].values())


def test_resuming_from_an_epoch_checkpoint_equals_training_without_a_break():
    images, labels = bright_vs_dark(96)
    # One-cycle and progressive resizing: the schedule position and the epoch number must both carry over.
    config = Config(epochs=3, batch_size=32, lr=0.05, lr_schedule="onecycle", train_resolutions=(16, 24, 32))
    device, evaluated, states = torch.device("cpu"), [], []

    def evaluate(model):
        evaluated.append(model)
        return 0.5

    whole, history = train(config, images, labels, evaluate=evaluate)
    torch.manual_seed(0)
    train_model(tiny_net(), images, labels, config, device, None,
                hooks=TrainHooks(evaluate=evaluate, log=lambda line: None, progress=False,
                                 on_epoch_end=lambda state: states.append(copy.deepcopy(state))))
    assert [s["epoch"] for s in states] == [1, 2, 3]
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    resumed, lines, evaluated[:] = tiny_net(), [], []
    resumed_history = train_model(resumed, images, labels, config, device, None, resume=states[0],
                                  hooks=TrainHooks(evaluate=evaluate, log=lines.append, progress=False))
    assert lines[0] == "resuming after epoch 1/3 from the last checkpoint" and len(lines) == 3
    assert len(evaluated) == 2  # epochs 2 and 3 only
    timeless = [[{k: v for k, v in h.items() if "seconds" not in k} for h in hs] for hs in (history, resumed_history)]
    assert timeless[0] == timeless[1] and [h["epoch"] for h in resumed_history] == [1, 2, 3]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_the_public_step_functions_are_the_steps_train_model_takes():
    # The benchmark times make_batch + train_step; they must be exactly one epoch of train_model.
    images, labels = bright_vs_dark(80)
    config = Config(epochs=1, batch_size=32, lr=0.05, train_resolutions=(24,), label_smoothing=0.1)
    whole, history = train(config, images, labels)
    torch.manual_seed(0)
    model = tiny_net()
    state = prepare_training(model, config, torch.device("cpu"), None, len(labels))
    model.train()
    plan = plan_epoch(config, 1, len(labels), state.generator)
    assert plan.steps == 3 and plan.side == 24
    loss_sum = 0.0
    for step in range(plan.steps):
        x, y = make_batch(images, labels, plan, step)
        assert x.shape[-2:] == (24, 24) and x.dtype == torch.float32
        loss, correct = train_step(state, x, y)
        loss_sum += loss.item() * len(y)
        assert 0 <= correct.item() <= len(y)
    for a, b in zip(whole.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert loss_sum / len(labels) == pytest.approx(history[0]["loss"], rel=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 8, 40])
def test_onecycle_schedule_works_for_any_number_of_steps_and_keeps_its_shape(steps):
    # Tiny runs (fewer than 8 steps) used to divide by zero inside OneCycleLR.
    config = Config(lr=0.1, lr_schedule="onecycle")
    _, scheduler = make_optimizer(nn.Linear(2, 2), config, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs)
    if steps >= 8:  # unchanged: the lr peaks at the end of the first quarter of the steps
        assert max(range(steps), key=lambda i: lrs[i]) == int(0.25 * steps) - 1


def test_progressive_resizing_scales_with_the_images_size():
    # --train-resolutions are sides of a 32 px image: a 64x48 tree trains at half size in a 16 px epoch and at its
    # own size in a 32 px one (it used to train every epoch at 32x32 or less, squeezing non-square images too).
    images = torch.randint(0, 256, (6, 3, 64, 48), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.int64)
    config = Config(train_resolutions=(16, 32), batch_size=4, augment=True)
    gen = torch.Generator().manual_seed(0)
    first, second = plan_epoch(config, 1, 6, gen), plan_epoch(config, 2, 6, gen)
    assert make_batch(images, labels, first, 0)[0].shape == (4, 3, 32, 24)
    assert make_batch(images, labels, second, 0)[0].shape == (4, 3, 64, 48)
    square = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)  # CIFAR-10: as before
    assert make_batch(square, labels, first, 0)[0].shape == (4, 3, 16, 16)
    assert make_batch(square, labels, second, 0)[0].shape == (4, 3, 32, 32)
