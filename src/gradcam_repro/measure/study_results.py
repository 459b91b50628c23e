"""Typed results of a study: one finished cell (cells/<key>.json), one condition across its seeds, the detection
thresholds, the agreement with another study and the whole study (study.json), as frozen dataclasses with one
`to_dict`/`from_dict` pair each.

As in `measure.results`, the pairs define the files' schema: `X.from_dict(json).to_dict()` gives back the same
JSON, key order included, and a file that lacks a key this version reads raises the one-line `UserError` of
`older_version_error`, naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradcam_repro.measure.results import CamScores, Interval, Predictions, Verdict, read_key

CELL_FIX = "fix: rerun the study with --force to remeasure its cells with this version"
STUDY_FIX = "fix: rerun its `gradcam-repro study` command with this version to rewrite it"


def _getter(values: dict, what: str, fix: str):
    """`get(key)`: values[key], or the older-version error for `what`."""
    def get(key: str):
        return read_key(values, key, what, fix)
    return get


def _dicts(values: dict) -> dict:
    return {name: v.to_dict() for name, v in values.items()}


# measure.results' types, read with a study's fix in their older-version error.
def _interval(values: dict, what: str, fix: str) -> Interval:
    get = _getter(values, what, fix)
    return Interval(*(get(k) for k in ("mean", "low", "high", "n")))


def _cam_scores(values: dict, what: str, fix: str) -> CamScores:
    get = _getter(values, what, fix)
    return CamScores(_interval(get("energy"), what, fix), _interval(get("pointing"), what, fix))


def _verdict(values: dict, what: str, fix: str) -> Verdict:
    get = _getter(values, what, fix)
    return Verdict(get("relies_on_patch"), dict(get("points_at_patch")), dict(get("agrees")))


@dataclass(frozen=True)
class MethodScores:
    """One explanation method's scores on one cell: CAM scores per layer and evaluation set, localisation
    against object masks (shapes only) and the verdict."""

    cam: dict[str, dict[str, CamScores]]  # layer -> CAM set (measure.results.CAM_SETS) -> scores
    verdict: Verdict
    localisation: dict[str, CamScores] | None = None  # layer -> scores against object masks

    def to_dict(self) -> dict:
        out = {"cam": {layer: _dicts(sets) for layer, sets in self.cam.items()}}
        if self.localisation is not None:
            out["localisation"] = _dicts(self.localisation)
        return out | {"verdict": self.verdict.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a method's scores", fix: str = CELL_FIX) -> MethodScores:
        get = _getter(values, what, fix)
        cam = {layer: {s: _cam_scores(v, what, fix) for s, v in sets.items()} for layer, sets in get("cam").items()}
        localisation = values.get("localisation")
        return cls(cam, _verdict(get("verdict"), what, fix),
                   {layer: _cam_scores(v, what, fix) for layer, v in localisation.items()} if localisation else None)


_PREDICTIONS = ("clean_test_acc", "per_class_acc", "biased_test_acc", "target_recall_clean", "target_recall_patched",
                "flip_to_target")


@dataclass(frozen=True)
class CellMetrics(Predictions):
    """What `measure.shortcut.measure_methods` measured on one cell's model: the predictions once, then the
    scores of each method on the same image sets."""

    methods: dict[str, MethodScores]

    def to_dict(self) -> dict:
        return {**self.predictions_dict(), "methods": _dicts(self.methods)}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a cell's metrics", fix: str = CELL_FIX) -> CellMetrics:
        get = _getter(values, what, fix)
        acc, per_class, biased, clean, patched, flips = (get(key) for key in _PREDICTIONS)
        return cls(_interval(acc, what, fix), dict(per_class), _interval(biased, what, fix), _interval(clean, what, fix),
                   _interval(patched, what, fix), {variant: _interval(v, what, fix) for variant, v in flips.items()},
                   {m: MethodScores.from_dict(v, what, fix) for m, v in get("methods").items()})


@dataclass(frozen=True)
class AuditSummary:
    """What the benchmark keeps of one cell's audit (`measure.spray.audit_model` on the cell's test images with
    its artefact pasted on a share of the target class's): the classes confirmed, the target class's finding
    (its verdict, which test found it, the overlap with where the artefact was planted, the transplant's rate;
    "not tested" and None where the audit tested no group of it), the classes flagged as unexplained
    concentration, the audit's seconds and the version of its rules (`spray.RULES_VERSION`; 1 in cells written
    before it was recorded)."""

    target: str
    confirmed: tuple[str, ...]
    target_verdict: str
    target_test: str | None
    target_iou: float | None
    target_transplant: Interval | None
    unexplained: tuple[str, ...]
    seconds: float
    rules: int = 1

    @property
    def target_unexplained(self) -> bool:
        """Whether the target class was flagged as unexplained concentration."""
        return self.target in self.unexplained

    def to_dict(self) -> dict:
        transplant = self.target_transplant.to_dict() if self.target_transplant is not None else None
        return {"target": self.target, "confirmed": list(self.confirmed), "target_verdict": self.target_verdict,
                "target_test": self.target_test, "target_iou": self.target_iou, "target_transplant": transplant,
                "unexplained": list(self.unexplained), "seconds": self.seconds, "rules": self.rules}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a cell's audit", fix: str = CELL_FIX) -> AuditSummary:
        get = _getter(values, what, fix)
        transplant = get("target_transplant")
        return cls(get("target"), tuple(get("confirmed")), get("target_verdict"), get("target_test"), get("target_iou"),
                   _interval(transplant, what, fix) if transplant is not None else None, tuple(get("unexplained")),
                   get("seconds"), values.get("rules", 1))


@dataclass(frozen=True)
class StudyCellResult:
    """One finished cell (cells/<key>.json): its axes and experiment, the methods and config it was measured
    with, the metrics, a uniform map's scores, the sample sizes, the settings of every verdict, and where and
    how long it ran."""

    key: str
    axes: dict[str, Any]
    spec_key: str
    model_sha256: str | None
    methods: list[str]
    config: dict[str, Any]
    metrics: CellMetrics
    uniform: dict[str, float]  # "energy_in_box", "pointing" (and "energy_in_mask" with object masks)
    n: dict[str, int]  # "test", "target_test", "counterfactual_non_target"
    settings: dict[str, Any]
    node_id: str
    threads: int
    environment: dict[str, Any]
    seconds: dict[str, float]  # "train" (the cell's task's training), "evaluate" (this cell's measuring)
    restored_experiment: bool
    audit: AuditSummary | None = None  # the benchmark's cells only

    def to_dict(self) -> dict:
        return {"key": self.key, "axes": dict(self.axes), "spec_key": self.spec_key, "model_sha256": self.model_sha256,
                "methods": list(self.methods), "config": dict(self.config), "metrics": self.metrics.to_dict(),
                "uniform": dict(self.uniform), "n": dict(self.n), "settings": dict(self.settings),
                "node_id": self.node_id, "threads": self.threads, "environment": dict(self.environment),
                "seconds": dict(self.seconds), "restored_experiment": self.restored_experiment} | (
                    {"audit": self.audit.to_dict()} if self.audit is not None else {})

    @classmethod
    def from_dict(cls, values: dict, what: str = "a study cell") -> StudyCellResult:
        get = _getter(values, what, CELL_FIX)
        return cls(get("key"), dict(get("axes")), get("spec_key"), get("model_sha256"), list(get("methods")),
                   dict(get("config")), CellMetrics.from_dict(get("metrics"), what), dict(get("uniform")),
                   dict(get("n")), dict(get("settings")), get("node_id"), get("threads"), dict(get("environment")),
                   dict(get("seconds")), get("restored_experiment"),
                   AuditSummary.from_dict(values["audit"], what) if "audit" in values else None)


@dataclass(frozen=True)
class SeedInterval:
    """A number across seeds: the mean of the seeds' means with its 95% t-interval (`low`, `high` NaN with one
    seed), the seeds counted (`n`, 0: measured on none), their sd, and the mean image-level half-width."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    image_half_width: float

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "sd": self.sd,
                "image_half_width": self.image_half_width}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a seed interval", fix: str = STUDY_FIX) -> SeedInterval:
        get = _getter(values, what, fix)
        return cls(*(get(k) for k in ("mean", "low", "high", "n", "sd", "image_half_width")))


