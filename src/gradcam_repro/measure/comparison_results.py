"""Typed comparison results: what `gradcam-repro compare` measured, as frozen dataclasses with one
`to_dict`/`from_dict` pair each.

The pairs define methods.json's schema: `MethodsResult.from_dict(json)` reads a run folder's methods.json and
`to_dict()` writes exactly the same JSON back (key order included). A file that lacks a key this version
needs was written by an older gradcam-repro: reading it raises the one-line `UserError` that says so
(`measure.results.older_version_error`). Scores are `CamScores` and AUCs and correlations `Interval`s over
images, as in metrics.json.

Nothing mutates a result once built: the figures and the total time are added with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradcam_repro.measure.results import CamScores, FlatRecord, Interval, read_key

RECOMPARE_FIX = "fix: rerun `gradcam-repro compare RUN` to rewrite it with this version"

# {method: {layer: scores}}, and with one level more, {method: {layer: {model name: scores}}}.
ByLayer = dict[str, dict[str, CamScores]]


def _get(values: dict, key: str, what: str):
    return read_key(values, key, what, RECOMPARE_FIX)


def _interval(values: dict, key: str, what: str) -> Interval:
    return Interval.from_dict(_get(values, key, what), what)


def _scores_to_dict(table: dict) -> dict:
    """Nested {name: ... CamScores} -> the same nesting of dicts."""
    return {k: v.to_dict() if isinstance(v, CamScores) else _scores_to_dict(v) for k, v in table.items()}


def _scores_from_dict(table: dict, depth: int, what: str) -> dict:
    """`depth` levels of names above CamScores dicts -> the same nesting of `CamScores`."""
    if depth == 0:
        return CamScores.from_dict(table, what)
    return {k: _scores_from_dict(v, depth - 1, what) for k, v in table.items()}


@dataclass(frozen=True)
class CompareSettings(FlatRecord):
    """The sample sizes and fixed rules every number of methods.json was measured with."""

    FIX = RECOMPARE_FIX

    images: int
    scorecam_images: int
    sanity_images: int
    faithfulness_images: int
    pixels_per_step: int
    deletion_baseline: str
    insertion_canvas: str
    sanity_max_spearman: float
    precision: str


@dataclass(frozen=True)
class SanityStep(FlatRecord):
    """One step of the randomisation cascade: how the maps correlate with the original maps (Spearman, its
    absolute value, SSIM) and on how many images Spearman was undefined (a constant map)."""

    FIX = RECOMPARE_FIX

    name: str
    spearman: Interval
    abs_spearman: Interval
    ssim: Interval
    undefined_spearman: int


@dataclass(frozen=True)
class SanityVerdict(FlatRecord):
    """The deciding step of the cascade, its scores there, and whether the method passes (Spearman's upper
    bound below `threshold`)."""

    FIX = RECOMPARE_FIX

    step: str
    spearman: Interval
    ssim: Interval
    passes: bool
    threshold: float


@dataclass(frozen=True)
class MethodSanity:
    """One method's cascading randomisation: the layer its maps come from, every step (fc -> stem), the verdict."""

    layer: str
    steps: tuple[SanityStep, ...]
    verdict: SanityVerdict

    def to_dict(self) -> dict:
        return {"layer": self.layer, "steps": [s.to_dict() for s in self.steps], "verdict": self.verdict.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a sanity check") -> MethodSanity:
        return cls(_get(values, "layer", what), tuple(SanityStep.from_dict(s, what) for s in _get(values, "steps", what)),
                   SanityVerdict.from_dict(_get(values, "verdict", what), what))


@dataclass(frozen=True)
class Faithfulness(FlatRecord):
    """One method's mean deletion and insertion AUCs over images."""

    FIX = RECOMPARE_FIX

    deletion_auc: Interval
    insertion_auc: Interval


@dataclass(frozen=True)
class MethodsResult:
    """Everything methods.json holds: the methods and layers measured, the experiments (spec key and model
    hash) they were measured on, the settings, seconds per section, the shortcut scores (method -> layer ->
    model -> `CamScores`), what a uniform map scores, the flags, localisation on a shapes run (method -> layer
    -> `CamScores`; None without one) and the folder it came from, the sanity check and faithfulness per
    method (faithfulness also for "random"), the figures drawn and the machine."""

    methods: tuple[str, ...]
    layers: tuple[str, ...]
    cam_layer: str
    experiments: dict[str, dict]
    settings: CompareSettings
    seconds: dict[str, float]  # per section ("shortcut", "localisation", "sanity", "faithfulness"), and "total"
    shortcut: dict[str, dict[str, dict[str, CamScores]]]
    uniform: dict[str, float]  # "energy_in_box", "pointing" (and "energy_in_mask" with localisation)
    flags_shortcut: dict[str, dict[str, bool]]
    sanity: dict[str, MethodSanity]
    faithfulness: dict[str, Faithfulness]
    environment: dict[str, Any]
    localisation: ByLayer | None = None
    shapes_run: str | None = None
    figures: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = {"methods": list(self.methods), "layers": list(self.layers), "cam_layer": self.cam_layer,
               "experiments": self.experiments, "settings": self.settings.to_dict(), "seconds": dict(self.seconds),
               "shortcut": _scores_to_dict(self.shortcut), "uniform": dict(self.uniform),
               "flags_shortcut": {m: dict(by_layer) for m, by_layer in self.flags_shortcut.items()}}
        if self.localisation is not None:
            out["localisation"] = _scores_to_dict(self.localisation)
        if self.shapes_run is not None:
            out["shapes_run"] = self.shapes_run
        return out | {"sanity": {m: s.to_dict() for m, s in self.sanity.items()},
                      "faithfulness": {m: f.to_dict() for m, f in self.faithfulness.items()},
                      "figures": list(self.figures), "environment": self.environment}

    @classmethod
    def from_dict(cls, values: dict, what: str = "methods.json") -> MethodsResult:
        localisation = values.get("localisation") if isinstance(values, dict) else None
        return cls(
            tuple(_get(values, "methods", what)), tuple(_get(values, "layers", what)), _get(values, "cam_layer", what),
            _get(values, "experiments", what), CompareSettings.from_dict(_get(values, "settings", what), what),
            dict(_get(values, "seconds", what)), _scores_from_dict(_get(values, "shortcut", what), 3, what),
            dict(_get(values, "uniform", what)), _get(values, "flags_shortcut", what),
            {m: MethodSanity.from_dict(s, what) for m, s in _get(values, "sanity", what).items()},
            {m: Faithfulness.from_dict(f, what) for m, f in _get(values, "faithfulness", what).items()},
            _get(values, "environment", what),
            _scores_from_dict(localisation, 2, what) if localisation is not None else None,
            values.get("shapes_run"), tuple(_get(values, "figures", what)))


@dataclass(frozen=True)
class StaleMethods:
    """A methods.json measured on other models than the run's (the run was retrained): the reports say so
    instead of showing its numbers. `experiments`: what it was measured on."""

    experiments: dict[str, dict]
