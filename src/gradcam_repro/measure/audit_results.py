"""Typed audit results: what `gradcam-repro audit` found, as frozen dataclasses with one `to_dict`/`from_dict`
pair each.

The pairs define audit.json's schema: `AuditResult.from_dict(json)` reads an audit folder's audit.json and
`to_dict()` writes exactly the same JSON back (key order included). A file that lacks a key this version
needs was written by an older gradcam-repro: reading it raises the one-line `UserError` that says so
(`measure.results.older_version_error`). Boxes are (top, left, bottom, right) in pixels, bottom/right
exclusive; rates and energies are `Interval`s over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradcam_repro.measure.results import Interval, read_key

REAUDIT_FIX = "fix: rerun `gradcam-repro audit` to rewrite it with this version"
_NESTED_LIST_DEPTH = 3  # a candidate's pixels: (3, H, W)


def _get(values: dict, key: str, what: str):
    return read_key(values, key, what, REAUDIT_FIX)


def _tuples(values, depth: int = _NESTED_LIST_DEPTH):
    return tuple(_tuples(v, depth - 1) for v in values) if depth > 1 else tuple(values)


def _lists(values, depth: int = _NESTED_LIST_DEPTH):
    return [_lists(v, depth - 1) for v in values] if depth > 1 else list(values)


def _optional(out: dict, **values) -> dict:
    """`out` plus the given keys whose value is not None, in the given order."""
    return out | {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class Region:
    """A cluster's candidate region: `box`, how it was found (`kind`: "constant pixels" or "relevance only"),
    the thresholded mean map's box and how many of its pixels are constant across the cluster."""

    box: tuple[int, ...]
    kind: str
    relevance_box: tuple[int, ...]
    constant_px: int

    def to_dict(self) -> dict:
        return {"box": list(self.box), "kind": self.kind, "relevance_box": list(self.relevance_box),
                "constant_px": self.constant_px}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a candidate region") -> Region:
        return cls(tuple(_get(values, "box", what)), _get(values, "kind", what), tuple(_get(values, "relevance_box", what)),
                   _get(values, "constant_px", what))


@dataclass(frozen=True)
class AuditCluster:
    """One SpRAy cluster of a class: its size, fixed-place energy (and what a uniform map scores), its score
    (lower bound x uniform, which ranks clusters), its candidate region (None below MIN_CLUSTER_IMAGES) and,
    where a known patch was pasted on the class, the patched share of its images."""

    cluster: int
    n: int
    fixed_place: Interval
    uniform: float
    score: float
    region: Region | None
    patched_share: float | None = None

    def to_dict(self) -> dict:
        out = {"cluster": self.cluster, "n": self.n, "fixed_place": self.fixed_place.to_dict(), "uniform": self.uniform,
               "score": self.score, "region": self.region.to_dict() if self.region is not None else None}
        return _optional(out, patched_share=self.patched_share)

    @classmethod
    def from_dict(cls, values: dict, what: str = "a cluster") -> AuditCluster:
        region = _get(values, "region", what)
        return cls(_get(values, "cluster", what), _get(values, "n", what),
                   Interval.from_dict(_get(values, "fixed_place", what), what), _get(values, "uniform", what),
                   _get(values, "score", what), Region.from_dict(region, what) if region is not None else None,
                   values.get("patched_share"))


@dataclass(frozen=True)
class PeakCluster:
    """One group of a class's maps that look alike wherever their relevance sits (`measure.spray.peak_clusters`):
    its size, the share of each map's relevance on its own most relevant pixels (and what a uniform map scores)
    and its score (lower bound x uniform)."""

    cluster: int
    n: int
    peak_share: Interval
    uniform: float
    score: float

    def to_dict(self) -> dict:
        return {"cluster": self.cluster, "n": self.n, "peak_share": self.peak_share.to_dict(), "uniform": self.uniform,
                "score": self.score}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a peak cluster") -> PeakCluster:
        return cls(_get(values, "cluster", what), _get(values, "n", what),
                   Interval.from_dict(_get(values, "peak_share", what), what), _get(values, "uniform", what),
                   _get(values, "score", what))


