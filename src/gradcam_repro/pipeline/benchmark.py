"""`gradcam-repro benchmark`: which explanations and audits catch which shortcuts, and how often they cry wolf.

For every artefact recipe (`RECIPES`: a kind of `data.zoo` with its place and rendering), biased models at each
dose and one clean control per seed (bias fraction 0: the same model for every kind) are trained and measured
like a study's cells (on the study engine: Ray, resumable, one file per finished cell), each cell's model also
audited on its test images with the artefact pasted on half of the target class's (`pipeline.audit.audit_cell`).
`measure.detection` then turns the cells into rates; BENCHMARK.json, BENCHMARK.md and a heat map are written under
--out, beside the study's grid.json, cells/ and experiments/.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gradcam_repro import store
from gradcam_repro.config import MAX_SEED, PRESETS, preset_config, valid_seed
from gradcam_repro.data import zoo
from gradcam_repro.errors import UserError
from gradcam_repro.explain.registry import map_layers
from gradcam_repro.measure import spray
from gradcam_repro.measure.detection import BenchmarkResult, audit_rows, rules, summarise
from gradcam_repro.measure.study_results import StudyCellResult
from gradcam_repro.pipeline.engine import ray_session
from gradcam_repro.pipeline.folders import BenchmarkFolder
from gradcam_repro.pipeline.grid import DEFAULT_METHODS, StudyGrid, StudyPlan, plan_cells
from gradcam_repro.pipeline.prepare import validated
from gradcam_repro.pipeline.progress import as_reporter
from gradcam_repro.pipeline.run import sweep_layers
from gradcam_repro.pipeline.study import finished_cells
from gradcam_repro.pipeline.study_tasks import StudyOptions, pending_tasks, reaudit_tasks, run_tasks
from gradcam_repro.report import figures
from gradcam_repro.report.benchmark_report import benchmark_figures, benchmark_markdown


@dataclass(frozen=True)
class Recipe:
    """One benchmarked artefact: the `run` flags (Config fields) that plant it, and what it stands for."""

    flags: dict
    help: str


# The artefacts benchmarked by default: every kind of the zoo once, the logo JPEG-compressed, the text also at a
# random place (the audit's false all-clear of issue 23). Colours and places differ from the seed's yellow
# top-left square so that no recipe is the square again.
# Sizes: a 5 px logo and the text at glyph scale 1 (5x11 px) were relied on by only 8-19% of flipped images at
# dose 1 (2 seeds); probed on seed 0 at dose 1, an 8 px logo flips 97.7%, a 10 px one 94.3%, the text at scale 2
# 80.1%, so those are the recipes (the quick models flip 99% on the square). The noise at the zoo's default +-8 levels was
# relied on by none of 3 seeds (flip 6-11%, as the controls); probed on seed 0 at dose 1 (fp32), +-24 levels flip 64.2%,
# +-48 levels 96.9%. The blur at sigma 1.5 px over an 8 px centre square was relied on by none of 3 seeds (flip 6-10%);
# probed on seed 0 at dose 1 (bf16 EPYC), sigma 2 over 16 px flips 50.4%, sigma 3 over 16 px 51.1%, sigma 3 over 20 px
# 72.0%.
RECIPES: dict[str, Recipe] = {
    "square": Recipe({}, "the seed's 6 px yellow square, top-left"),
    "logo": Recipe({"artefact": "logo", "patch_size": 8, "patch_color": (255, 0, 0), "patch_corner": "bottom-left",
                    "jpeg_quality": 75}, "an 8 px red/white checker, bottom-left, JPEG quality 75"),
    "text": Recipe({"artefact": "text", "patch_size": 10, "patch_color": (255, 255, 255), "patch_corner": "bottom-right"},
                   "the watermark '(c)' in white at glyph scale 2 (10x22 px), bottom-right"),
    "text-random": Recipe({"artefact": "text", "patch_size": 10, "patch_color": (255, 255, 255), "patch_corner": "random",
                           "jpeg_quality": 75}, "the watermark '(c)' in white at glyph scale 2 (10x22 px) at a random place, "
                                                "JPEG quality 75"),
    "stripe": Recipe({"artefact": "stripe", "patch_size": 1, "patch_color": (0, 255, 255), "patch_offset": 3},
                     "a 1 px cyan line across the image, 3 px from the top"),
    "frame": Recipe({"artefact": "frame", "patch_size": 1, "patch_color": (255, 0, 255)}, "a 1 px magenta border"),
    "tint": Recipe({"artefact": "tint", "patch_color": (255, 0, 255)}, "a global shift of 8 levels towards magenta"),
    "blur": Recipe({"artefact": "blur", "patch_size": 20, "patch_corner": "centre", "strength": 3.0},
                   "a 20 px square blurred at sigma 3 px, centre"),
    "noise": Recipe({"artefact": "noise", "strength": 48.0}, "a fixed +-48-level pattern over the whole image"),
}
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_DOSES = (1.0, 0.3)
BENCHMARK_PRESET = "benchmark"


@dataclass(frozen=True)
class BenchmarkOptions:
    """What a benchmark measures (one field per flag): recipes, seeds, doses, the training preset and methods."""

    kinds: tuple[str, ...] = field(default=tuple(RECIPES), metadata={
        "metavar": "KIND", "help": f"artefact recipes, from {', '.join(RECIPES)}"})
    seeds: tuple[int, ...] = field(default=DEFAULT_SEEDS, metadata={"metavar": "N", "help": "seeds (at least 3 for rates)"})
    doses: tuple[float, ...] = field(default=DEFAULT_DOSES, metadata={
        "metavar": "F", "help": "bias fractions of the biased models, in (0, 1]; every seed also trains a clean control"})
    preset: str = field(default=BENCHMARK_PRESET, metadata={"choices": list(PRESETS), "help": "training preset"})
    methods: tuple[str, ...] = field(default=DEFAULT_METHODS, metadata={
        "metavar": "METHOD", "help": "explanation methods scored at every layer"})
    reaudit: bool = field(default=False, metadata={
        "help": "audit again every finished cell whose audit is older than this version's audit rules, or whose "
                "whole audit (audits/<key>.json) was not kept (its model and measurements are kept; resumable), then "
                "report"})
    report_only: bool = field(default=False, metadata={
        "help": "write BENCHMARK.json/.md and the heat maps from the cells finished so far (e.g. of a run that was "
                "stopped), without running the others; the report says how many cells it stands on"})

    def validate(self) -> BenchmarkOptions:
        for axis, values in (("kind", self.kinds), ("seed", self.seeds), ("dose", self.doses)):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise UserError(f"the benchmark grid names {axis} {twice[0]!r} twice; fix: list each {axis} once")
        unknown = [k for k in self.kinds if k not in RECIPES]
        if unknown:
            raise UserError(f"unknown benchmark kind {unknown[0]!r}; fix: pass --kinds from {', '.join(RECIPES)}")
        if not all(valid_seed(s) for s in self.seeds):
            raise UserError(f"--seeds must be in 0..{MAX_SEED}, got {list(self.seeds)}; fix: e.g. --seeds 0 1 2")
        if not all(0.0 < d <= 1.0 for d in self.doses):
            raise UserError(f"--doses must be in (0, 1], got {list(self.doses)}; fix: e.g. --doses 1.0 0.3")
        return self


def plan_benchmark(options: BenchmarkOptions, settings: dict, out: str, log=print) -> StudyPlan:
    """Every cell (kind x seed x (0, *doses)), validated and keyed, each dataset loaded once; writes nothing."""
    options.validate()
    fractions = (0.0, *options.doses)
    grid = StudyGrid({"preset": options.preset, **settings},
                     {"seed": options.seeds, "kind": options.kinds, "bias_fraction": fractions}, options.methods)
    combos = grid.combinations()
    configs = [validated(preset_config(options.preset, **settings, **RECIPES[c["kind"]].flags, seed=c["seed"],
                                       bias_fraction=c["bias_fraction"], out=out)) for c in combos]
    return plan_cells(grid, combos, configs, log)


def benchmark_result(plan: StudyPlan, options: BenchmarkOptions, cells: dict[str, StudyCellResult], failed: int,
                     wall_s: float) -> BenchmarkResult:
    """BENCHMARK.json's content from the finished cells."""
    done = list(cells.values())
    config = plan.cells[0].config
    kinds = {k: zoo.KINDS[RECIPES[k].flags.get("artefact", "square")].placed for k in options.kinds}
    layers = {m: map_layers(m, sweep_layers(config)) for m in options.methods}
    summaries, found = summarise(done, kinds, tuple(options.doses), layers)
    seconds = {**cost(plan, done), "wall": wall_s}
    environment = done[0].environment if done else {}
    return BenchmarkResult({k: {"flags": {f: list(v) if isinstance(v, tuple) else v for f, v in RECIPES[k].flags.items()},
                                "help": RECIPES[k].help} for k in options.kinds},
                           tuple(options.seeds), tuple(options.doses), layers, tuple(summaries), tuple(found),
                           {"total": len(plan.cells), "done": len(done), "failed": failed}, seconds, options.preset,
                           environment, {**rules(), "audit_rules_version": spray.RULES_VERSION,
                                         "cells_by_audit_rules": audit_versions(done)}, tuple(audit_rows(done)))


