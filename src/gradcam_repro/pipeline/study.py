"""`gradcam-repro study`: a grid of experiments (seeds x bias fraction x patch size x ...), each trained once
and measured the same way as `run`, on Ray; then every number is aggregated across seeds.

A *cell* is one combination of the grid's axes. Its training is an `ExperimentSpec` (content-hashed, so a
fraction-0 cell is the shared baseline of every patch setting of its seed); one Ray task per distinct spec
trains it (or reuses it) and measures it under every cell that uses it. The driver writes every file,
so workers need no shared file system. Layout of `<out>/`:
    grid.json               the grid and {cell key: axes, spec key}; written before anything runs
    experiments/<key>/      model.pt, history.json, history.csv, spec.json (as in a run; spec.json last)
    cells/<cell key>.json   one cell's results; its presence marks the cell finished (a rerun skips it)
    study.json, STUDY.md, figures/*.png   the aggregation across seeds, rewritten by every call
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

import gradcam_repro
from gradcam_repro.config import PRESETS, Config, preset_config
from gradcam_repro.data.images import ImageData
from gradcam_repro.data.registry import get_dataset
from gradcam_repro.errors import UserError
from gradcam_repro.explain.registry import EXPLAINERS
from gradcam_repro.measure.aggregate import (
    IMAGE_CI,
    SEED_CI,
    aggregate_cells,
    agreement,
    agreement_counts,
    detection_thresholds,
)
from gradcam_repro.measure.shortcut import EvalSet, measure_methods
from gradcam_repro.pipeline import store
from gradcam_repro.pipeline.experiment import finished_record, train_experiment
from gradcam_repro.pipeline.progress import as_reporter
from gradcam_repro.pipeline.run import prepared_from_data, settings, shortcut_protocol, validated
from gradcam_repro.pipeline.spec import BiasSpec, ExperimentSpec
from gradcam_repro.report import figures
from gradcam_repro.report.study_report import study_figures, study_markdown
from gradcam_repro.runtime import Runtime

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DEFAULT_PRESET = "sweep"
# The dose-response grid of issue 12: 7 fractions x 3 seeds, fraction 0 being each seed's baseline.
DEFAULT_AXES = {"seed": (0, 1, 2), "bias_fraction": (0.0, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0)}
DEFAULT_METHODS = ("gradcam", "hirescam", "layercam", "inputxgradient")
STUDY_FILE_KEYS = ("preset", "methods", "settings", "grid")
NOT_SETTINGS = ("out", "show")  # the study's own --out; no windows from workers
# Config fields that do not change a cell's numbers (the training fields are in the spec key already).
NOT_EVALUATION = ("out", "show", "device", "data_root", "figure_images", "preset")
CELL_VERSION = 1  # bump when what a cell's results mean changes
EXPERIMENT_FILES = ("model.pt", "history.json", "history.csv", "spec.json")  # spec.json last: marks it finished


@dataclass(frozen=True)
class StudyGrid:
    """What a study measures: `settings` fixed for every cell (Config fields, "preset" for the base preset),
    `axes` {Config field or "preset": values} whose every combination is one cell (in the order given),
    and the explanation `methods` every cell is scored with."""

    settings: dict = field(default_factory=dict)
    axes: dict = field(default_factory=lambda: dict(DEFAULT_AXES))
    methods: tuple[str, ...] = DEFAULT_METHODS

    def combinations(self) -> list[dict]:
        """Every cell's axis values, the last axis varying fastest."""
        return [dict(zip(self.axes, values)) for values in itertools.product(*self.axes.values())]

    def to_dict(self) -> dict:
        return {"settings": self.settings, "axes": {k: list(v) for k, v in self.axes.items()}, "methods": list(self.methods)}


