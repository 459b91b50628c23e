"""The two experiments end to end: baseline and frog-bias training, Grad-CAM, figures, summary.

Everything that touches files lives here (and in the CLI); the science it
calls (bias injection, training, Grad-CAM, scores) is pure functions.

Layout of `runs/<name>/`:
    baseline/{model.pt, config.json, history.json, history.csv, cam_grid.png, training_curves.png}
    biased/{...same...}
    side_by_side.png, training_curves.png, summary.json, summary.md
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gradcam_repro import artifacts, figures
from gradcam_repro.bias import bias_dataset, inject_patch, patch_box
from gradcam_repro.config import Config
from gradcam_repro.data import CIFAR10_CLASSES, ImageData, load_cifar10, load_shapes, resolve_data_root, stratified_subset
from gradcam_repro.errors import UserError
from gradcam_repro.evaluate import accuracy, cam_energy_in_box, compute_cams, predict_logits, uniform_energy_in_box
from gradcam_repro.gradcam import get_layer
from gradcam_repro.model import resnet18_cifar, save_model
from gradcam_repro.runtime import autocast_dtype, choose_device, seed_everything
from gradcam_repro.train import train_model

EXPERIMENTS = ("baseline", "biased")
# Stage outputs scored in the summary besides the configured layer: on 32x32
# inputs layer1..layer4 run at 32, 16, 8 and 4 px.
SWEEP_LAYERS = ("layer1", "layer2", "layer3", "layer4", "layer4.1.conv2")
# Default shortcut class per dataset (index 6 in both, CIFAR-10's frog).
DEFAULT_BIAS_CLASS = {"cifar10": "frog", "shapes": "hbar"}


@dataclass
class Prepared:
    """Validated inputs of a run: everything is checked before anything is written."""

    config: Config
    data: ImageData
    device: torch.device
    amp_dtype: torch.dtype | None
    target: int
    box: tuple[int, int, int, int]
    patch: dict
    train_index: torch.Tensor
    eval_index: torch.Tensor


def dataset_classes(dataset: str) -> tuple[str, ...]:
    from gradcam_repro.shapes import SHAPES_CLASSES

    return CIFAR10_CLASSES if dataset == "cifar10" else tuple(SHAPES_CLASSES)


def load_data(config: Config) -> ImageData:
    if config.dataset == "shapes":
        return load_shapes(config.shapes_train, config.shapes_test, config.seed)
    return load_cifar10(resolve_data_root(config.data_root))


def prepare(config: Config, log=print) -> Prepared:
    """Validate the config against the data and the model; raises `UserError` before any output is written."""
    config.validate()
    if config.bias_class == "frog" and config.dataset != "cifar10":
        config = replace(config, bias_class=DEFAULT_BIAS_CLASS[config.dataset])
    get_layer(resnet18_cifar(), config.cam_layer)  # unknown layer: fail now, not after training
    classes = dataset_classes(config.dataset)
    if config.bias_class not in classes:
        raise UserError(f"unknown class {config.bias_class!r}; fix: pass --bias-class as one of {', '.join(classes)}")
    box = patch_box(32, config.patch_size, config.patch_corner, config.patch_offset)
    device = choose_device(config.device)
    amp = autocast_dtype(config.precision, device)
    artifacts.check_writable(config.out_dir)
    start = time.perf_counter()
    data = load_data(config)
    log(f"data: {data.name} from {data.source} ({len(data.train_labels)} train / {len(data.test_labels)} test, "
        f"fingerprint {data.fingerprint[:12]}, {time.perf_counter() - start:.1f} s)")
    target = data.class_index(config.bias_class)
    if config.test_subset:
        data = _subset_test(data, stratified_subset(data.test_labels, config.test_subset, config.seed))
    train_index = (stratified_subset(data.train_labels, config.train_subset, config.seed)
                   if config.train_subset else torch.arange(len(data.train_labels)))
    eval_index = (stratified_subset(data.test_labels, config.eval_subset, config.seed)
                  if config.eval_subset else torch.arange(len(data.test_labels)))
    patch = {"patch_size": config.patch_size, "color": tuple(config.patch_color),
             "corner": config.patch_corner, "offset": config.patch_offset}
    return Prepared(config, data, device, amp, target, box, patch, train_index, eval_index)


def _subset_test(data: ImageData, index: torch.Tensor) -> ImageData:
    masks = data.test_masks[index] if data.test_masks is not None else None
    return replace(data, test_images=data.test_images[index], test_labels=data.test_labels[index], test_masks=masks)


def _record(p: Prepared, name: str, extra: dict | None = None) -> dict:
    """What is saved as config.json next to a result: config, data, environment."""
    d = p.data
    return {
        "experiment": name,
        "config": p.config.to_dict(),
        "dataset": {"name": d.name, "fingerprint": d.fingerprint, "source": d.source, "classes": list(d.classes),
                    "n_train_used": len(p.train_index), "n_test": len(d.test_labels)},
        "environment": artifacts.environment_info(str(p.device)),
        "precision": str(p.amp_dtype).replace("torch.", "") if p.amp_dtype else "float32",
        **(extra or {}),
    }


def _history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def train_experiment(p: Prepared, name: str, log=print) -> tuple[torch.nn.Module, list[dict], dict]:
    """Train one experiment ('baseline' or 'biased') and write its checkpoint, config and history."""
    cfg, d = p.config, p.data
    images, labels = d.train_images[p.train_index], d.train_labels[p.train_index]
    extra = {}
    if name == "biased":
        images, patched = bias_dataset(images, labels, p.target, cfg.bias_fraction, cfg.seed, **p.patch)
        extra["bias"] = {"class": cfg.bias_class, "class_index": p.target, "box_tlbr_px": list(p.box),
                         "patched_train_images": int(patched.sum())}
    eval_x, eval_y = d.test_images[p.eval_index], d.test_labels[p.eval_index]

    def evaluate(model):
        return accuracy(predict_logits(model, eval_x, p.device, amp_dtype=p.amp_dtype), eval_y)

    log(f"[{name}] training on {len(labels)} images for {cfg.epochs} epoch(s), device {p.device}, "
        f"precision {'bf16' if p.amp_dtype else 'fp32'}")
    seed_everything(cfg.seed)  # same initial weights for both experiments
    model = resnet18_cifar(len(d.classes))
    start = time.perf_counter()
    history = train_model(model, images, labels, cfg, p.device, p.amp_dtype, evaluate=evaluate,
                          log=lambda line: log(f"[{name}] {line}"))
    extra["train_seconds"] = time.perf_counter() - start
    folder = Path(cfg.out_dir) / name
    save_model(model, folder / "model.pt")
    artifacts.write_json(folder / "config.json", _record(p, name, extra))
    artifacts.write_json(folder / "history.json", history)
    artifacts.write_text(folder / "history.csv", _history_csv(history))
    return model, history, extra


def _first_per_class(labels: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Up to `n` indices from boolean `candidates`, cycling through the classes for variety."""
    chosen = []
    pools = [(candidates & (labels == c)).nonzero().squeeze(1).tolist() for c in labels.unique().tolist()]
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop(0))
    return torch.tensor(chosen, dtype=torch.int64)