def audit_versions(done: list[StudyCellResult]) -> dict[str, int]:
    """{audit rules version: how many of the finished cells were audited by it} (`--reaudit` brings older ones up
    to date)."""
    return {str(v): n for v, n in sorted(Counter(c.audit.rules for c in done if c.audit is not None).items())}


def cost(plan: StudyPlan, done: list[StudyCellResult]) -> dict[str, float]:
    """Worker seconds per trained model and per measured (and audited) cell, of which the audit's, means over the
    finished ones (models restored from an earlier call left out), and what the whole grid costs in worker seconds:
    one slot's wall time, to be divided by the slots of a machine or cluster (a slot: one worker with
    --cpus-per-cell threads)."""
    def mean(xs: list[float]) -> float:
        return statistics.fmean(xs) if xs else float("nan")

    trained = {c.spec_key: c.seconds["train"] for c in done if not c.restored_experiment}
    per_model, per_cell = mean(list(trained.values())), mean([c.seconds["evaluate"] for c in done])
    audit = mean([c.audit.seconds for c in done if c.audit is not None])
    models = len({c.spec.key for c in plan.cells})
    return {"train_per_model": per_model, "evaluate_per_cell": per_cell, "audit_per_cell": audit, "models": models,
            "grid_worker_s": models * per_model + len(plan.cells) * per_cell}


