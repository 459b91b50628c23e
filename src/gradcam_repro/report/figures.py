"""Figures: image | CAM overlay grids, model side-by-sides, training curves, score plots.

The CLI selects the headless Agg backend unless `--show` is given. Functions return matplotlib
figures; saving goes through `store.save_figure` (atomic).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from gradcam_repro import store
from gradcam_repro.measure.comparison_results import MethodsResult
from gradcam_repro.measure.results import CamScores
from gradcam_repro.measure.scores import POINTS_AT_PATCH_RATIO, cam_energy_in_box, cam_energy_in_mask

CAM_ALPHA = 0.5  # heatmap opacity over the image
PAIRS_PER_ROW = 2  # (image | overlay) pairs per row in `cam_grid`
SUPTITLE_MARGIN_IN = 0.08  # inches between the figure's top edge and its suptitle
RATIO_FLOOR = 1e-3  # energy ratios at or below 0 are drawn here on the log axis


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 -> (H, W, 3) float in [0, 1]."""
    return image.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255.0


def overlay(image: torch.Tensor, cam: torch.Tensor) -> np.ndarray:
    """Blend a (H, W) map in [0, 1] (jet colormap) over a (3, H, W) uint8 image -> (H, W, 3) in [0, 1]."""
    heat = plt.get_cmap("jet")(cam.cpu().numpy())[..., :3]
    return (1 - CAM_ALPHA) * to_hwc(image) + CAM_ALPHA * heat


def _show(ax, picture: np.ndarray, title: str, box=None, fontsize: int = 8) -> None:
    """One panel: an (H, W, 3) picture, its title, the dashed patch box if given, no axes."""
    ax.imshow(picture, interpolation="nearest")
    draw_box(ax, box)
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def layout_under_suptitle(fig, title: str, fontsize: int = 10) -> None:
    """Set the figure's suptitle at the top and lay the panels, their titles included, out below it.

    The suptitle hangs a fixed SUPTITLE_MARGIN_IN below the top edge (matplotlib's default, 2% of the
    height, grows past tight_layout's padding in tall figures and puts it over the first row).
    tight_layout runs twice: image panels keep their aspect, so where their titles end up is only known
    once the panels are placed, and a single pass can leave the first row's titles under the suptitle.
    """
    fig.suptitle(title, fontsize=fontsize, y=1 - SUPTITLE_MARGIN_IN / fig.get_figheight(), va="top")
    for _ in range(2):
        fig.tight_layout()


def draw_box(ax, box, colour: str = "white", dashed: bool = True) -> None:
    """Outline `box` (top, left, bottom, right in px, bottom/right exclusive) on an image axis; None draws nothing.

    Dashed (the planted patch) or solid and a little wider (an audit's found region)."""
    if box is not None:
        top, left, bottom, right = box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=colour,
                               lw=1.2 if dashed else 1.5, ls="--" if dashed else "-"))


