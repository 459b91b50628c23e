"""Every figure of a run, drawn from its measured results alone (no model runs here).

`run_figures(metrics, examples)` (a `RunMetrics`) returns {relative path: matplotlib figure}; the pipeline saves them.
"""

from __future__ import annotations

import torch

from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure.results import PATCHED_TARGET, RunMetrics
from gradcam_repro.report import figures


def run_figures(metrics: RunMetrics, examples: dict) -> dict:
    """{path relative to the run folder: figure}; `examples` is `measure.examples.figure_examples`'s output
    plus "patched_target_maps" ({model: {layer: maps}}) and "histories" ({model: history})."""
    cfg, layer = metrics.config, metrics.cam_layer
    classes, cls = metrics.dataset["classes"], cfg["bias_class"]
    box = tuple(metrics.box_tlbr_px) if metrics.box_tlbr_px is not None else None  # None: the place varies
    method = display_name(cfg["cam"])
    names = list(metrics.models)
    out = {}
    grid = examples["clean_grid"]
    if len(grid.images):
        first = names[0]
        out[f"figures/{first}_cam_grid.png"] = figures.cam_grid(
            grid.images, grid.maps[first], grid.labels["true"], grid.labels[first], classes,
            f"{first}: correctly classified clean test images, one per class, {method} at {layer}", cam_label=method)
    grid = examples["patched_grid"]
    if len(grid.images):
        last = "biased" if "biased" in names else names[-1]  # as measure.examples.shortcut_model
        out[f"figures/{last}_cam_grid.png"] = figures.cam_grid(
            grid.images, grid.maps[last], grid.labels["true"], grid.labels[last], classes,
            f"{last} model on patched {cls} test images ({examples['called_rate']:.0%} predicted {cls}), "
            f"{method} at {layer}", box=box, cam_label=method)
    out.update(_patched_figures(metrics, examples, method, box))
    out.update(_summary_figures(metrics, examples, method, box))
    return out


def _patched_figures(metrics: RunMetrics, examples: dict, method: str, box) -> dict:
    cls, layer, classes = metrics.config["bias_class"], metrics.cam_layer, metrics.dataset["classes"]
    out = {}
    side = examples["side_by_side"]
    if len(side.images):
        out["figures/side_by_side.png"] = figures.side_by_side(
            side.images, side.maps, side.labels, classes,
            f"patched test {cls} images under each model ({method} at {layer}; dashed: patch)", box=box)
        across = examples["across_layers"]
        out["figures/layers_one_image.png"] = figures.across_layers(
            side.images[0], {nm: {lay: maps[0] for lay, maps in by_layer.items()} for nm, by_layer in across.items()},
            f"one patched {cls} image, {method} for class '{cls}' at each layer", box=box)
    gallery = examples["gallery"]
    if len(gallery.images):
        preds = {nm: (gallery.labels[nm][0], gallery.labels[nm][1]) for nm in gallery.maps}
        out["figures/counterfactual_gallery.png"] = figures.counterfactual_gallery(
            gallery.originals, gallery.images, preds, gallery.maps, classes,
            f"pasting the patch on non-{cls} test images, one per class ({method} for '{cls}' at {layer})", box=box)
    return out


def _summary_figures(metrics: RunMetrics, examples: dict, method: str, box) -> dict:
    cls, layer, models = metrics.config["bias_class"], metrics.cam_layer, metrics.models
    histories = examples["histories"]
    out = {f"figures/{name}_training_curves.png": figures.training_curves({name: h}) for name, h in histories.items()}
    out["figures/training_curves.png"] = figures.training_curves(histories)
    empty = torch.empty(0, 32, 32)
    out["figures/energy_distribution.png"] = figures.energy_histograms(
        {name: examples["patched_target_maps"].get(name, {}).get(layer, empty) for name in models},
        box if box is not None else {name: examples["patched_target_masks"][name] for name in models},
        metrics.shortcut.uniform["energy_in_box"], f"energy in the patch box, patched {cls} images called {cls}, {layer}",
        method=method)
    out["figures/per_class_accuracy.png"] = figures.per_class_accuracy({n: r.per_class_acc for n, r in models.items()})
    patched = {n: {lay: sets[PATCHED_TARGET] for lay, sets in r.cam.items()} for n, r in models.items()}
    out["figures/layer_sweep.png"] = figures.layer_sweep(patched, metrics.shortcut.uniform, method=method)
    return out