@dataclass(frozen=True)
class StudyOptions:
    """How a study runs, not what it measures. address: an existing Ray cluster (None: $RAY_ADDRESS, else a
    local Ray with one worker per core); cpus_per_cell: torch threads and Ray CPUs per task; gpus_per_cell:
    Ray GPUs per task (fractions share a GPU); max_retries: tries after a failure before a cell is reported
    failed; force: retrain and remeasure finished cells; progress_every_s: seconds between progress lines;
    against: another study's folder whose verdicts this one's are compared with (`aggregate.agreement`)."""

    out: str = "runs/study"
    address: str | None = None
    cpus_per_cell: int = 1
    gpus_per_cell: float = 0.0
    max_retries: int = 2
    force: bool = False
    progress_every_s: float = 30.0
    against: str | None = None

    def validate(self) -> StudyOptions:
        if self.cpus_per_cell < 1:
            raise UserError(f"--cpus-per-cell must be >= 1, got {self.cpus_per_cell}")
        if self.gpus_per_cell < 0 or self.max_retries < 0:
            raise UserError("--gpus-per-cell and --max-retries must be >= 0")
        return self


def reference_conditions(folder: str) -> list[dict]:
    """The conditions of the finished study in `folder` (its study.json); `UserError` if there is none."""
    path = Path(folder) / "study.json"
    study = store.read_json(path, fix="pass --against the folder of a finished `gradcam-repro study` (its --out)")
    if not isinstance(study, dict) or not isinstance(study.get("conditions"), list):
        raise UserError(f"--against {folder}: {path} is not a study.json (no conditions); fix: pass the folder of a "
                        "finished `gradcam-repro study`")
    return study["conditions"]


@dataclass(frozen=True)
class StudyCell:
    """One cell: its axis values, full config, the spec it trains, its result key and its data's key."""

    key: str
    axes: dict
    config: Config
    spec: ExperimentSpec
    data_key: str


@dataclass
class StudyPlan:
    """A validated study: the grid, its cells in grid order, and each distinct dataset loaded once."""

    grid: StudyGrid
    cells: list[StudyCell]
    data: dict[str, ImageData]


@dataclass(frozen=True)
class SpecTask:
    """One Ray task: train `spec` once (or restore it from `experiment_files`), then measure every cell in
    `cells` ((cell key, config) pairs) with `methods`, with torch on `threads` threads on `device`."""

    spec: ExperimentSpec
    name: str
    cells: tuple[tuple[str, Config], ...]
    methods: tuple[str, ...]
    threads: int
    device: str
    data_key: str
    experiment_files: dict[str, bytes] | None = None


