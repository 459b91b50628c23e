"""Across seeds: every number of a study as a mean with a 95% t-interval over seeds, every verdict as
"holds in k of n seeds", and the detection thresholds along the bias fraction.

Pure: the per-cell results of `gradcam-repro study` in (`StudyCellResult`s), the typed aggregates of
`measure.study_results` out (`StudyCondition`, `DetectionThreshold`, `ConditionAgreement`, `AgreementCounts`).
A cell is one setting of the grid's axes; a *condition* is the same setting without the seed, so a
condition's cells are its replicates; a *series* is a condition without the bias fraction, so its
conditions form one dose-response curve.
"""

from __future__ import annotations

import math

import numpy as np

from gradcam_repro.measure import scores
from gradcam_repro.measure.comparison import flags_shortcut
from gradcam_repro.measure.results import PATCHED_TARGET, Interval
from gradcam_repro.measure.study_results import (
    AgreementCounts,
    ConditionAgreement,
    DetectionThreshold,
    SeedInterval,
    StudyCellResult,
    StudyCondition,
    Tally,
)

SEED_AXIS = "seed"
DOSE_AXIS = "bias_fraction"
# The interval over seeds: the seed-level means are few (3 to 10), so a Student t-interval,
# mean +- t(0.975, n-1) * sd / sqrt(n), rather than a bootstrap, which needs many more resamples
# than seeds to be honest. With one seed it is undefined (NaN) and no threshold is claimed.
SEED_CI = "95% Student t-interval over seeds, mean +- t(0.975, n-1) * sd / sqrt(n)"
IMAGE_CI = "mean over seeds of the image-level 95% half-width (percentile bootstrap over test images)"
# The predictions every cell has, by the name they are aggregated under.
PREDICTION_SCALARS = ("clean_test_acc", "biased_test_acc", "target_recall_clean", "target_recall_patched")


def seed_interval(values) -> dict:
    """Mean of the finite `values` (one per seed) with a 95% Student t-interval.

    Returns {"mean", "low", "high", "n", "sd"}: NaNs for no values; low/high NaN for one value; a
    zero-width interval when every seed gives the same number.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "sd": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": 1, "sd": math.nan}
    from scipy.stats import t

    sd = float(x.std(ddof=1))
    half = float(t.ppf((1 + scores.CONFIDENCE) / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "sd": sd}


def cell_scalars(cell: StudyCellResult) -> dict[str, Interval]:
    """One cell's numbers by aggregation name, each its image-level interval.

    Names: the PREDICTION_SCALARS; "flip_to_target/<variant>" (none, patch, other_color, other_corner);
    per method and layer "energy/<m>/<l>", "energy_ratio/<m>/<l>" (energy / a uniform map's) and
    "pointing/<m>/<l>", all on the patched target images the model calls target.
    """
    m, uniform = cell.metrics, cell.uniform["energy_in_box"]
    out = {name: getattr(m, name) for name in PREDICTION_SCALARS}
    out.update({f"flip_to_target/{variant}": ci for variant, ci in m.flip_to_target.items()})
    for method, measured in m.methods.items():
        for layer, sets in measured.cam.items():
            energy = sets[PATCHED_TARGET].energy
            out[f"energy/{method}/{layer}"] = energy
            out[f"energy_ratio/{method}/{layer}"] = Interval(energy.mean / uniform, energy.low / uniform,
                                                             energy.high / uniform, energy.n)
            out[f"pointing/{method}/{layer}"] = sets[PATCHED_TARGET].pointing
    return out


def cell_verdicts(cell: StudyCellResult, baseline: StudyCellResult | None) -> dict[str, bool]:
    """One cell's verdicts: "relies_on_patch", and per method and layer "points_at_patch/<m>/<l>" (the run's
    rule) and, given the fraction-0 cell of the same seed and patch, "flags/<m>/<l>" (energy lower bound
    >= 2x uniform and above the baseline's upper bound, as `compare` decides)."""
    m, uniform = cell.metrics, cell.uniform["energy_in_box"]
    out = {"relies_on_patch": bool(m.flip_to_target["patch"].low >= scores.RELIES_FLIP_RATE)}
    for method, measured in m.methods.items():
        for layer, points in measured.verdict.points_at_patch.items():
            out[f"points_at_patch/{method}/{layer}"] = bool(points)
            if baseline is not None:
                pair = {"biased": measured.cam[layer][PATCHED_TARGET],
                        "baseline": baseline.metrics.methods[method].cam[layer][PATCHED_TARGET]}
                out[f"flags/{method}/{layer}"] = flags_shortcut(pair, uniform)
    return out


def _frozen(axes: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in axes.items()))


def _without(axes: dict, *names: str) -> dict:
    return {k: v for k, v in axes.items() if k not in names}


def _baseline_of(cell: StudyCellResult, by_axes: dict) -> StudyCellResult | None:
    """The fraction-0 cell with the same other axes (seed included), or None (none in the grid, or `cell` is it)."""
    axes = cell.axes
    if axes.get(DOSE_AXIS, 0) == 0:
        return None
    return by_axes.get(_frozen({**axes, DOSE_AXIS: 0}))  # 0 and 0.0 hash alike