# A discovered class's ground-truth keys, present only where a known patch was pasted on the class.
_GROUND_TRUTH = ("n_patched", "patched_share_true", "adjusted_rand_index", "adjusted_rand_index_all",
                 "adjusted_rand_index_artefact")


@dataclass(frozen=True)
class AuditClass:
    """One class's discovery: the images assigned to it and either why it was `skipped` (too few to cluster;
    nothing else is then set) or its Laplacian spectrum, eigengap, cluster count, whole-class fixed-place
    energy and clusters. The ground-truth fields are set only where a known patch was pasted on this class:
    patched images, their share among its true images, and the adjusted Rand index of the clusters against
    patched/unpatched over its true images, over every image assigned to it and (after a confirmation) of
    the artefact's sub-population."""

    n_images: int
    skipped: str | None = None
    eigenvalues: tuple[float, ...] = ()
    n_clusters: int = 0
    eigengap: float = 0.0
    fixed_place: Interval | None = None
    clusters: tuple[AuditCluster, ...] = ()
    peak_clusters: tuple[PeakCluster, ...] | None = None  # None in audits written before moving artefacts were sought
    n_patched: int | None = None
    patched_share_true: float | None = None
    adjusted_rand_index: float | None = None
    adjusted_rand_index_all: float | None = None
    adjusted_rand_index_artefact: float | None = None

    @property
    def discovered(self) -> bool:
        return self.skipped is None

    def to_dict(self) -> dict:
        if not self.discovered:
            return {"n_images": self.n_images, "skipped": self.skipped}
        out = {"n_images": self.n_images, "eigenvalues": list(self.eigenvalues), "n_clusters": self.n_clusters,
               "eigengap": self.eigengap, "fixed_place": self.fixed_place.to_dict(),
               "clusters": [c.to_dict() for c in self.clusters]}
        peaks = [c.to_dict() for c in self.peak_clusters] if self.peak_clusters is not None else None
        return _optional(out, peak_clusters=peaks, **{key: getattr(self, key) for key in _GROUND_TRUTH})

    @classmethod
    def from_dict(cls, values: dict, what: str = "a class's discovery") -> AuditClass:
        n_images = _get(values, "n_images", what)
        if "skipped" in values:
            return cls(n_images, values["skipped"])
        clusters = tuple(AuditCluster.from_dict(c, what) for c in _get(values, "clusters", what))
        peaks = values.get("peak_clusters")
        peaks = tuple(PeakCluster.from_dict(c, what) for c in peaks) if peaks is not None else None
        return cls(n_images, None, tuple(_get(values, "eigenvalues", what)), _get(values, "n_clusters", what),
                   _get(values, "eigengap", what), Interval.from_dict(_get(values, "fixed_place", what), what), clusters,
                   peaks, *(values.get(key) for key in _GROUND_TRUTH))


@dataclass(frozen=True)
class RankedCluster:
    """A row of the ranking: a cluster that may be a candidate, by its fixed-place score (x uniform)."""

    class_name: str
    cluster: int
    score: float
    n: int

    def to_dict(self) -> dict:
        return {"class": self.class_name, "cluster": self.cluster, "score": self.score, "n": self.n}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a ranking row") -> RankedCluster:
        return cls(*(_get(values, k, what) for k in ("class", "cluster", "score", "n")))


