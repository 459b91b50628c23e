"""Helpers shared by the CAM tests (imported by the test modules; tests/ is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gradcam_repro.model.resnet import resnet18_cifar


def all_hooks_empty(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        and not getattr(m, "_backward_pre_hooks", {})
        for m in model.modules()
    )


def minmax(maps) -> torch.Tensor:
    """Per-image min-max scaling of (N, H, W) maps; a constant map becomes all zero."""
    a = torch.as_tensor(np.asarray(maps)).double()
    lo = a.amin(dim=(1, 2), keepdim=True)
    hi = a.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi > lo, (a - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(a))


def seeded_resnet() -> nn.Module:
    """Seeded CIFAR ResNet-18 in eval mode with non-trivial BatchNorm parameters and statistics.

    (Random BN buffers stand in for a few training steps: same effect on the maps,
    a fraction of the CPU time.)
    """
    torch.manual_seed(0)
    model = resnet18_cifar()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_((torch.rand(c, generator=g) - 0.5) * 0.2)
    return model.eval()
