"""The shortcut tests: does a model use the artefact (counterfactual flips), and does its explanation show it
(energy in the artefact's per-image mask, pointing game and relevance rank accuracy, per layer)?

Every score is taken against each image's own mask, as the artefact's `apply` rendered it: for the seed's
square that is one fixed box on every image, for a randomly placed or global artefact (`data.zoo`) a mask per
image. The uniform reference is the masks' mean share of the image.

Pure functions on tensors; every pass over a dataset goes in large batches. `measure_shortcut` returns
plain results (JSON-ready dicts with confidence intervals) plus the tensors the figures need.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from gradcam_repro.data.artefact import Artefact
from gradcam_repro.data.bias import patch_artefact
from gradcam_repro.data.images import EvalSet
from gradcam_repro.data.zoo import Planted
from gradcam_repro.explain.registry import explain_images_by_method, map_layers
from gradcam_repro.measure import scores
from gradcam_repro.measure.predict import predict
from gradcam_repro.measure.results import CLEAN_TARGET, FLIPPED, PATCHED_TARGET
from gradcam_repro.runtime import Runtime

# progress(done, total, stage=""): told of each explanation pass (pipeline.progress.Tracker is one).
Progress = Callable[..., None]
# The image set scored against the test set's own object masks (the shapes), beside the artefact's sets.
LOCALISATION = "localisation"


@dataclass(frozen=True)
class ShortcutProtocol:
    """What the shortcut study measures, fixed before measuring.

    target: the shortcut class; patch: the planted artefact as a dict (`data.bias.DEFAULT_PATCH`'s keys and
    any of `data.bias.ZOO_KEYS`; pasted as `artefact()` gives it); layers: explained at once by `method`;
    counterfactual_images / cam_images: seeded sample caps (None: all); seed: samples and bootstrap.
    """

    target: int
    patch: dict
    layers: tuple[str, ...]
    method: str = "gradcam"
    seed: int = 0
    counterfactual_images: int | None = None
    cam_images: int | None = None
    cam_batch_size: int = 256

    def artefact(self, image_size: int | tuple[int, int]) -> Artefact | Planted:
        """The planted artefact on images of `image_size` (a side, or (height, width))."""
        return patch_artefact(self.patch, image_size)

    def box(self, image_size: int | tuple[int, int]) -> tuple[int, int, int, int] | None:
        """The artefact's one fixed box; None where its place varies per image or it has none (a tint)."""
        return self.artefact(image_size).box


def opposite_corner(corner: str) -> str:
    vertical, _, horizontal = corner.partition("-")
    return f"{'bottom' if vertical == 'top' else 'top'}-{'right' if horizontal == 'left' else 'left'}"


def counterfactual_patches(patch: dict) -> dict[str, dict]:
    """The configured patch, the same place in the complementary colour, and the same colour at the opposite
    corner: the seed's square's controls (other kinds take theirs from `data.zoo.Planted`)."""
    other_color = tuple(255 - c for c in patch["color"])
    return {
        "patch": dict(patch),
        "other_color": {**patch, "color": other_color},
        "other_corner": {**patch, "corner": opposite_corner(patch["corner"])},
    }


def counterfactual_artefacts(patch: dict, image_size: int | tuple[int, int]) -> dict[str, Artefact | Planted]:
    """The artefact and its two controls on images of `image_size`, each with its variant as `source`:
    "other_color" (the same place in another colour, or another kind where the kind has no colour) and
    "other_corner" (the same artefact elsewhere, or another kind at a place where it has no place)."""
    artefact = patch_artefact(patch, image_size, source="patch")
    if isinstance(artefact, Planted):
        return {"patch": artefact, "other_color": artefact.control(), "other_corner": artefact.elsewhere()}
    return {name: patch_artefact(v, image_size, source=name) for name, v in counterfactual_patches(patch).items()}


def artefact_record(artefact: Artefact | Planted, patch: dict) -> dict:
    """What metrics.json records of a pasted variant: the patch dict's keys (colour as a list), and for other
    kinds the artefact's own description."""
    if not isinstance(artefact, Planted):
        return {**patch, "color": list(patch["color"])}
    d = artefact.to_dict()
    return {"patch_size": d["size"], "color": d["color"], "corner": d["placement"], "offset": d["offset"],
            **{k: d[k] for k in ("kind", "opacity", "strength", "text", "jpeg_quality")}}


def seeded_cap(index: torch.Tensor, cap: int | None, seed: int) -> torch.Tensor:
    """At most `cap` entries of `index`, a seeded random choice kept in original order."""
    if cap is None or len(index) <= cap:
        return index
    pick = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:cap]
    return index[pick.sort().values]


