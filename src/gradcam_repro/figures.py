"""Figures: image | Grad-CAM overlay grids, model side-by-sides, training curves.

The CLI selects the headless Agg backend unless `--show` is given. Functions return matplotlib
figures; saving goes through `artifacts.save_figure` (atomic).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

CAM_ALPHA = 0.5  # heatmap opacity over the image


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 -> (H, W, 3) float in [0, 1]."""
    return image.permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255.0


def overlay(image: torch.Tensor, cam: torch.Tensor) -> np.ndarray:
    """Blend a (H, W) map in [0, 1] (jet colormap) over a (3, H, W) uint8 image -> (H, W, 3) in [0, 1]."""
    heat = plt.get_cmap("jet")(cam.cpu().numpy())[..., :3]
    return (1 - CAM_ALPHA) * to_hwc(image) + CAM_ALPHA * heat


def _draw_box(ax, box):
    if box is not None:
        top, left, bottom, right = box
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="white", lw=1.2, ls="--"))


def cam_grid(images, maps, true_labels, pred_labels, classes, title, box=None, pairs_per_row=2):
    """Pairs of (original | overlay) panels titled 'true: X / pred: Y'."""
    n = len(images)
    rows = max(1, math.ceil(n / pairs_per_row))
    fig, axes = plt.subplots(rows, 2 * pairs_per_row, figsize=(2.1 * 2 * pairs_per_row, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax_img, ax_cam = axes[i // pairs_per_row, 2 * (i % pairs_per_row)], axes[i // pairs_per_row, 2 * (i % pairs_per_row) + 1]
        ax_img.imshow(to_hwc(images[i]), interpolation="nearest")
        ax_cam.imshow(overlay(images[i], maps[i]), interpolation="nearest")
        _draw_box(ax_cam, box)
        ok = int(true_labels[i]) == int(pred_labels[i])
        ax_img.set_title(f"true: {classes[int(true_labels[i])]}\npred: {classes[int(pred_labels[i])]}",
                         fontsize=8, color="black" if ok else "firebrick")
        ax_cam.set_title("Grad-CAM", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def side_by_side(images, maps_by_model: dict, preds_by_model: dict, classes, title, box=None):
    """One row per image: original | overlay under each model, with that model's prediction."""
    names = list(maps_by_model)
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(2.1 * (1 + len(names)), 2.2 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(to_hwc(images[i]), interpolation="nearest")
        axes[i, 0].set_title("input", fontsize=8)
        for j, name in enumerate(names, start=1):
            axes[i, j].imshow(overlay(images[i], maps_by_model[name][i]), interpolation="nearest")
            _draw_box(axes[i, j], box)
            axes[i, j].set_title(f"{name}\npred: {classes[int(preds_by_model[name][i])]}", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
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


def close(fig) -> None:
    plt.close(fig)


def show() -> None:
    plt.show()
