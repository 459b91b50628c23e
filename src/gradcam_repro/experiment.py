"""The two experiments end to end: baseline and frog-bias training, Grad-CAM, figures, summary.

Everything that touches files lives here (and in the CLI); the science it
calls (bias injection, training, Grad-CAM, scores) is pure functions.

Layout of `runs/<name>/`:
    baseline/{model.pt, config.json, history.json, history.csv, cam_grid.png, training_curves.png}
    biased/{...same...}
    figures/*.png, metrics.json, summary.md, REPORT.md
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gradcam_repro import artifacts, figures
from gradcam_repro.bias import bias_dataset, patch_box
from gradcam_repro.config import Config
from gradcam_repro.data import CIFAR10_CLASSES, ImageData, load_cifar10, load_shapes, resolve_data_root, stratified_subset
from gradcam_repro.errors import UserError
from gradcam_repro.evaluate import accuracy, compute_cams, measure_shortcut, predict_logits
from gradcam_repro.gradcam import CAM_DISPLAY_NAMES, get_layer
from gradcam_repro.model import load_model, resnet18_cifar, save_model
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
    if config.bias_class is None:
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


def _reusable(folder: Path, p: Prepared) -> dict | None:
    """The saved record of a finished experiment in `folder` made with the same training config and data."""
    record_path = folder / "config.json"
    if not ((folder / "model.pt").is_file() and record_path.is_file() and (folder / "history.json").is_file()):
        return None
    try:
        record = artifacts.read_json(record_path)
        same = (Config.from_dict(record["config"]).training_key() == p.config.training_key()
                and record["dataset"]["fingerprint"] == p.data.fingerprint)
    except (ValueError, KeyError, TypeError, UserError):
        return None
    return record if same else None


def _resume_state(path: Path, p: Prepared, log) -> dict | None:
    """The per-epoch checkpoint at `path` if it was made with the same training config and data."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["training_key"] == p.config.training_key() and state["fingerprint"] == p.data.fingerprint:
            return state
    except Exception:
        pass
    log(f"ignoring {path}: it belongs to another config, other data or is unreadable")
    return None


def train_experiment(p: Prepared, name: str, log=print, force: bool = False) -> tuple[torch.nn.Module, list[dict], dict]:
    """Train one experiment ('baseline' or 'biased') and write its checkpoint, config and history.

    A finished experiment with the same training config and data is reused
    unless `force`; an interrupted one resumes from its last per-epoch checkpoint.
    """
    cfg, d = p.config, p.data
    folder = Path(cfg.out_dir) / name
    record = None if force else _reusable(folder, p)
    if record is not None:
        log(f"[{name}] reusing the finished experiment in {folder} (same config and data; --force retrains)")
        model = load_model(folder / "model.pt", len(d.classes), p.device)
        return model, artifacts.read_json(folder / "history.json"), {k: record[k] for k in ("train_seconds",) if k in record}
    images, labels = d.train_images[p.train_index], d.train_labels[p.train_index]
    extra = {}
    if name == "biased":
        images, patched = bias_dataset(images, labels, p.target, cfg.bias_fraction, cfg.seed, **p.patch)
        extra["bias"] = {"class": cfg.bias_class, "class_index": p.target, "box_tlbr_px": list(p.box),
                         "patched_train_images": int(patched.sum())}
    eval_x, eval_y = d.test_images[p.eval_index], d.test_labels[p.eval_index]

    def evaluate(model):
        return accuracy(predict_logits(model, eval_x, p.device, amp_dtype=p.amp_dtype), eval_y)

    checkpoint = folder / "checkpoint.pt"

    def save_checkpoint(state):
        artifacts.torch_save(checkpoint, {**state, "training_key": cfg.training_key(), "fingerprint": d.fingerprint})

    log(f"[{name}] training on {len(labels)} images for {cfg.epochs} epoch(s), device {p.device}, "
        f"precision {'bf16' if p.amp_dtype else 'fp32'}")
    seed_everything(cfg.seed)  # same initial weights for both experiments
    model = resnet18_cifar(len(d.classes))
    start = time.perf_counter()
    history = train_model(model, images, labels, cfg, p.device, p.amp_dtype, evaluate=evaluate,
                          log=lambda line: log(f"[{name}] {line}"), resume=None if force else _resume_state(checkpoint, p, log),
                          on_epoch_end=save_checkpoint)
    extra["train_seconds"] = time.perf_counter() - start
    save_model(model, folder / "model.pt")
    artifacts.write_json(folder / "history.json", history)
    artifacts.write_text(folder / "history.csv", _history_csv(history))
    # config.json last: its presence marks the experiment finished and reusable.
    artifacts.write_json(folder / "config.json", _record(p, name, extra))
    checkpoint.unlink(missing_ok=True)
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


def sweep_layers(cam_layer: str) -> list[str]:
    return list(dict.fromkeys([*SWEEP_LAYERS, cam_layer]))


