"""The example images a run's figures show, with their maps and predictions, measured once.

Everything here runs the models (in the run's precision, like the metrics) and returns plain tensors;
`report.run_figures` only draws them, so a figure never disagrees with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from gradcam_repro.explain.registry import explain_images
from gradcam_repro.measure.shortcut import EvalSet, ShortcutProtocol
from gradcam_repro.runtime import Runtime

SIDE_BY_SIDE_IMAGES = 6


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


def figure_examples(models: dict[str, nn.Module], test: EvalSet, measured: dict, protocol: ShortcutProtocol,
                    runtime: Runtime, n: int, layer: str) -> dict:
    """Maps at `layer` and predictions for every figure of a run; `measured` is `measure_shortcut`'s examples.

    Keys: "clean_grid" (first model's correct clean images, one per class, explaining its prediction),
    "patched_grid" (last model on patched target images, those it calls target first), "side_by_side",
    "across_layers" (one patched image, every layer, target class), "gallery" (non-target images the
    last model flips to target, one per source class, with every model's clean and patched predictions).
    """
    probes, target = measured["probes"], protocol.target
    names = list(models)
    preds = {name: measured["models"][name]["predictions"] for name in names}
    first, last = names[0], names[-1]
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
    """Non-target images the last model flips to target once patched, one per source class."""
    last, target, layer = list(models)[-1], protocol.target, protocol.layers[0]
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
