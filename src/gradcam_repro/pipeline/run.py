"""`gradcam-repro run`, `evaluate` and `report`: experiment specs in, results and reports out.

A run is a list of named experiment specs (today "baseline" and "biased"), each trained once into
`experiments/<key>/` (see `pipeline.experiment`), then measured the same way and reported. The folder's
layout and every read and write of it are `pipeline.folders.RunFolder`'s.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from gradcam_repro import store
from gradcam_repro.config import Config
from gradcam_repro.data.images import EvalSet
from gradcam_repro.explain.layers import PROJECT_STAGES
from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure import scores
from gradcam_repro.measure.comparison_results import MethodsResult, StaleMethods
from gradcam_repro.measure.examples import figure_examples, gallery_maps
from gradcam_repro.measure.results import ModelShortcut, RepairRecord, RunMetrics, ShortcutResults
from gradcam_repro.measure.shortcut import ShortcutProtocol, measure_shortcut
from gradcam_repro.pipeline.experiment import Experiment, experiment_ids, load_experiment, train_experiment
from gradcam_repro.pipeline.folders import RunFolder
from gradcam_repro.pipeline.parallel import train_side_by_side
from gradcam_repro.pipeline.prepare import Prepared, arch_layers, input_size, prepare
from gradcam_repro.pipeline.progress import as_reporter, run_final_line
from gradcam_repro.pipeline.spec import DEFAULT_ARCH, BiasSpec
from gradcam_repro.report import figures
from gradcam_repro.report.html import gallery_record, report_html
from gradcam_repro.report.markdown import report_markdown, summary_markdown
from gradcam_repro.report.run_figures import run_figures

# Stage outputs scored besides the configured layer: on 32x32 inputs layer1..layer4 run at 32, 16, 8 and 4 px.
SWEEP_LAYERS = PROJECT_STAGES


def sweep_layers(config: Config) -> list[str]:
    """The layers every CAM is scored at: the seed's ResNet-18's SWEEP_LAYERS, another architecture's stages
    (`explain.layers.stage_layers`), and the configured layer."""
    stages = SWEEP_LAYERS if config.arch == DEFAULT_ARCH else arch_layers(config.arch, input_size(config))[0]
    return list(dict.fromkeys([*stages, config.cam_layer]))


def shortcut_protocol(p: Prepared) -> ShortcutProtocol:
    cfg = p.config
    patch = BiasSpec.from_config(cfg).patch
    return ShortcutProtocol(p.target, patch, tuple(sweep_layers(cfg)), cfg.cam, cfg.seed,
                            cfg.counterfactual_images, cfg.cam_images, cfg.cam_batch_size)


def settings() -> dict:
    """The fixed rules and sample settings every verdict was computed with."""
    return {"bootstrap_resamples": scores.BOOTSTRAP_RESAMPLES, "confidence": scores.CONFIDENCE,
            "bootstrap_method": "percentile", "pointing_tolerance_px": scores.POINTING_TOLERANCE_PX,
            "points_at_patch_ratio": scores.POINTS_AT_PATCH_RATIO, "relies_flip_rate": scores.RELIES_FLIP_RATE}


def measure_run(p: Prepared, experiments: dict[str, Experiment], log=print) -> tuple[RunMetrics, dict]:
    """Measure every experiment of a run: (its metrics, the examples the figures draw)."""
    cfg, d = p.config, p.data
    models = {name: e.model for name, e in experiments.items()}
    test = EvalSet(d.test_images, d.test_labels, d.classes, d.test_masks)
    protocol = shortcut_protocol(p)
    start = time.perf_counter()
    reporter = as_reporter(log)
    with reporter.tracker(f"[cam] {display_name(cfg.cam)}", "img") as explaining:
        measured_dict, measured = measure_shortcut(models, test, protocol, p.runtime, explaining)
    shortcut = ShortcutResults.from_dict(measured_dict)
    examples = figure_examples(models, test, measured, protocol, p.runtime, cfg.figure_images, cfg.cam_layer)
    examples["patched_target_maps"] = {n: m["patched_target_maps"] for n, m in measured["models"].items()}
    examples["patched_target_masks"] = {n: m["patched_target_masks"] for n, m in measured["models"].items()}
    examples["histories"] = {name: e.history for name, e in experiments.items()}
    with reporter.tracker("[gallery]", "img") as explaining:
        examples["gallery_maps"] = gallery_maps(models, test, measured, protocol, p.runtime, progress=explaining)
    for name, m in shortcut.models.items():
        log(f"[{name}] " + headline(m, cfg, shortcut.uniform["energy_in_box"]))
    metrics = RunMetrics(
        config=cfg.to_dict(),
        experiments=experiment_ids(experiments),
        dataset=experiments[next(iter(experiments))].record["dataset"] | {"n_test": len(d.test_labels)},
        environment=store.environment_info(str(p.runtime.device)),
        precision=p.runtime.precision,
        box_tlbr_px=list(p.box) if p.box is not None else None,
        cam_layer=cfg.cam_layer,
        layers=list(protocol.layers),
        settings=settings(),
        shortcut=shortcut,
        histories=examples["histories"],
        repairs=repair_records(experiments),
        seconds={"evaluate": time.perf_counter() - start,
                 **{f"train_{n}": e.record["train_seconds"] for n, e in experiments.items() if "train_seconds" in e.record}},
    )
    return metrics, examples


def repair_records(experiments: dict[str, Experiment]) -> dict[str, RepairRecord]:
    """Strategy, parent key, settings, artefact (box, class, source) and cost in s of each repaired model."""
    out = {}
    for name, e in experiments.items():
        r = e.spec.repair
        if r is not None:
            a = r.artefact
            out[name] = RepairRecord(r.strategy, r.parent, dict(r.params),
                                     {"box_tlbr_px": a["box_tlbr_px"], "class": a["class"], "source": a["source"]},
                                     e.record.get("repair_seconds", e.record.get("train_seconds", float("nan"))))
    return out


def headline(m: ModelShortcut, cfg: Config, uniform: float) -> str:
    """One model's headline numbers in one line; says why the CAM energy is missing when it is."""
    cls, layer = cfg.bias_class, cfg.cam_layer
    e = m.energy(layer)
    energy = (f"energy in patch at {layer} {e.mean:.3f} (uniform {uniform:.3f})" if e.n else
              f"energy in patch at {layer} not measurable on 0 images (no patched {cls} image was predicted {cls})")
    return (f"clean test acc {m.clean_test_acc.mean:.3f}, {cls} recall clean {m.target_recall_clean.mean:.3f} "
            f"/ patched {m.target_recall_patched.mean:.3f}, flip-to-{cls} {m.flip_to_target['patch'].mean:.3f}, "
            + energy)


