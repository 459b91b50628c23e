"""One experiment = data + an optional bias spec + a training config + a seed, named by its content hash.

`run` is two specs (baseline and biased); a study, an audit or a repaired model
is more specs, with no special cases. A finished experiment lives in
`<root>/experiments/<key>/` and is reused by any later run whose spec has the
same key, whatever the run's name or evaluation settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from gradcam_repro.config import Config
from gradcam_repro.model.sources import PROJECT_ARCH

# Config fields that determine a model's weights (besides dataset, bias and seed). Evaluation-only
# fields (CAM method, layer, sample sizes), paths and the device are left out, so changing them reuses
# the trained model. `eval_subset` stays in: it changes the recorded per-epoch history.
TRAINING_FIELDS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "lr_schedule",
                   "label_smoothing", "train_subset", "eval_subset", "augment", "train_resolutions", "precision",
                   "compile")
SPEC_VERSION = 1  # bump when what a spec means changes, so old folders are not reused by mistake
# The architecture a spec names only where it is another (`model.arch.TRAINABLE`), so that the keys of every model
# of the seed's ResNet-18 stay what they were before other architectures existed.
DEFAULT_ARCH = PROJECT_ARCH


# The artefact options a bias spec records only where they differ from the seed's square, so that the keys
# of every square-patch experiment stay what they were before other kinds existed.
ZOO_DEFAULTS = {"kind": "square", "text": "(c)", "opacity": 1.0, "strength": None, "jpeg_quality": None}


@dataclass(frozen=True)
class BiasSpec:
    """The planted shortcut: a `kind` artefact (the seed's: a `patch_size` px square) of RGB `color` at
    `corner` (a corner, "centre" or "random"; +`offset` px) on a seeded `fraction` of the training images of
    class `class_name`; `text`, `opacity`, `strength` and `jpeg_quality` as `data.zoo.Planted` has them."""

    class_name: str
    patch_size: int = 6
    color: tuple[int, int, int] = (255, 255, 0)
    corner: str = "top-left"
    offset: int = 0
    fraction: float = 1.0
    kind: str = ZOO_DEFAULTS["kind"]
    text: str = ZOO_DEFAULTS["text"]
    opacity: float = ZOO_DEFAULTS["opacity"]
    strength: float | None = ZOO_DEFAULTS["strength"]
    jpeg_quality: int | None = ZOO_DEFAULTS["jpeg_quality"]

    @property
    def patch(self) -> dict:
        """The artefact as `data.bias.patch_artefact` takes it: the square's keys, plus the other options where
        they differ from the square's defaults (the text only for a text)."""
        out = {"patch_size": self.patch_size, "color": tuple(self.color), "corner": self.corner, "offset": self.offset}
        return out | self._zoo()

    def _zoo(self) -> dict:
        values = {"kind": self.kind, "text": self.text if self.kind == "text" else ZOO_DEFAULTS["text"],
                  "opacity": self.opacity, "strength": self.strength, "jpeg_quality": self.jpeg_quality}
        return {k: v for k, v in values.items() if v != ZOO_DEFAULTS[k]}

    def to_dict(self) -> dict:
        return {"class_name": self.class_name, "patch_size": self.patch_size, "color": list(self.color),
                "corner": self.corner, "offset": self.offset, "fraction": self.fraction} | self._zoo()

    @classmethod
    def from_dict(cls, values: dict) -> BiasSpec:
        return cls(**{**values, "color": tuple(values["color"])})

    @classmethod
    def from_config(cls, config: Config) -> BiasSpec:
        return cls(config.bias_class, config.patch_size, tuple(config.patch_color), config.patch_corner,
                   config.patch_offset, config.bias_fraction, config.artefact, config.artefact_text, config.opacity,
                   config.strength, config.jpeg_quality)


@dataclass(frozen=True)
class RepairSpec:
    """A repaired model: `strategy` applied to the experiment `parent` (its spec key) against `artefact`
    (`data.artefact.Artefact.to_dict()`), with the strategy's `params` ((name, value) pairs)."""

    strategy: str
    parent: str
    artefact: dict
    params: tuple[tuple[str, object], ...] = ()

    @property
    def decorrelates(self) -> bool:
        """Whether the repaired model trains on images where the artefact is pasted on a `share` of every class
        (and removed from the rest): a repair by counterfactual augmentation."""
        return "share" in dict(self.params)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "parent": self.parent, "artefact": self.artefact, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, values: dict) -> RepairSpec:
        return cls(values["strategy"], values["parent"], values["artefact"],
                   tuple((k, _jsonable(v)) for k, v in values.get("params", {}).items()))


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that determines one trained model. `data_fingerprint` is the sha256 of the decoded pixels."""

    dataset: str
    data_fingerprint: str
    training: tuple[tuple[str, object], ...]
    seed: int
    bias: BiasSpec | None = None
    repair: RepairSpec | None = None  # None for a model trained from scratch (not part of its key then)
    arch: str = DEFAULT_ARCH  # the architecture trained (part of the key only when it is another)

    @classmethod
    def from_config(cls, config: Config, data_fingerprint: str, bias: BiasSpec | None = None) -> ExperimentSpec:
        """The spec of training `config` on data with `data_fingerprint`; a bias on 0% of images is no bias."""
        values = config.to_dict()
        training = tuple((name, _jsonable(values[name])) for name in TRAINING_FIELDS)
        if bias is not None and bias.fraction == 0:
            bias = None
        return cls(config.dataset, data_fingerprint, training, config.seed, bias, arch=config.arch)

    def to_dict(self) -> dict:
        out = {"dataset": self.dataset, "data_fingerprint": self.data_fingerprint, "training": dict(self.training),
               "seed": self.seed,
               "bias": None if self.bias is None else self.bias.to_dict()}
        if self.repair is not None:  # absent otherwise, so that the keys of models trained before repairs stay
            out["repair"] = self.repair.to_dict()
        if self.arch != DEFAULT_ARCH:
            out["arch"] = self.arch
        return out

    @classmethod
    def from_dict(cls, values: dict) -> ExperimentSpec:
        bias, repair = values.get("bias"), values.get("repair")
        return cls(values["dataset"], values["data_fingerprint"], tuple((k, _jsonable(v)) for k, v in values["training"].items()),
                   values["seed"], None if bias is None else BiasSpec.from_dict(bias),
                   None if repair is None else RepairSpec.from_dict(repair), values.get("arch", DEFAULT_ARCH))

    @property
    def key(self) -> str:
        """A stable 16-hex-digit content hash: the same spec gives the same key on every machine."""
        values = self.to_dict()
        if "repair" in values:  # where the artefact was found (patch, audit, box) does not change the model
            values["repair"]["artefact"] = {k: v for k, v in values["repair"]["artefact"].items() if k != "source"}
        text = json.dumps({"version": SPEC_VERSION, **values}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(value):
    """Tuples as lists, so that a spec read back from JSON hashes like the one it was written from."""
    return [_jsonable(v) for v in value] if isinstance(value, (list, tuple)) else value