def evaluate_experiments(p: Prepared, models: dict, log=print) -> dict:
    """Accuracies, frog recall with and without the patch, and CAM energy on the patch per layer."""
    cfg, d = p.config, p.data
    frog = d.test_labels == p.target
    frog_images = d.test_images[frog]
    patched_frogs = inject_patch(frog_images, **p.patch)
    uniform = uniform_energy_in_box(p.box, 32)
    layers = list(dict.fromkeys([cfg.cam_layer, *SWEEP_LAYERS]))
    results = {"uniform_energy_in_box": uniform, "box_tlbr_px": list(p.box), "cam_layer": cfg.cam_layer,
               "n_test": len(d.test_labels), "n_test_target_class": int(frog.sum()), "models": {}}
    cams = {}
    for name, model in models.items():
        start = time.perf_counter()
        clean_logits = predict_logits(model, d.test_images, p.device, amp_dtype=p.amp_dtype)
        patched_logits = predict_logits(model, patched_frogs, p.device, amp_dtype=p.amp_dtype)
        biased_logits = clean_logits.clone()
        biased_logits[frog] = patched_logits  # the biased test set: every test frog patched
        cam = compute_cams(model, patched_frogs, layers, p.device, batch_size=cfg.cam_batch_size)
        predicted_target = cam[cfg.cam_layer]["targets"] == p.target
        energy = {layer: cam_energy_in_box(cam[layer]["maps"][predicted_target], p.box) for layer in layers}
        results["models"][name] = {
            "clean_test_acc": accuracy(clean_logits, d.test_labels),
            "biased_test_acc": accuracy(biased_logits, d.test_labels),
            "target_recall_clean": accuracy(clean_logits[frog], d.test_labels[frog]),
            "target_recall_patched": accuracy(patched_logits, d.test_labels[frog]),
            "n_patched_predicted_target": int(predicted_target.sum()),
            "energy_in_box_mean": {layer: (e.mean().item() if len(e) else float("nan")) for layer, e in energy.items()},
        }
        cams[name] = {"clean_logits": clean_logits, "cam": cam}
        m = results["models"][name]
        log(f"[{name}] clean test acc {m['clean_test_acc']:.3f}, biased test acc {m['biased_test_acc']:.3f}, "
            f"{cfg.bias_class} recall clean {m['target_recall_clean']:.3f} / patched {m['target_recall_patched']:.3f}, "
            f"energy in patch at {cfg.cam_layer} {m['energy_in_box_mean'][cfg.cam_layer]:.3f} "
            f"(uniform {uniform:.3f}) [{time.perf_counter() - start:.1f} s]")
    return results, cams, patched_frogs


