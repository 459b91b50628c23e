"""The example images a run's figures show, with their maps and predictions, measured once.

Everything here runs the models (in the run's precision, like the metrics) and returns plain tensors;
`report.run_figures` only draws them, so a figure never disagrees with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from gradcam_repro.data.images import EvalSet
from gradcam_repro.explain.registry import display_name, explain_images
from gradcam_repro.measure import scores
from gradcam_repro.measure.shortcut import Progress, ShortcutProtocol, staged
from gradcam_repro.runtime import Runtime

SIDE_BY_SIDE_IMAGES = 6
# The HTML report's gallery: this many patched target images and as many non-target images with the patch
# pasted, each under every model, layer and method below (12 images x 2 models x 16 maps stay under 1 MB).
GALLERY_IMAGES = 6
# Shown beside the run's own --cam: a sharper CAM, one that weighs each position, and a pixel-space method.
GALLERY_METHODS = ("hirescam", "layercam", "inputxgradient")


@dataclass(frozen=True)
class Panel:
    """Images (N, 3, H, W) uint8 with one (N, H, W) map in [0, 1] per model, and the classes shown."""

    images: torch.Tensor
    maps: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    originals: torch.Tensor | None = None  # the gallery's images before the patch was pasted


def one_per_class(labels: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Up to `n` indices where `candidates` is True, cycling through the classes so each shows up once first."""
    chosen = []
    pools = [(candidates & (labels == c)).nonzero().squeeze(1).tolist() for c in labels.unique().tolist()]
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop(0))
    return torch.tensor(chosen, dtype=torch.int64)


def _maps(method, model, images, targets, layers, runtime) -> dict[str, torch.Tensor]:
    return explain_images(method, model, images, targets, layers, runtime)


def shortcut_model(names: list[str]) -> str:
    """The model a run's shortcut figures show: "biased" where there is one (repaired models come after it),
    else the last."""
    return "biased" if "biased" in names else names[-1]


def figure_examples(models: dict[str, nn.Module], test: EvalSet, measured: dict, protocol: ShortcutProtocol,
                    runtime: Runtime, n: int, layer: str) -> dict:
    """Maps at `layer` and predictions for every figure of a run; `measured` is `measure_shortcut`'s examples.

    Keys: "clean_grid" (first model's correct clean images, one per class, explaining its prediction),
    "patched_grid" (the `shortcut_model` on patched target images, those it calls target first), "side_by_side",
    "across_layers" (one patched image, every layer, target class), "gallery" (non-target images the
    `shortcut_model` flips to target, one per source class, with every model's clean and patched predictions).
    """
    probes, target = measured["probes"], protocol.target
    names = list(models)
    preds = {name: measured["models"][name]["predictions"] for name in names}
    first, last = names[0], shortcut_model(names)
    out = {}
    idx = one_per_class(test.labels, preds[first]["clean"] == test.labels, n)
    out["clean_grid"] = Panel(test.images[idx], {first: _maps(protocol.method, models[first], test.images[idx],
                                                              preds[first]["clean"][idx], layer, runtime)[layer]},
                              {"true": test.labels[idx], first: preds[first]["clean"][idx]})
    called = preds[last]["patched_targets"] == target
    shown = torch.cat([called.nonzero().squeeze(1), (~called).nonzero().squeeze(1)])[:n]
    out["patched_grid"] = Panel(probes.patched_targets[shown], {last: _maps(
        protocol.method, models[last], probes.patched_targets[shown], preds[last]["patched_targets"][shown], layer,
        runtime)[layer]}, {"true": torch.full((len(shown),), target), last: preds[last]["patched_targets"][shown]})
    out["called_rate"] = called.float().mean().item() if len(called) else float("nan")
    k = min(SIDE_BY_SIDE_IMAGES, len(probes.patched_targets))
    images = probes.patched_targets[:k]
    out["side_by_side"] = Panel(images, {nm: _maps(protocol.method, models[nm], images, preds[nm]["patched_targets"][:k],
                                                   layer, runtime)[layer] for nm in names},
                                {nm: preds[nm]["patched_targets"][:k] for nm in names})
    out["across_layers"] = {nm: _maps(protocol.method, models[nm], images[:1], torch.tensor([target] * min(k, 1)),
                                      list(protocol.layers), runtime) for nm in names}
    out["gallery"] = _gallery(models, test, probes, preds, replace(protocol, layers=(layer,)), runtime, n)
    return out


