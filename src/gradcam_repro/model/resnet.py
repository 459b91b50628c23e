"""ResNet-18 adapted to 32x32 inputs, and its checkpoint contract.

`model.pt` is a plain `state_dict` that loads into exactly `resnet18_cifar()`;
`config.json` beside it holds the full config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from gradcam_repro import store
from gradcam_repro.errors import UserError

# Per-channel mean/std of the CIFAR-10 training set, used to normalise inputs
# outside the model (so the checkpoint stays a plain torchvision state_dict).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool.

    On 32x32 inputs the stages run at 32, 16, 8 and 4 px (layer1..layer4), so
    `layer4` is a 4x4 grid. Input: (N, 3, 32, 32) normalised float; output: (N, num_classes) logits.
    """
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 in [0, 255] -> float32 normalised with the CIFAR-10 statistics."""
    mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def save_model(model: nn.Module, path: str | Path) -> str:
    """Save the model's state_dict (on the CPU) atomically; returns the file's sha256."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return store.torch_save(path, state)


def load_model(path: str | Path, num_classes: int = 10, device: str | torch.device = "cpu") -> nn.Module:
    """Load a `model.pt` into `resnet18_cifar`; raises `UserError` if it is not one (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; fix: pass a run folder or a model.pt written by gradcam-repro")
    state = store.torch_load(path, fix="pass a model.pt written by gradcam-repro (or rerun the command that wrote it)")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint also holds optimiser state
    model = resnet18_cifar(num_classes)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"checkpoint {path} does not match the CIFAR ResNet-18 ({first[:160]}); "
            "fix: pass a model.pt written by gradcam-repro for this architecture"
        ) from None
    return model.to(device).eval()
