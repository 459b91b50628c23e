"""`gradcam-repro study`: a grid of experiments (seeds x bias fraction x patch size x ...), each trained once
and measured the same way as `run`, on Ray; then every number is aggregated across seeds.

The grid and its cells are `pipeline.grid`; one Ray task per distinct spec trains it (or reuses it) and
measures it under every cell that uses it (`pipeline.study_tasks`, on `pipeline.engine`). The driver writes
every file, so workers need no shared file system. Layout of `<out>/`:
    grid.json               the grid and {cell key: axes, spec key}; written before anything runs
    experiments/<key>/      model.pt, history.json, history.csv, spec.json (as in a run; spec.json last)
    cells/<cell key>.json   one cell's results; its presence marks the cell finished (a rerun skips it)
    study.json, STUDY.md, figures/*.png   the aggregation across seeds, rewritten by every call
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from gradcam_repro import store
from gradcam_repro.errors import UserError
from gradcam_repro.measure.aggregate import (
    IMAGE_CI,
    SEED_CI,
    aggregate_cells,
    agreement,
    agreement_counts,
    detection_thresholds,
)
from gradcam_repro.measure.study_results import STUDY_FIX, Against, CellStatus, StudyCellResult, StudyCondition, StudyResult
from gradcam_repro.pipeline.engine import ray_session
from gradcam_repro.pipeline.folders import StudyFolder
from gradcam_repro.pipeline.grid import StudyGrid, StudyPlan, plan_study
from gradcam_repro.pipeline.progress import as_reporter
from gradcam_repro.pipeline.run import settings
from gradcam_repro.pipeline.study_tasks import StudyOptions, pending_tasks, run_tasks
from gradcam_repro.report import figures
from gradcam_repro.report.study_report import condition_label, study_figures, study_markdown


def reference_conditions(folder: str) -> list[StudyCondition]:
    """The conditions of the finished study in `folder` (its study.json); `UserError` if there is none, or if an
    older gradcam-repro wrote it."""
    path = StudyFolder(folder).study_json
    study = StudyFolder(folder).read_study(fix="pass --against the folder of a finished `gradcam-repro study` (its --out)")
    if not isinstance(study, dict) or not isinstance(study.get("conditions"), list):
        raise UserError(f"--against {folder}: {path} is not a study.json (no conditions); fix: pass the folder of a "
                        "finished `gradcam-repro study`")
    return [StudyCondition.from_dict(c, f"--against {folder}: {path}", STUDY_FIX) for c in study["conditions"]]


def finished_cells(plan: StudyPlan, out: str, failures: dict[str, str], finished_now: dict[str, StudyCellResult]
                   ) -> dict[str, StudyCellResult]:
    """{cell key: result} of the plan's finished cells, in grid order: those finished now, the others read from the
    files earlier calls wrote (`UserError` for one an older gradcam-repro wrote)."""
    folder, finished = StudyFolder(out), {}
    for c in plan.cells:
        if c.key in failures:
            continue
        if c.key in finished_now:
            finished[c.key] = finished_now[c.key]
        elif folder.has_cell(c.key):
            finished[c.key] = StudyCellResult.from_dict(folder.read_cell(c.key), str(folder.cell_json(c.key)))
    return finished


def collect_study(plan: StudyPlan, options: StudyOptions, failures: dict[str, str],
                  finished_now: dict[str, StudyCellResult], reference: list[StudyCondition] | None = None) -> StudyResult:
    """study.json's content: the grid, every cell's status, the conditions across seeds, the thresholds and,
    given the `reference` study's conditions (--against), the agreement with them. The cells finished now are
    `finished_now`; the others are read from the files earlier calls wrote."""
    finished = finished_cells(plan, options.out, failures, finished_now)
    conditions = aggregate_cells(list(finished.values()))
    shared = agreement(conditions, reference) if reference is not None else None
    statuses = {c.key: CellStatus.of(c.axes, c.spec.key, finished.get(c.key), failures.get(c.key)) for c in plan.cells}
    configs = [c.config for c in plan.cells]
    return StudyResult(
        plan.grid.to_dict(), list(plan.grid.axes), list(plan.grid.methods), configs[0].dataset, configs[0].bias_class,
        statuses, {**settings(), "seed_ci": SEED_CI, "image_ci": IMAGE_CI,
                   "cam_images": sorted({c.cam_images or 0 for c in configs}),
                   "counterfactual_images": sorted({c.counterfactual_images or 0 for c in configs})},
        conditions, detection_thresholds(conditions) if conditions else [],
        Against(options.against, shared, agreement_counts(shared)) if shared is not None else None)


def write_study(study: StudyResult, out: Path) -> StudyResult:
    """The figures, then study.json and STUDY.md, each atomically; returns the study with its figure list."""
    study = replace(study, figures=list(figures.save_figures(study_figures(study), out)))
    StudyFolder(out).write_study(study.to_dict(), study_markdown(study))
    return study


def _verdict_line(study: StudyResult) -> str:
    """The cells' count and, per series, from which fraction the model relies on the patch."""
    named = len(study.thresholds) > 1  # several series (more axes than seed and dose): each says which it is
    relies = "; ".join((f"{condition_label(t.series)}: " if named else "")
                       + ("one seed, no threshold" if t.n_seeds < 2 else "reliance not reached"
                          if t.relies_on_patch is None else f"relies from fraction {t.relies_on_patch}")
                       for t in study.thresholds)
    line = f"{study.n_done}/{len(study.cells)} cells done" + (f", {relies}" if relies else "")
    if study.against is not None:
        counts = study.against.counts
        line += (f"; against {study.against.study}, at {len(study.against.conditions)} shared condition(s): "
                 f"{counts.same} of its {counts.robust_there} seed-robust verdicts hold the same way here "
                 f"({counts.robust_here} are seed-robust here)")
    return line


def run_study(grid: StudyGrid, options: StudyOptions, log=print) -> StudyResult:
    """Plan, run the unfinished cells on Ray, aggregate and report; returns study.json's content.

    Raises `UserError` after writing the reports when any cell failed (its error is in STUDY.md).
    """
    wall = time.perf_counter()
    options.validate()
    # Read before any training: a bad --against folder fails now, not in an hour.
    reference = reference_conditions(options.against) if options.against else None
    store.check_writable(options.out)
    plan = plan_study(grid, options.out, log)
    out = Path(options.out)
    folder = StudyFolder(out)
    with folder.lock():
        folder.write_grid({**grid.to_dict(), "cells": {c.key: {"axes": c.axes, "spec_key": c.spec.key}
                                                       for c in plan.cells}})
        tasks = pending_tasks(plan, options)
        log(f"study: {len(plan.cells)} cells, {len({c.spec.key for c in plan.cells})} distinct trainings, "
            f"{len(plan.cells) - sum(len(t.cells) for t in tasks)} already finished")
        failures: dict[str, str] = {}
        finished_now: dict[str, StudyCellResult] = {}
        if tasks:
            with ray_session(options.address, log):
                failures, finished_now = run_tasks(plan, tasks, options, log)
        study = collect_study(plan, options, failures, finished_now, reference)
        study = write_study(replace(study, seconds=time.perf_counter() - wall), out)
    as_reporter(log).final(f"done in {study.seconds:.0f} s: {_verdict_line(study)}; {folder.study_md}")
    if failures:
        raise UserError(f"{len(failures)} of {len(plan.cells)} cells failed (errors in {out / 'STUDY.md'}); "
                        "fix: rerun the same command to retry them, or fix the error shown there")
    return study