def read_study_file(path: str | Path) -> dict:
    """A TOML study file as {"preset", "methods", "settings", "grid"} (each optional); `UserError` if unreadable."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no study file at {path}; fix: pass the path of a TOML file (see README, Studies)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"cannot read {path} ({str(exc).splitlines()[0]}); fix: write it as TOML (see README, Studies)") from None
    unknown = sorted(set(values) - set(STUDY_FILE_KEYS))
    if unknown:
        raise UserError(f"{path} has unknown keys {unknown}; fix: use only {', '.join(STUDY_FILE_KEYS)}")
    return values


def study_grid(file_values: dict, settings: dict, axes: dict, methods: tuple[str, ...] | None) -> StudyGrid:
    """The grid from a study file's values, overridden by flags: `settings` (fixed fields) and `axes`.

    An axis flag replaces the file's axis; without any axis the grid is DEFAULT_AXES; a field given as a
    fixed setting by a flag is then no axis. Raises `UserError` for unknown fields, empty axes or methods.
    """
    fixed = {**file_values.get("settings", {}), **settings}
    if "preset" in file_values:
        fixed.setdefault("preset", file_values["preset"])
    grid = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in file_values.get("grid", {}).items()}
    grid.update({k: tuple(v) for k, v in axes.items()})
    grid = {k: v for k, v in (grid or DEFAULT_AXES).items() if k not in settings}
    known = set(Config.__dataclass_fields__) - set(NOT_SETTINGS)
    unknown = sorted((set(fixed) | set(grid)) - known)
    if unknown:
        raise UserError(f"unknown study settings {unknown}; fix: use `gradcam-repro run` flag names with underscores "
                        "(e.g. train_subset), and --out for the folder")
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise UserError(f"study axes {empty} have no values; fix: give each axis at least one value")
    methods = tuple(methods or file_values.get("methods") or DEFAULT_METHODS)
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise UserError(f"unknown methods {unknown}; fix: use some of {', '.join(EXPLAINERS)}")
    for preset in (fixed.get("preset"), *grid.get("preset", ())):
        if preset is not None and preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; fix: use one of {', '.join(PRESETS)}")
    return StudyGrid(fixed, grid, methods)


def cell_config(grid: StudyGrid, axes: dict, out: str) -> Config:
    """The validated config of the cell with `axes`: its preset, then the fixed settings, then its axis values."""
    values = {**grid.settings, **axes, "out": out}
    preset = values.pop("preset", DEFAULT_PRESET)
    return validated(preset_config(preset, **values))


def data_key(config: Config) -> str:
    """Configs with the same key load the same data: the dataset and the config fields its loader reads."""
    dataset = get_dataset(config.dataset)
    return json.dumps([config.dataset, *[getattr(config, name) for name in dataset.reads]])


def cell_key(axes: dict, config: Config, spec: ExperimentSpec, methods: tuple[str, ...]) -> str:
    """A 16-hex-digit hash of everything that determines a cell's numbers (its spec key included)."""
    evaluation = {k: v for k, v in config.to_dict().items() if k not in NOT_EVALUATION}
    text = json.dumps({"version": CELL_VERSION, "spec": spec.key, "axes": axes, "evaluation": evaluation,
                       "methods": list(methods)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_study(grid: StudyGrid, out: str, log=print) -> StudyPlan:
    """Validate every cell, load each distinct dataset once and key every cell; writes nothing."""
    combos = grid.combinations()
    configs = [cell_config(grid, axes, out) for axes in combos]
    data: dict[str, ImageData] = {}
    for config in configs:
        key = data_key(config)
        if key not in data:
            start = time.perf_counter()
            data[key] = get_dataset(config.dataset).load(config)
            log(f"data: {data[key].name} from {data[key].source} ({len(data[key].train_labels)} train / "
                f"{len(data[key].test_labels)} test, {time.perf_counter() - start:.1f} s)")
    cells = []
    for axes, config in zip(combos, configs):
        spec = ExperimentSpec.from_config(config, data[data_key(config)].fingerprint, BiasSpec.from_config(config))
        cells.append(StudyCell(cell_key(axes, config, spec, grid.methods), axes, config, spec, data_key(config)))
    if len({c.key for c in cells}) < len(cells):
        raise UserError("the study grid repeats a cell; fix: list each axis value once")
    return StudyPlan(grid, cells, data)


def cell_path(out: str | Path, key: str) -> Path:
    return Path(out) / "cells" / f"{key}.json"


def cell_label(axes: dict) -> str:
    """A short readable name of a cell, e.g. "seed=1 bias_fraction=0.1"."""
    return " ".join(f"{k}={v}" for k, v in axes.items())


def pending_tasks(plan: StudyPlan, options: StudyOptions) -> list[SpecTask]:
    """One task per distinct spec among the unfinished cells (all cells with `force`), in grid order.

    A spec already trained in `<out>/experiments/` travels with its task as file contents, so the worker
    reuses it without a shared file system.
    """
    groups: dict[str, list[StudyCell]] = {}
    for c in plan.cells:
        if options.force or not cell_path(options.out, c.key).is_file():
            groups.setdefault(c.spec.key, []).append(c)
    tasks = []
    for cells in groups.values():
        spec, config = cells[0].spec, cells[0].config
        folder = spec.folder(options.out)
        files = None
        if not options.force and finished_record(folder, spec) is not None:
            files = {name: (folder / name).read_bytes() for name in EXPERIMENT_FILES}
        device = config.device if config.device != "auto" else ("cuda" if options.gpus_per_cell > 0 else "cpu")
        name = "baseline " + cell_label({"seed": spec.seed}) if spec.bias is None else cell_label(cells[0].axes)
        tasks.append(SpecTask(spec, name, tuple((c.key, c.config) for c in cells), plan.grid.methods,
                              options.cpus_per_cell, device, cells[0].data_key, files))
    return tasks


def run_spec_task(data: ImageData, task: SpecTask) -> dict:
    """The Ray task: train (or restore) `task.spec` in a temporary folder, measure each of its cells.

    Returns plain results: {"node_id", "files": {name: bytes} of the experiment folder, "cells": {cell key:
    `measure_methods` result}, "seconds": {"train", "evaluate": {cell key: s}}, "environment", "log"}.
    """
    import ray

    torch.set_num_threads(task.threads)
    lines: list[str] = []
    runtime = Runtime.choose(task.device, task.cells[0][1].precision)
    with tempfile.TemporaryDirectory(prefix="gradcam-study-") as root:
        folder = task.spec.folder(root)
        folder.mkdir(parents=True)
        for name, blob in (task.experiment_files or {}).items():
            (folder / name).write_bytes(blob)
        start = time.perf_counter()
        p = prepared_from_data(task.cells[0][1], data, runtime)
        experiment = train_experiment(task.spec, p.training, Path(root), task.name, log=lines.append)
        train_s = time.perf_counter() - start
        files = {name: (folder / name).read_bytes() for name in EXPERIMENT_FILES}
    cells, evaluate_s = {}, {}
    for key, config in task.cells:
        start = time.perf_counter()
        p = prepared_from_data(config, data, runtime)
        test = EvalSet(p.data.test_images, p.data.test_labels, p.data.classes, p.data.test_masks)
        cells[key] = measure_methods(experiment.model, test, shortcut_protocol(p), task.methods, runtime)
        evaluate_s[key] = time.perf_counter() - start
    return {"node_id": ray.get_runtime_context().get_node_id(), "files": files, "cells": cells,
            "model_sha256": experiment.record.get("model_sha256"), "seconds": {"train": train_s, "evaluate": evaluate_s},
            "environment": store.environment_info(str(runtime.device)), "log": lines}


def write_experiment_files(folder: Path, files: dict[str, bytes]) -> None:
    """An experiment folder from a worker's file contents, each file atomically, spec.json last (a folder
    without it is not reused)."""
    for name in EXPERIMENT_FILES:
        with store.atomic_path(folder / name) as tmp:
            tmp.write_bytes(files[name])


def cell_seconds(result: dict) -> list[float]:
    """A task's worker seconds per cell: its training shared among its cells, plus each cell's measuring."""
    evaluate = result["seconds"]["evaluate"]
    return [result["seconds"]["train"] / len(evaluate) + s for s in evaluate.values()]


def save_task_result(out: Path, task: SpecTask, plan: StudyPlan, result: dict) -> list[str]:
    """Write a finished task's experiment folder (unless it was restored) and one file per cell, each
    atomically, the cells last; returns the cell keys written."""
    if task.experiment_files is None:
        write_experiment_files(task.spec.folder(out), result["files"])
    by_key = {c.key: c for c in plan.cells}
    for key, measured in result["cells"].items():
        c = by_key[key]
        store.write_json(cell_path(out, key), {
            "key": key, "axes": c.axes, "spec_key": c.spec.key, "model_sha256": result["model_sha256"],
            "methods": list(task.methods), "config": c.config.to_dict(), "metrics": measured["model"],
            "uniform": measured["uniform"], "n": measured["n"], "settings": settings(),
            "node_id": result["node_id"], "threads": task.threads, "environment": result["environment"],
            "seconds": {"train": result["seconds"]["train"], "evaluate": result["seconds"]["evaluate"][key]},
            "restored_experiment": task.experiment_files is not None,
        })
    return list(result["cells"])


@contextmanager
def ray_session(address: str | None, log=print) -> Iterator[None]:
    """Ray for the study: the one this process already started, else the cluster at `address` or
    $RAY_ADDRESS (joined unchanged; the package's code travels with the tasks), else a new local Ray with
    one CPU per core, shut down on leaving."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env={"py_modules": [str(Path(gradcam_repro.__file__).parent)]},
                     logging_level="warning")
        except (ConnectionError, RuntimeError) as e:
            raise UserError(join_error(address, e)) from e
        log(f"ray: joined the cluster at {address}")
    else:
        # Ray >= 2.59 warns at every local start that it turned token authentication on; keep it on, and quiet.
        with _quiet_logger("ray._private.authentication.authentication_token_setup"):
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning")
        log(f"ray: started a local Ray with {os.cpu_count()} CPUs")
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Drop the warnings of the logger `name` inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """`UserError` if nothing accepts connections at a "host:port" or "ray://host:port" address (Ray itself
    waits without end for a cluster that is not there). "auto" and other forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}); fix: start one "
                        "with `ray start --head` and pass the address it prints, or leave --address and "
                        "RAY_ADDRESS unset for a local Ray") from None


