"""A study's cells as Ray tasks: one task per distinct spec among the unfinished cells, the worker that
trains (or restores) it and measures its cells, and the driver's loop that writes each result as it arrives.

Workers return file contents and numbers; the driver writes every file, so no shared file system is needed.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from gradcam_repro import store
from gradcam_repro.config import Config
from gradcam_repro.data.images import EvalSet, ImageData
from gradcam_repro.errors import UserError
from gradcam_repro.measure.shortcut import measure_methods
from gradcam_repro.measure.study_results import AuditSummary, CellMetrics, StudyCellResult
from gradcam_repro.pipeline import engine
from gradcam_repro.pipeline.audit import audit_cell
from gradcam_repro.pipeline.eta import EtaPace, progress_line
from gradcam_repro.pipeline.experiment import train_experiment
from gradcam_repro.pipeline.folders import ExperimentFolder, StudyFolder
from gradcam_repro.pipeline.grid import StudyCell, StudyPlan, cell_label
from gradcam_repro.pipeline.prepare import prepared_from_data
from gradcam_repro.pipeline.run import settings, shortcut_protocol
from gradcam_repro.pipeline.spec import ExperimentSpec
from gradcam_repro.runtime import Runtime


@dataclass(frozen=True)
class StudyOptions:
    """How a study runs, not what it measures. address: an existing Ray cluster (None: $RAY_ADDRESS, else a
    local Ray with one worker per core); cpus_per_cell: torch threads and Ray CPUs per task; gpus_per_cell:
    Ray GPUs per task (fractions share a GPU); max_retries: tries after a failure before a cell is reported
    failed; force: retrain and remeasure finished cells; progress_every_s: seconds between progress lines;
    against: another study's folder whose verdicts this one's are compared with (`aggregate.agreement`)."""

    out: str = field(default="runs/study", metadata={"help": "output folder"})
    address: str | None = field(default=None, metadata={
        "group": "Ray", "help": "join this Ray cluster unchanged",
        "default_text": "$RAY_ADDRESS, else start a local Ray with one worker per core"})
    cpus_per_cell: int = field(default=1, metadata={"group": "Ray", "help": "Ray CPUs and torch threads per cell"})
    gpus_per_cell: float = field(default=0.0, metadata={
        "group": "Ray", "help": "Ray GPUs per cell; fractions share a GPU"})
    max_retries: int = field(default=2, metadata={
        "group": "Ray", "help": "retries of a failed cell before it is reported"})
    force: bool = field(default=False, metadata={
        "help": "retrain and remeasure finished cells (default: reuse them; interrupted cells resume)"})
    progress_every_s: float = field(default=30.0, metadata={"cli": False})  # for tests: no flag
    against: str | None = field(default=None, metadata={
        "metavar": "STUDY_DIR",
        "help": "compare with another study's verdicts (its study.json) at the conditions both have, e.g. a cheaper "
                "preset against quick: STUDY.md and study.json say which verdicts hold in every seed of one study "
                "only"})

    def validate(self) -> StudyOptions:
        if self.cpus_per_cell < 1:
            raise UserError(f"--cpus-per-cell must be >= 1, got {self.cpus_per_cell}")
        if self.gpus_per_cell < 0 or self.max_retries < 0:
            raise UserError("--gpus-per-cell and --max-retries must be >= 0")
        return self

    def task_resources(self) -> engine.TaskResources:
        """What each cell's task asks Ray for: as many torch threads as CPUs."""
        return engine.TaskResources(cpus=self.cpus_per_cell, gpus=self.gpus_per_cell, threads=self.cpus_per_cell,
                                    max_retries=self.max_retries)


@dataclass(frozen=True)
class SpecTask:
    """One Ray task: train `spec` once (or restore it from `experiment_files`), then measure every cell in
    `cells` ((cell key, config) pairs) with `methods`, with torch on `threads` threads on `device`; `audit`: also
    audit each cell's model (`pipeline.audit.audit_cell`, the benchmark's cells); `measure` False: audit only (a
    finished cell audited again, its measurements kept)."""

    spec: ExperimentSpec
    name: str
    cells: tuple[tuple[str, Config], ...]
    methods: tuple[str, ...]
    threads: int
    device: str
    data_key: str
    experiment_files: dict[str, bytes] | None = None
    audit: bool = False
    measure: bool = True


def task_device(config: Config, options: StudyOptions) -> str:
    """Where a cell's task runs: its config's --device, or for "auto" CUDA when cells are given GPUs, else CPU."""
    return config.device if config.device != "auto" else ("cuda" if options.gpus_per_cell > 0 else "cpu")


