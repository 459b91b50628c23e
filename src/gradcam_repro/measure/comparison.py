"""Which explanation sees the shortcut? Every method (at every layer of the sweep for CAMs) measured four ways.

- `shortcut_evidence`: energy in the patch box and pointing game on patched target images that each
  model calls target (biased vs baseline model), and whether the pair `flags_shortcut`;
- `shapes_localisation`: energy in the object mask on a shapes run's test images;
- `sanity_check`: cascading parameter randomisation (Adebayo et al., 2018) at the run's CAM layer;
- `faithfulness_check`: deletion/insertion AUCs (Petsiuk et al., 2018) on clean test images, against random maps.

Pure: models and uint8 tensors in, dicts out holding the typed parts of methods.json
(`measure.comparison_results`) and, under their own keys, the tensors the figures need; no files, no figures. `pipeline.compare` loads the run, calls these and renders.
Every method goes through the explainer registry, so nothing here depends on which family a method is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from gradcam_repro.data.bias import patch_artefact
from gradcam_repro.data.images import EvalSet
from gradcam_repro.errors import UserError
from gradcam_repro.explain.pixel import PIXEL_LAYER
from gradcam_repro.explain.registry import EXPLAINERS, display_name, explain_images, map_layers, single_layer_explainer
from gradcam_repro.measure import faithfulness, sanity, scores
from gradcam_repro.measure.comparison_results import CompareSettings, Faithfulness, MethodSanity, SanityStep, SanityVerdict
from gradcam_repro.measure.predict import predict
from gradcam_repro.measure.results import CamScores
from gradcam_repro.measure.shortcut import Progress, score_maps, seeded_cap, staged, uniform_share
from gradcam_repro.model.sources import model_input
from gradcam_repro.runtime import Runtime

# Deletion/insertion change this many pixels per step; the same value is recorded in methods.json.
PIXELS_PER_STEP = 64
# The chance baseline of the faithfulness section (i.i.d. uniform maps), listed after the methods.
RANDOM = "random"
# The cascade step that decides the sanity check, by the layer a method's maps come from: maps at the
# input depend on every weight, so the first step (the classifier) decides; a CAM layer decides itself.
DECIDING_STEP_LAYER = {PIXEL_LAYER: "fc"}
_SAMPLE_FIELDS = ("images", "scorecam_images", "sanity_images", "faithfulness_images")


@dataclass(frozen=True)
class CompareOptions:
    """What `gradcam-repro compare` measures, one field per CLI flag.

    methods: a subset of the registry (None: all, in registry order); images: per scored set (seeded
    choice); scorecam_images: of those, how many Score-CAM explains (K forward passes per image and
    layer); sanity_images: in the randomisation cascade; faithfulness_images: for deletion/insertion;
    shapes_run: a `--dataset shapes` run for localisation; device, data_root: overrides of the run's own.
    """

    methods: tuple[str, ...] | None = field(default=None, metadata={
        "metavar": "METHOD", "help": "subset of methods", "default_text": "all"})
    images: int = field(default=100, metadata={"help": "images per scored set"})
    scorecam_images: int = field(default=8, metadata={"help": "of those, how many Score-CAM explains"})
    sanity_images: int = field(default=16, metadata={"help": "images in the randomisation cascade"})
    faithfulness_images: int = field(default=64, metadata={"help": "images for deletion/insertion"})
    shapes_run: str | None = field(default=None, metadata={
        "help": "a run made with --dataset shapes: adds localisation against object masks"})
    device: str | None = None  # --device, shared with the other commands
    data_root: str | None = None  # --data-root, shared with the other commands

    def __post_init__(self):
        if self.methods is not None:
            object.__setattr__(self, "methods", tuple(self.methods))  # the CLI passes a list

    @property
    def method_names(self) -> tuple[str, ...]:
        """The methods to measure, in the order given (default: every registered method)."""
        return self.methods if self.methods else tuple(EXPLAINERS)

    def validate(self) -> None:
        """Raise a one-line `UserError` for unknown methods or a sample size below 1."""
        unknown = [m for m in self.method_names if m not in EXPLAINERS]
        if unknown:
            raise UserError(f"unknown methods {unknown}; fix: use some of {', '.join(EXPLAINERS)}")
        for name in _SAMPLE_FIELDS:
            value = getattr(self, name)
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def cap(self, n_images: int, method: str) -> int:
        """How many of `n_images` `method` explains: Score-CAM is capped at `scorecam_images`."""
        return min(n_images, self.scorecam_images) if method == "scorecam" else n_images


@dataclass(frozen=True)
class MethodSweep:
    """Fixed for every section: the options, the layers CAMs are swept over, the run's CAM layer (sanity
    check and faithfulness), the seed of every sample choice and bootstrap, and where models run;
    `progress(done, total, stage)`, when given, hears of each explanation pass (it changes no number)."""

    options: CompareOptions
    layers: tuple[str, ...]
    cam_layer: str
    seed: int
    runtime: Runtime
    progress: Progress | None = field(default=None, compare=False)

    @property
    def methods(self) -> tuple[str, ...]:
        return self.options.method_names


def compare_settings(options: CompareOptions, runtime: Runtime) -> CompareSettings:
    """The sample sizes and fixed rules every number of methods.json was measured with."""
    return CompareSettings(
        *(getattr(options, name) for name in _SAMPLE_FIELDS), pixels_per_step=PIXELS_PER_STEP,
        deletion_baseline="mean colour (0 after normalisation)",
        insertion_canvas=f"Gaussian blur, kernel {faithfulness.INSERTION_BLUR_KERNEL_PX} px, "
                         f"sigma {faithfulness.INSERTION_BLUR_SIGMA_PX} px",
        sanity_max_spearman=sanity.SANITY_MAX_SPEARMAN,
        precision=f"every explanation and deletion/insertion pass in the run's precision, {runtime.precision}")


def shortcut_evidence(models: dict[str, nn.Module], test: EvalSet, target: int, patch: dict, sweep: MethodSweep) -> dict:
    """Patched target images each model calls target, explained for the target class, scored against each image's
    artefact mask (the box, for the seed's square).

    patch: the artefact as `data.bias.patch_artefact` takes it. Returns {"shortcut": {method: {layer: {model name: CamScores}}},
    "uniform": {"energy_in_box", "pointing"}, "flags_shortcut": {method: {layer: bool}},
    "called_target": {model name: images explained}}.
    """
    artefact = patch_artefact(patch, tuple(test.images.shape[-2:]))
    images, masks = artefact.apply(test.images[test.labels == target], seed=sweep.seed)
    shortcut: dict = {m: {} for m in sweep.methods}
    called_target = {}
    for name, model in models.items():
        called = predict(model, images, sweep.runtime) == target
        rows = seeded_cap(called.nonzero().squeeze(1), sweep.options.images, sweep.seed)
        chosen, chosen_masks = images[rows], masks[rows]
        called_target[name] = len(chosen)
        for method in sweep.methods:
            k = sweep.options.cap(len(chosen), method)
            batch = chosen[:k]
            maps = explain_images(method, model, batch, torch.full((len(batch),), target), sweep.layers, sweep.runtime,
                                  progress=staged(sweep.progress, f"{name} {display_name(method)}"))
            for layer, m in maps.items():
                scored = score_maps(m, None, sweep.seed, masks=chosen_masks[:k], tolerance=True)
                shortcut[method].setdefault(layer, {})[name] = CamScores.from_dict(scored)
    grown = scores.dilate_masks(masks, scores.POINTING_TOLERANCE_PX)
    uniform = {"energy_in_box": uniform_share(masks), "pointing": uniform_share(grown)}
    flags = {m: {layer: flags_shortcut(s, uniform["energy_in_box"]) for layer, s in by_layer.items()}
             for m, by_layer in shortcut.items()}
    return {"shortcut": shortcut, "uniform": uniform, "flags_shortcut": flags, "called_target": called_target}


def flags_shortcut(by_model: dict[str, CamScores], uniform: float) -> bool:
    """The pair flags the shortcut: biased-model energy in the box >= 2x uniform at its CI's lower bound,
    and above the baseline model's upper bound (the same rule as the main report, plus the control)."""
    biased, baseline = by_model.get("biased"), by_model.get("baseline")
    if biased is None or biased.energy.n == 0:
        return False
    above_uniform = biased.energy.low >= scores.POINTS_AT_PATCH_RATIO * uniform
    above_baseline = baseline is None or baseline.energy.n == 0 or biased.energy.low > baseline.energy.high
    return bool(above_uniform and above_baseline)


def shapes_localisation(model: nn.Module, test: EvalSet, sweep: MethodSweep) -> dict:
    """Clean test images with object masks, explained for their true class, scored against the masks.

    Returns {"localisation": {method: {layer: CamScores}}, "energy_in_mask": the uniform map's energy}.
    """
    if test.masks is None:
        raise ValueError("shapes_localisation needs a test set with object masks")
    chosen = seeded_cap(torch.arange(len(test.labels)), sweep.options.images, sweep.seed)
    localisation: dict = {m: {} for m in sweep.methods}
    for method in sweep.methods:
        idx = chosen[:sweep.options.cap(len(chosen), method)]
        maps = explain_images(method, model, test.images[idx], test.labels[idx], sweep.layers, sweep.runtime,
                              progress=staged(sweep.progress, f"shapes {display_name(method)}"))
        for layer, m in maps.items():
            localisation[method][layer] = CamScores.from_dict(score_maps(m, None, sweep.seed, masks=test.masks[idx]))
    return {"localisation": localisation, "energy_in_mask": scores.uniform_energy(test.masks[chosen])}


def sanity_check(model: nn.Module, test: EvalSet, sweep: MethodSweep) -> dict:
    """Cascading randomisation of `model` on seeded clean test images (true class), each method at the CAM layer.

    Returns {"sanity": {method: MethodSanity}, "cascade_maps": {method: {step: (H, W) map of
    the first image}}, "image": (1, 3, H, W) uint8, that image (empty when there are no test images)}.
    """
    pick = seeded_cap(torch.arange(len(test.labels)), sweep.options.sanity_images, sweep.seed + 1)
    x = model_input(model, test.images[pick].to(sweep.runtime.device))
    t = test.labels[pick].to(sweep.runtime.device)
    results, cascade_maps = {}, {}
    for method in sweep.methods:
        n = sweep.options.cap(len(x), method)
        layer = map_layers(method, [sweep.cam_layer])[0]
        explain_fn = single_layer_explainer(method, sweep.cam_layer, sweep.runtime.amp_dtype)
        result = sanity.cascading_randomisation(model, x[:n], t[:n], explain_fn, seed=sweep.seed, keep_images=1)
        results[method] = MethodSanity(
            layer, tuple(SanityStep.from_dict(s) for s in result["steps"]),
            SanityVerdict.from_dict(sanity.sanity_verdict(result, DECIDING_STEP_LAYER.get(layer, layer))))
        cascade_maps[method] = {k: v[0] for k, v in result["maps"].items()}
    return {"sanity": results, "cascade_maps": cascade_maps, "image": test.images[pick[:1]]}


def faithfulness_check(model: nn.Module, test: EvalSet, sweep: MethodSweep) -> dict:
    """Deletion and insertion on seeded clean test images for `model`'s predicted class, each method's maps
    at the CAM layer and the RANDOM chance baseline, PIXELS_PER_STEP pixels per step.

    Returns {"faithfulness": {method: Faithfulness}, "curves": {method: deletion_insertion result}}.
    """
    pick = seeded_cap(torch.arange(len(test.labels)), sweep.options.faithfulness_images, sweep.seed + 2)
    images = test.images[pick]
    predicted = predict(model, images, sweep.runtime)
    device = sweep.runtime.device
    results, curves = {}, {}
    for method in [*sweep.methods, RANDOM]:
        n = sweep.options.cap(len(images), method)
        maps = _faithfulness_maps(method, model, images[:n], predicted[:n], sweep)
        result = faithfulness.deletion_insertion(model, model_input(model, images[:n].to(device)), predicted[:n].to(device), maps,
                                                 pixels_per_step=PIXELS_PER_STEP, amp_dtype=sweep.runtime.amp_dtype,
                                                 device=device)
        results[method] = Faithfulness.from_dict(faithfulness.summarise_faithfulness(result, sweep.seed))
        curves[method] = result
    return {"faithfulness": results, "curves": curves}


def _faithfulness_maps(method: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                       sweep: MethodSweep) -> torch.Tensor:
    """(N, H, W) maps ranking the pixels: `method` at the CAM layer, or RANDOM's seeded uniform maps."""
    if method == RANDOM:
        return faithfulness.random_maps(len(images), tuple(images.shape[-2:]), sweep.seed)
    key = map_layers(method, [sweep.cam_layer])[0]
    return explain_images(method, model, images, targets, [sweep.cam_layer], sweep.runtime)[key]