def join_error(address: str, error: BaseException) -> str:
    """The one-line message for a failed `ray.init(address=...)`, with the fix for a missing auth token."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    chain, cause = [], error
    while cause is not None:
        chain.append(f"{type(cause).__name__} {cause}")
        cause = cause.__cause__ or cause.__context__
    if any("authtoken" in text.lower().replace(" ", "").replace("_", "") or "authentication" in text.lower()
           for text in chain):
        return (f"could not join the Ray cluster at {address}: it wants an auth token ({reason}); fix: run with "
                "RAY_AUTH_MODE=token and the head node's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (since Ray "
                "2.59 `ray start` turns token authentication on)")
    return (f"could not join the Ray cluster at {address} ({reason}); fix: check the address with `ray status` "
            "on the head node, or leave --address and RAY_ADDRESS unset for a local Ray")


def progress_line(done: int, running: int, failed: int, total: int, eta_s: float | None) -> str:
    """E.g. "cells: 5/21 done, 2 running, 0 failed, ETA 34 min" (`eta_s` None: not known yet)."""
    if done + failed == total:
        eta = "all finished"
    elif eta_s is None:
        eta = "ETA unknown"
    else:
        eta = f"ETA {eta_s / 60:.0f} min" if eta_s >= 120 else f"ETA {eta_s:.0f} s"
    return f"cells: {done}/{total} done, {running} running, {failed} failed, {eta}"


class EtaPace:
    """The ETA of a study: the cells left x the mean time a worker took per finished cell / the cells that run
    at once, less the time since the last cell finished (so it counts down between finishes).

    While trainings are left, only cells whose task trains pace it: a restored model is only measured (~10x
    faster) and would make the pace look fast; after them, the restored cells pace the rest. Dividing by the
    worker count matters in the first wave: after one of two side-by-side cells finishes, "time so far / cells
    done" would say twice the real remainder."""

    def __init__(self, tasks: list[SpecTask], slots: int):
        self.slots = max(1, slots)
        self.left = {True: 0, False: 0}  # cells not yet ended, by "its task trains"
        for t in tasks:
            self.left[t.experiment_files is None] += len(t.cells)
        self.seconds: dict[bool, list[float]] = {True: [], False: []}  # worker seconds per finished cell
        self.last_finish_s = 0.0

    def ended(self, task: SpecTask, cell_seconds: list[float], at_s: float) -> None:
        """`task` ended `at_s` seconds in; `cell_seconds`: its workers' seconds per cell saved (none: failed)."""
        trained = task.experiment_files is None
        self.left[trained] -= len(task.cells)
        self.seconds[trained] += cell_seconds
        if cell_seconds:
            self.last_finish_s = at_s

    def eta_s(self, now_s: float) -> float | None:
        """Seconds left, `now_s` seconds in; None before a cell that paces it has finished."""
        trains = self.left[True] > 0  # else only restored cells are left, paced by their own kind
        left, seconds = self.left[trains], self.seconds[trains]
        if not left or not seconds:
            return None if left else 0.0
        per_cell = sum(seconds) / len(seconds)
        return max(left * per_cell / min(self.slots, left) - (now_s - self.last_finish_s), 0.0)