def pending_tasks(plan: StudyPlan, options: StudyOptions, audit: bool = False) -> list[SpecTask]:
    """One task per distinct spec among the unfinished cells (all cells with `force`), in grid order; `audit`:
    each task also audits its cells' model.

    A spec already trained in `<out>/experiments/` travels with its task as file contents, so the worker
    reuses it without a shared file system.
    """
    groups: dict[str, list[StudyCell]] = {}
    for c in plan.cells:
        if options.force or not StudyFolder(options.out).has_cell(c.key):
            groups.setdefault(c.spec.key, []).append(c)
    tasks = []
    for cells in groups.values():
        spec, config = cells[0].spec, cells[0].config
        folder = StudyFolder(options.out).experiment(spec.key)
        files = None
        if not options.force and folder.finished_record(spec.key) is not None:
            files = folder.read_files()
        name = "baseline " + cell_label({"seed": spec.seed}) if spec.bias is None else cell_label(cells[0].axes)
        tasks.append(SpecTask(spec, name, tuple((c.key, c.config) for c in cells), plan.grid.methods,
                              options.cpus_per_cell, task_device(config, options), cells[0].data_key, files, audit))
    return tasks


def reaudit_tasks(plan: StudyPlan, options: StudyOptions, rules: int) -> list[SpecTask]:
    """One audit-only task per spec among the finished cells whose audit is missing, older than `rules` or not kept
    whole (audits/<key>.json; the benchmark's --reaudit), each with its trained experiment's files."""
    study, groups = StudyFolder(options.out), {}
    for c in plan.cells:
        if study.has_cell(c.key) and ((study.read_cell(c.key).get("audit") or {}).get("rules", 1) < rules
                                      or not study.cell_audit_json(c.key).is_file()):
            groups.setdefault(c.spec.key, []).append(c)
    tasks = []
    for cells in groups.values():
        spec, config = cells[0].spec, cells[0].config
        folder = study.experiment(spec.key)
        if folder.finished_record(spec.key) is None:
            raise UserError(f"cell {cells[0].key} is finished but its model {folder.root} is not; fix: rerun the "
                            "benchmark without --reaudit to train it again")
        tasks.append(SpecTask(spec, "re-audit " + cell_label(cells[0].axes), tuple((c.key, c.config) for c in cells), (),
                              options.cpus_per_cell, task_device(config, options), cells[0].data_key, folder.read_files(), audit=True,
                              measure=False))
    return tasks


def run_spec_task(data: ImageData, task: SpecTask) -> dict:
    """The Ray task: train (or restore) `task.spec` in a temporary folder, measure each of its cells.

    Returns plain results: {"node_id", "files": {name: bytes} of the experiment folder, "cells": {cell key:
    `measure_methods` result}, "seconds": {"train", "evaluate": {cell key: s}}, "environment", "log"}.
    """
    import ray

    lines: list[str] = []
    runtime = Runtime.choose(task.device, task.cells[0][1].precision)
    with tempfile.TemporaryDirectory(prefix="gradcam-study-") as root:
        folder = ExperimentFolder(Path(root) / task.spec.key)
        if task.experiment_files is not None:
            folder.write_files(task.experiment_files)  # restored: the driver's copy, reused by train_experiment
        start = time.perf_counter()
        p = prepared_from_data(task.cells[0][1], data, runtime)
        experiment = train_experiment(task.spec, p.training, folder, task.name, log=lines.append)
        train_s = time.perf_counter() - start
        files = folder.read_files()
    cells, evaluate_s = {}, {}
    for key, config in task.cells:
        start = time.perf_counter()
        p = prepared_from_data(config, data, runtime)
        test = EvalSet(p.data.test_images, p.data.test_labels, p.data.classes, p.data.test_masks)
        cells[key] = measure_methods(experiment.model, test, shortcut_protocol(p), task.methods, runtime) if task.measure else {}
        if task.audit:
            summary, cells[key]["audit_full"] = audit_cell(experiment.model, p.config, p.data, runtime)
            cells[key]["audit"] = summary.to_dict()
        evaluate_s[key] = time.perf_counter() - start
    # The worker's precision (bf16 where its CPU or GPU has it) beside its hardware: what this cell was measured and
    # audited in. The model's training precision is in its experiment record (spec.json), as bf16 and fp32 give
    # other models from the same seed.
    return {"node_id": ray.get_runtime_context().get_node_id(), "files": files, "cells": cells,
            "model_sha256": experiment.record.get("model_sha256"), "seconds": {"train": train_s, "evaluate": evaluate_s},
            "environment": {**store.environment_info(str(runtime.device)), "precision": runtime.precision}, "log": lines}


