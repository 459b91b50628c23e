"""The datasets a run can name (`--dataset`), each with its classes, default shortcut class and loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from gradcam_repro.config import Config, parse_image_size
from gradcam_repro.data.cifar10 import CIFAR10_CLASSES, load_cifar10, resolve_data_root
from gradcam_repro.data.folder import folder_classes, load_folder
from gradcam_repro.data.images import ImageData
from gradcam_repro.data.shapes import SHAPES_CLASSES, load_shapes
from gradcam_repro.errors import UserError


@dataclass(frozen=True)
class Dataset:
    """One entry of the registry: `load(config, progress=None) -> ImageData` reads or generates the whole split.

    progress(done, total), if given, is called while a slow load decodes images (CIFAR-10 from an image tree).
    A dataset whose classes depend on the config (`folder`: its folder names) has `classes` () and
    `default_bias_class` "" here, and `list_classes(config)`; `dataset_for(config)` fills them in.
    """

    name: str
    classes: tuple[str, ...]
    default_bias_class: str
    load: Callable[..., ImageData]
    reads: tuple[str, ...] = ()  # the config fields `load` reads: configs equal on them load the same data
    list_classes: Callable[[Config], tuple[str, ...]] | None = None  # cheap: reads no image


# Index 6 is the default shortcut class in both: CIFAR-10's frog, the shapes' hbar.
DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset("cifar10", CIFAR10_CLASSES, "frog",
                       lambda cfg, progress=None: load_cifar10(resolve_data_root(cfg.data_root), progress=progress),
                       reads=("data_root",)),
    "shapes": Dataset("shapes", SHAPES_CLASSES, "hbar",
                      lambda cfg, progress=None: load_shapes(cfg.shapes_train, cfg.shapes_test, cfg.seed),
                      reads=("shapes_train", "shapes_test", "seed")),
    # Your own class folders; the shortcut class defaults to the first class (sorted folder names).
    "folder": Dataset("folder", (), "",
                      lambda cfg, progress=None: load_folder(resolve_data_root(cfg.data_root),
                                                             parse_image_size(cfg.image_size), cfg.resize, progress),
                      reads=("data_root", "image_size", "resize"),
                      list_classes=lambda cfg: folder_classes(resolve_data_root(cfg.data_root))),
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; fix: pass --dataset as one of {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_for(config: Config) -> Dataset:
    """The dataset `config` names, with its classes: a `folder` dataset's are listed from its tree (no image is
    decoded) and its default shortcut class is the first. Raises `UserError` for an unknown name or a bad tree."""
    dataset = get_dataset(config.dataset)
    if dataset.list_classes is None:
        return dataset
    classes = dataset.list_classes(config)
    return replace(dataset, classes=classes, default_bias_class=classes[0])
