"""The benchmark's rates: which explanations (method x layer) and which audits catch which artefact kinds, and how
often they cry wolf, against the causal ground truth of every model's flip rate.

After Adebayo et al. (ICLR 2022): *detection* on models that rely on a planted artefact, *false alarm* on control
models that do not (the artefact pasted at test time), and, for the audit, *discovery* and *false discovery*.
Every rate is k of n models (one per seed) with a 95% Clopper-Pearson interval. Pure functions of the finished
study cells (`measure.study_results.StudyCellResult`) of a `gradcam-repro benchmark`, whose axes are the
artefact recipe ("kind"), "seed" and "bias_fraction" (0: the seed's clean control, shared by every kind).

Rules, fixed before the benchmark was first run:
- a model *relies* on its artefact when its flip-to-target rate's lower 95% bound is >= `scores.RELIES_FLIP_RATE`
  (0.5), as everywhere in this project; it relies *partly* when that bound is below 0.5 but above the upper bound
  of its base rate (the same images untouched);
- a control *ignores* the artefact when its flip rate's lower bound does not exceed its base rate's upper bound
  (no detectable effect);
- a method *points* at the artefact (method, layer) when the lower bound of the energy on each image's own mask
  (patched target images called the target) is >= `scores.POINTS_AT_PATCH_RATIO` (2) x the masks' share of the
  image; it *detects* it on a relying model when it points there and that bound is above the upper bound of the
  same seed's control's energy; a *false alarm* is pointing on a control that ignores the artefact;
- the audit *discovers* the artefact when it confirms the target class with a region that overlaps where the
  artefact was planted (IoU >= 0.5; per image for a per-image test). A kind with no place (frame, tint, noise)
  cannot be localised, so its discovery is never counted as a success; confirming the class, or flagging it as
  unexplained concentration, is counted apart. Any confirmation on a control is a *false discovery*. The audit's
  per-image test never *confirms*: its "moving region" verdict is counted as a flag.
- the audit *does not clear* the target class when it confirms it, calls it *candidate only*, finds a moving region
  or flags it as unexplained concentration: counted on the controls that ignore the artefact (a soft false alarm)
  and, with the same rule, on the models that rely partly on it, so that the two can be compared (added after
  the default grid was run: docs/findings/benchmark.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradcam_repro.measure import scores
from gradcam_repro.measure.results import PATCHED_TARGET, Interval, read_key
from gradcam_repro.measure.spray import CANDIDATE, MOVING
from gradcam_repro.measure.study_results import AuditSummary, StudyCellResult

DISCOVERY_IOU = 0.5


@dataclass(frozen=True)
class Rate:
    """k of n models, with the 95% Clopper-Pearson interval of the proportion (NaN for n = 0)."""

    k: int
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, hits: list[bool]) -> Rate:
        k, n = sum(bool(h) for h in hits), len(hits)
        if n == 0:
            return cls(0, 0, math.nan, math.nan)
        from scipy.stats import binomtest

        ci = binomtest(k, n).proportion_ci(confidence_level=scores.CONFIDENCE, method="exact")
        return cls(k, n, float(ci.low), float(ci.high))

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else math.nan

    def text(self) -> str:
        return f"{self.k}/{self.n}" if self.n else "-"

    def to_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, values: dict) -> Rate:
        return cls(values["k"], values["n"], values["low"], values["high"])


@dataclass(frozen=True)
class Detection:
    """One method at one layer on one kind at one dose: detection on the relying models, false alarm on the
    controls that ignore the artefact."""

    kind: str
    dose: float
    method: str
    layer: str
    detected: Rate
    false_alarm: Rate

    def to_dict(self) -> dict:
        return {"kind": self.kind, "dose": self.dose, "method": self.method, "layer": self.layer,
                "detected": self.detected.to_dict(), "false_alarm": self.false_alarm.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> Detection:
        return cls(values["kind"], values["dose"], values["method"], values["layer"], Rate.from_dict(values["detected"]),
                   Rate.from_dict(values["false_alarm"]))


@dataclass(frozen=True)
class KindSummary:
    """One kind at one dose: reliance (and each seed's flip rate), the controls that ignore it, and the audit's
    discovery, class-only confirmation, flag (confirmed or unexplained), agreement of its transplant rate with the
    flip rate on partly relying models, the target not cleared on them (`not_cleared`), false discovery on the
    controls (anything confirmed) and false flags on them (the target class not cleared by the audit of a model
    that ignores the artefact pasted on half of that class's test images)."""

    kind: str
    dose: float
    localisable: bool
    flips: tuple[float, ...]
    reliance: Rate
    partly: Rate
    controls_ignore: Rate
    discovery: Rate
    class_confirmed: Rate
    flagged: Rate
    transplant_agrees: Rate
    false_discovery: Rate
    false_flag: Rate
    partly_not_cleared: Rate

    def to_dict(self) -> dict:
        rates = ("reliance", "partly", "controls_ignore", "discovery", "class_confirmed", "flagged", "transplant_agrees",
                 "false_discovery", "false_flag", "partly_not_cleared")
        return {"kind": self.kind, "dose": self.dose, "localisable": self.localisable, "flips": list(self.flips),
                **{name: getattr(self, name).to_dict() for name in rates}}

    @classmethod
    def from_dict(cls, values: dict) -> KindSummary:
        return cls(values["kind"], values["dose"], values["localisable"], tuple(values["flips"]),
                   *(Rate.from_dict(values[k]) for k in ("reliance", "partly", "controls_ignore", "discovery",
                                                          "class_confirmed", "flagged", "transplant_agrees",
                                                          "false_discovery", "false_flag")),
                   # BENCHMARK.json files written before the rate was counted have no such key: no model counted.
                   Rate.from_dict(values["partly_not_cleared"]) if "partly_not_cleared" in values else Rate.of([]))


def relies(cell: StudyCellResult) -> bool:
    return cell.metrics.flip_to_target["patch"].low >= scores.RELIES_FLIP_RATE


def relies_partly(cell: StudyCellResult) -> bool:
    flips = cell.metrics.flip_to_target
    return not relies(cell) and flips["patch"].low > flips["none"].high


def ignores(cell: StudyCellResult) -> bool:
    flips = cell.metrics.flip_to_target
    return flips["patch"].low <= flips["none"].high


def energy(cell: StudyCellResult, method: str, layer: str) -> Interval | None:
    sets = cell.metrics.methods.get(method)
    return sets.cam.get(layer, {}).get(PATCHED_TARGET).energy if sets and layer in sets.cam else None


def points(cell: StudyCellResult, method: str, layer: str) -> bool:
    e = energy(cell, method, layer)
    return e is not None and e.low == e.low and e.low >= scores.POINTS_AT_PATCH_RATIO * cell.uniform["energy_in_box"]


def detects(cell: StudyCellResult, control: StudyCellResult | None, method: str, layer: str) -> bool:
    """`points` on `cell`, and above the control's upper bound (no control: pointing alone)."""
    if not points(cell, method, layer):
        return False
    c = energy(control, method, layer) if control is not None else None
    return c is None or not (c.high == c.high) or energy(cell, method, layer).low > c.high


def discovered(cell: StudyCellResult, localisable: bool) -> bool:
    a = cell.audit
    return (localisable and a is not None and a.target in a.confirmed and a.target_iou is not None
            and a.target_iou >= DISCOVERY_IOU)


def flagged(cell: StudyCellResult) -> bool:
    """The audit confirmed the target class, found a small moving region that decides it, or reported its relevance
    as unexplained concentration (`not_cleared` also counts *candidate only*)."""
    a = cell.audit
    return a.target in a.confirmed or a.target_verdict == MOVING or a.target_unexplained


def not_cleared(cell: StudyCellResult) -> bool:
    """`flagged`, or the target class *candidate only*: anything the audit says of it but "none"."""
    return flagged(cell) or cell.audit.target_verdict == CANDIDATE


def transplant_agrees(cell: StudyCellResult) -> bool:
    """The audit's transplant rate for the target class overlaps the model's measured flip rate (95% intervals)."""
    a, flip = cell.audit, cell.metrics.flip_to_target["patch"]
    return a is not None and a.target_transplant is not None and (
        a.target_transplant.low <= flip.high and flip.low <= a.target_transplant.high)


def kind_summary(kind: str, dose: float, biased: list[StudyCellResult], controls: list[StudyCellResult],
                 localisable: bool) -> KindSummary:
    """`KindSummary` of one kind at one dose from its biased cells and the same kind's control cells."""
    relying = [c for c in biased if relies(c)]
    partly = [c for c in biased if relies_partly(c)]
    audited = [c for c in relying if c.audit is not None]
    return KindSummary(
        kind, dose, localisable, tuple(c.metrics.flip_to_target["patch"].mean for c in biased),
        Rate.of([relies(c) for c in biased]), Rate.of([relies_partly(c) for c in biased]),
        Rate.of([ignores(c) for c in controls]), Rate.of([discovered(c, localisable) for c in audited]),
        Rate.of([c.audit.target in c.audit.confirmed for c in audited]),
        Rate.of([flagged(c) for c in audited]),
        Rate.of([transplant_agrees(c) for c in partly if c.audit is not None]),
        Rate.of([bool(c.audit.confirmed) for c in controls if c.audit is not None]),
        Rate.of([not_cleared(c) for c in controls if c.audit is not None and ignores(c)]),
        Rate.of([not_cleared(c) for c in partly if c.audit is not None]))


def detections(kind: str, dose: float, biased: list[StudyCellResult], controls: dict[int, StudyCellResult],
               layers: dict[str, list[str]]) -> list[Detection]:
    """`Detection` for every method and layer (`layers`: {method: layers}) of one kind at one dose; `controls` by
    seed."""
    relying = [c for c in biased if relies(c)]
    ignoring = [c for c in controls.values() if ignores(c)]
    return [Detection(kind, dose, method, layer,
                      Rate.of([detects(c, controls.get(c.axes["seed"]), method, layer) for c in relying]),
                      Rate.of([points(c, method, layer) for c in ignoring]))
            for method, names in layers.items() for layer in names]


@dataclass(frozen=True)
class AuditRow:
    """What the audit said of one biased cell (its kind, dose and seed): the model's flip rate with the real artefact
    (`flip`) beside the audit's summary (`audit`: the target class's verdict and test, the transplant's rate, the IoU
    with where the artefact was planted, the classes confirmed and flagged as unexplained)."""

    kind: str
    dose: float
    seed: int
    flip: Interval
    audit: AuditSummary

    def to_dict(self) -> dict:
        return {"kind": self.kind, "dose": self.dose, "seed": self.seed, "flip": self.flip.to_dict(),
                "audit": self.audit.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> AuditRow:
        what = "a BENCHMARK.json audit row"
        fix = "rerun `gradcam-repro benchmark` on its folder (it rewrites BENCHMARK.json from the cells)"
        return cls(read_key(values, "kind", what, fix), read_key(values, "dose", what, fix),
                   read_key(values, "seed", what, fix), Interval.from_dict(read_key(values, "flip", what, fix), what),
                   AuditSummary.from_dict(read_key(values, "audit", what, fix), what, fix))


@dataclass(frozen=True)
class BenchmarkResult:
    """BENCHMARK.json: the recipes (kind -> the run flags that plant it), the grid (seeds, doses, methods and their
    layers), every kind's summary and every method x layer's detection per kind and dose, the cells' count and
    cost (seconds per cell: training and measuring, means over the finished cells), the rules and where it ran."""

    recipes: dict[str, dict]
    seeds: tuple[int, ...]
    doses: tuple[float, ...]
    layers: dict[str, list[str]]
    summaries: tuple[KindSummary, ...]
    detections: tuple[Detection, ...]
    cells: dict[str, int]  # "total", "done", "failed"
    seconds: dict[str, float]  # "train_per_model", "evaluate_per_cell", "audit_per_cell", "models", "grid_worker_s", "wall"
    preset: str
    environment: dict
    rules: dict
    audits: tuple[AuditRow, ...] = ()  # `audit_rows`: what the audit said of each biased cell (older files: none)

    def to_dict(self) -> dict:
        return {"recipes": self.recipes, "seeds": list(self.seeds), "doses": list(self.doses), "layers": self.layers,
                "summaries": [s.to_dict() for s in self.summaries], "detections": [d.to_dict() for d in self.detections],
                "cells": dict(self.cells), "seconds": dict(self.seconds), "preset": self.preset,
                "environment": dict(self.environment), "rules": dict(self.rules), "audits": [a.to_dict() for a in self.audits]}

    @classmethod
    def from_dict(cls, values: dict) -> BenchmarkResult:
        return cls(values["recipes"], tuple(values["seeds"]), tuple(values["doses"]), values["layers"],
                   tuple(KindSummary.from_dict(s) for s in values["summaries"]),
                   tuple(Detection.from_dict(d) for d in values["detections"]), values["cells"], values["seconds"],
                   values["preset"], values["environment"], values["rules"],
                   tuple(AuditRow.from_dict(a) for a in values.get("audits", ())))


def audit_rows(cells: list[StudyCellResult]) -> list[AuditRow]:
    """One `AuditRow` per audited biased cell, in (kind, dose descending, seed) order: how each "flagged" of the
    per-kind table got there."""
    return [AuditRow(c.axes["kind"], c.axes["bias_fraction"], c.axes["seed"], c.metrics.flip_to_target["patch"],
                     c.audit)
            for c in sorted(cells, key=lambda c: (c.axes["kind"], -c.axes["bias_fraction"], c.axes["seed"]))
            if c.audit is not None and c.axes["bias_fraction"] != 0]


def rules() -> dict:
    """The fixed rules every rate was computed with, as BENCHMARK.json records them."""
    return {"relies_flip_rate": scores.RELIES_FLIP_RATE, "points_at_patch_ratio": scores.POINTS_AT_PATCH_RATIO,
            "discovery_iou": DISCOVERY_IOU, "cell_set": PATCHED_TARGET, "interval": "Clopper-Pearson 95%",
            "not_cleared": "the target confirmed, candidate only, a moving region or unexplained concentration"}


def summarise(cells: list[StudyCellResult], kinds: dict[str, bool], doses: tuple[float, ...],
              layers: dict[str, list[str]]) -> tuple[list[KindSummary], list[Detection]]:
    """Every kind's summary and detections at every dose; `kinds`: {kind: whether it can be localised}."""
    summaries, found = [], []
    for kind, localisable in kinds.items():
        mine = [c for c in cells if c.axes["kind"] == kind]
        controls = {c.axes["seed"]: c for c in mine if c.axes["bias_fraction"] == 0}
        for dose in doses:
            biased = [c for c in mine if c.axes["bias_fraction"] == dose]
            summaries.append(kind_summary(kind, dose, biased, list(controls.values()), localisable))
            found += detections(kind, dose, biased, controls, layers)
    return summaries, found
