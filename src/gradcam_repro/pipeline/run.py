"""`gradcam-repro run`, `evaluate` and `report`: experiment specs in, results and reports out.

A run is a list of named experiment specs (today "baseline" and "biased"), each trained once into
`experiments/<key>/` (see `pipeline.experiment`), then measured the same way and reported. Layout of
`runs/<name>/`:
    run.json             config and {experiment name: spec key}; written before training
    experiments/<key>/   model.pt, history.json, history.csv, spec.json (one folder per spec)
    figures/*.png, metrics.json, summary.md, REPORT.md
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from gradcam_repro import store
from gradcam_repro.config import SEED_LAYER, Config
from gradcam_repro.errors import UserError
from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure import scores
from gradcam_repro.measure.examples import figure_examples, gallery_maps
from gradcam_repro.measure.shortcut import EvalSet, ShortcutProtocol, measure_shortcut
from gradcam_repro.pipeline.experiment import (
    Experiment,
    experiment_ids,
    load_experiment,
    read_finished,
    train_experiment,
)
from gradcam_repro.pipeline.parallel import train_side_by_side
from gradcam_repro.pipeline.prepare import Prepared, prepare
from gradcam_repro.pipeline.progress import as_reporter, final_line
from gradcam_repro.report import figures
from gradcam_repro.report.html import gallery_record, report_html
from gradcam_repro.report.markdown import report_markdown, summary_markdown
from gradcam_repro.report.run_figures import run_figures

# Stage outputs scored besides the configured layer: on 32x32 inputs layer1..layer4 run at 32, 16, 8 and 4 px.
SWEEP_LAYERS = ("layer1", "layer2", "layer3", "layer4", SEED_LAYER)


def sweep_layers(cam_layer: str) -> list[str]:
    return list(dict.fromkeys([*SWEEP_LAYERS, cam_layer]))


def shortcut_protocol(p: Prepared) -> ShortcutProtocol:
    cfg = p.config
    patch = {"patch_size": cfg.patch_size, "color": tuple(cfg.patch_color), "corner": cfg.patch_corner,
             "offset": cfg.patch_offset}
    return ShortcutProtocol(p.target, patch, tuple(sweep_layers(cfg.cam_layer)), cfg.cam, cfg.seed,
                            cfg.counterfactual_images, cfg.cam_images, cfg.cam_batch_size)


def settings() -> dict:
    """The fixed rules and sample settings every verdict was computed with."""
    return {"bootstrap_resamples": scores.BOOTSTRAP_RESAMPLES, "confidence": scores.CONFIDENCE,
            "bootstrap_method": "percentile", "pointing_tolerance_px": scores.POINTING_TOLERANCE_PX,
            "points_at_patch_ratio": scores.POINTS_AT_PATCH_RATIO, "relies_flip_rate": scores.RELIES_FLIP_RATE}


def measure_run(p: Prepared, experiments: dict[str, Experiment], log=print) -> tuple[dict, dict]:
    """Measure every experiment of a run: (metrics for metrics.json, examples for the figures)."""
    cfg, d = p.config, p.data
    models = {name: e.model for name, e in experiments.items()}
    test = EvalSet(d.test_images, d.test_labels, d.classes, d.test_masks)
    protocol = shortcut_protocol(p)
    start = time.perf_counter()
    reporter = as_reporter(log)
    with reporter.tracker(f"[cam] {display_name(cfg.cam)}", "img") as explaining:
        shortcut, measured = measure_shortcut(models, test, protocol, p.runtime, explaining)
    examples = figure_examples(models, test, measured, protocol, p.runtime, cfg.figure_images, cfg.cam_layer)
    examples["patched_target_maps"] = {n: m["patched_target_maps"] for n, m in measured["models"].items()}
    examples["histories"] = {name: e.history for name, e in experiments.items()}
    with reporter.tracker("[gallery]", "img") as explaining:
        examples["gallery_maps"] = gallery_maps(models, test, measured, protocol, p.runtime, progress=explaining)
    for name, m in shortcut["models"].items():
        log(f"[{name}] " + headline(m, cfg, shortcut["uniform"]["energy_in_box"]))
    metrics = {
        "config": cfg.to_dict(),
        "experiments": experiment_ids(experiments),
        "dataset": experiments[next(iter(experiments))].record["dataset"] | {"n_test": len(d.test_labels)},
        "environment": store.environment_info(str(p.runtime.device)),
        "precision": p.runtime.precision,
        "box_tlbr_px": list(p.box),
        "cam_layer": cfg.cam_layer,
        "layers": list(protocol.layers),
        "settings": settings(),
        **shortcut,
        "histories": examples["histories"],
        "repairs": repair_records(experiments),
        "seconds": {"evaluate": time.perf_counter() - start,
                    **{f"train_{n}": e.record["train_seconds"] for n, e in experiments.items() if "train_seconds" in e.record}},
    }
    return metrics, examples


def repair_records(experiments: dict[str, Experiment]) -> dict:
    """{name: strategy, parent key, settings, artefact (box, class, source) and cost in s} per repaired model."""
    out = {}
    for name, e in experiments.items():
        r = e.spec.repair
        if r is not None:
            a = r.artefact
            out[name] = {"strategy": r.strategy, "parent": r.parent, "params": dict(r.params),
                         "artefact": {"box_tlbr_px": a["box_tlbr_px"], "class": a["class"], "source": a["source"]},
                         "seconds": e.record.get("repair_seconds", e.record.get("train_seconds", float("nan")))}
    return out


def headline(m: dict, cfg: Config, uniform: float) -> str:
    """One model's headline numbers in one line; says why the CAM energy is missing when it is."""
    cls, layer = cfg.bias_class, cfg.cam_layer
    e = m["cam"][layer]["patched_target"]["energy"]
    energy = (f"energy in patch at {layer} {e['mean']:.3f} (uniform {uniform:.3f})" if e["n"] else
              f"energy in patch at {layer} not measurable on 0 images (no patched {cls} image was predicted {cls})")
    return (f"clean test acc {m['clean_test_acc']['mean']:.3f}, {cls} recall clean {m['target_recall_clean']['mean']:.3f} "
            f"/ patched {m['target_recall_patched']['mean']:.3f}, flip-to-{cls} {m['flip_to_target']['patch']['mean']:.3f}, "
            + energy)