def make_figures(p: Prepared, models: dict, histories: dict, cams: dict, patched_frogs: torch.Tensor) -> dict:
    """Write the figures; returns {figure: path relative to the run folder}."""
    cfg, d = p.config, p.data
    out = Path(cfg.out_dir)
    n = cfg.figure_images
    paths = {}

    def save(fig, rel):
        artifacts.save_figure(fig, out / rel)
        if not cfg.show:
            figures.close(fig)
        paths[rel] = rel

    # Baseline: correctly classified clean test images, a variety of classes.
    base_logits = cams["baseline"]["clean_logits"]
    correct = base_logits.argmax(1) == d.test_labels
    idx = _first_per_class(d.test_labels, correct, n)
    if len(idx):
        base_cam = compute_cams(models["baseline"], d.test_images[idx], cfg.cam_layer, p.device)[cfg.cam_layer]
        save(figures.cam_grid(d.test_images[idx], base_cam["maps"], d.test_labels[idx], base_cam["targets"], d.classes,
                              f"baseline: correctly classified clean test images, Grad-CAM at {cfg.cam_layer}"),
             "baseline/cam_grid.png")
    # Biased model on the biased test set: patched frogs, those it calls frog first.
    biased_cam = cams["biased"]["cam"][cfg.cam_layer]
    called_target = biased_cam["targets"] == p.target
    shown = torch.cat([called_target.nonzero().squeeze(1), (~called_target).nonzero().squeeze(1)])[:n]
    save(figures.cam_grid(patched_frogs[shown], biased_cam["maps"][shown],
                          torch.full((len(shown),), p.target), biased_cam["targets"][shown], d.classes,
                          f"biased model on the biased test set: patched {cfg.bias_class} images "
                          f"({called_target.float().mean().item():.0%} predicted {cfg.bias_class}), Grad-CAM at {cfg.cam_layer}",
                          box=p.box),
         "biased/cam_grid.png")
    # The same patched frogs under both models.
    k = min(n, len(patched_frogs), 6)
    save(figures.side_by_side(patched_frogs[:k], {name: cams[name]["cam"][cfg.cam_layer]["maps"][:k] for name in models},
                              {name: cams[name]["cam"][cfg.cam_layer]["targets"][:k] for name in models}, d.classes,
                              f"patched test {cfg.bias_class} images under both models (Grad-CAM at {cfg.cam_layer}; dashed: patch)",
                              box=p.box),
         "side_by_side.png")
    for name, history in histories.items():
        save(figures.training_curves({name: history}), f"{name}/training_curves.png")
    save(figures.training_curves(histories), "training_curves.png")
    return paths


def run(config: Config, log=print) -> dict:
    """Both experiments end to end; returns the summary dict also written to summary.json."""
    wall = time.perf_counter()
    p = prepare(config, log)
    cfg = p.config
    models, histories, extras = {}, {}, {}
    for name in EXPERIMENTS:
        models[name], histories[name], extras[name] = train_experiment(p, name, log)
    results, cams, patched_frogs = evaluate_experiments(p, models, log)
    figure_paths = make_figures(p, models, histories, cams, patched_frogs)
    summary = {
        **_record(p, "summary"),
        "results": results,
        "train_seconds": {name: extras[name]["train_seconds"] for name in EXPERIMENTS},
        "histories": histories,
        "figures": sorted(figure_paths),
        "wall_seconds": time.perf_counter() - wall,
    }
    out = Path(cfg.out_dir)
    artifacts.write_json(out / "summary.json", summary)
    from gradcam_repro.report import summary_markdown

    artifacts.write_text(out / "summary.md", summary_markdown(summary))
    log(f"done in {summary['wall_seconds']:.0f} s: {out / 'summary.md'}")
    if cfg.show:
        figures.show()
    return summary