@dataclass(frozen=True)
class AlsoTested:
    """A class's other causal test (fixed place, of one of its clusters, or per image), reported beside the
    strongest one; `cluster` is None in audits written before it was recorded."""

    test: str
    verdict: str
    transplant_flip: Interval
    cluster: int | None = None

    def to_dict(self) -> dict:
        out = {"test": self.test, "verdict": self.verdict, "transplant_flip": self.transplant_flip.to_dict()}
        return out | ({"cluster": self.cluster} if self.cluster is not None else {})

    @classmethod
    def from_dict(cls, values: dict, what: str = "a candidate's other test") -> AlsoTested:
        return cls(_get(values, "test", what), _get(values, "verdict", what),
                   Interval.from_dict(_get(values, "transplant_flip", what), what), values.get("cluster"))


@dataclass(frozen=True)
class Unexplained:
    """A class that stands out from the median class (ratios of its best group's fixed-place and peak scores, NaN
    where it has no such group, and of its transplant rate where pasting moved images) although no causal test of
    it passed, and what that means."""

    class_name: str
    fixed_place_ratio: float
    peak_ratio: float
    reason: str
    effect_ratio: float | None = None  # its transplant rate over the median class's, where it moved images

    def to_dict(self) -> dict:
        out = {"class": self.class_name, "fixed_place_ratio": self.fixed_place_ratio, "peak_ratio": self.peak_ratio,
               "reason": self.reason}
        return _optional(out, effect_ratio=self.effect_ratio)

    @classmethod
    def from_dict(cls, values: dict, what: str = "an unexplained concentration") -> Unexplained:
        return cls(*(_get(values, k, what) for k in ("class", "fixed_place_ratio", "peak_ratio", "reason")),
                   values.get("effect_ratio"))


@dataclass(frozen=True)
class ColourCast:
    """A class that a faint global colour cast turns other images into (`measure.casts`): the cast's direction
    (-1/0/+1 per R, G, B) and size in intensity levels, its rate in the scan over every direction, and the rate
    measured again on other images (`flip`), the one to read. No verdict is drawn from it."""

    class_name: str
    direction: tuple[int, int, int]
    levels: int
    scan_flip: float
    flip: Interval

    def to_dict(self) -> dict:
        return {"class": self.class_name, "direction": list(self.direction), "levels": self.levels,
                "scan_flip": self.scan_flip, "flip": self.flip.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, what: str = "a colour cast") -> ColourCast:
        return cls(_get(values, "class", what), tuple(_get(values, "direction", what)), _get(values, "levels", what),
                   _get(values, "scan_flip", what), Interval.from_dict(_get(values, "flip", what)))

    @property
    def rgb_levels(self) -> tuple[int, int, int]:
        """The shift of each channel in levels, e.g. (8, -8, 8) for a magenta cast of 8."""
        return tuple(d * self.levels for d in self.direction)


