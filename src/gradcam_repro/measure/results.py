"""Typed results: what a run measured, as frozen dataclasses with one `to_dict`/`from_dict` pair each.

The pairs define metrics.json's schema: `RunMetrics.from_dict(json)` reads a run folder's metrics.json and
`to_dict()` writes exactly the same JSON back (key order included), so the file keeps its meaning. A file
that lacks a key this version needs was written by an older gradcam-repro: reading it raises the one-line
`UserError` that says so and names the fix (`older_version_error`).

Nothing mutates a result once built: a later step (the figures, the end-to-end time) builds a new one with
`dataclasses.replace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_type_hints

from gradcam_repro.errors import UserError

# The CAM evaluation sets scored per model (metrics.json's cam[layer] keys): (a) patched target images the model
# calls target, (b) pasted non-target images it flipped to target, (c) clean target images (the control).
CAM_SETS = PATCHED_TARGET, FLIPPED, CLEAN_TARGET = ("patched_target", "flipped", "clean_target")

REEVALUATE_FIX = "fix: rerun `gradcam-repro evaluate RUN` to rewrite it with this version"


def older_version_error(what: str, missing: str, fix: str = REEVALUATE_FIX) -> UserError:
    """The one-line error for a results file that lacks a key this version reads."""
    return UserError(f"{what} was written by an older gradcam-repro (no {missing!r}); {fix}")


def read_key(values: dict, key: str, what: str, fix: str = REEVALUATE_FIX):
    """values[key], or the one-line older-version error naming `what`, the key and `fix`."""
    try:
        return values[key]
    except (KeyError, TypeError):
        raise older_version_error(what, key, fix) from None


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval over `n` images (`mean` NaN and `n` 0 when nothing was measured)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def measured(self) -> bool:
        return self.n > 0 and not math.isnan(self.mean)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    @classmethod
    def from_dict(cls, values: dict, what: str = "an interval") -> Interval:
        return cls(*(read_key(values, k, what) for k in ("mean", "low", "high", "n")))


def _intervals(values: dict, what: str) -> dict[str, Interval]:
    return {name: Interval.from_dict(v, what) for name, v in values.items()}


def _dicts(values: dict) -> dict:
    return {name: v.to_dict() for name, v in values.items()}


class FlatRecord:
    """A frozen dataclass whose JSON is its fields in order, `Interval` fields as {"mean", "low", "high", "n"}
    and the rest as they are: its to_dict/from_dict pair, written once for every such record. `FIX` is what the
    older-version error tells the user to rerun."""

    FIX = REEVALUATE_FIX

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name).to_dict() if isinstance(getattr(self, f.name), Interval)
                else getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict, what: str | None = None):
        what = what or cls.__name__
        hints = get_type_hints(cls)
        return cls(*(Interval.from_dict(read_key(values, f.name, what, cls.FIX), what) if hints[f.name] is Interval
                     else read_key(values, f.name, what, cls.FIX) for f in fields(cls)))


@dataclass(frozen=True)
class CamScores(FlatRecord):
    """One CAM evaluation set at one layer: energy in the patch (or mask) and the pointing game."""

    energy: Interval
    pointing: Interval


@dataclass(frozen=True)
class Verdict:
    """The rules applied to one model: relies on the patch (flips), points at it (per layer), and whether
    the explanation's answer agrees with the model's reliance (per layer)."""

    relies_on_patch: bool
    points_at_patch: dict[str, bool]
    agrees: dict[str, bool]

    def to_dict(self) -> dict:
        return {"relies_on_patch": self.relies_on_patch, "points_at_patch": dict(self.points_at_patch),
                "agrees": dict(self.agrees)}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a verdict") -> Verdict:
        return cls(read_key(values, "relies_on_patch", what), dict(read_key(values, "points_at_patch", what)),
                   dict(read_key(values, "agrees", what)))


@dataclass(frozen=True)
class Predictions:
    """What a model's predictions say, whichever method explains it: accuracies (clean, per class, on the biased
    test set), the target class's recall on clean and patched images, and the flip rates (reliance)."""

    clean_test_acc: Interval
    per_class_acc: dict[str, float]
    biased_test_acc: Interval
    target_recall_clean: Interval
    target_recall_patched: Interval
    flip_to_target: dict[str, Interval]  # variant ("none", "patch", "other_color", "other_corner") -> rate

    def predictions_dict(self) -> dict:
        return {"clean_test_acc": self.clean_test_acc.to_dict(), "per_class_acc": dict(self.per_class_acc),
                "biased_test_acc": self.biased_test_acc.to_dict(),
                "target_recall_clean": self.target_recall_clean.to_dict(),
                "target_recall_patched": self.target_recall_patched.to_dict(),
                "flip_to_target": _dicts(self.flip_to_target)}