@dataclass(frozen=True)
class Tally:
    """A verdict across seeds: it holds in `k` of `n` seeds."""

    k: int
    n: int

    @property
    def state(self) -> str:
        """"every" (holds in every seed), "none" (in no seed) or "some"."""
        return "every" if self.n and self.k == self.n else "none" if self.k == 0 else "some"

    def to_dict(self) -> dict:
        return {"k": self.k, "n": self.n}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a tally", fix: str = STUDY_FIX) -> Tally:
        get = _getter(values, what, fix)
        return cls(get("k"), get("n"))


@dataclass(frozen=True)
class StudyCondition:
    """One condition (a cell's axes without the seed) across its seeds: every number as a `SeedInterval` and
    every verdict as a `Tally`, by the names of `measure.aggregate.cell_scalars` and `cell_verdicts`."""

    axes: dict[str, Any]
    seeds: list
    uniform_energy: float
    metrics: dict[str, SeedInterval]
    verdicts: dict[str, Tally]

    def to_dict(self) -> dict:
        return {"axes": dict(self.axes), "seeds": list(self.seeds), "uniform_energy": self.uniform_energy,
                "metrics": _dicts(self.metrics), "verdicts": _dicts(self.verdicts)}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a study condition", fix: str = STUDY_FIX) -> StudyCondition:
        get = _getter(values, what, fix)
        return cls(dict(get("axes")), list(get("seeds")), get("uniform_energy"),
                   {name: SeedInterval.from_dict(v, what, fix) for name, v in get("metrics").items()},
                   {name: Tally.from_dict(v, what, fix) for name, v in get("verdicts").items()})