@dataclass(frozen=True)
class AuditCandidate:
    """One causally tested candidate: the `rank`-th class's best cluster, its region (`box_tlbr_px`, found as
    `kind`), the transplanted pixels ((3, h, w) uint8 values; None in audits written before they were
    recorded) and their mean colour, the rates with 95% intervals (pasted on other classes' images: called
    this class; the region only occluded, None where the transplant was below the candidate bar and it was not
    measured; the same images untouched; the region removed from the cluster's
    own images: prediction changed), the verdict and why. Optional: the overlap with a planted patch, and a
    confirmed artefact's sub-population (its clusters and their image count)."""

    rank: int
    class_name: str
    cluster: int | None  # None: the shared-pixel test, which tests the images that carry the pixels, not a cluster
    n: int
    box_tlbr_px: tuple[int, ...]
    kind: str
    relevance_box_tlbr_px: tuple[int, ...]
    constant_px: int
    mean_rgb: tuple[float, ...]
    pixels: tuple[tuple[tuple[int, ...], ...], ...] | None
    transplant_flip: Interval
    occluded_flip: Interval | None  # None: not measured, the transplant being below the candidate bar (rules 6)
    untouched: Interval
    removal_change: Interval | None  # None: no removal test (a blur cannot be undone)
    verdict: str
    reason: str
    iou_with_planted_box: float | None = None
    artefact_clusters: tuple[int, ...] | None = None
    artefact_images: int | None = None
    # "fixed place", "per image" (each image's own region), "shared pixels", "shared pattern" or "shared blur"; None:
    # written before there were two
    test: str | None = None
    also_tested: tuple[AlsoTested, ...] | None = None  # the class's other test, weaker than this one
    constant_mask: tuple[str, ...] | None = None  # rows of "1"/"0" over the box: the pixels pasted (None: all of them)
    donors: int | None = None  # the per-image test: how many images' regions were pasted (those that decide their image)
    pattern_rms: float | None = None  # the shared-pattern test: the pasted pattern's RMS in intensity levels ...
    rolled_flip: Interval | None = None  # ... and the rate with it (or the blur) rolled out of place (None: below the
    # candidate bar)
    blur_sigma: float | None = None  # the shared-blur test: the Gaussian sigma in px its region was blurred at

    @property
    def per_image(self) -> bool:
        """Whether the region was each image's own (an artefact that moves), not one fixed box."""
        return self.test == "per image"

    @property
    def pattern(self) -> bool:
        """Whether what was pasted is a faint pattern added to the images (`measure.patterns`), not pixels drawn."""
        return self.test == "shared pattern"

    @property
    def blurred(self) -> bool:
        """Whether the test blurred a region of other images (`measure.blurs`), not pasted pixels there."""
        return self.test == "shared blur"

    @property
    def effect(self) -> bool:
        """Whether what was transplanted is the artefact's effect (a pattern added, a region blurred), whose second
        rate is the same effect rolled out of place, not pixels drawn at a place."""
        return self.pattern or self.blurred

    def to_dict(self) -> dict:
        out = {"rank": self.rank, "class": self.class_name, "cluster": self.cluster, "n": self.n,
               "box_tlbr_px": list(self.box_tlbr_px), "kind": self.kind,
               "relevance_box_tlbr_px": list(self.relevance_box_tlbr_px), "constant_px": self.constant_px,
               "mean_rgb": list(self.mean_rgb)}
        out = _optional(out, pixels=_lists(self.pixels) if self.pixels is not None else None)
        occluded = self.occluded_flip.to_dict() if self.occluded_flip is not None else None
        out |= {"transplant_flip": self.transplant_flip.to_dict(), "occluded_flip": occluded,
                "untouched": self.untouched.to_dict(),
                "removal_change": self.removal_change.to_dict() if self.removal_change is not None else None,
                "verdict": self.verdict, "reason": self.reason}
        group = list(self.artefact_clusters) if self.artefact_clusters is not None else None
        also = [t.to_dict() for t in self.also_tested] if self.also_tested is not None else None
        mask = list(self.constant_mask) if self.constant_mask is not None else None
        return _optional(out, iou_with_planted_box=self.iou_with_planted_box, artefact_clusters=group,
                         artefact_images=self.artefact_images, test=self.test, also_tested=also, constant_mask=mask,
                         donors=self.donors, pattern_rms=self.pattern_rms,
                         rolled_flip=self.rolled_flip.to_dict() if self.rolled_flip is not None else None,
                         blur_sigma=self.blur_sigma)

    @classmethod
    def from_dict(cls, values: dict, what: str = "a candidate") -> AuditCandidate:
        def get(key):
            return _get(values, key, what)

        def interval(key):
            return Interval.from_dict(get(key), what)

        pixels, group = values.get("pixels"), values.get("artefact_clusters")
        return cls(get("rank"), get("class"), get("cluster"), get("n"), tuple(get("box_tlbr_px")), get("kind"),
                   tuple(get("relevance_box_tlbr_px")), get("constant_px"), tuple(get("mean_rgb")),
                   _tuples(pixels) if pixels is not None else None, interval("transplant_flip"),
                   interval("occluded_flip") if get("occluded_flip") is not None else None, interval("untouched"),
                   interval("removal_change") if get("removal_change") is not None else None, get("verdict"),
                   get("reason"), values.get("iou_with_planted_box"), tuple(group) if group is not None else None,
                   values.get("artefact_images"), values.get("test"),
                   tuple(AlsoTested.from_dict(t, what) for t in values["also_tested"]) if "also_tested" in values else None,
                   tuple(values["constant_mask"]) if "constant_mask" in values else None, values.get("donors"),
                   values.get("pattern_rms"),
                   Interval.from_dict(values["rolled_flip"], what) if values.get("rolled_flip") is not None else None,
                   values.get("blur_sigma"))