def write_results(out: Path, metrics: dict, examples: dict, show: bool = False) -> dict:
    """Draw the figures, then write gallery.json, metrics.json, summary.md, REPORT.md and REPORT.html (each atomically)."""
    start = time.perf_counter()
    figs = run_figures(metrics, examples)
    for rel, fig in figs.items():
        store.save_figure(fig, out / rel)
        if not show:
            figures.close(fig)
    metrics["figures"] = list(figs)
    gallery = gallery_record(examples["gallery_maps"], metrics["dataset"]["classes"], metrics["box_tlbr_px"])
    store.write_json(out / "gallery.json", {"experiments": metrics["experiments"], **gallery})
    metrics["seconds"]["figures"] = time.perf_counter() - start
    metrics["peak_rss_mb"] = store.peak_rss_mb()
    store.write_json(out / "metrics.json", metrics)
    write_reports(out, metrics)
    return metrics


def write_reports(out: Path, metrics: dict) -> Path:
    """summary.md, REPORT.md and REPORT.html from `metrics` (and methods.json when it measured these models).

    REPORT.html also gets gallery.json's gallery (when it was written with these models) and the listed figures."""
    methods = methods_for_report(out, metrics)
    store.write_text(out / "summary.md", summary_markdown(metrics))
    store.write_text(out / "REPORT.md", report_markdown(metrics, methods))
    path = out / "gallery.json"
    gallery = store.read_json(path, fix=f"fix: rerun `gradcam-repro evaluate {out}`") if path.is_file() else None
    if gallery is not None and gallery.get("experiments") != metrics.get("experiments"):
        gallery = None  # measured on other models: the page says how to get a current one
    listed = dict.fromkeys([*metrics.get("figures", []), *(methods or {}).get("figures", [])])
    figs = {rel: (out / rel).read_bytes() for rel in listed if (out / rel).is_file()}
    store.write_text(out / "REPORT.html", report_html(metrics, methods, gallery, figs))
    return out / "REPORT.md"