def run_benchmark(options: BenchmarkOptions, study: StudyOptions, settings: dict, log=print) -> BenchmarkResult:
    """Plan, run the unfinished cells on Ray (each trained once, measured and audited), then write BENCHMARK.json,
    BENCHMARK.md and the heat map; `UserError` after writing them when a cell failed."""
    wall = time.perf_counter()
    options.validate()
    study.validate()
    store.check_writable(study.out)
    plan = plan_benchmark(options, settings, study.out, log)
    folder = BenchmarkFolder(study.out)
    with folder.lock():
        folder.write_grid({**plan.grid.to_dict(), "cells": {c.key: {"axes": c.axes, "spec_key": c.spec.key}
                                                            for c in plan.cells}})
        pending = pending_tasks(plan, study, audit=True)
        log(f"benchmark: {len(plan.cells)} cells, {len({c.spec.key for c in plan.cells})} distinct trainings, "
            f"{len(plan.cells) - sum(len(t.cells) for t in pending)} already finished"
            + (" (--report-only: reporting on those)" if options.report_only else ""))
        tasks = [] if options.report_only else pending
        if options.reaudit and not options.report_only:
            tasks = reaudit_tasks(plan, study, spray.RULES_VERSION)
            log(f"--reaudit: {sum(len(t.cells) for t in tasks)} finished cell(s) audited by older rules than "
                f"version {spray.RULES_VERSION} or without their whole audit kept, audited again")
        failures, finished_now = {}, {}
        if tasks:
            with ray_session(study.address, log):
                failures, finished_now = run_tasks(plan, tasks, study, log)
        cells = finished_cells(plan, study.out, failures, finished_now)
        result = benchmark_result(plan, options, cells, len(failures), time.perf_counter() - wall)
        saved = figures.save_figures(benchmark_figures(result), Path(study.out))
        folder.write_benchmark(result.to_dict(), benchmark_markdown(result, saved))
    as_reporter(log).final(f"done in {time.perf_counter() - wall:.0f} s: {len(cells)}/{len(plan.cells)} cells; "
                           f"{folder.benchmark_md}")
    if failures:
        raise UserError(f"{len(failures)} of {len(plan.cells)} cells failed; fix: rerun the same command to retry them")
    return result