def make_figures(p: Prepared, models: dict, histories: dict, shortcut: dict, examples: dict) -> list[str]:
    """Write every figure; returns their paths relative to the run folder."""
    cfg, d = p.config, p.data
    out = Path(cfg.out_dir)
    layer, n, target, cls = cfg.cam_layer, cfg.figure_images, p.target, cfg.bias_class
    written = []
    method = CAM_DISPLAY_NAMES[cfg.cam]

    def cams_of(*args, **kwargs):
        return compute_cams(*args, method=cfg.cam, amp_dtype=p.amp_dtype, **kwargs)

    def save(fig, rel):
        artifacts.save_figure(fig, out / rel)
        if not cfg.show:
            figures.close(fig)
        written.append(rel)

    # Baseline: correctly classified clean test images, a variety of classes.
    idx = _first_per_class(d.test_labels, examples["predictions"]["baseline"]["clean"] == d.test_labels, n)
    if len(idx):
        cam = cams_of(models["baseline"], d.test_images[idx], layer, p.device)[layer]
        save(figures.cam_grid(d.test_images[idx], cam["maps"], d.test_labels[idx], cam["targets"], d.classes,
                              f"baseline: correctly classified clean test images, {method} at {layer}", cam_label=method),
             "baseline/cam_grid.png")
    # Biased model on the biased test set: patched target images, those it calls target first.
    patched = examples["patched_targets"]
    called = examples["predictions"]["biased"]["patched_targets"] == target
    shown = torch.cat([called.nonzero().squeeze(1), (~called).nonzero().squeeze(1)])[:n]
    if len(shown):
        cam = cams_of(models["biased"], patched[shown], layer, p.device)[layer]
        save(figures.cam_grid(patched[shown], cam["maps"], torch.full((len(shown),), target), cam["targets"], d.classes,
                              f"biased model on the biased test set: patched {cls} images "
                              f"({called.float().mean().item():.0%} predicted {cls}), {method} at {layer}", box=p.box,
                              cam_label=method),
             "biased/cam_grid.png")
    # The same patched target images under both models, explaining each model's prediction.
    k = min(6, len(patched))
    if k:
        cams = {name: cams_of(model, patched[:k], layer, p.device)[layer] for name, model in models.items()}
        save(figures.side_by_side(patched[:k], {nm: c["maps"] for nm, c in cams.items()},
                                  {nm: c["targets"] for nm, c in cams.items()}, d.classes,
                                  f"patched test {cls} images under both models ({method} at {layer}; dashed: patch)", box=p.box),
             "figures/side_by_side.png")
        # One patched image across the layers of the sweep, both models.
        layers = sweep_layers(layer)
        across = {name: cams_of(model, patched[:1], layers, p.device, targets=torch.tensor([target]))
                  for name, model in models.items()}
        save(figures.across_layers(patched[0], {nm: {lay: c[lay]["maps"][0] for lay in layers} for nm, c in across.items()},
                                   f"one patched {cls} image, {method} for class '{cls}' at each layer", box=p.box),
             "figures/layers_one_image.png")
    # Counterfactual gallery: non-target images, the same with the patch, both models.
    flipped = examples["flipped"]["biased"].nonzero().squeeze(1)[:n]
    if len(flipped):
        originals, pasted = examples["other_images"][flipped], examples["pasted"][flipped]
        preds, maps = {}, {}
        for name, model in models.items():
            preds[name] = (predict_logits(model, originals, p.device).argmax(1), predict_logits(model, pasted, p.device).argmax(1))
            maps[name] = cams_of(model, pasted, layer, p.device, targets=torch.full((len(pasted),), target))[layer]["maps"]
        save(figures.counterfactual_gallery(originals, pasted, preds, maps, d.classes,
                                            f"pasting the patch on non-{cls} test images ({method} for '{cls}' at {layer})", box=p.box),
             "figures/counterfactual_gallery.png")
    for name, history in histories.items():
        save(figures.training_curves({name: history}), f"{name}/training_curves.png")
    save(figures.training_curves(histories), "figures/training_curves.png")
    save(figures.energy_histograms({name: examples["patched_target_maps"][name][layer] for name in models}, p.box,
                                   shortcut["uniform"]["energy_in_box"],
                                   f"energy in the patch box, patched {cls} images called {cls}, {layer}"),
         "figures/energy_distribution.png")
    save(figures.per_class_accuracy({name: shortcut["models"][name]["per_class_acc"] for name in models}),
         "figures/per_class_accuracy.png")
    save(figures.layer_sweep({name: shortcut["models"][name]["cam"] for name in models}, shortcut["uniform"]),
         "figures/layer_sweep.png")
    return written