def condition_summary(axes: dict, cells: list[StudyCellResult], by_axes: dict) -> StudyCondition:
    """One condition across its seeds: every `cell_scalars` number as a `seed_interval` with the mean image-level
    half-width, every `cell_verdicts` verdict as a tally of the seeds where it holds."""
    per_seed = [cell_scalars(c) for c in cells]
    metrics = {}
    for name in per_seed[0]:
        values = [s[name] for s in per_seed if name in s]
        halves = [(v.high - v.low) / 2 for v in values if v.n]
        metrics[name] = SeedInterval(**seed_interval([v.mean for v in values if v.n]),
                                     image_half_width=float(np.mean(halves)) if halves else math.nan)
    holds_in: dict[str, list[bool]] = {}
    for c in cells:
        for name, holds in cell_verdicts(c, _baseline_of(c, by_axes)).items():
            holds_in.setdefault(name, []).append(holds)
    return StudyCondition(axes, [c.axes.get(SEED_AXIS) for c in cells], cells[0].uniform["energy_in_box"], metrics,
                          {name: Tally(sum(map(int, h)), len(h)) for name, h in holds_in.items()})


def aggregate_cells(cells: list[StudyCellResult]) -> list[StudyCondition]:
    """Group finished cells by every axis but the seed; one `condition_summary` each, in grid order."""
    by_axes = {_frozen(c.axes): c for c in cells}
    groups: dict[tuple, list[StudyCellResult]] = {}
    for c in cells:
        groups.setdefault(_frozen(_without(c.axes, SEED_AXIS)), []).append(c)
    return [condition_summary(_without(group[0].axes, SEED_AXIS), group, by_axes) for group in groups.values()]


def detection_thresholds(conditions: list[StudyCondition]) -> list[DetectionThreshold]:
    """Per series (a condition without the bias fraction), the smallest tested fraction at which

    - the model relies on the patch: lower seed-CI bound of flip-to-target >= RELIES_FLIP_RATE (0.5);
    - each method/layer flags it: lower seed-CI bound of the energy in the box >= POINTS_AT_PATCH_RATIO (2)
      x a uniform map's, and above the upper seed-CI bound of the fraction-0 baseline's energy (where the
      series has a fraction-0 condition whose energy was measurable on any seed; else the first rule alone).

    One `DetectionThreshold` per series; a fraction of None: not reached at any tested fraction.
    """
    series: dict[tuple, list[StudyCondition]] = {}
    for c in conditions:
        series.setdefault(_frozen(_without(c.axes, DOSE_AXIS)), []).append(c)
    out = []
    for group in series.values():
        group = sorted(group, key=lambda c: c.axes.get(DOSE_AXIS, 0))
        baseline = next((c for c in group if c.axes.get(DOSE_AXIS, 0) == 0), None)
        flags: dict[str, dict] = {}
        for name in group[0].metrics:
            if name.startswith("energy/"):
                _, method, layer = name.split("/", 2)
                flags.setdefault(method, {})[layer] = _first_dose(group, lambda c, n=name, b=baseline: _flags(c, b, n))
        relies = _first_dose(group, lambda c: c.metrics["flip_to_target/patch"].low >= scores.RELIES_FLIP_RATE)
        out.append(DetectionThreshold(_without(group[0].axes, DOSE_AXIS), [c.axes.get(DOSE_AXIS) for c in group],
                                      min(len(c.seeds) for c in group), relies, flags))
    return out


def _flags(condition: StudyCondition, baseline: StudyCondition | None, name: str) -> bool:
    low = condition.metrics[name].low
    above_uniform = low >= scores.POINTS_AT_PATCH_RATIO * condition.uniform_energy
    control = baseline.metrics[name] if baseline is not None else None
    above_baseline = control is None or control.n == 0 or low > control.high
    return bool(above_uniform and above_baseline and condition is not baseline)


def _first_dose(group: list[StudyCondition], holds) -> float | None:
    """The smallest bias fraction of `group` (sorted) whose condition `holds`; NaN bounds never hold."""
    return next((c.axes.get(DOSE_AXIS) for c in group if holds(c)), None)


def agreement(conditions: list[StudyCondition], reference: list[StudyCondition]) -> list[ConditionAgreement]:
    """Per condition present in both studies (equal non-seed axes), do the seed-robust verdicts agree: those
    that hold in every seed, and those that hold in no seed (their negation holds in every seed, e.g. "Grad-CAM
    does not point at the patch")? Only verdicts measured in both count. Returns, in this study's order, one
    `ConditionAgreement` per shared condition: the seeds and tallies (here, there), the `Tally.state`s, the
    verdicts that differ (robust in at least one study, not the same state in the other), those contradicted
    (every seed of one, no seed of the other) and whether nothing differs."""
    theirs = {_frozen(c.axes): c for c in reference}
    out = []
    for here in conditions:
        there = theirs.get(_frozen(here.axes))
        if there is None:
            continue
        tallies = {n: (t, there.verdicts[n]) for n, t in here.verdicts.items() if n in there.verdicts}
        states = {n: (a.state, b.state) for n, (a, b) in tallies.items()}
        differs = [n for n, (a, b) in states.items() if a != b and (a != "some" or b != "some")]
        contradicted = [n for n in differs if set(states[n]) == {"every", "none"}]
        out.append(ConditionAgreement(here.axes, (len(here.seeds), len(there.seeds)), tallies, states, differs,
                                      contradicted, not differs))
    return out


def agreement_counts(shared: list[ConditionAgreement]) -> AgreementCounts:
    """Over `agreement`'s conditions: the verdicts seed-robust in both studies and the same way, those
    seed-robust here, those seed-robust in the other study."""
    states = [pair for c in shared for pair in c.states.values()]
    return AgreementCounts(sum(a == b != "some" for a, b in states), sum(a != "some" for a, _ in states),
                           sum(b != "some" for _, b in states))