def score_maps(maps: torch.Tensor, box, seed: int, masks: torch.Tensor | None = None, tolerance: bool = False) -> dict:
    """Energy and pointing game of (N, H, W) maps, against `box` or per-image (N, H, W) `masks`, with CIs.

    tolerance: the pointing game's hit area is the mask grown by `scores.POINTING_TOLERANCE_PX` (what the box
    rule does; the true object masks of the shapes set are scored without it, as before)."""
    if masks is None:
        energy, hits = scores.cam_energy_in_box(maps, box), scores.pointing_game(maps, box)
    else:
        grow = scores.POINTING_TOLERANCE_PX if tolerance else 0
        energy, hits = scores.cam_energy_in_mask(maps, masks), scores.pointing_game_mask(maps, masks, tolerance_px=grow)
    return {"energy": scores.bootstrap_ci(energy, seed), "pointing": scores.bootstrap_ci(hits, seed)}


@dataclass
class Probes:
    """The images every model is probed with: patched target images and non-target images with each variant
    (`counterfactual_artefacts`), with the (N, H, W) bool masks of where the artefact went on each."""

    target_idx: torch.Tensor
    other_idx: torch.Tensor
    patched_targets: torch.Tensor
    pasted: dict[str, torch.Tensor]
    patched_masks: torch.Tensor
    pasted_masks: dict[str, torch.Tensor]


def make_probes(test: EvalSet, protocol: ShortcutProtocol) -> Probes:
    target_idx = (test.labels == protocol.target).nonzero().squeeze(1)
    other_idx = seeded_cap((test.labels != protocol.target).nonzero().squeeze(1), protocol.counterfactual_images,
                           protocol.seed)
    variants = counterfactual_artefacts(protocol.patch, tuple(test.images.shape[-2:]))
    pasted = {name: artefact.apply(test.images[other_idx], seed=protocol.seed) for name, artefact in variants.items()}
    patched, masks = variants["patch"].apply(test.images[target_idx], seed=protocol.seed + 1)
    return Probes(target_idx, other_idx, patched, {k: v[0] for k, v in pasted.items()}, masks,
                  {k: v[1] for k, v in pasted.items()})


def prediction_metrics(model: nn.Module, test: EvalSet, probes: Probes, protocol: ShortcutProtocol,
                       runtime: Runtime) -> tuple[dict, dict]:
    """Accuracies, target recall and flip-to-target rates with CIs, and the predictions they came from."""
    seed, target, labels = protocol.seed, protocol.target, test.labels
    clean = predict(model, test.images, runtime)
    patched = predict(model, probes.patched_targets, runtime)
    biased_preds = clean.clone()
    biased_preds[probes.target_idx] = patched
    correct = clean == labels
    other_labels = labels[probes.other_idx]
    m = {
        "clean_test_acc": scores.bootstrap_ci(correct, seed),
        "per_class_acc": {test.classes[c]: correct[labels == c].float().mean().item() for c in range(len(test.classes))},
        "biased_test_acc": scores.bootstrap_ci(biased_preds == labels, seed),
        "target_recall_clean": scores.bootstrap_ci(clean[probes.target_idx] == target, seed),
        "target_recall_patched": scores.bootstrap_ci(patched == target, seed),
        "flip_to_target": {"none": scores.bootstrap_ci(
            scores.flip_to_target_rate(clean[probes.other_idx], other_labels, target), seed)},
    }
    preds = {"clean": clean, "patched_targets": patched}
    for variant, batch in probes.pasted.items():
        preds[variant] = predict(model, batch, runtime)
        m["flip_to_target"][variant] = scores.bootstrap_ci(scores.flip_to_target_rate(preds[variant], other_labels, target), seed)
    return m, preds


def measure_model(model: nn.Module, test: EvalSet, probes: Probes, protocol: ShortcutProtocol, runtime: Runtime,
                  progress: Progress | None = None) -> tuple[dict, dict]:
    """Every number of the shortcut study for one model, and the tensors its figures need.

    `progress(done, total, stage)` hears of each explanation pass (stage: the image set explained)."""
    m, preds = prediction_metrics(model, test, probes, protocol, runtime)
    judged, patched_maps = judged_explanations(model, test, (probes, preds, m), protocol, runtime, progress)
    masks = probes.patched_masks[patched_rows(preds, protocol)]
    return {**m, **judged}, {"predictions": preds, "patched_target_maps": patched_maps, "patched_target_masks": masks}