def cam_grid(images, maps, true_labels, pred_labels, classes, title, box=None, cam_label="Grad-CAM"):
    """Pairs of (original | overlay) panels, PAIRS_PER_ROW to a row, titled 'true: X / pred: Y'.

    cam_label titles each overlay panel: the display name of the CAM method that made the maps.
    """
    n = len(images)
    rows = max(1, math.ceil(n / PAIRS_PER_ROW))
    fig, axes = plt.subplots(rows, 2 * PAIRS_PER_ROW, figsize=(2.1 * 2 * PAIRS_PER_ROW, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        row, col = divmod(i, PAIRS_PER_ROW)
        ax_img, ax_cam = axes[row, 2 * col], axes[row, 2 * col + 1]
        _show(ax_img, to_hwc(images[i]), f"true: {classes[int(true_labels[i])]}\npred: {classes[int(pred_labels[i])]}")
        if int(true_labels[i]) != int(pred_labels[i]):
            ax_img.title.set_color("firebrick")
        _show(ax_cam, overlay(images[i], maps[i]), cam_label, box)
    layout_under_suptitle(fig, title)
    return fig


def side_by_side(images, maps_by_model: dict, preds_by_model: dict, classes, title, box=None):
    """One row per image: original | overlay under each model, with that model's prediction."""
    names = list(maps_by_model)
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(2.1 * (1 + len(names)), 2.2 * n), squeeze=False)
    for i in range(n):
        _show(axes[i, 0], to_hwc(images[i]), "input")
        for j, name in enumerate(names, start=1):
            _show(axes[i, j], overlay(images[i], maps_by_model[name][i]),
                  f"{name}\npred: {classes[int(preds_by_model[name][i])]}", box)
    layout_under_suptitle(fig, title)
    return fig


def training_curves(histories: dict[str, list[dict]]):
    """Loss and accuracies per epoch for each experiment."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        (line,) = ax_loss.plot(epochs, [h["loss"] for h in history], marker="o", label=name)
        ax_acc.plot(epochs, [h["train_acc"] for h in history], marker="o", ls="--", color=line.get_color(), label=f"{name} train")
        ax_acc.plot(epochs, [h["test_acc"] for h in history], marker="s", color=line.get_color(), label=f"{name} clean test")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def across_layers(image, maps_by_model: dict[str, dict[str, torch.Tensor]], title, box=None):
    """One image's maps at each layer (columns) under each model (rows)."""
    names = list(maps_by_model)
    layers = list(maps_by_model[names[0]])
    fig, axes = plt.subplots(len(names), 1 + len(layers), figsize=(1.9 * (1 + len(layers)), 2.1 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        _show(axes[r, 0], to_hwc(image), f"{name}\ninput")
        for c, layer in enumerate(layers, start=1):
            _show(axes[r, c], overlay(image, maps_by_model[name][layer]), layer, box)
    layout_under_suptitle(fig, title)
    return fig


def counterfactual_gallery(originals, pasted, preds_by_model: dict[str, tuple[torch.Tensor, torch.Tensor]],
                           maps_by_model: dict[str, torch.Tensor], classes, title, box=None):
    """Rows: original | with patch | each model's CAM on the patched image.

    Each model's panel is titled with its prediction on the clean and on the patched image
    (preds_by_model[name] = (clean predictions, patched predictions)), in red where the patch changed it.
    The caller picks the rows: show one image per source class, not the first flipped images, which
    tend to share a class and say nothing about the others.
    """
    names = list(maps_by_model)
    n = len(originals)
    fig, axes = plt.subplots(n, 2 + len(names), figsize=(2.1 * (2 + len(names)), 2.5 * n), squeeze=False)
    for i in range(n):
        _show(axes[i, 0], to_hwc(originals[i]), "original")
        _show(axes[i, 1], to_hwc(pasted[i]), "patch pasted")
        for j, name in enumerate(names, start=2):
            clean, patched = int(preds_by_model[name][0][i]), int(preds_by_model[name][1][i])
            _show(axes[i, j], overlay(pasted[i], maps_by_model[name][i]),
                  f"{name}\nclean: {classes[clean]}\npatched: {classes[patched]}", box)
            if clean != patched:
                axes[i, j].title.set_color("firebrick")
    layout_under_suptitle(fig, title)
    return fig


def energy_histograms(maps_by_model: dict[str, torch.Tensor], box, uniform: float, title, method: str = "Grad-CAM"):
    """Distribution of per-image energy in the box, one histogram per model, uniform value marked.

    box: one (top, left, bottom, right) box for every image, or {model: (N, H, W) bool masks}, each image's
    own (an artefact whose place varies). method is the display name of the CAM method that made the maps.
    """
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0, 1, 41)
    for name, maps in maps_by_model.items():
        if len(maps):
            energy = cam_energy_in_mask(maps, box[name]) if isinstance(box, dict) else cam_energy_in_box(maps, box)
            ax.hist(energy.numpy(), bins=bins, alpha=0.55, label=f"{name} (n={len(maps)})")
    ax.axvline(uniform, color="black", ls="--", lw=1, label=f"uniform map ({uniform:.3f})")
    where = "the artefact's mask" if isinstance(box, dict) else "the patch box"
    ax.set(xlabel=f"fraction of {method} mass inside {where}", ylabel="images", title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_class_accuracy(acc_by_model: dict[str, dict[str, float]]):
    """Grouped bars: clean test accuracy per class for each model."""
    names = list(acc_by_model)
    classes = list(acc_by_model[names[0]])
    x = np.arange(len(classes))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for k, name in enumerate(names):
        ax.bar(x + (k - (len(names) - 1) / 2) * width, [acc_by_model[name][c] for c in classes], width, label=name)
    ax.set_xticks(x, classes, rotation=30, fontsize=8)
    ax.set(ylabel="clean test accuracy", ylim=(0, 1), title="per-class accuracy on the clean test set")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _sweep_errorbars(ax, scores_by_model: dict[str, dict[str, CamScores]], score: str, scale: float = 1.0) -> list[str]:
    """One errorbar series per model: the mean of `score` ("energy" or "pointing") per layer over `scale`, 95% CI
    as bars.

    Returns the layers in x order (the union over models, first seen first). Models are nudged apart on x.
    """
    layers = list(dict.fromkeys(lay for per_layer in scores_by_model.values() for lay in per_layer))
    for k, (name, per_layer) in enumerate(scores_by_model.items()):
        stats = [getattr(per_layer[lay], score) for lay in per_layer]
        mean, low, high = (np.array([getattr(st, key) for st in stats], dtype=float) / scale
                           for key in ("mean", "low", "high"))
        if ax.get_yscale() == "log":
            mean, low, high = (np.clip(v, RATIO_FLOOR, None) for v in (mean, low, high))
        x = np.array([layers.index(lay) for lay in per_layer]) + 0.08 * (k - (len(scores_by_model) - 1) / 2)
        err = np.nan_to_num(np.clip(np.stack([mean - low, high - mean]), 0, None))
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xticks(np.arange(len(layers)), layers, fontsize=8, rotation=15)
    ax.set_xlabel("layer")
    ax.grid(alpha=0.3)
    return layers


def _ratio_axis(ax, scores_by_model: dict[str, dict[str, CamScores]], scale: float) -> None:
    """Limits and "2x"-style ticks for the log energy-ratio axis.

    Every mean, 1x and twice the threshold stay in view; a CI bar reaching towards 0 may leave the bottom
    rather than stretch the axis over decades nobody reads (a mean at or below 0 still shows, at the floor).
    """
    stats = [s.energy for per_layer in scores_by_model.values() for s in per_layer.values()]
    means = np.array([st.mean for st in stats], dtype=float) / scale
    highs = np.array([st.high for st in stats], dtype=float) / scale
    means, highs = means[np.isfinite(means)], highs[np.isfinite(highs)]
    if (means <= 0).any():
        bottom = RATIO_FLOOR / 1.5
    else:
        bottom = max(RATIO_FLOOR, min(0.5, 0.5 * means.min()) if means.size else 0.5)
    top = max(2 * POINTS_AT_PATCH_RATIO, 1.5 * highs.max() if highs.size else 0.0)
    ax.set_ylim(bottom, top)
    subs = (1.0, 2.0, 5.0) if np.log10(top / bottom) <= 2.5 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def layer_sweep(scores_by_model: dict[str, dict[str, CamScores]], uniform: dict, method: str = "Grad-CAM"):
    """Energy in box and pointing game per layer (patched target images called target), with 95% CIs.

    scores_by_model[model][layer] = that layer's scores on patched target images the model calls target
    (`ModelShortcut.cam[layer][PATCHED_TARGET]`); uniform holds a uniform map's "energy_in_box" and "pointing".
    Energy is drawn as a ratio to the uniform map's on a log axis, with the "points at the patch" threshold
    (POINTS_AT_PATCH_RATIO x uniform) marked; the pointing game as a hit rate in [0, 1]. method is the CAM
    method's display name.
    """
    fig, (ax_energy, ax_point) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_energy.set_yscale("log")
    _sweep_errorbars(ax_energy, scores_by_model, "energy", uniform["energy_in_box"])
    ax_energy.axhline(1.0, color="black", ls="--", lw=1, label=f"uniform map ({uniform['energy_in_box']:.3f} of the mass)")
    ax_energy.axhline(POINTS_AT_PATCH_RATIO, color="firebrick", ls=":", lw=1.2,
                      label=f"points at the patch ({POINTS_AT_PATCH_RATIO:g}x uniform)")
    _ratio_axis(ax_energy, scores_by_model, uniform["energy_in_box"])
    ax_energy.set(ylabel="energy in patch box / uniform", title=f"{method} energy in the patch box, ratio to a uniform map")
    _sweep_errorbars(ax_point, scores_by_model, "pointing")
    ax_point.axhline(uniform["pointing"], color="black", ls="--", lw=1, label="uniform map")
    ax_point.set(ylim=(0, 1), ylabel="pointing-game hit rate", title=f"{method} pointing game")
    for ax in (ax_energy, ax_point):
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    layout_under_suptitle(fig, f"{method} on patched target images the model calls target, by layer (95% CI)")
    return fig


def explanation(image, maps_by_model: dict, top3_by_model: dict, title):
    """A user's image and each model's overlay, titled with the model's top-3 classes and probabilities."""
    names = list(maps_by_model)
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(2.6 * (1 + len(names)), 3.0), squeeze=False)
    _show(axes[0, 0], to_hwc(image), "input (32x32)")
    for j, name in enumerate(names, start=1):
        top = "\n".join(f"{c} {p:.2f}" for c, p in top3_by_model[name])
        _show(axes[0, j], overlay(image, maps_by_model[name]), f"{name}\n{top}")
    layout_under_suptitle(fig, title, fontsize=9)
    return fig


def close(fig) -> None:
    plt.close(fig)


def save_figures(figs: dict, folder: str | Path, keep_open: bool = False) -> dict[str, bytes]:
    """Save each of {path relative to `folder`: figure} atomically (`store.save_figure`), closing it unless
    `keep_open` (to show it on screen later); returns {relative path: the file's bytes} in order."""
    saved = {}
    for rel, fig in figs.items():
        saved[rel] = store.save_figure(fig, Path(folder) / rel)
        if not keep_open:
            close(fig)
    return saved


def show() -> None:
    plt.show()


def sanity_cascade(image, maps_by_step: dict[str, torch.Tensor], title):
    """One row: the (3, H, W) uint8 image, then its (H, W) map in [0, 1] after each randomisation step.

    maps_by_step is ordered like the cascade, e.g. {"original": ..., "fc": ..., "layer4.1": ..., "stem": ...}.
    """
    steps = list(maps_by_step)
    fig, axes = plt.subplots(1, 1 + len(steps), figsize=(1.6 * (1 + len(steps)), 2.0), squeeze=False)
    _show(axes[0, 0], to_hwc(image), "input")
    for c, step in enumerate(steps, start=1):
        _show(axes[0, c], overlay(image, maps_by_step[step]), step)
    layout_under_suptitle(fig, title)
    return fig


def deletion_insertion_curves(curves_by_method: dict[str, dict], title):
    """Mean deletion and insertion curves per method, the area under each mean curve in the legend.

    Each value holds "fractions" (S,) and "deletion", "insertion" (N, S)
    probabilities, as returned by `faithfulness.deletion_insertion`.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, kind, better in ((axes[0], "deletion", "lower"), (axes[1], "insertion", "higher")):
        for name, curves in curves_by_method.items():
            x = curves["fractions"].float()
            mean = curves[kind].float().mean(dim=0)
            # The AUC of the mean curve is the mean of the per-image AUCs (the trapezoid rule is linear).
            ax.plot(x.numpy(), mean.numpy(), label=f"{name} (AUC {torch.trapezoid(mean, x).item():.3f})")
        ax.set(xlabel=f"fraction of pixels {'deleted' if kind == 'deletion' else 'inserted'}",
               ylabel="probability of the explained class", xlim=(0, 1), ylim=(0, 1),
               title=f"{kind} ({better} AUC is more faithful)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    layout_under_suptitle(fig, title)
    return fig


def method_layer_heatmap(methods: MethodsResult, names: dict[str, str]):
    """Heatmaps of mean CAM energy, rows = methods, columns = layers (and "input" for pixel methods).

    Panels: energy in the patch box on patched target images, biased and baseline
    model; energy in the object mask on shapes (if measured). Cells without a value are blank.
    """
    rows = methods.methods
    cols = [*methods.layers, "input"]
    panels = [("biased: energy in patch box", methods.shortcut, "biased"),
              ("baseline: energy in patch box", methods.shortcut, "baseline")]
    if methods.localisation is not None:
        panels.append(("shapes: energy in object mask", methods.localisation, None))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(rows) + 1.8), squeeze=False)
    for ax, (title, table, model) in zip(axes[0], panels):
        values = np.full((len(rows), len(cols)), np.nan)
        for i, method in enumerate(rows):
            for j, layer in enumerate(cols):
                cell = table.get(method, {}).get(layer)
                if cell is not None and model is not None:
                    cell = cell.get(model)
                if cell is not None and cell.energy.n > 0:
                    values[i, j] = cell.energy.mean
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=max(np.nanmax(values) if np.isfinite(values).any() else 1, 1e-6))
        for i in range(len(rows)):
            for j in range(len(cols)):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] < 0.6 * np.nanmax(values) else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), [names.get(r, r) for r in rows], fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    uniform = methods.uniform
    layout_under_suptitle(fig, f"mean energy by method and layer (uniform map: box {uniform['energy_in_box']:.3f}"
                           + (f", mask {uniform['energy_in_mask']:.3f}" if "energy_in_mask" in uniform else "") + ")")
    return fig