@dataclass(frozen=True)
class DetectionThreshold:
    """One series (a condition without the bias fraction): the smallest tested fraction at which the model
    relies on the patch and at which each method/layer flags it (None: at no tested fraction)."""

    series: dict[str, Any]
    fractions: list
    n_seeds: int
    relies_on_patch: float | None
    flags: dict[str, dict[str, float | None]]  # method -> layer -> fraction

    def to_dict(self) -> dict:
        return {"series": dict(self.series), "fractions": list(self.fractions), "n_seeds": self.n_seeds,
                "relies_on_patch": self.relies_on_patch, "flags": {m: dict(v) for m, v in self.flags.items()}}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a detection threshold") -> DetectionThreshold:
        get = _getter(values, what, STUDY_FIX)
        return cls(dict(get("series")), list(get("fractions")), get("n_seeds"), get("relies_on_patch"),
                   {m: dict(v) for m, v in get("flags").items()})


@dataclass(frozen=True)
class ConditionAgreement:
    """One condition both studies have: its seeds and tallies (here, there), the verdicts' `Tally.state`s
    (here, there), those that differ (seed-robust in one study, not the same way in the other), those
    contradicted (every seed in one, no seed in the other), and whether nothing differs."""

    axes: dict[str, Any]
    seeds: tuple[int, int]
    tallies: dict[str, tuple[Tally, Tally]]
    states: dict[str, tuple[str, str]]
    differs: list[str]
    contradicted: list[str]
    same: bool

    def to_dict(self) -> dict:
        return {"axes": dict(self.axes), "seeds": list(self.seeds),
                "tallies": {name: [a.to_dict(), b.to_dict()] for name, (a, b) in self.tallies.items()},
                "states": {name: list(pair) for name, pair in self.states.items()}, "differs": list(self.differs),
                "contradicted": list(self.contradicted), "same": self.same}

    @classmethod
    def from_dict(cls, values: dict, what: str = "an agreement") -> ConditionAgreement:
        get = _getter(values, what, STUDY_FIX)
        return cls(dict(get("axes")), tuple(get("seeds")),
                   {name: tuple(Tally.from_dict(t, what) for t in pair) for name, pair in get("tallies").items()},
                   {name: tuple(pair) for name, pair in get("states").items()}, list(get("differs")),
                   list(get("contradicted")), get("same"))


@dataclass(frozen=True)
class AgreementCounts:
    """Over the shared conditions: verdicts seed-robust in both studies and the same way, seed-robust here,
    seed-robust in the other study."""

    same: int
    robust_here: int
    robust_there: int

    def to_dict(self) -> dict:
        return {"same": self.same, "robust_here": self.robust_here, "robust_there": self.robust_there}

    @classmethod
    def from_dict(cls, values: dict, what: str = "agreement counts") -> AgreementCounts:
        get = _getter(values, what, STUDY_FIX)
        return cls(get("same"), get("robust_here"), get("robust_there"))


