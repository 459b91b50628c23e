"""Measuring a trained model: batched predictions, batched Grad-CAM, and CAM scores.

Pure functions on tensors; every pass over a dataset goes in large batches
(no per-image forward or backward passes).
"""

from __future__ import annotations

import torch
from torch import nn

from gradcam_repro import metrics
from gradcam_repro.bias import inject_patch
from gradcam_repro.gradcam import make_cam
from gradcam_repro.model import normalize
from gradcam_repro.runtime import autocast, eval_mode


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> (N, num_classes) float32 logits on the CPU (model in eval mode)."""
    out = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = normalize(images[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label (nan for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    return (logits.argmax(1) == labels).float().mean().item()


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    layers: str | list[str],
    device: torch.device,
    targets: torch.Tensor | None = None,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
    method: str = "gradcam",
) -> dict[str, dict[str, torch.Tensor]]:
    """CAMs (Grad-CAM by default, any of gradcam.CAM_METHODS) for (N, 3, H, W) uint8 `images` at each layer.

    One forward/backward per batch for all layers. Returns {layer: {"maps": (N, H, W)
    in [0, 1], "raw": (N, h, w) >= 0, "targets": (N,) int64, "logits": (N, C)}}, all
    on the CPU. `targets` None explains the predicted class.
    """
    cam = make_cam(method, model, layers, autocast_dtype=amp_dtype)
    parts: dict[str, dict[str, list]] = {name: {"maps": [], "raw": [], "targets": [], "logits": []} for name in cam.layers}
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        t = None if targets is None else targets[start:start + batch_size].to(device)
        for name, result in cam.per_layer(x, t).items():
            for key in parts[name]:
                parts[name][key].append(getattr(result, key).cpu())
    h, w = images.shape[-2:]
    empty = {"maps": torch.empty(0, h, w), "raw": torch.empty(0, 0, 0), "targets": torch.empty(0, dtype=torch.int64),
             "logits": torch.empty(0, 0)}
    return {name: {k: torch.cat(v) if v else empty[k] for k, v in d.items()} for name, d in parts.items()}


def opposite_corner(corner: str) -> str:
    vertical, _, horizontal = corner.partition("-")
    return f"{'bottom' if vertical == 'top' else 'top'}-{'right' if horizontal == 'left' else 'left'}"


def counterfactual_patches(patch: dict) -> dict[str, dict]:
    """The configured patch, the same place in the complementary colour, and the same colour at the opposite corner."""
    other_color = tuple(255 - c for c in patch["color"])
    return {
        "patch": dict(patch),
        "other_color": {**patch, "color": other_color},
        "other_corner": {**patch, "corner": opposite_corner(patch["corner"])},
    }


def seeded_cap(index: torch.Tensor, cap: int | None, seed: int) -> torch.Tensor:
    """At most `cap` entries of `index`, a seeded random choice kept in original order."""
    if cap is None or len(index) <= cap:
        return index
    pick = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:cap]
    return index[pick.sort().values]


def score_maps(maps: torch.Tensor, box, seed: int, masks: torch.Tensor | None = None) -> dict:
    """Energy and pointing game of (N, H, W) maps, against `box` or per-image `masks`, with CIs."""
    if masks is None:
        energy, hits = metrics.cam_energy_in_box(maps, box), metrics.pointing_game(maps, box)
    else:
        energy, hits = metrics.cam_energy_in_mask(maps, masks), metrics.pointing_game_mask(maps, masks)
    return {"energy": metrics.bootstrap_ci(energy, seed), "pointing": metrics.bootstrap_ci(hits, seed)}


def measure_shortcut(
    models: dict[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    target: int,
    patch: dict,
    box: tuple[int, int, int, int],
    layers: list[str],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    seed: int = 0,
    counterfactual_images: int | None = None,
    cam_images: int | None = None,
    cam_batch_size: int = 256,
    masks: torch.Tensor | None = None,
    method: str = "gradcam",
) -> tuple[dict, dict]:
    """Every number of the shortcut study, computed the same way for each model.

    images: (N, 3, H, W) uint8 clean test images with (N,) labels; `target` is the
    shortcut class. Returns (metrics, examples): metrics is JSON-ready (each mean
    or rate as {"mean", "low", "high", "n"}); examples holds tensors for figures.
    CAMs (`method`, Grad-CAM by default) always explain the target class's logit, in the run's
    precision (`amp_dtype`, as the predictions; None is float32).
    """
    is_target = labels == target
    chosen = seeded_cap(torch.arange(len(labels)), cam_images, seed)  # images scored against their masks
    target_idx = is_target.nonzero().squeeze(1)
    other_idx = seeded_cap((~is_target).nonzero().squeeze(1), counterfactual_images, seed)
    patched_targets = inject_patch(images[target_idx], **patch)
    variants = counterfactual_patches(patch)
    pasted = {name: inject_patch(images[other_idx], **v) for name, v in variants.items()}
    other_labels = labels[other_idx]
    uniform_box = metrics.uniform_energy(box, images.shape[-1])
    out = {"models": {}}
    examples = {"patched_targets": patched_targets, "other_images": images[other_idx], "pasted": pasted["patch"],
                "patched_target_maps": {}, "flipped": {}, "predictions": {}}
    for name, model in models.items():
        clean = predict_logits(model, images, device, amp_dtype=amp_dtype).argmax(1)
        patched = predict_logits(model, patched_targets, device, amp_dtype=amp_dtype).argmax(1)
        biased_preds = clean.clone()
        biased_preds[target_idx] = patched
        correct = clean == labels
        m = {
            "clean_test_acc": metrics.bootstrap_ci(correct, seed),
            "per_class_acc": {classes[c]: correct[labels == c].float().mean().item() for c in range(len(classes))},
            "biased_test_acc": metrics.bootstrap_ci(biased_preds == labels, seed),
            "target_recall_clean": metrics.bootstrap_ci(clean[target_idx] == target, seed),
            "target_recall_patched": metrics.bootstrap_ci(patched == target, seed),
            "flip_to_target": {"none": metrics.bootstrap_ci(metrics.flip_to_target_rate(clean[other_idx], other_labels, target), seed)},
        }
        flipped = None
        for variant, batch in pasted.items():
            preds = predict_logits(model, batch, device, amp_dtype=amp_dtype).argmax(1)
            hit = metrics.flip_to_target_rate(preds, other_labels, target)
            m["flip_to_target"][variant] = metrics.bootstrap_ci(hit, seed)
            if variant == "patch":
                flipped = hit
        # CAM sets: (a) patched target images called target, (b) pasted non-target
        # images that flipped to target, (c) clean target images (control).
        sets = {
            "patched_target": patched_targets[seeded_cap((patched == target).nonzero().squeeze(1), cam_images, seed)],
            "flipped": pasted["patch"][seeded_cap(flipped.nonzero().squeeze(1), cam_images, seed)],
            "clean_target": images[target_idx][seeded_cap(torch.arange(len(target_idx)), cam_images, seed)],
        }
        m["cam"] = {layer: {} for layer in layers}
        for set_name, batch in sets.items():
            cams = compute_cams(model, batch, layers, device, targets=torch.full((len(batch),), target),
                                batch_size=cam_batch_size, amp_dtype=amp_dtype, method=method)
            for layer in layers:
                m["cam"][layer][set_name] = score_maps(cams[layer]["maps"], box, seed)
            if set_name == "patched_target":
                examples["patched_target_maps"][name] = {layer: cams[layer]["maps"] for layer in layers}
        if masks is not None:  # localisation against the true object masks (shapes)
            cams = compute_cams(model, images[chosen], layers, device, targets=labels[chosen], batch_size=cam_batch_size,
                                amp_dtype=amp_dtype, method=method)
            m["localisation"] = {layer: score_maps(cams[layer]["maps"], None, seed, masks=masks[chosen]) for layer in layers}
        m["verdict"] = metrics.verdicts(m, uniform_box)
        examples["flipped"][name] = flipped
        examples["predictions"][name] = {"clean": clean, "patched_targets": patched}
        out["models"][name] = m
    out["uniform"] = {"energy_in_box": uniform_box,
                      "pointing": metrics.uniform_pointing(box, images.shape[-1])}
    if masks is not None:
        out["uniform"]["energy_in_mask"] = metrics.uniform_energy(masks[chosen])
    out["counterfactual_patches"] = {k: {**v, "color": list(v["color"])} for k, v in variants.items()}
    out["n"] = {"test": len(labels), "target_test": len(target_idx), "counterfactual_non_target": len(other_idx)}
    return out, examples
