"""`gradcam-repro compare RUN [--shapes-run SHAPES_RUN]`: measure every explanation method, then render.

Loads a finished run's experiments (and a shapes run's baseline, for localisation against object
masks), measures every section with `measure.comparison` (shortcut evidence, shapes localisation, sanity
check, deletion/insertion), draws the figures, writes RUN/methods.json and refreshes RUN/REPORT.md.
methods.json records the spec key of each experiment it measured; the report shows it only while
those keys match metrics.json's (see `pipeline.run.current_methods`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from torch import nn

from gradcam_repro import store
from gradcam_repro.data.images import EvalSet
from gradcam_repro.errors import UserError
from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure.comparison import (
    RANDOM,
    CompareOptions,
    MethodSweep,
    compare_settings,
    faithfulness_check,
    sanity_check,
    shapes_localisation,
    shortcut_evidence,
)
from gradcam_repro.measure.comparison_results import MethodsResult
from gradcam_repro.pipeline.experiment import Experiment, experiment_ids
from gradcam_repro.pipeline.folders import RunFolder
from gradcam_repro.pipeline.prepare import Prepared
from gradcam_repro.pipeline.progress import Task, as_reporter
from gradcam_repro.pipeline.run import load_run, shortcut_protocol, sweep_layers, write_reports
from gradcam_repro.report import figures

__all__ = ["CompareOptions", "compare_methods"]


def compare_methods(run_dir: str | Path, options: CompareOptions, log=print) -> MethodsResult:
    """Measure every method of `options` on a finished run; write methods.json, figures and REPORT.md's section.

    Every input is checked (one-line `UserError`) before anything is measured or written. Returns what
    methods.json holds.
    """
    run_dir = Path(run_dir)
    options.validate()
    _check_shapes_run(options.shapes_run)
    wall = time.perf_counter()
    p, experiments = load_run(run_dir, log, device=options.device, data_root=options.data_root)
    shapes = _shapes_source(run_dir, p, experiments, options, log)
    cfg = p.config
    sweep = MethodSweep(options, tuple(sweep_layers(cfg)), cfg.cam_layer, cfg.seed, p.runtime)
    result, drawn = _measure(p, experiments, shapes, sweep, log)
    run = RunFolder(run_dir)
    with run.lock():
        figs = _figures(run_dir, result, drawn)
        result = replace(result, figures=tuple(figs), seconds={**result.seconds, "total": time.perf_counter() - wall})
        run.write_methods(result)
        if run.metrics_json.is_file():  # the run has been evaluated: its reports gain the new section
            write_reports(run, run.read_metrics(), methods=result, new_figures=figs)
    as_reporter(log).final(f"[compare] done in {result.seconds['total']:.0f} s: {run_dir / 'methods.json'}, "
                           f"section in {run_dir / 'REPORT.md'}")
    return result


def _check_shapes_run(shapes_run: str | Path | None) -> None:
    """A --shapes-run must be a run folder with a baseline experiment (its masks are checked once loaded)."""
    if shapes_run is None:
        return
    try:
        _, keys = RunFolder(shapes_run).read_manifest()
    except UserError as exc:
        raise UserError(f"--shapes-run: {exc}") from None
    if "baseline" not in keys:
        raise UserError(f"--shapes-run: {shapes_run} has no baseline experiment; fix: pass a folder written by "
                        "`gradcam-repro run --dataset shapes`")


def _shapes_source(run_dir: Path, p: Prepared, experiments: dict[str, Experiment], options: CompareOptions,
                   log) -> tuple[str, Prepared, nn.Module] | None:
    """(folder, prepared run, baseline model) to localise on: --shapes-run, else RUN itself if it has masks."""
    if options.shapes_run is None:
        return (str(run_dir), p, experiments["baseline"].model) if p.data.test_masks is not None else None
    sp, shapes_experiments = load_run(options.shapes_run, log, device=options.device)
    if sp.data.test_masks is None:
        raise UserError(f"{options.shapes_run} is not a shapes run (no object masks); fix: pass a run made with "
                        "--dataset shapes")
    return str(options.shapes_run), sp, shapes_experiments["baseline"].model


def _test_set(p: Prepared) -> EvalSet:
    d = p.data
    return EvalSet(d.test_images, d.test_labels, d.classes, d.test_masks)


def _timed(sections: Task, seconds: dict, section: str, measure, *args) -> dict:
    """`measure(*args)`, its seconds recorded under `section` and one step of the `sections` task."""
    start = time.perf_counter()
    result = measure(*args)
    seconds[section] = time.perf_counter() - start
    sections.update(1)
    return result


def _measure(p: Prepared, experiments: dict[str, Experiment], shapes, sweep: MethodSweep,
             log) -> tuple[MethodsResult, dict]:
    """Every section, timed: (methods.json without figures and total time; the figures' tensors)."""
    models = {name: e.model for name, e in experiments.items()}
    test, cls = _test_set(p), p.config.bias_class
    seconds: dict[str, float] = {}
    reporter = as_reporter(log)
    sections = reporter.task("[compare] sections", 4 if shapes is not None else 3, "section")
    sweep = replace(sweep, progress=reporter.tracker("[compare] maps", "img"))
    # 1. Shortcut evidence: patched target images each model calls target, explained for the target class.
    found = _timed(sections, seconds, "shortcut", shortcut_evidence, models, test, p.target, shortcut_protocol(p).patch, sweep)
    for name, n in found["called_target"].items():
        log(f"[compare] {name}: {n} patched {cls} images called {cls}")
    uniform, localisation, shapes_folder = found["uniform"], None, None
    # 2. Localisation on shapes (true object masks), the shapes run's baseline model in its own precision.
    if shapes is not None:
        shapes_folder, sp, model = shapes
        located = _timed(sections, seconds, "localisation", shapes_localisation, model, _test_set(sp),
                         replace(sweep, runtime=sp.runtime))
        localisation, uniform = located["localisation"], {**uniform, "energy_in_mask": located["energy_in_mask"]}
    # 3. Sanity check: cascading randomisation of the baseline model, clean test images, true class.
    base = models["baseline"]
    cascade = _timed(sections, seconds, "sanity", sanity_check, base, test, sweep)
    # 4. Faithfulness: deletion/insertion on clean test images, the baseline model's predicted class.
    faithful = _timed(sections, seconds, "faithfulness", faithfulness_check, base, test, sweep)
    sections.close()
    sweep.progress.close()
    result = MethodsResult(
        sweep.methods, sweep.layers, sweep.cam_layer, experiment_ids(experiments),
        compare_settings(sweep.options, sweep.runtime), seconds, found["shortcut"], uniform, found["flags_shortcut"],
        cascade["sanity"], faithful["faithfulness"], store.environment_info(str(p.runtime.device)), localisation,
        shapes_folder)
    return result, {"cascade_maps": cascade["cascade_maps"], "sanity_image": cascade["image"], "curves": faithful["curves"]}


def _names(methods: tuple[str, ...]) -> dict[str, str]:
    """How figures label each method and the random baseline."""
    return {**{m: display_name(m) for m in methods}, RANDOM: "random map"}


def _figures(run_dir: Path, result: MethodsResult, drawn: dict) -> dict[str, bytes]:
    """Draw and save the comparison's figures; returns {path relative to `run_dir`: PNG bytes}."""
    names, written = _names(result.methods), {}

    def save(fig, rel):
        written.update(figures.save_figures({rel: fig}, run_dir))

    save(figures.method_layer_heatmap(result, names), "figures/methods_layers.png")
    image = drawn["sanity_image"]
    if len(image):
        for method, maps in drawn["cascade_maps"].items():
            save(figures.sanity_cascade(image[0], maps, f"{names[method]}: cascading randomisation "
                                                        f"(baseline model, top to bottom)"),
                 f"figures/sanity_{method.replace('+', 'p')}.png")
    save(figures.deletion_insertion_curves({names[m]: r for m, r in drawn["curves"].items()},
                                           "deletion and insertion, baseline model, clean test images"),
         "figures/deletion_insertion.png")
    return written


