"""Model parameter randomisation test (Adebayo et al., 2018, "Sanity Checks for Saliency Maps").

Cascading randomisation: re-initialise the network's layers one block at a time
from the top (logits) down, recompute the explanation after each step and
measure how similar it still is to the explanation of the trained model. An
explanation that reflects what the model learned must change once the layers
it depends on are random; one that stays the same (e.g. an edge detector on
the input) explains the image, not the model.

An explainer is `explain_fn(model, images, targets) -> maps`: images (N, 3, H, W)
float normalised for the model, targets (N,) int64, maps (N, H, W) float in
[0, 1]. Similarity is scored per image with Spearman rank correlation and SSIM
on the flattened / 2-D maps, then averaged with a bootstrap 95% CI.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gradcam_repro.measure import scores

# Verdict rule, fixed before any result was looked at: Adebayo et al. show that
# maps which ignore the weights keep a rank correlation near 1 through the whole
# cascade. An explanation that depends on the learned weights should lose at
# least half of its rank agreement once the layer it explains is random, so it
# passes when the upper 95% bound of the mean Spearman correlation at that step
# is below 0.5.
SANITY_MAX_SPEARMAN = 0.5
# Maps of this many images per step are kept (on the CPU) for the figure.
KEEP_IMAGES = 4

Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cascade_steps(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The randomisation order, top of the network first: [(step name, [module paths]), ...].

    For the (CIFAR) torchvision ResNet: fc, then each residual block from
    layer4.1 down to layer1.0, then the stem (conv1 and bn1 together). For any
    other model: its top-level children in reverse order, skipping those without
    parameters or buffers (re-initialising them would change nothing).
    """
    modules = dict(model.named_modules())
    stages = [name for name in ("layer4", "layer3", "layer2", "layer1") if name in modules]
    if "fc" in modules and "conv1" in modules and "bn1" in modules and len(stages) == 4:
        steps = [("fc", ["fc"])]
        for stage in stages:
            blocks = [f"{stage}.{name}" for name, _ in modules[stage].named_children()]
            steps += [(block, [block]) for block in reversed(blocks)]
        return steps + [("stem", ["conv1", "bn1"])]
    children = [(name, child) for name, child in model.named_children()
                if any(True for _ in child.parameters()) or any(True for _ in child.buffers())]
    return [(name, [name]) for name, _ in reversed(children)]


def reinitialise(module: nn.Module) -> None:
    """Re-initialise `module` in place with PyTorch's default initialisers.

    Every submodule with `reset_parameters` is reset; for BatchNorm that resets
    both the affine parameters (weight 1, bias 0) and the running statistics
    (mean 0, variance 1), so nothing learned survives. Parameters of modules
    without `reset_parameters` are left as they are. Uses the global RNG.
    """
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()  # on BatchNorm this also calls reset_running_stats()