def patched_rows(preds: dict, protocol: ShortcutProtocol) -> torch.Tensor:
    """The patched target images the CAM sets explain: those the model calls the target (a seeded cap)."""
    called = (preds["patched_targets"] == protocol.target).nonzero().squeeze(1)
    return seeded_cap(called, protocol.cam_images, protocol.seed)


def judged_explanations(model: nn.Module, test: EvalSet, predicted: tuple[Probes, dict, dict], protocol: ShortcutProtocol,
                        runtime: Runtime, progress: Progress | None = None,
                        explained: tuple[dict, dict] | None = None) -> tuple[dict, dict]:
    """`protocol.method`'s scores for one model and the verdicts they give with its prediction metrics.

    predicted: (probes, predictions, prediction metrics) from `prediction_metrics`, computed once per model
    whichever methods explain it; explained: the method's `explanation_metrics`, where `methods_metrics` already
    computed it. Returns ({"cam", "localisation" (masks only), "verdict"}, the patched target images' maps)."""
    probes, preds, m = predicted
    scored, patched_maps = explained or explanation_metrics(model, test, probes, preds, protocol, runtime, progress)
    scored = {**scored, "verdict": scores.verdicts({**m, **scored}, uniform_share(probes.patched_masks))}
    return scored, patched_maps


def uniform_share(masks: torch.Tensor) -> float:
    """What a uniform map scores on (N, H, W) masks: their mean share of the image (for one fixed box, exactly
    its area over the image's)."""
    return masks.sum().item() / masks.numel() if masks.numel() else float("nan")


def sample_sizes(test: EvalSet, probes: Probes) -> dict[str, int]:
    """The image counts every rate was measured on."""
    return {"test": len(test.labels), "target_test": len(probes.target_idx), "counterfactual_non_target": len(probes.other_idx)}


def explanation_metrics(model: nn.Module, test: EvalSet, probes: Probes, preds: dict, protocol: ShortcutProtocol,
                        runtime: Runtime, progress: Progress | None = None) -> tuple[dict, dict]:
    """`protocol.method`'s scores for one model, given the predictions `prediction_metrics` returned.

    Returns ({"cam": {layer: {set: score_maps}}, plus "localisation" {layer: score_maps} where the test set has
    masks}, the patched target images' maps {layer: (N, H, W) in [0, 1]}). Layers are the method's own keys:
    the protocol's layers for a CAM, "input" for a pixel-space method. Calling this once per method reuses
    one set of predictions; `methods_metrics` also shares the explanation passes between methods.
    """
    return methods_metrics((protocol.method,), model, test, probes, preds, protocol, runtime, progress)[protocol.method]