def evaluate_and_report(p: Prepared, models: dict, histories: dict, log=print, extra: dict | None = None,
                        started: float | None = None) -> dict:
    """Measure both models, draw the figures and write metrics.json, summary.md and REPORT.md.

    `started` (a `time.perf_counter()` value) adds the end-to-end seconds since then.
    """
    from gradcam_repro.report import report_markdown, summary_markdown

    cfg, d = p.config, p.data
    start = time.perf_counter()
    shortcut, examples = measure_shortcut(
        models, d.test_images, d.test_labels, d.classes, p.target, p.patch, p.box, sweep_layers(cfg.cam_layer),
        p.device, p.amp_dtype, cfg.seed, cfg.counterfactual_images, cfg.cam_images, cfg.cam_batch_size, d.test_masks,
        method=cfg.cam,
    )
    eval_s = time.perf_counter() - start
    for name, m in shortcut["models"].items():
        e = m["cam"][cfg.cam_layer]["patched_target"]["energy"]
        log(f"[{name}] clean test acc {m['clean_test_acc']['mean']:.3f}, {cfg.bias_class} recall clean "
            f"{m['target_recall_clean']['mean']:.3f} / patched {m['target_recall_patched']['mean']:.3f}, flip-to-"
            f"{cfg.bias_class} {m['flip_to_target']['patch']['mean']:.3f}, energy in patch at {cfg.cam_layer} "
            f"{e['mean']:.3f} (uniform {shortcut['uniform']['energy_in_box']:.3f})")
    start = time.perf_counter()
    figure_paths = make_figures(p, models, histories, shortcut, examples)
    metrics = {
        **_record(p, "metrics"),
        "box_tlbr_px": list(p.box),
        "cam_layer": cfg.cam_layer,
        "layers": sweep_layers(cfg.cam_layer),
        "settings": metrics_settings(),
        **shortcut,
        "histories": histories,
        "figures": figure_paths,
        "seconds": {"evaluate": eval_s, "figures": time.perf_counter() - start, **(extra or {})},
        "peak_rss_mb": artifacts.peak_rss_mb(),
    }
    if started is not None:
        metrics["seconds"]["end_to_end"] = time.perf_counter() - started
    out = Path(cfg.out_dir)
    artifacts.write_json(out / "metrics.json", metrics)
    artifacts.write_text(out / "summary.md", summary_markdown(metrics))
    artifacts.write_text(out / "REPORT.md", report_markdown(metrics, run_dir=out))
    return metrics


def metrics_settings() -> dict:
    from gradcam_repro import metrics

    return {"bootstrap_resamples": metrics.BOOTSTRAP_RESAMPLES, "confidence": metrics.CONFIDENCE,
            "bootstrap_method": "percentile", "pointing_tolerance_px": metrics.POINTING_TOLERANCE_PX,
            "points_at_patch_ratio": metrics.POINTS_AT_PATCH_RATIO, "relies_flip_rate": metrics.RELIES_FLIP_RATE}


def run(config: Config, log=print, force: bool = False) -> dict:
    """Both experiments end to end; returns the metrics also written to metrics.json."""
    wall = time.perf_counter()
    p = prepare(config, log)
    with artifacts.run_lock(p.config.out_dir):
        models, histories, train_s = {}, {}, {}
        for name in EXPERIMENTS:
            models[name], histories[name], extra = train_experiment(p, name, log, force)
            train_s[f"train_{name}"] = extra.get("train_seconds", float("nan"))
        metrics = evaluate_and_report(p, models, histories, log, extra=train_s, started=wall)
    log(f"done in {time.perf_counter() - wall:.0f} s (peak RSS {artifacts.peak_rss_mb():.0f} MB): "
        f"{Path(p.config.out_dir) / 'REPORT.md'}")
    if p.config.show:
        figures.show()
    return metrics


def load_run_config(run_dir: str | Path) -> Config:
    """The config a finished run was made with (from baseline/config.json)."""
    path = Path(run_dir) / "baseline" / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no baseline/config.json; fix: pass a folder written by `gradcam-repro run`")
    return Config.from_dict(artifacts.read_json(path)["config"])


def evaluate_run(run_dir: str | Path, log=print, **overrides) -> dict:
    """Recompute every metric, figure and report of a finished run from its saved checkpoints."""
    config = load_run_config(run_dir)
    config = replace(config, out=str(run_dir), **{k: v for k, v in overrides.items() if v is not None})
    p = prepare(config, log)
    with artifacts.run_lock(run_dir):
        models, histories = {}, {}
        for name in EXPERIMENTS:
            models[name] = load_model(Path(run_dir) / name / "model.pt", len(p.data.classes), p.device)
            histories[name] = artifacts.read_json(Path(run_dir) / name / "history.json")
        return evaluate_and_report(p, models, histories, log)


def report_run(run_dir: str | Path) -> Path:
    """Rebuild summary.md and REPORT.md from a run's saved metrics.json (no model is run)."""
    from gradcam_repro.report import report_markdown, summary_markdown

    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.json; fix: run `gradcam-repro evaluate {run_dir}` first")
    metrics = artifacts.read_json(path)
    artifacts.write_text(Path(run_dir) / "summary.md", summary_markdown(metrics))
    artifacts.write_text(Path(run_dir) / "REPORT.md", report_markdown(metrics, run_dir=run_dir))
    return Path(run_dir) / "REPORT.md"