@dataclass(frozen=True)
class Against:
    """The comparison with the study given by --against: its folder, the shared conditions, the counts."""

    study: str
    conditions: list[ConditionAgreement]
    counts: AgreementCounts

    def to_dict(self) -> dict:
        return {"study": self.study, "conditions": [c.to_dict() for c in self.conditions],
                "counts": self.counts.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, what: str = "the --against comparison") -> Against:
        get = _getter(values, what, STUDY_FIX)
        return cls(get("study"), [ConditionAgreement.from_dict(c, what) for c in get("conditions")],
                   AgreementCounts.from_dict(get("counts"), what))


@dataclass(frozen=True)
class CellStatus:
    """A cell as study.json lists it: axes, experiment and status ("done", "failed" or "missing"); where and
    how long a done cell ran and its sample sizes; a failed cell's error."""

    axes: dict[str, Any]
    spec_key: str
    status: str
    node_id: str | None = None
    seconds: dict[str, float] | None = None
    n: dict[str, int] | None = None
    error: str | None = None

    @classmethod
    def of(cls, axes: dict, spec_key: str, cell: StudyCellResult | None, error: str | None) -> CellStatus:
        """The status of a cell finished as `cell` (None: not finished) that failed with `error` (None: did not)."""
        if cell is not None:
            return cls(axes, spec_key, "done", cell.node_id, cell.seconds, cell.n, error)
        return cls(axes, spec_key, "failed" if error is not None else "missing", error=error)

    def to_dict(self) -> dict:
        out = {"axes": dict(self.axes), "spec_key": self.spec_key, "status": self.status}
        if self.status == "done":
            out |= {"node_id": self.node_id, "seconds": dict(self.seconds), "n": dict(self.n)}
        return out | ({"error": self.error} if self.error is not None else {})

    @classmethod
    def from_dict(cls, values: dict, what: str = "a cell's status") -> CellStatus:
        get = _getter(values, what, STUDY_FIX)
        done = get("status") == "done"
        return cls(dict(get("axes")), get("spec_key"), get("status"), get("node_id") if done else None,
                   dict(get("seconds")) if done else None, dict(get("n")) if done else None, values.get("error"))


_FACTS = ("grid", "axes", "methods", "dataset", "bias_class")


@dataclass(frozen=True)
class StudyResult:
    """Everything study.json holds: the grid, its axes and methods, the dataset and shortcut class, every cell's
    status, the settings, the conditions across seeds, the detection thresholds, the comparison with --against,
    the wall time and the figures (the last two once the study is written)."""

    grid: dict[str, Any]
    axes: list[str]
    methods: list[str]
    dataset: str
    bias_class: str
    cells: dict[str, CellStatus]
    settings: dict[str, Any]
    conditions: list[StudyCondition]
    thresholds: list[DetectionThreshold]
    against: Against | None = None
    seconds: float | None = None
    figures: list[str] | None = None

    @property
    def n_done(self) -> int:
        """How many cells are done."""
        return sum(c.status == "done" for c in self.cells.values())

    def to_dict(self) -> dict:
        out = {key: getattr(self, key) for key in _FACTS}
        out |= {"cells": _dicts(self.cells), "settings": dict(self.settings),
                "conditions": [c.to_dict() for c in self.conditions], "thresholds": [t.to_dict() for t in self.thresholds]}
        if self.against is not None:
            out["against"] = self.against.to_dict()
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.figures is not None:
            out["figures"] = list(self.figures)
        return out

    @classmethod
    def from_dict(cls, values: dict, what: str = "study.json") -> StudyResult:
        get = _getter(values, what, STUDY_FIX)
        facts = [get(key) for key in _FACTS]
        against = values.get("against")
        return cls(*facts, {key: CellStatus.from_dict(c, what) for key, c in get("cells").items()}, dict(get("settings")),
                   [StudyCondition.from_dict(c, what) for c in get("conditions")],
                   [DetectionThreshold.from_dict(t, what) for t in get("thresholds")],
                   Against.from_dict(against, what) if against is not None else None, values.get("seconds"),
                   list(values["figures"]) if "figures" in values else None)
