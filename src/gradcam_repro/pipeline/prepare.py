"""A run's inputs, validated before anything is written: the config checked against its dataset and the
model, the data loaded, the training and evaluation rows chosen, and the experiment specs to train."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace

import torch

from gradcam_repro import store
from gradcam_repro.config import Config, parse_image_size
from gradcam_repro.data.bias import patch_artefact
from gradcam_repro.data.images import ImageData, stratified_subset
from gradcam_repro.data.registry import DATASETS, dataset_for, get_dataset
from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import get_layer
from gradcam_repro.explain.layers import default_layers, stage_layers
from gradcam_repro.explain.registry import CAM_METHODS
from gradcam_repro.pipeline.experiment import TrainingSet, architecture
from gradcam_repro.pipeline.progress import as_reporter
from gradcam_repro.pipeline.spec import BiasSpec, ExperimentSpec
from gradcam_repro.runtime import Runtime


@dataclass
class Prepared:
    """Validated inputs of a run: everything is checked before anything is written."""

    config: Config
    training: TrainingSet
    target: int
    specs: dict[str, ExperimentSpec]

    @property
    def data(self) -> ImageData:
        return self.training.data

    @property
    def runtime(self) -> Runtime:
        return self.training.runtime

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """The planted artefact's fixed box on the test images; None where its place varies or it has none."""
        return patch_artefact(BiasSpec.from_config(self.config).patch, tuple(self.data.test_images.shape[-2:])).box


def run_specs(config: Config, fingerprint: str) -> dict[str, ExperimentSpec]:
    """The experiments of `gradcam-repro run`: a baseline and the same training with the patch planted."""
    return {"baseline": ExperimentSpec.from_config(config, fingerprint),
            "biased": ExperimentSpec.from_config(config, fingerprint, BiasSpec.from_config(config))}


def prepare(config: Config, log=print) -> Prepared:
    """Validate the config against the data and the model; raises `UserError` before any output is written."""
    config = validated(config)
    dataset = get_dataset(config.dataset)
    runtime = Runtime.choose(config.device, config.precision)
    store.check_writable(config.out_dir)
    start = time.perf_counter()
    with as_reporter(log).tracker(f"[data] decoding {dataset.name}", "img") as decoding:
        data = dataset.load(config, progress=decoding)
    log(f"data: {data.name} from {data.source} ({len(data.train_labels)} train / {len(data.test_labels)} test, "
        f"fingerprint {data.fingerprint[:12]}, {time.perf_counter() - start:.1f} s)")
    return prepared_from_data(config, data, runtime)


def validated(config: Config) -> Config:
    """`config` checked against its dataset and the model (`UserError` otherwise), with the dataset's default
    shortcut class filled in. Touches no device; of the files, only a folder dataset's class folder names are read
    (`dataset_for`: a tree's classes are its folders, and the model is built for their count)."""
    if config.dataset not in DATASETS:
        raise UserError(f"--dataset must be one of {', '.join(DATASETS)}, got {config.dataset!r}")
    config.validate()
    if config.cam not in CAM_METHODS:
        raise UserError(f"--cam must be one of {', '.join(CAM_METHODS)}, got {config.cam!r}")
    dataset = dataset_for(config)
    if config.bias_class is None:
        config = replace(config, bias_class=dataset.default_bias_class)
    if config.cam_layer is None:  # not given: the rule's layer (on the seed's ResNet, the seed's layer4.1.conv2)
        config = replace(config, cam_layer=arch_layers(config.arch, input_size(config))[1])
    get_layer(architecture(config.arch, len(dataset.classes)), config.cam_layer)  # unknown layer: fail now, not after training
    if config.bias_class not in dataset.classes:
        raise UserError(f"unknown class {config.bias_class!r}; fix: pass --bias-class as one of {', '.join(dataset.classes)}")
    # An artefact that cannot be drawn on the images (--image-size; a folder tree's own size is known at loading): fail now.
    patch_artefact(BiasSpec.from_config(config).patch, input_size(config))
    return config


def input_size(config: Config) -> tuple[int, int]:
    """(H, W) of the images `config` trains and explains on: --image-size, else CIFAR-10's 32x32."""
    return parse_image_size(config.image_size) or (32, 32)


@functools.cache
def arch_layers(arch: str, size: tuple[int, int]) -> tuple[tuple[str, ...], str]:
    """(the layers a run scores every CAM at, the layer it explains by `explain.layers`' rule) of `arch` on (H, W)
    inputs, from one probe of the randomly initialised architecture (layer names do not depend on the weights)."""
    model = architecture(arch, 10).eval()
    return tuple(stage_layers(model, size)), default_layers(model, size).explain


def prepared_from_data(config: Config, data: ImageData, runtime: Runtime) -> Prepared:
    """A validated `config`'s inputs on its loaded `data`: the test subset, training and per-epoch rows, all
    chosen by `config.seed` (what `prepare` does after loading; `study` workers call it on shared data)."""
    if config.test_subset:
        data = _subset_test(data, stratified_subset(data.test_labels, config.test_subset, config.seed))
    train_index = (stratified_subset(data.train_labels, config.train_subset, config.seed)
                   if config.train_subset else torch.arange(len(data.train_labels)))
    eval_index = (stratified_subset(data.test_labels, config.eval_subset, config.seed)
                  if config.eval_subset else torch.arange(len(data.test_labels)))
    training = TrainingSet(config, data, runtime, train_index, eval_index)
    return Prepared(config, training, data.class_index(config.bias_class), run_specs(config, data.fingerprint))


def _subset_test(data: ImageData, index: torch.Tensor) -> ImageData:
    masks = data.test_masks[index] if data.test_masks is not None else None
    return replace(data, test_images=data.test_images[index], test_labels=data.test_labels[index], test_masks=masks)
