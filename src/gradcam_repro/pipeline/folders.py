"""Where results live: one class per kind of folder owns its paths, its reads and writes, and its lock.

    runs/<name>/                  RunFolder
        run.json                  the config and {experiment name: spec key}; written before training
        experiments/<key>/        ExperimentFolder: model.pt, history.json, history.csv, spec.json (written last,
                                  so its presence marks the experiment finished), checkpoint.pt while training
        metrics.json              `measure.results.RunMetrics`
        gallery.json              REPORT.html's gallery (maps of every method and layer)
        methods.json              `gradcam-repro compare`'s results
        summary.md, REPORT.md, REPORT.html, figures/*.png
        audit/                    the default AuditFolder of the run's biased model
        .lock                     held while a command writes (`store.run_lock`)
    runs/study/                   StudyFolder
        grid.json                 the grid and its cells' keys, written before any cell runs
        cells/<key>.json          one finished cell
        audits/<key>.json         a benchmark cell's whole audit (`spray.audit_model`'s result), written before
                                  the cell's file
        experiments/<key>/        the cells' trained models (ExperimentFolder)
        study.json, STUDY.md, figures/*.png
    <audit>/                      AuditFolder: audit.json, AUDIT.md, figures/*.png

Every file is written atomically (`store`), and no command writes a file and reads it back: what a command
made is handed on in memory; files are read only when an earlier command wrote them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from gradcam_repro import store
from gradcam_repro.config import Config
from gradcam_repro.errors import UserError
from gradcam_repro.measure.comparison_results import MethodsResult
from gradcam_repro.measure.results import RunMetrics

EVALUATE_FIX = "fix: run `gradcam-repro evaluate {run}` first"


def _read_if_there(path: Path, fix: str) -> dict | None:
    """A JSON file an earlier command wrote, None where there is none (unreadable: one-line error naming `fix`)."""
    return store.read_json(path, fix=fix) if path.is_file() else None


class ExperimentFolder:
    """`experiments/<key>/`: one trained (or repaired) model and its record."""

    FILES = ("model.pt", "history.json", "history.csv", "spec.json")  # spec.json last: it marks the folder finished
    REQUIRED = ("model.pt", "history.json", "spec.json")  # history.csv is absent when nothing was trained

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.model_pt = self.path / "model.pt"
        self.history_json = self.path / "history.json"
        self.history_csv = self.path / "history.csv"
        self.spec_json = self.path / "spec.json"
        self.checkpoint_pt = self.path / "checkpoint.pt"

    def read_finished(self) -> dict | None:
        """spec.json's record when every required file is there and readable, else None."""
        if not all((self.path / name).is_file() for name in self.REQUIRED):
            return None
        try:
            return store.read_json(self.spec_json)
        except UserError:
            return None

    def finished_record(self, key: str) -> dict | None:
        """spec.json's record of a finished experiment of exactly the spec `key`, else None."""
        record = self.read_finished()
        return record if record is not None and record.get("key") == key else None

    def read_record(self, fix: str | None = None) -> dict:
        return store.read_json(self.spec_json, fix=fix)

    def read_history(self, fix: str | None = None) -> list[dict]:
        return store.read_json(self.history_json, fix=fix)

    def write_record(self, history: list[dict], history_csv: str | None, record: dict) -> None:
        """history.json (and history.csv), then spec.json last; model.pt must be written before."""
        store.write_json(self.history_json, history)
        if history_csv is not None:
            store.write_text(self.history_csv, history_csv)
        store.write_json(self.spec_json, record)

    def read_files(self) -> dict[str, bytes]:
        """{name: bytes} of a finished folder's files: how a Ray worker hands a trained model to the driver."""
        return {name: (self.path / name).read_bytes() for name in self.FILES}

    def write_files(self, files: dict[str, bytes]) -> None:
        """The folder from a worker's file contents, each atomically, spec.json last."""
        for name in self.FILES:
            with store.atomic_path(self.path / name) as tmp:
                tmp.write_bytes(files[name])


