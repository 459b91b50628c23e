"""The in-memory form every dataset takes: uint8 image tensors, labels, optional object masks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from gradcam_repro.errors import UserError

IMAGE_SIZE = 32


@dataclass
class ImageData:
    """A train/test split held in memory.

    images: (N, 3, H, W) uint8 (32x32 for CIFAR-10 and shapes; --image-size for a folder); labels: (N,) int64 in
    [0, len(classes)); masks (shapes only): (N, H, W) bool, True on the object.
    """

    name: str
    classes: tuple[str, ...]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    fingerprint: str  # sha256 of the decoded tensors: identifies the exact pixels used
    source: str  # where it came from, for the record
    train_masks: torch.Tensor | None = None
    test_masks: torch.Tensor | None = None

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise UserError(f"unknown class {name!r}; fix: use one of {', '.join(self.classes)}")
        return self.classes.index(name)


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 over the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.contiguous().cpu()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of `n` examples with classes as balanced as the data allows, chosen by `seed` (sorted)."""
    if n >= len(labels):
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    # Rank each example within its class in the random order; taking the lowest
    # ranks first interleaves the classes, so any prefix is class-balanced.
    shuffled = labels[order]
    rank = torch.empty_like(order)
    for c in shuffled.unique():
        where = (shuffled == c).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    keep = order[torch.argsort(rank * len(labels) + torch.arange(len(labels)), stable=True)[:n]]
    return keep.sort().values


@dataclass(frozen=True)
class EvalSet:
    """Labelled images a model is measured or audited on: (N, 3, H, W) uint8 `images`, (N,) int64 `labels` and
    the class names.

    What is known besides, for checking a measurement only: `masks` (N, H, W) bool, the true object masks (the
    shapes set); `patched` (N,) bool, where a known artefact was pasted, and `planted_box` where it sits, or
    `planted_masks` (N, H, W) bool where its place varies per image (an audit's check of its own clusters and
    regions). None where nobody knows.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    masks: torch.Tensor | None = None
    patched: torch.Tensor | None = None
    planted_box: tuple[int, int, int, int] | None = None
    planted_masks: torch.Tensor | None = None