def spearman_per_image(maps_a: torch.Tensor, maps_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spearman rank correlation between paired maps: two (N, H, W) -> ((N,) float64 in [-1, 1], (N,) bool).

    The correlation is undefined when either map is constant (e.g. an all-zero
    Grad-CAM): such images score 0.0 ("no rank agreement") and are flagged in
    the second output so that callers can report how many there were.
    """
    from scipy.stats import spearmanr

    a = maps_a.detach().float().cpu().flatten(1).numpy()
    b = maps_b.detach().float().cpu().flatten(1).numpy()
    rho = np.zeros(len(a))
    undefined = np.zeros(len(a), dtype=bool)
    for i in range(len(a)):
        if np.ptp(a[i]) == 0 or np.ptp(b[i]) == 0:
            undefined[i] = True
        else:
            rho[i] = spearmanr(a[i], b[i]).statistic
    return torch.from_numpy(rho), torch.from_numpy(undefined)


def ssim_per_image(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Structural similarity between paired maps in [0, 1]: two (N, H, W) -> (N,) float64 in [-1, 1].

    skimage's SSIM with data_range 1 and its default 7x7 window, so H and W must
    be at least 7; two identical maps (constant ones included) score 1.
    """
    from skimage.metrics import structural_similarity

    a = maps_a.detach().double().cpu().numpy()
    b = maps_b.detach().double().cpu().numpy()
    return torch.tensor([structural_similarity(a[i], b[i], data_range=1.0) for i in range(len(a))], dtype=torch.float64)


def _explain(explain_fn: Explainer, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    maps = explain_fn(model, images, targets)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"explain_fn must return (N, H, W) maps for {tuple(images.shape)} images, got {tuple(maps.shape)}")
    return maps.detach().float().cpu()


def cascading_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    explain_fn: Explainer,
    seed: int = 0,
    steps: list[tuple[str, list[str]]] | None = None,
    keep_images: int = KEEP_IMAGES,
) -> dict:
    """Cascading model parameter randomisation test on a copy of `model` (never modified).

    images: (N, 3, H, W) float normalised, on the model's device; targets: (N,)
    int64, the explained classes (kept fixed through the cascade). steps: as
    returned by `cascade_steps` (the default). Step i re-initialises its modules
    after `torch.manual_seed(seed + i)`, on top of all earlier steps; the
    caller's RNG state is restored afterwards. The random weights depend on the
    device the model is on.

    Returns {
      "steps": [{"name", "modules", "spearman", "abs_spearman", "ssim" (each
                 scores.bootstrap_ci: mean, low, high, n), "undefined_spearman": int,
                 "per_image": {"spearman": (N,), "ssim": (N,)}}, ...],
      "maps": {"original": (K, H, W), step name: (K, H, W), ...} CPU float32 maps
              of the first K = min(keep_images, N) images, in cascade order,
      "seed": seed, "n_images": N,
    }
    """
    steps = cascade_steps(model) if steps is None else steps
    if any(name == "original" for name, _ in steps):
        raise ValueError("'original' is reserved for the maps of the unmodified model; rename that step")
    randomised = copy.deepcopy(model)  # the caller's model is never touched, even by explain_fn
    modules = dict(randomised.named_modules())
    original = _explain(explain_fn, randomised, images, targets)
    keep = min(keep_images, len(original))
    kept = {"original": original[:keep].clone()}
    results = []
    devices = sorted({p.device.index or 0 for p in randomised.parameters() if p.device.type == "cuda"})
    for i, (name, paths) in enumerate(steps):
        missing = [p for p in paths if p not in modules]
        if missing:
            raise ValueError(f"step {name!r} names modules {missing} that the model does not have")
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + i)
            for path in paths:
                reinitialise(modules[path])
        maps = _explain(explain_fn, randomised, images, targets)
        rho, undefined = spearman_per_image(original, maps)
        ssim = ssim_per_image(original, maps)
        results.append({
            "name": name,
            "modules": list(paths),
            "spearman": scores.bootstrap_ci(rho, seed=seed),
            "abs_spearman": scores.bootstrap_ci(rho.abs(), seed=seed),
            "ssim": scores.bootstrap_ci(ssim, seed=seed),
            "undefined_spearman": int(undefined.sum()),
            "per_image": {"spearman": rho, "ssim": ssim},
        })
        kept[name] = maps[:keep].clone()
    return {"steps": results, "maps": kept, "seed": seed, "n_images": len(original)}


def _holds(module_path: str, layer: str) -> bool:
    """True when re-initialising `module_path` randomises (part of) `layer`."""
    return layer == module_path or layer.startswith(module_path + ".") or module_path.startswith(layer + ".")


def sanity_verdict(result: dict, target_layer: str) -> dict:
    """Does the explanation of `target_layer` pass the randomisation test?

    The deciding step is the first in the cascade that randomises (part of) the
    target layer: "layer4.1.conv2" -> "layer4.1", "layer3" -> "layer3.1",
    "fc" -> "fc", "conv1" -> "stem". It passes when the upper 95% bound of the
    mean Spearman correlation there is below SANITY_MAX_SPEARMAN.

    Returns {"step", "spearman", "ssim" (bootstrap_ci dicts), "passes": bool, "threshold": float}.
    """
    for step in result["steps"]:
        if any(_holds(path, target_layer) for path in step["modules"]):
            high = step["spearman"]["high"]
            return {
                "step": step["name"],
                "spearman": step["spearman"],
                "ssim": step["ssim"],
                "passes": bool(high == high and high < SANITY_MAX_SPEARMAN),  # NaN (no images) never passes
                "threshold": SANITY_MAX_SPEARMAN,
            }
    names = [s["name"] for s in result["steps"]]
    raise ValueError(f"no cascade step randomises layer {target_layer!r}; the steps are {names}")