def write_results(run: RunFolder, metrics: RunMetrics, examples: dict, show: bool = False) -> RunMetrics:
    """Draw the figures, then write gallery.json, metrics.json, summary.md, REPORT.md and REPORT.html (each
    atomically); returns the metrics as written (with the figures, their time and the peak memory)."""
    start = time.perf_counter()
    figs = figures.save_figures(run_figures(metrics, examples), run.root, keep_open=show)
    gallery = {"experiments": metrics.experiments,
               **gallery_record(examples["gallery_maps"], metrics.dataset["classes"], metrics.box_tlbr_px)}
    run.write_gallery(gallery)
    metrics = replace(metrics.timed(figures=time.perf_counter() - start), figures=list(figs),
                      peak_rss_mb=store.peak_rss_mb())
    run.write_metrics(metrics)
    write_reports(run, metrics, gallery=gallery, new_figures=figs)
    return metrics


def write_reports(run: RunFolder, metrics: RunMetrics, methods: MethodsResult | None = None, gallery: dict | None = None,
                  new_figures: dict[str, bytes] | None = None) -> Path:
    """summary.md, REPORT.md and REPORT.html from `metrics`, with compare's `methods` and the `gallery` when they
    measured these models.

    `methods` and `gallery` default to what earlier commands wrote (methods.json, gallery.json); REPORT.html
    embeds the listed figures, from `new_figures` ({relative path: PNG bytes} drawn just now) or else from the
    files earlier commands saved."""
    methods = current_methods(run.read_methods() if methods is None else methods, metrics)
    gallery = run.read_gallery() if gallery is None else gallery
    if gallery is not None and gallery.get("experiments") != metrics.experiments:
        gallery = None  # measured on other models: the page says how to get a current one
    listed = list(dict.fromkeys([*metrics.figures, *(methods.figures if isinstance(methods, MethodsResult) else ())]))
    new_figures = new_figures or {}
    saved = run.read_figures(rel for rel in listed if rel not in new_figures)
    figs = {rel: new_figures[rel] if rel in new_figures else saved[rel] for rel in listed if rel in new_figures or rel in saved}
    run.write_reports(summary_markdown(metrics), report_markdown(metrics, methods), report_html(metrics, methods, gallery, figs))
    return run.report_md