def explained_sets(test: EvalSet, probes: Probes, preds: dict, protocol: ShortcutProtocol
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The image sets every method explains: {set: (images, the classes explained, the masks they are scored on)};
    clean target images are scored where the artefact would go, and the test set's own object masks (the
    shapes) under "localisation"."""
    seed, target, cap = protocol.seed, protocol.target, protocol.cam_images
    patched = patched_rows(preds, protocol)
    flipped = seeded_cap((preds["patch"] == target).nonzero().squeeze(1), cap, seed)
    clean = seeded_cap(torch.arange(len(probes.target_idx)), cap, seed)
    sets = {
        PATCHED_TARGET: (probes.patched_targets[patched], probes.patched_masks[patched]),
        FLIPPED: (probes.pasted["patch"][flipped], probes.pasted_masks["patch"][flipped]),
        CLEAN_TARGET: (test.images[probes.target_idx][clean], probes.patched_masks[clean]),
    }
    out = {name: (images, torch.full((len(images),), target), masks) for name, (images, masks) in sets.items()}
    if test.masks is not None:  # localisation against the true object masks (shapes)
        chosen = seeded_cap(torch.arange(len(test.labels)), cap, seed)
        out[LOCALISATION] = (test.images[chosen], test.labels[chosen], test.masks[chosen])
    return out


def methods_metrics(methods: tuple[str, ...], model: nn.Module, test: EvalSet, probes: Probes, preds: dict,
                    protocol: ShortcutProtocol, runtime: Runtime, progress: Progress | None = None) -> dict[str, tuple[dict, dict]]:
    """{method: what `explanation_metrics` returns for it}: each image set is explained once for every method,
    the gradient CAMs sharing one forward/backward pass (`explain_images_by_method`: the same maps)."""
    seed, layers = protocol.seed, list(protocol.layers)
    scored = {method: {"cam": {layer: {} for layer in map_layers(method, layers)}} for method in methods}
    patched_maps = {method: {} for method in methods}
    for set_name, (batch, targets, masks) in explained_sets(test, probes, preds, protocol).items():
        maps = explain_images_by_method(methods, model, batch, targets, layers, runtime, protocol.cam_batch_size,
                                        staged(progress, set_name))
        for method in methods:
            if set_name == LOCALISATION:
                scored[method]["localisation"] = {layer: score_maps(maps[method][layer], None, seed, masks=masks)
                                                  for layer in scored[method]["cam"]}
                continue
            for layer in scored[method]["cam"]:
                scored[method]["cam"][layer][set_name] = score_maps(maps[method][layer], None, seed, masks=masks,
                                                                    tolerance=True)
            if set_name == PATCHED_TARGET:
                patched_maps[method] = maps[method]
    return {method: (scored[method], patched_maps[method]) for method in methods}


def measure_shortcut(models: dict[str, nn.Module], test: EvalSet, protocol: ShortcutProtocol, runtime: Runtime,
                     progress: Progress | None = None) -> tuple[dict, dict]:
    """Every number of the shortcut study, computed the same way for each model.

    `progress(done, total, stage)`, when given, hears of every explanation pass (stage: "<model> <image set>").

    Returns (metrics, examples): metrics is JSON-ready (each mean or rate as {"mean", "low", "high", "n"});
    examples holds the probes and per-model predictions and maps for the figures. CAMs explain the target
    class's logit in the runtime's precision (the same as the predictions).
    """
    probes = make_probes(test, protocol)
    out = {"models": {}}
    examples = {"probes": probes, "models": {}}
    for name, model in models.items():
        out["models"][name], examples["models"][name] = measure_model(model, test, probes, protocol, runtime,
                                                                      staged(progress, name))
    out["uniform"] = uniform_scores(test, protocol, probes)
    out["counterfactual_patches"] = counterfactual_records(protocol.patch, tuple(test.images.shape[-2:]))
    out["n"] = sample_sizes(test, probes)
    return out, examples


def staged(progress: Progress | None, stage: str) -> Progress | None:
    """`progress` with `stage` put in front of the stage its caller names (None stays None)."""
    if progress is None:
        return None
    return functools.partial(_staged_call, progress, stage)


def _staged_call(progress: Progress, stage: str, done: int, total: int, inner: str = "") -> None:
    progress(done, total, f"{stage} {inner}".strip())


def counterfactual_records(patch: dict, image_size: tuple[int, int]) -> dict[str, dict]:
    """What each pasted variant was, as metrics.json records it (`artefact_record`)."""
    variants = counterfactual_artefacts(patch, image_size)
    plain = counterfactual_patches(patch)
    return {name: artefact_record(artefact, plain[name]) for name, artefact in variants.items()}


def uniform_scores(test: EvalSet, protocol: ShortcutProtocol, probes: Probes) -> dict:
    """What a uniform map scores on the artefact's masks: {"energy_in_box" (the masks' share of the image),
    "pointing" (the grown masks' share)}, plus "energy_in_mask" where there are object masks."""
    masks = probes.patched_masks
    grown = scores.dilate_masks(masks, scores.POINTING_TOLERANCE_PX) if len(masks) else masks
    out = {"energy_in_box": uniform_share(masks), "pointing": uniform_share(grown)}
    if test.masks is not None:
        chosen = seeded_cap(torch.arange(len(test.labels)), protocol.cam_images, protocol.seed)
        out["energy_in_mask"] = scores.uniform_energy(test.masks[chosen])
    return out


def measure_methods(model: nn.Module, test: EvalSet, protocol: ShortcutProtocol, methods: tuple[str, ...],
                    runtime: Runtime) -> dict:
    """One model's shortcut study with several explanation methods (`protocol.method` is ignored).

    The predictions (accuracies, recalls, flip-to-target rates) are computed once; each method then
    explains the same image sets. Returns {"model": the prediction metrics of `measure_model` plus
    "methods": {method: {"cam", "localisation" (masks only), "verdict"}}, "uniform": `uniform_scores`,
    "n": image counts}. With one method, the model entry minus "methods" plus that method's entry is
    exactly what `measure_shortcut` reports for the model.
    """
    probes = make_probes(test, protocol)
    m, preds = prediction_metrics(model, test, probes, protocol, runtime)
    explained = methods_metrics(methods, model, test, probes, preds, protocol, runtime)
    judged = {method: judged_explanations(model, test, (probes, preds, m), replace(protocol, method=method), runtime,
                                          explained=explained[method])[0]
              for method in methods}
    return {"model": {**m, "methods": judged}, "uniform": uniform_scores(test, protocol, probes),
            "n": sample_sizes(test, probes)}