class WrittenFolder:
    """A folder that one command at a time writes to: `lock()` is held while it does. Each of `FILES`
    ({attribute: file name}) becomes a path attribute, e.g. `RunFolder(r).metrics_json`."""

    FILES: dict[str, str] = {}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for attribute, name in self.FILES.items():
            setattr(self, attribute, self.root / name)

    def __str__(self) -> str:
        return str(self.root)

    def lock(self) -> AbstractContextManager:
        """Held while a command writes here; a second writer gets a one-line error."""
        return store.run_lock(self.root)


class RunFolder(WrittenFolder):
    """`runs/<name>/`: a run's manifest, experiments, results, reports and lock."""

    FILES = {"run_json": "run.json", "metrics_json": "metrics.json", "gallery_json": "gallery.json",
             "methods_json": "methods.json", "summary_md": "summary.md", "report_md": "REPORT.md",
             "report_html": "REPORT.html"}

    def experiment(self, key: str) -> ExperimentFolder:
        return ExperimentFolder(self.root / "experiments" / key)

    @property
    def audit(self) -> AuditFolder:
        return AuditFolder(self.root / "audit")

    def is_run(self) -> bool:
        return self.run_json.is_file()

    # run.json -------------------------------------------------------------------------------------------

    def write_manifest(self, config: Config, experiments: dict[str, str]) -> None:
        store.write_json(self.run_json, {"config": config.to_dict(), "experiments": dict(experiments)})

    def read_manifest(self) -> tuple[Config, dict[str, str]]:
        """The config the run was made with and its {experiment name: spec key}."""
        if not self.run_json.is_file() and (self.root / "baseline" / "config.json").is_file():
            raise UserError(f"{self.root} was written by an older gradcam-repro (baseline/ and biased/ folders); "
                            "fix: rerun `gradcam-repro run` with the same flags into a new --out")
        manifest = store.read_json(self.run_json, fix="fix: pass a folder written by `gradcam-repro run`")
        try:
            return Config.from_dict(manifest["config"]), dict(manifest["experiments"])
        except (KeyError, TypeError):
            raise UserError(f"{self.run_json} was written by an older gradcam-repro (no config or experiments); "
                            "fix: rerun `gradcam-repro run` with the same flags into a new --out") from None

    def add_experiment(self, name: str, key: str) -> None:
        """Add (or replace) one experiment of run.json, keeping the rest as it is."""
        manifest = store.read_json(self.run_json, fix="fix: pass a folder written by `gradcam-repro run`")
        manifest["experiments"] = {**manifest["experiments"], name: key}
        store.write_json(self.run_json, manifest)

    def kept_repairs(self, biased_key: str | None) -> dict[str, str]:
        """{name: key} of the repaired models an earlier run.json lists whose parent is still `biased_key`, so
        that rerunning `run` keeps (and re-measures) what `gradcam-repro repair` added."""
        if biased_key is None or not self.run_json.is_file():
            return {}
        try:
            earlier = store.read_json(self.run_json)["experiments"]
        except (UserError, KeyError, TypeError):
            return {}
        kept = {}
        for name, key in earlier.items():
            record = self.experiment(str(key)).read_finished() or {}
            if (record.get("spec", {}).get("repair") or {}).get("parent") == biased_key:
                kept[name] = key
        return kept

    # results --------------------------------------------------------------------------------------------

    def write_metrics(self, metrics: RunMetrics) -> None:
        store.write_json(self.metrics_json, metrics.to_dict())

    def read_metrics(self) -> RunMetrics:
        values = store.read_json(self.metrics_json, fix=EVALUATE_FIX.format(run=self.root))
        return RunMetrics.from_dict(values, str(self.metrics_json))

    def write_gallery(self, gallery: dict) -> None:
        """gallery.json: REPORT.html's gallery, with the experiments (keys and model files) it was drawn from."""
        store.write_json(self.gallery_json, gallery)

    def read_gallery(self) -> dict | None:
        """gallery.json as an earlier command wrote it, or None when there is none."""
        return _read_if_there(self.gallery_json, fix=f"fix: rerun `gradcam-repro evaluate {self.root}`")

    def write_methods(self, methods: MethodsResult) -> None:
        store.write_json(self.methods_json, methods.to_dict())

    def read_methods(self) -> MethodsResult | None:
        """methods.json as an earlier `compare` wrote it, or None when there is none."""
        values = _read_if_there(self.methods_json, fix=f"fix: rerun `gradcam-repro compare {self.root}`")
        return None if values is None else MethodsResult.from_dict(values, str(self.methods_json))

    def read_figures(self, listed) -> dict[str, bytes]:
        """{relative path: PNG bytes} of the listed figures an earlier command saved (those that exist)."""
        return {rel: (self.root / rel).read_bytes() for rel in dict.fromkeys(listed) if (self.root / rel).is_file()}

    def write_reports(self, summary: str, report_md: str, report_html: str) -> None:
        store.write_text(self.summary_md, summary)
        store.write_text(self.report_md, report_md)
        store.write_text(self.report_html, report_html)


