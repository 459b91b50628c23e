"""The datasets a run can name (`--dataset`), each with its classes, default shortcut class and loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gradcam_repro.data.cifar10 import CIFAR10_CLASSES, load_cifar10, resolve_data_root
from gradcam_repro.data.images import ImageData
from gradcam_repro.data.shapes import SHAPES_CLASSES, load_shapes
from gradcam_repro.errors import UserError


@dataclass(frozen=True)
class Dataset:
    """One entry of the registry: `load(config, progress=None) -> ImageData` reads or generates the whole split.

    progress(done, total), if given, is called while a slow load decodes images (CIFAR-10 from an image tree).
    """

    name: str
    classes: tuple[str, ...]
    default_bias_class: str
    load: Callable[..., ImageData]
    reads: tuple[str, ...] = ()  # the config fields `load` reads: configs equal on them load the same data


# Index 6 is the default shortcut class in both: CIFAR-10's frog, the shapes' hbar.
DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("cifar10", CIFAR10_CLASSES, "frog",
                       lambda cfg, progress=None: load_cifar10(resolve_data_root(cfg.data_root), progress=progress),
                       reads=("data_root",)),
    "shapes": Dataset("shapes", SHAPES_CLASSES, "hbar",
                      lambda cfg, progress=None: load_shapes(cfg.shapes_train, cfg.shapes_test, cfg.seed),
                      reads=("shapes_train", "shapes_test", "seed")),
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; fix: pass --dataset as one of {', '.join(DATASETS)}")
    return DATASETS[name]