# audit.json's keys before the audit's findings, in the order they are written.
_FACTS = ("target", "model", "experiment", "dataset", "default_method_layer", "precision", "environment")


@dataclass(frozen=True)
class AuditResult:
    """Everything audit.json holds: what was audited (target, model file, experiment name, the dataset record,
    whether the default explainer was used, precision, environment), the audit's settings and fixed rules, each
    class's discovery, the ranking, the tested candidates, the confirmed classes, the planted patch's box
    (only where one was pasted for checking), the times and the figures."""

    target: str
    model: str
    experiment: str
    dataset: dict[str, Any]
    default_method_layer: bool
    precision: str
    environment: dict[str, Any]
    n_test: int
    settings: dict[str, Any]  # measure.spray.settings_record: method, layer, seed and the fixed rules
    classes: dict[str, AuditClass]
    ranking: tuple[RankedCluster, ...]
    candidates: tuple[AuditCandidate, ...]
    confirmed: tuple[str, ...]
    seconds: dict[str, float]  # "audit", "end_to_end"
    unexplained: tuple[Unexplained, ...] | None = None  # None in audits written before it was looked for
    planted_box_tlbr_px: tuple[int, ...] | None = None
    figures: tuple[str, ...] = ()
    colour_casts: tuple[ColourCast, ...] | None = None  # None where not scanned (older audits, or turned off)

    def to_dict(self) -> dict:
        out = {key: getattr(self, key) for key in _FACTS}
        out |= {"n_test": self.n_test, "settings": dict(self.settings),
                "classes": {name: c.to_dict() for name, c in self.classes.items()},
                "ranking": [r.to_dict() for r in self.ranking], "candidates": [c.to_dict() for c in self.candidates],
                "confirmed": list(self.confirmed)}
        if self.unexplained is not None:
            out["unexplained"] = [u.to_dict() for u in self.unexplained]
        if self.colour_casts is not None:
            out["colour_casts"] = [c.to_dict() for c in self.colour_casts]
        planted = list(self.planted_box_tlbr_px) if self.planted_box_tlbr_px is not None else None
        out = _optional(out, planted_box_tlbr_px=planted) | {"seconds": dict(self.seconds)}
        return out | ({"figures": list(self.figures)} if self.figures else {})

    @classmethod
    def from_dict(cls, values: dict, what: str = "audit.json") -> AuditResult:
        def get(key):
            return _get(values, key, what)

        classes = {name: AuditClass.from_dict(c, f"{what} (class {name})") for name, c in get("classes").items()}
        candidates = tuple(AuditCandidate.from_dict(c, f"{what} (candidate {i})") for i, c in enumerate(get("candidates"), 1))
        planted, unexplained = values.get("planted_box_tlbr_px"), values.get("unexplained")
        return cls(*(get(key) for key in _FACTS), get("n_test"), dict(get("settings")), classes,
                   tuple(RankedCluster.from_dict(r, what) for r in get("ranking")), candidates, tuple(get("confirmed")),
                   dict(get("seconds")),
                   tuple(Unexplained.from_dict(u, what) for u in unexplained) if unexplained is not None else None,
                   tuple(planted) if planted is not None else None, tuple(values.get("figures", ())),
                   tuple(ColourCast.from_dict(c, what) for c in casts) if (casts := values.get("colour_casts")) is not None
                   else None)
