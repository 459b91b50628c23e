"""One explainer protocol and one registry for every explanation method.

An explainer is built as `cls(model, layers, autocast_dtype)` and called as
`explainer.maps(images, targets) -> {layer: (N, H, W) maps in [0, 1]}` on
normalised float images: CAM methods give one map per requested layer from one
pass, pixel-space methods one map under "input". `run`, `evaluate`, `compare`
and `explain` all reach methods through `explain_images` or `make_explainer`.

Adding a method is one class (a `BaseCAM` subclass with `cam_from`, or a
`PixelMethod` subclass with `attribute`) and one entry in `EXPLAINERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import CAM_FAMILY, shared_maps
from gradcam_repro.explain.pixel import PIXEL_FAMILY, PIXEL_LAYER
from gradcam_repro.model.sources import model_input
from gradcam_repro.runtime import Runtime

# Every method by its CLI name, CAM family first, in the order reports list them.
EXPLAINERS: dict[str, type] = {cls.name: cls for cls in (*CAM_FAMILY, *PIXEL_FAMILY)}
CAM_METHODS = tuple(cls.name for cls in CAM_FAMILY)
PIXEL_METHODS = tuple(cls.name for cls in PIXEL_FAMILY)


def get_explainer(method: str) -> type:
    """The explainer class registered as `method`; `UserError` listing the registry otherwise."""
    if method not in EXPLAINERS:
        raise UserError(f"unknown explanation method {method!r}; fix: use one of {', '.join(EXPLAINERS)}")
    return EXPLAINERS[method]


def display_name(method: str) -> str:
    """How the papers spell `method` ("gradcam" -> "Grad-CAM"); unknown names are returned as given."""
    return EXPLAINERS[method].display_name if method in EXPLAINERS else method


def map_layers(method: str, layers: Sequence[str]) -> list[str]:
    """The keys `method`'s maps come under: the requested layers for CAMs, ["input"] for pixel methods."""
    return [PIXEL_LAYER] if method in PIXEL_METHODS else list(layers)


def make_explainer(method: str, model: nn.Module, layers: str | Sequence[str], amp_dtype: torch.dtype | None = None):
    """An explainer of `model` following the protocol above."""
    return get_explainer(method)(model, layers, autocast_dtype=amp_dtype)


def explain_images(method: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   layers: str | Sequence[str], runtime: Runtime, batch_size: int = 256,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """(N, 3, H, W) uint8 images, (N,) explained classes -> {layer: (N, H, W) maps in [0, 1]} on the CPU.

    Batches of `batch_size` go through the model on `runtime.device` in its precision;
    `progress(done, N)` is called before the first batch and after each one with the images explained so far.
    """
    return explain_images_by_method((method,), model, images, targets, layers, runtime, batch_size, progress)[method]


def shares_pass(method: str) -> bool:
    """Whether `method` reads its maps from one forward/backward pass that other such methods can share (the
    gradient CAMs: `explain.cam.shared_maps`)."""
    cls = EXPLAINERS.get(method)
    return cls in CAM_FAMILY and cls.shares_pass()


def explain_images_by_method(methods: Sequence[str], model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                             layers: str | Sequence[str], runtime: Runtime, batch_size: int = 256,
                             progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """`explain_images` for several methods on the same images: {method: {layer: maps}}.

    The gradient CAMs among `methods` (Grad-CAM, HiResCAM, LayerCAM, ...) share one forward/backward pass per
    batch, which gives each the maps its own pass would; every other method runs its own. `progress(done, N)`
    hears of the batches as `explain_images` tells them.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    methods = list(dict.fromkeys(methods))
    explainers = {method: make_explainer(method, model, layers, runtime.amp_dtype) for method in methods}
    sharing = [m for m in methods if shares_pass(m)]
    shared = sharing if len(sharing) > 1 else []  # one such method alone runs its own pass
    alone = [m for m in methods if m not in shared]
    parts: dict[str, dict[str, list]] = {m: {key: [] for key in map_layers(m, layers)} for m in methods}
    if progress is not None:
        progress(0, len(images))
    for start in range(0, len(images), batch_size):
        x = model_input(model, images[start:start + batch_size].to(runtime.device)).contiguous(memory_format=torch.channels_last)
        t = targets[start:start + batch_size].to(runtime.device)
        found = dict(zip(shared, shared_maps([explainers[m] for m in shared], x, t))) if shared else {}
        found.update({m: explainers[m].maps(x, t) for m in alone})
        for m, maps in found.items():
            for key, value in maps.items():
                parts[m][key].append(value.cpu())
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    h, w = images.shape[-2:]
    return {m: {key: torch.cat(v) if v else torch.empty(0, h, w) for key, v in parts[m].items()} for m in methods}


def single_layer_explainer(method: str, layer: str, amp_dtype: torch.dtype | None = None
                           ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """explain_fn(model, normalised images, targets) -> (N, H, W) maps at `layer` (the sanity check's form)."""
    key = map_layers(method, [layer])[0]
    return lambda model, x, t: make_explainer(method, model, [layer], amp_dtype).maps(x, t)[key]