def methods_for_report(out: Path, metrics: dict) -> dict | None:
    """methods.json if present: {} marks it stale (measured other models: other keys or model files), None absent."""
    path = out / "methods.json"
    if not path.is_file():
        return None
    methods = store.read_json(path, fix=f"fix: rerun `gradcam-repro compare {out}`")
    return methods if methods.get("experiments") == metrics.get("experiments") else {}


def run(config: Config, log=print, force: bool = False, parallel: bool = False) -> dict:
    """Train every experiment of the run (or reuse it), measure, draw and report; returns the metrics.

    With `parallel`, the experiments are first trained side by side on a local Ray
    (`pipeline.parallel.train_side_by_side`); whatever it finished is then reused."""
    wall = time.perf_counter()
    p = prepare(config, log)
    out = Path(p.config.out_dir)
    with store.run_lock(out):
        repaired = kept_repairs(out, p.specs["biased"].key if "biased" in p.specs else None)
        store.write_json(out / "run.json", {"config": p.config.to_dict(),
                                            "experiments": {**{n: s.key for n, s in p.specs.items()}, **repaired}})
        if parallel:
            train_side_by_side(p, out, log, force)
            force = False  # retrained just now
        experiments = {name: train_experiment(spec, p.training, out, name, log, force) for name, spec in p.specs.items()}
        experiments |= {name: load_experiment(out / "experiments" / key, len(p.data.classes), p.runtime)
                        for name, key in repaired.items()}
        metrics, examples = measure_run(p, experiments, log)
        metrics["seconds"]["end_to_end"] = time.perf_counter() - wall
        write_results(out, metrics, examples, p.config.show)
    as_reporter(log).final(final_line(metrics, out, time.perf_counter() - wall))
    if p.config.show:
        figures.show()
    return metrics


def kept_repairs(out: Path, biased_key: str | None) -> dict[str, str]:
    """{name: key} of the repaired models an earlier run.json in `out` lists whose parent is still this run's
    biased model, so that rerunning `run` keeps (and re-measures) what `gradcam-repro repair` added."""
    if biased_key is None or not (out / "run.json").is_file():
        return {}
    try:
        earlier = store.read_json(out / "run.json")["experiments"]
    except (UserError, KeyError, TypeError):
        return {}
    kept = {}
    for name, key in earlier.items():
        record = read_finished(out / "experiments" / str(key)) or {}
        if (record.get("spec", {}).get("repair") or {}).get("parent") == biased_key:
            kept[name] = key
    return kept


def load_run_config(run_dir: str | Path) -> tuple[Config, dict[str, str]]:
    """The config a run was made with and its {experiment name: spec key}, from run.json."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file() and (run_dir / "baseline" / "config.json").is_file():
        raise UserError(f"{run_dir} was written by an older gradcam-repro (baseline/ and biased/ folders); "
                        "fix: rerun `gradcam-repro run` with the same flags into a new --out")
    manifest = store.read_json(run_dir / "run.json", fix="fix: pass a folder written by `gradcam-repro run`")
    return Config.from_dict(manifest["config"]), manifest["experiments"]


def load_run(run_dir: str | Path, log=print, **overrides) -> tuple[Prepared, dict[str, Experiment]]:
    """A finished run's prepared inputs (with `overrides` of evaluation settings) and its trained experiments."""
    config, keys = load_run_config(run_dir)
    config = replace(config, out=str(run_dir), **{k: v for k, v in overrides.items() if v is not None})
    p = prepare(config, log)
    experiments = {name: load_experiment(Path(run_dir) / "experiments" / key, len(p.data.classes), p.runtime)
                   for name, key in keys.items()}
    return p, experiments


def evaluate_run(run_dir: str | Path, log=print, **overrides) -> dict:
    """Recompute every metric, figure and report of a finished run from its saved models."""
    p, experiments = load_run(run_dir, log, **overrides)
    with store.run_lock(run_dir):
        metrics, examples = measure_run(p, experiments, log)
        return write_results(Path(run_dir), metrics, examples)


def report_run(run_dir: str | Path) -> Path:
    """Rebuild summary.md and REPORT.md from a run's saved metrics.json (no model is run)."""
    metrics = store.read_json(Path(run_dir) / "metrics.json", fix=f"fix: run `gradcam-repro evaluate {run_dir}` first")
    return write_reports(Path(run_dir), metrics)