def _slots(options: StudyOptions) -> int:
    """How many tasks the cluster runs at once: free CPUs (and GPUs) over what one task asks for."""
    import ray

    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) // options.cpus_per_cell
    if options.gpus_per_cell > 0:
        slots = min(slots, resources.get("GPU", 0) // options.gpus_per_cell)
    return max(1, int(slots))


def _error_line(exc: BaseException) -> str:
    """The task's own exception as "Type: first line" (Ray wraps it with a traceback)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()


def run_tasks(plan: StudyPlan, tasks: list[SpecTask], options: StudyOptions, log=print) -> dict[str, str]:
    """Submit every task to Ray (the data put into the object store once per dataset), save each result as it
    arrives and log progress; returns {cell key: error} of the cells whose task failed after its retries.

    Ctrl-C cancels the unfinished tasks; every cell saved before it stays.
    """
    import ray

    out = Path(options.out)
    total, done = len(plan.cells), len(plan.cells) - sum(len(t.cells) for t in tasks)
    refs = {key: ray.put(plan.data[key]) for key in dict.fromkeys(t.data_key for t in tasks)}
    log(f"ray: {len(tasks)} task(s) for {total - done} cell(s); {len(refs)} dataset(s) put into the object store")
    remote = ray.remote(run_spec_task).options(num_cpus=options.cpus_per_cell, num_gpus=options.gpus_per_cell,
                                               max_retries=options.max_retries, retry_exceptions=True)
    running = {remote.remote(refs[t.data_key], t): t for t in tasks}
    failures: dict[str, str] = {}
    start, slots, last_line = time.perf_counter(), _slots(options), -math.inf
    pace = EtaPace(tasks, slots)
    try:
        while running:
            # Short waits keep Ctrl-C prompt; a progress line follows each result or every progress_every_s.
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                task = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failures.update({key: _error_line(exc) for key, _ in task.cells})
                    pace.ended(task, [], time.perf_counter() - start)
                    log(f"[{task.name}] failed after {options.max_retries} retries: {_error_line(exc)}")
                    continue
                written = save_task_result(out, task, plan, result)
                for line in result["log"]:  # the worker's training lines, e.g. each epoch's accuracy
                    log(line)
                done += len(written)
                pace.ended(task, cell_seconds(result), time.perf_counter() - start)
                log(f"[{task.name}] finished {len(written)} cell(s) on node {result['node_id'][:8]}")
            if ready or time.perf_counter() - last_line >= options.progress_every_s:
                busy = sum(len(t.cells) for t in list(running.values())[:slots])
                log(progress_line(done, busy, len(failures), total, pace.eta_s(time.perf_counter() - start)))
                last_line = time.perf_counter()
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    return failures


def collect_study(plan: StudyPlan, options: StudyOptions, failures: dict[str, str],
                  reference: list[dict] | None = None) -> dict:
    """study.json's content: the grid, every cell's status, the conditions across seeds, the thresholds and,
    given the `reference` study's conditions (--against), the agreement with them."""
    finished = {c.key: store.read_json(cell_path(options.out, c.key)) for c in plan.cells
                if cell_path(options.out, c.key).is_file() and c.key not in failures}
    conditions = aggregate_cells(list(finished.values()))
    shared = agreement(conditions, reference) if reference is not None else None
    statuses = {}
    for c in plan.cells:
        record = finished.get(c.key)
        statuses[c.key] = {"axes": c.axes, "spec_key": c.spec.key,
                           "status": "done" if record else ("failed" if c.key in failures else "missing")}
        if record:
            statuses[c.key].update(node_id=record["node_id"], seconds=record["seconds"], n=record["n"])
        if c.key in failures:
            statuses[c.key]["error"] = failures[c.key]
    configs = [c.config for c in plan.cells]
    return {"grid": plan.grid.to_dict(), "axes": list(plan.grid.axes), "methods": list(plan.grid.methods),
            "dataset": configs[0].dataset, "bias_class": configs[0].bias_class, "cells": statuses,
            "settings": {**settings(), "seed_ci": SEED_CI, "image_ci": IMAGE_CI,
                         "cam_images": sorted({c.cam_images or 0 for c in configs}),
                         "counterfactual_images": sorted({c.counterfactual_images or 0 for c in configs})},
            "conditions": conditions, "thresholds": detection_thresholds(conditions) if conditions else [],
            **({"against": {"study": options.against, "conditions": shared, "counts": agreement_counts(shared)}}
               if shared is not None else {})}


def write_study(study: dict, out: Path) -> None:
    """The figures, then study.json and STUDY.md, each atomically."""
    drawn = study_figures(study)
    for rel, fig in drawn.items():
        store.save_figure(fig, out / rel)
        figures.close(fig)
    study["figures"] = list(drawn)
    store.write_json(out / "study.json", study)
    store.write_text(out / "STUDY.md", study_markdown(study))


def _verdict_line(study: dict) -> str:
    """The cells' count and, per series, from which fraction the model relies on the patch."""
    done = sum(c["status"] == "done" for c in study["cells"].values())
    relies = "; ".join("one seed, no threshold" if t["n_seeds"] < 2 else "reliance not reached"
                       if t["relies_on_patch"] is None else f"relies from fraction {t['relies_on_patch']}"
                       for t in study["thresholds"])
    line = f"{done}/{len(study['cells'])} cells done" + (f", {relies}" if relies else "")
    if "against" in study:
        shared, counts = study["against"]["conditions"], study["against"]["counts"]
        line += (f"; against {study['against']['study']}, at {len(shared)} shared condition(s): {counts['same']} "
                 f"of its {counts['robust_there']} seed-robust verdicts hold the same way here "
                 f"({counts['robust_here']} are seed-robust here)")
    return line


def run_study(grid: StudyGrid, options: StudyOptions, log=print) -> dict:
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
    with store.run_lock(out):
        store.write_json(out / "grid.json", {**grid.to_dict(), "cells": {c.key: {"axes": c.axes, "spec_key": c.spec.key}
                                                                        for c in plan.cells}})
        tasks = pending_tasks(plan, options)
        log(f"study: {len(plan.cells)} cells, {len({c.spec.key for c in plan.cells})} distinct trainings, "
            f"{len(plan.cells) - sum(len(t.cells) for t in tasks)} already finished")
        failures: dict[str, str] = {}
        if tasks:
            with ray_session(options.address, log):
                failures = run_tasks(plan, tasks, options, log)
        study = collect_study(plan, options, failures, reference)
        study["seconds"] = time.perf_counter() - wall
        write_study(study, out)
    as_reporter(log).final(f"done in {study['seconds']:.0f} s: {_verdict_line(study)}; {out / 'STUDY.md'}")
    if failures:
        raise UserError(f"{len(failures)} of {len(plan.cells)} cells failed (errors in {out / 'STUDY.md'}); "
                        "fix: rerun the same command to retry them, or fix the error shown there")
    return study

