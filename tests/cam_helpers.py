"""Helpers shared by the CAM tests (imported by the test modules; tests/ is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradcam_repro.model.resnet import normalize, resnet18_cifar


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


class SmallCNN(nn.Module):
    """Four conv blocks with named layers; conv2 runs at 16x16, like the ResNet's layer2."""

    def __init__(self):
        super().__init__()

        def block(c_in, c_out, stride):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.conv1, self.conv2, self.conv3, self.conv4 = block(3, 16, 1), block(16, 32, 2), block(32, 64, 2), block(64, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.conv4(self.conv3(self.conv2(self.conv1(x)))).mean(dim=(2, 3)))


def train_small_cnn(images, labels, epochs: int = 3, seed: int = 0) -> nn.Module:
    """Adam, batch 64, 3 epochs: a few seconds on one core."""
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = normalize(images)
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 64):
            batch = order[start:start + 64]
            loss = F.cross_entropy(model(x[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
