"""What a study measures: its grid (from a TOML study file and flags), the cells of the grid, their
content-hashed keys, and the plan that validates every cell and loads each dataset once.

A *cell* is one combination of the grid's axes. Its training is an `ExperimentSpec` (content-hashed, so a
fraction-0 cell is the shared baseline of every patch setting of its seed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from gradcam_repro.config import PRESETS, STUDY_PRESET, Config, preset_config
from gradcam_repro.data.images import ImageData
from gradcam_repro.data.registry import get_dataset
from gradcam_repro.errors import UserError
from gradcam_repro.explain.registry import EXPLAINERS
from gradcam_repro.pipeline.prepare import validated
from gradcam_repro.pipeline.spec import BiasSpec, ExperimentSpec

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# The dose-response grid of issue 12: 7 fractions x 3 seeds, fraction 0 being each seed's baseline.
DEFAULT_AXES = {"seed": (0, 1, 2), "bias_fraction": (0.0, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0)}
DEFAULT_METHODS = ("gradcam", "hirescam", "layercam", "inputxgradient")
STUDY_FILE_KEYS = ("preset", "methods", "settings", "grid")
NOT_SETTINGS = ("out", "show")  # the study's own --out; no windows from workers
# Config fields that do not change a cell's numbers (the training fields are in the spec key already).
NOT_EVALUATION = ("out", "show", "device", "data_root", "figure_images", "preset")
CELL_VERSION = 1  # bump when what a cell's results mean changes


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
    preset = values.pop("preset", STUDY_PRESET)
    return validated(preset_config(preset, **values))


def data_key(config: Config) -> str:
    """Configs with the same key load the same data: the dataset and the config fields its loader reads."""
    dataset = get_dataset(config.dataset)
    return json.dumps([config.dataset, *[getattr(config, name) for name in dataset.reads]])


# Config fields the artefact zoo added, with the values that mean the seed's square: a cell that has them keeps the
# key it had before they existed, so that studies made earlier resume without measuring their cells again.
ZOO_FIELD_DEFAULTS = {"artefact": "square", "artefact_text": "(c)", "opacity": 1.0, "strength": None,
                      "jpeg_quality": None}


def cell_key(axes: dict, config: Config, spec: ExperimentSpec, methods: tuple[str, ...]) -> str:
    """A 16-hex-digit hash of everything that determines a cell's numbers (its spec key included)."""
    evaluation = {k: v for k, v in config.to_dict().items() if k not in NOT_EVALUATION
                  and not (k in ZOO_FIELD_DEFAULTS and v == ZOO_FIELD_DEFAULTS[k])}
    text = json.dumps({"version": CELL_VERSION, "spec": spec.key, "axes": axes, "evaluation": evaluation,
                       "methods": list(methods)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_study(grid: StudyGrid, out: str, log=print) -> StudyPlan:
    """Validate every cell, load each distinct dataset once and key every cell; writes nothing."""
    combos = grid.combinations()
    return plan_cells(grid, combos, [cell_config(grid, axes, out) for axes in combos], log)


def plan_cells(grid: StudyGrid, combos: list[dict], configs: list[Config], log=print) -> StudyPlan:
    """The plan of cells with these axis values and validated configs (a study's grid, or any other list of
    cells, such as the benchmark's): each distinct dataset loaded once, every cell keyed; writes nothing."""
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


def cell_label(axes: dict) -> str:
    """A short readable name of a cell, e.g. "seed=1 bias_fraction=0.1"."""
    return " ".join(f"{k}={v}" for k, v in axes.items())