@dataclass(frozen=True)
class ModelShortcut(Predictions):
    """One model's shortcut results: its predictions, CAM scores per layer and evaluation set, localisation
    against object masks (shapes only) and the verdict."""

    cam: dict[str, dict[str, CamScores]]  # layer -> CAM set (measure.shortcut.CAM_SETS) -> scores
    verdict: Verdict
    localisation: dict[str, CamScores] | None = None  # layer -> scores against object masks

    def energy(self, layer: str, cam_set: str = PATCHED_TARGET) -> Interval:
        return self.cam[layer][cam_set].energy

    def to_dict(self) -> dict:
        out = {**self.predictions_dict(), "cam": {layer: _dicts(sets) for layer, sets in self.cam.items()}}
        if self.localisation is not None:
            out["localisation"] = _dicts(self.localisation)
        return out | {"verdict": self.verdict.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a model's results") -> ModelShortcut:
        def interval(key):
            return Interval.from_dict(read_key(values, key, what), what)

        cam = {layer: {s: CamScores.from_dict(v, what) for s, v in sets.items()}
               for layer, sets in read_key(values, "cam", what).items()}
        localisation = values.get("localisation")
        return cls(interval("clean_test_acc"), dict(read_key(values, "per_class_acc", what)), interval("biased_test_acc"),
                   interval("target_recall_clean"), interval("target_recall_patched"),
                   _intervals(read_key(values, "flip_to_target", what), what), cam,
                   Verdict.from_dict(read_key(values, "verdict", what), what),
                   {layer: CamScores.from_dict(v, what) for layer, v in localisation.items()} if localisation else None)


@dataclass(frozen=True)
class ShortcutResults:
    """`measure.shortcut.measure_shortcut`'s results for every model of a run, with what a uniform map scores,
    the patches pasted for the flip tests and the sample sizes."""

    models: dict[str, ModelShortcut]
    uniform: dict[str, float]  # "energy_in_box", "pointing" (and "energy_in_mask" with object masks)
    counterfactual_patches: dict[str, dict]  # variant -> the pasted patch (size, colour, corner, offset)
    n: dict[str, int]  # "test", "target_test", "counterfactual_non_target"

    def to_dict(self) -> dict:
        return {"models": _dicts(self.models), "uniform": dict(self.uniform),
                "counterfactual_patches": {k: dict(v) for k, v in self.counterfactual_patches.items()}, "n": dict(self.n)}

    @classmethod
    def from_dict(cls, values: dict, what: str = "shortcut results") -> ShortcutResults:
        models = {name: ModelShortcut.from_dict(m, f"{what} (model {name})") for name, m in read_key(values, "models", what).items()}
        return cls(models, dict(read_key(values, "uniform", what)), dict(read_key(values, "counterfactual_patches", what)),
                   dict(read_key(values, "n", what)))


@dataclass(frozen=True)
class RepairRecord:
    """A repaired model of a run: its strategy, parent (the biased model's spec key), settings, the artefact it
    was repaired against (box, class, source) and what the repair cost."""

    strategy: str
    parent: str
    params: dict[str, Any]
    artefact: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "parent": self.parent, "params": dict(self.params),
                "artefact": dict(self.artefact), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a repair record") -> RepairRecord:
        return cls(*(read_key(values, k, what) for k in ("strategy", "parent", "params", "artefact", "seconds")))


# metrics.json's keys in the order they are written: the run's facts, then the shortcut results, then the rest.
_FACTS = ("config", "experiments", "dataset", "environment", "precision", "box_tlbr_px", "cam_layer", "layers", "settings")


@dataclass(frozen=True)
class RunMetrics:
    """Everything metrics.json holds: the config and experiments measured, the dataset and environment, the
    settings every verdict used, the shortcut results, training histories, repairs, times and figures."""

    config: dict[str, Any]
    experiments: dict[str, dict]  # name -> {"key", "model_sha256"}
    dataset: dict[str, Any]
    environment: dict[str, Any]
    precision: str
    box_tlbr_px: list[int] | None  # None: the artefact has no one fixed box (placed per image, or global)
    cam_layer: str
    layers: list[str]
    settings: dict[str, Any]
    shortcut: ShortcutResults
    histories: dict[str, list[dict]]
    repairs: dict[str, RepairRecord]
    seconds: dict[str, float]
    figures: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None

    @property
    def models(self) -> dict[str, ModelShortcut]:
        return self.shortcut.models

    def timed(self, **seconds: float) -> RunMetrics:
        """A copy with more entries in `seconds` (e.g. figures=..., end_to_end=...)."""
        return replace(self, seconds={**self.seconds, **seconds})

    def to_dict(self) -> dict:
        shortcut = self.shortcut.to_dict()
        out = {key: getattr(self, key) for key in _FACTS}
        out |= {key: shortcut[key] for key in ("models", "uniform", "counterfactual_patches", "n")}
        out |= {"histories": self.histories, "repairs": _dicts(self.repairs), "seconds": dict(self.seconds)}
        if self.figures:
            out["figures"] = list(self.figures)
        if self.peak_rss_mb is not None:
            out["peak_rss_mb"] = self.peak_rss_mb
        return out

    @classmethod
    def from_dict(cls, values: dict, what: str = "metrics.json") -> RunMetrics:
        facts = [read_key(values, key, what) for key in _FACTS]
        repairs = {name: RepairRecord.from_dict(r, what) for name, r in read_key(values, "repairs", what).items()}
        return cls(*facts, ShortcutResults.from_dict(values, what), read_key(values, "histories", what), repairs,
                   dict(read_key(values, "seconds", what)), list(values.get("figures", [])), values.get("peak_rss_mb"))