def cell_seconds(result: dict) -> list[float]:
    """A task's worker seconds per cell: its training shared among its cells, plus each cell's measuring."""
    evaluate = result["seconds"]["evaluate"]
    return [result["seconds"]["train"] / len(evaluate) + s for s in evaluate.values()]


def save_task_result(out: Path, task: SpecTask, plan: StudyPlan, result: dict) -> dict[str, StudyCellResult]:
    """Write a finished task's experiment folder (unless it was restored) and one file per cell, each
    atomically, the cells last; returns {cell key: what its file holds}."""
    study = StudyFolder(out)
    if not task.measure:
        return _save_reaudit(study, result)
    if task.experiment_files is None:
        study.experiment(task.spec.key).write_files(result["files"])
    by_key, written = {c.key: c for c in plan.cells}, {}
    for key, measured in result["cells"].items():
        c = by_key[key]
        written[key] = StudyCellResult(
            key, c.axes, c.spec.key, result["model_sha256"], list(task.methods), c.config.to_dict(),
            CellMetrics.from_dict(measured["model"]), measured["uniform"], measured["n"], settings(),
            result["node_id"], task.threads, result["environment"],
            {"train": result["seconds"]["train"], "evaluate": result["seconds"]["evaluate"][key]},
            restored_experiment=task.experiment_files is not None,
            audit=AuditSummary.from_dict(measured["audit"]) if "audit" in measured else None)
        _write_cell(study, key, written[key], measured)
    return written


def _write_cell(study: StudyFolder, key: str, cell: StudyCellResult, measured: dict) -> None:
    """A cell's file, after its whole audit where it has one (audits/<key>.json): the cell's file marks it done."""
    if "audit_full" in measured:
        study.write_cell_audit(key, measured["audit_full"])
    study.write_cell(key, cell.to_dict())


def _save_reaudit(study: StudyFolder, result: dict) -> dict[str, StudyCellResult]:
    """An audit-only task's result: each cell's file again, with the new audit and everything else as it was."""
    written = {}
    for key, measured in result["cells"].items():
        old = StudyCellResult.from_dict(study.read_cell(key), str(study.cell_json(key)))
        written[key] = replace(old, audit=AuditSummary.from_dict(measured["audit"]))
        _write_cell(study, key, written[key], measured)
    return written


def run_tasks(plan: StudyPlan, tasks: list[SpecTask], options: StudyOptions, log=print
              ) -> tuple[dict[str, str], dict[str, StudyCellResult]]:
    """Submit every task to Ray (the data put into the object store once per dataset), save each result as it
    arrives and log progress; returns ({cell key: error} of the cells whose task failed after its retries,
    {cell key: cell record} of the cells finished now).

    Ctrl-C cancels the unfinished tasks; every cell saved before it stays.
    """
    out = Path(options.out)
    total, done = len(plan.cells), len(plan.cells) - sum(len(t.cells) for t in tasks)
    refs = {key: engine.share(plan.data[key]) for key in dict.fromkeys(t.data_key for t in tasks)}
    log(f"ray: {len(tasks)} task(s) for {total - done} cell(s); {len(refs)} dataset(s) put into the object store")
    resources = options.task_resources()
    batch = engine.TaskBatch(run_spec_task, resources, [(t, (refs[t.data_key], t)) for t in tasks])
    failures: dict[str, str] = {}
    finished: dict[str, StudyCellResult] = {}
    start, slots, last_line = time.perf_counter(), engine.cluster_slots(resources), -math.inf
    pace = EtaPace(tasks, slots)
    try:
        # A progress line follows each ended task, and every progress_every_s between them.
        for ended in batch.as_they_end(wait_s=1.0):
            if ended is not None and ended.error is not None:
                task = ended.job
                failures.update({key: ended.error for key, _ in task.cells})
                pace.ended(task, [], time.perf_counter() - start)
                log(f"[{task.name}] failed after {options.max_retries} retries: {ended.error}")
            elif ended is not None:
                task, result = ended.job, ended.result
                written = save_task_result(out, task, plan, result)
                finished |= written
                for line in result["log"]:  # the worker's training lines, e.g. each epoch's accuracy
                    log(line)
                done += len(written)
                pace.ended(task, cell_seconds(result), time.perf_counter() - start)
                log(f"[{task.name}] finished {len(written)} cell(s) on node {result['node_id'][:8]}")
            if ended is not None or time.perf_counter() - last_line >= options.progress_every_s:
                busy = sum(len(t.cells) for t in batch.running[:slots])
                log(progress_line(done, busy, len(failures), total, pace.eta_s(time.perf_counter() - start)))
                last_line = time.perf_counter()
    except KeyboardInterrupt:
        batch.cancel()
        raise
    return failures, finished