def current_methods(methods: MethodsResult | None, metrics: RunMetrics) -> MethodsResult | StaleMethods | None:
    """compare's results if they measured the models of `metrics` (same keys and model files), `StaleMethods`
    if they measured others, None when absent."""
    if methods is None:
        return None
    return methods if methods.experiments == metrics.experiments else StaleMethods(methods.experiments)


def run(config: Config, log=print, force: bool = False, parallel: bool = False) -> RunMetrics:
    """Train every experiment of the run (or reuse it), measure, draw and report; returns the metrics.

    With `parallel`, the experiments are first trained side by side on a local Ray
    (`pipeline.parallel.train_side_by_side`); whatever it finished is then reused."""
    wall = time.perf_counter()
    p = prepare(config, log)
    folder = RunFolder(p.config.out_dir)
    with folder.lock():
        repaired = folder.kept_repairs(p.specs["biased"].key if "biased" in p.specs else None)
        folder.write_manifest(p.config, {**{n: s.key for n, s in p.specs.items()}, **repaired})
        if parallel:
            train_side_by_side(p, folder, log, force)
            force = False  # retrained just now
        experiments = {name: train_experiment(spec, p.training, folder.experiment(spec.key), name, log, force)
                       for name, spec in p.specs.items()}
        experiments |= {name: load_experiment(folder.experiment(key), len(p.data.classes), p.runtime)
                        for name, key in repaired.items()}
        metrics, examples = measure_run(p, experiments, log)
        metrics = write_results(folder, metrics.timed(end_to_end=time.perf_counter() - wall), examples, p.config.show)
    as_reporter(log).final(run_final_line(metrics, folder.root, time.perf_counter() - wall))
    if p.config.show:
        figures.show()
    return metrics


def load_run(run_dir: str | Path, log=print, **overrides) -> tuple[Prepared, dict[str, Experiment]]:
    """A finished run's prepared inputs (with `overrides` of evaluation settings) and its trained experiments."""
    folder = RunFolder(run_dir)
    config, keys = folder.read_manifest()
    config = replace(config, out=str(run_dir), **{k: v for k, v in overrides.items() if v is not None})
    p = prepare(config, log)
    experiments = {name: load_experiment(folder.experiment(key), len(p.data.classes), p.runtime)
                   for name, key in keys.items()}
    return p, experiments


def evaluate_run(run_dir: str | Path, log=print, **overrides) -> RunMetrics:
    """Recompute every metric, figure and report of a finished run from its saved models."""
    p, experiments = load_run(run_dir, log, **overrides)
    folder = RunFolder(run_dir)
    with folder.lock():
        metrics, examples = measure_run(p, experiments, log)
        return write_results(folder, metrics, examples)


def report_run(run_dir: str | Path) -> Path:
    """Rebuild summary.md, REPORT.md and REPORT.html from what earlier commands wrote (no model is run)."""
    folder = RunFolder(run_dir)
    return write_reports(folder, folder.read_metrics())