class AuditFolder(WrittenFolder):
    """An audit's output folder: audit.json, AUDIT.md and its figures."""

    FILES = {"audit_json": "audit.json", "audit_md": "AUDIT.md"}

    def write(self, result: dict, markdown: str) -> None:
        store.write_json(self.audit_json, result)
        store.write_text(self.audit_md, markdown)

    @staticmethod
    def read(path: str | Path, fix: str) -> dict:
        """audit.json from an audit folder or the file itself."""
        path = Path(path)
        return store.read_json(path / "audit.json" if path.is_dir() else path, fix=fix)


class StudyFolder(WrittenFolder):
    """A study's folder: one JSON file per finished cell, the cells' experiments, the aggregated study."""

    FILES = {"grid_json": "grid.json", "study_json": "study.json", "study_md": "STUDY.md"}

    def write_grid(self, grid: dict) -> None:
        """grid.json: the grid and its cells' keys, written before any cell runs."""
        store.write_json(self.grid_json, grid)

    def cell_json(self, key: str) -> Path:
        return self.root / "cells" / f"{key}.json"

    def has_cell(self, key: str) -> bool:
        return self.cell_json(key).is_file()

    def cell_audit_json(self, key: str) -> Path:
        return self.root / "audits" / f"{key}.json"

    def write_cell_audit(self, key: str, audit: dict) -> None:
        store.write_json(self.cell_audit_json(key), audit)

    def write_cell(self, key: str, cell: dict) -> None:
        store.write_json(self.cell_json(key), cell)

    def read_cell(self, key: str) -> dict:
        return store.read_json(self.cell_json(key))

    def experiment(self, key: str) -> ExperimentFolder:
        return ExperimentFolder(self.root / "experiments" / key)

    def write_study(self, study: dict, markdown: str) -> None:
        store.write_json(self.study_json, study)
        store.write_text(self.study_md, markdown)

    def read_study(self, fix: str) -> dict:
        return store.read_json(self.study_json, fix=fix)


class BenchmarkFolder(StudyFolder):
    """A benchmark's folder: a study's (grid.json, cells/, experiments/) plus BENCHMARK.json and BENCHMARK.md."""

    FILES = {**StudyFolder.FILES, "benchmark_json": "BENCHMARK.json", "benchmark_md": "BENCHMARK.md"}

    def write_benchmark(self, result: dict, markdown: str) -> None:
        store.write_json(self.benchmark_json, result)
        store.write_text(self.benchmark_md, markdown)


def model_files(target: str | Path) -> dict[str, Path]:
    """{name: model.pt} for a run folder (every experiment), an experiment folder or a model.pt file."""
    target = Path(target)
    run = RunFolder(target)
    if run.is_run():
        _, keys = run.read_manifest()
        return {name: run.experiment(key).model_pt for name, key in keys.items()}
    if (target / "model.pt").is_file():
        return {target.name or "model": target / "model.pt"}
    if target.is_file():
        return {target.parent.name or "model": target}
    raise UserError(f"{target} is neither a run folder nor a model.pt; fix: pass runs/<name>, runs/<name>/experiments/<key> "
                    "or a model.pt file")