def _gallery(models, test: EvalSet, probes, preds: dict, protocol: ShortcutProtocol, runtime: Runtime, n: int) -> Panel:
    """Non-target images the `shortcut_model` flips to target once patched, one per source class."""
    last, target, layer = shortcut_model(list(models)), protocol.target, protocol.layers[0]
    other_labels = test.labels[probes.other_idx]
    rows = one_per_class(other_labels, preds[last]["patch"] == target, n)
    pasted = probes.pasted["patch"][rows]
    maps = {nm: _maps(protocol.method, m, pasted, torch.full((len(rows),), target), layer, runtime)[layer]
            for nm, m in models.items()}
    labels = {"true": other_labels[rows]}
    for nm in models:
        labels[nm] = torch.stack([preds[nm]["clean"][probes.other_idx][rows], preds[nm]["patch"][rows]]) if len(rows) \
            else torch.empty(2, 0, dtype=torch.int64)
    return Panel(pasted, maps, labels, originals=test.images[probes.other_idx][rows])


def gallery_methods(cam: str) -> list[str]:
    """The methods the report's gallery shows: the run's `cam` first, then GALLERY_METHODS."""
    return list(dict.fromkeys([cam, *GALLERY_METHODS]))


def _seeded_rows(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` seeded indices into `labels`, one per class first (a seeded shuffle, then `one_per_class`)."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return order[one_per_class(labels[order], torch.ones(len(labels), dtype=torch.bool), n)]


def gallery_maps(models: dict[str, nn.Module], test: EvalSet, measured: dict, protocol: ShortcutProtocol,
                 runtime: Runtime, n: int = GALLERY_IMAGES, progress: Progress | None = None) -> dict:
    """The same 2n test images under every model, layer and method, for the report's interactive gallery.

    Images (M = up to 2n): n patched target images, whatever the models call them, then n non-target images
    with the patch pasted (one per source class first); both seeded choices. Every map explains the target
    class (as the shortcut metrics do); `progress(done, total, stage)` hears of each pass. Returns
    {"images": (M, 3, H, W) uint8 as shown, "labels": (M,) true classes, "patched_target": (M,) bool,
     "target": int, "layers": {method: [layers]} ("input" for pixel methods),
     "models": {name: {"clean": (M,) predictions without the patch, "shown": (M,) predictions on the image,
                       "flipped": (M,) bool (clean not target, shown target),
                       "maps": {method: {layer: (M, H, W) in [0, 1]}}, "energy": {method: {layer: (M,) in [0, 1]}}}}}.
    """
    probes, target = measured["probes"], protocol.target
    tgt = _seeded_rows(test.labels[probes.target_idx], n, protocol.seed)
    other = _seeded_rows(test.labels[probes.other_idx], n, protocol.seed)
    images = torch.cat([probes.patched_targets[tgt], probes.pasted["patch"][other]])
    masks = torch.cat([probes.patched_masks[tgt], probes.pasted_masks["patch"][other]])
    targets = torch.full((len(images),), target)
    out = {"images": images, "labels": torch.cat([test.labels[probes.target_idx][tgt], test.labels[probes.other_idx][other]]),
           "patched_target": torch.arange(len(images)) < len(tgt), "target": target, "layers": {}, "models": {}}
    for name, model in models.items():
        preds = measured["models"][name]["predictions"]
        clean = torch.cat([preds["clean"][probes.target_idx][tgt], preds["clean"][probes.other_idx][other]])
        shown = torch.cat([preds["patched_targets"][tgt], preds["patch"][other]])
        entry = {"clean": clean, "shown": shown, "flipped": (clean != target) & (shown == target), "maps": {}, "energy": {}}
        for method in gallery_methods(protocol.method):
            maps = explain_images(method, model, images, targets, list(protocol.layers), runtime, protocol.cam_batch_size,
                                  staged(progress, f"{name} {display_name(method)}"))
            entry["maps"][method] = maps
            entry["energy"][method] = {layer: scores.cam_energy_in_mask(m, masks) for layer, m in maps.items()}
            out["layers"][method] = list(maps)
        out["models"][name] = entry
    return out
