"""Deletion and insertion scores (Petsiuk et al., 2018, "RISE").

A faithful saliency map ranks pixels by how much the model's decision depends
on them. Deletion removes the most salient pixels first: the probability of the
explained class should fall fast (low area under the curve). Insertion starts
from a blurred image and puts the original pixels back, most salient first:
the probability should rise fast (high area under the curve). Every method is
compared against `random_maps`, a map that knows nothing about the model.

Pure functions on tensors. All step-variants of a chunk of images are built as
one tensor and forwarded in large batches; there is no per-image forward pass.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
from torch import nn

from gradcam_repro.measure import scores
from gradcam_repro.runtime import autocast, eval_mode

# Deleted pixels take the dataset mean colour, which is 0 in normalised space:
# the "nothing here" value the model saw least evidence in during training.
DELETION_BASELINE = 0.0
# The insertion canvas of the RISE code: a Gaussian blur with an 11 px kernel
# and sigma 5, which removes the object's detail but keeps its colours.
# torchvision pads by reflection where the RISE code zero-pads, so border
# pixels keep their colour instead of being pulled towards the mean.
INSERTION_BLUR_KERNEL_PX = 11
INSERTION_BLUR_SIGMA_PX = 5.0


def blurred_canvas(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float -> the same images blurred as RISE's insertion starting point (same shape)."""
    k = INSERTION_BLUR_KERNEL_PX
    return TF.gaussian_blur(images.float(), kernel_size=[k, k], sigma=[INSERTION_BLUR_SIGMA_PX] * 2)


def step_fractions(num_pixels: int, pixels_per_step: int) -> torch.Tensor:
    """Fractions of pixels changed at each step: (S,) float32 from 0 to 1, S = ceil(HW / pixels_per_step) + 1.

    The last step may change fewer than `pixels_per_step` pixels, so it ends exactly at 1.
    """
    counts = torch.arange(math.ceil(num_pixels / pixels_per_step) + 1) * pixels_per_step
    return counts.clamp(max=num_pixels).float() / num_pixels


def saliency_rank(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) maps -> (N, H*W) int64: each pixel's position in descending-saliency order (0 = most salient).

    Ties are broken by a stable sort, i.e. in raster order (the earlier pixel
    comes first), so a constant map deletes row by row from the top left.
    """
    flat = maps.detach().float().flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return fallback


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    pixels_per_step: int = 64,
    batch_size: int = 512,
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """Deletion and insertion curves and their areas for each image's saliency map.

    images: (N, 3, H, W) float, normalised for the model; targets: (N,) int64
    classes explained; maps: (N, H, W) saliency, any non-negative scale (only
    the pixel order matters). A pixel is changed in all three channels at once,
    `pixels_per_step` pixels per step in descending saliency. device: where the
    model runs (default: its parameters' device, else the images').

    Returns, all on the CPU, with S = ceil(H*W / pixels_per_step) + 1:
      "fractions": (S,) float32 in [0, 1], fraction of pixels changed;
      "deletion": (N, S) softmax probability of the target class as the most
          salient pixels are set to DELETION_BASELINE (first column: the image,
          last: the all-baseline image);
      "insertion": (N, S) the same as the original pixels are pasted onto the
          blurred canvas (first column: the blurred image, last: the image);
      "deletion_auc", "insertion_auc": (N,) trapezoid areas over the fractions, in [0, 1].
    Lower deletion AUC and higher insertion AUC mean a more faithful map.
    """
    n, _, h, w = images.shape
    if maps.shape != (n, h, w):
        raise ValueError(f"maps must be (N, H, W) = {(n, h, w)}, got {tuple(maps.shape)}")
    if len(targets) != n:
        raise ValueError(f"got {len(targets)} targets for {n} images; pass one target class per image")
    if pixels_per_step < 1 or batch_size < 1:
        raise ValueError("pixels_per_step and batch_size must be at least 1")
    device = torch.device(device) if device is not None else _model_device(model, images.device)
    fractions = step_fractions(h * w, pixels_per_step)
    counts = (fractions * (h * w)).round().long().to(device)
    # Enough images per chunk that their deletion + insertion variants fill a couple of batches.
    images_per_chunk = max(1, batch_size // len(fractions))
    deletion, insertion = [], []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, n, images_per_chunk):
            chunk = slice(start, start + images_per_chunk)
            curves = _chunk_curves(model, images[chunk].to(device).float(),
                                   torch.as_tensor(targets[chunk], device=device).long(), maps[chunk].to(device), counts,
                                   batch_size, amp_dtype)
            deletion.append(curves[0])
            insertion.append(curves[1])
    deletion = torch.cat(deletion) if deletion else torch.empty(0, len(fractions))
    insertion = torch.cat(insertion) if insertion else torch.empty(0, len(fractions))
    return {
        "fractions": fractions,
        "deletion": deletion,
        "insertion": insertion,
        "deletion_auc": torch.trapezoid(deletion, fractions, dim=1),
        "insertion_auc": torch.trapezoid(insertion, fractions, dim=1),
    }


def _chunk_curves(model: nn.Module, x: torch.Tensor, t: torch.Tensor, maps: torch.Tensor, counts: torch.Tensor,
                  batch_size: int, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """(2, n, S) target probabilities of n images along the deletion and insertion paths (CPU).

    `counts` (S,): pixels changed at each step; the variants of all steps go through in large batches.
    """
    n, _, h, w = x.shape
    num_steps = len(counts)
    rank = saliency_rank(maps)
    # changed[i, s, p]: pixel p of image i is changed at step s.
    changed = (rank[:, None, :] < counts[None, :, None]).view(n, num_steps, 1, h, w)
    original = x[:, None]
    deleted = torch.where(changed, torch.full_like(original, DELETION_BASELINE), original)
    inserted = torch.where(changed, original, blurred_canvas(x)[:, None])
    variants = torch.cat([deleted, inserted]).flatten(0, 1)  # (2 * n * S, 3, H, W)
    probs = []
    for b in range(0, len(variants), batch_size):
        with autocast(x.device, amp_dtype):
            logits = model(variants[b:b + batch_size].contiguous(memory_format=torch.channels_last))
        probs.append(logits.float().softmax(dim=1))
    probs = torch.cat(probs).view(2, n, num_steps, -1)
    return probs.gather(3, t.view(1, -1, 1, 1).expand(2, -1, num_steps, 1))[..., 0].cpu()


def random_maps(n: int, size: int | tuple[int, int], seed: int) -> torch.Tensor:
    """(n, H, W) float32 maps, i.i.d. uniform in [0, 1): the chance baseline, the same for the same seed."""
    h, w = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, generator=generator)


def summarise_faithfulness(result: dict, seed: int = 0) -> dict:
    """Mean deletion and insertion AUC with bootstrap 95% CIs: {"deletion_auc": ci, "insertion_auc": ci}.

    result: the output of `deletion_insertion`; each ci is scores.bootstrap_ci's {"mean", "low", "high", "n"}.
    """
    return {
        "deletion_auc": scores.bootstrap_ci(result["deletion_auc"], seed=seed),
        "insertion_auc": scores.bootstrap_ci(result["insertion_auc"], seed=seed),
    }
