"""`gradcam-repro explain`: a user's own image files explained by saved models (CAM overlays, top-3 predictions)."""

from __future__ import annotations

from pathlib import Path

import torch

from gradcam_repro import store
from gradcam_repro.config import MAX_IMAGE_PIXELS
from gradcam_repro.data.images import IMAGE_SIZE
from gradcam_repro.errors import UserError
from gradcam_repro.explain.layers import chosen_layer
from gradcam_repro.explain.pixel import PIXEL_LAYER
from gradcam_repro.explain.registry import PIXEL_METHODS, display_name, explain_images
from gradcam_repro.measure.predict import predict_logits
from gradcam_repro.model.sources import ModelSource, contract_of
from gradcam_repro.pipeline.experiment import load_models
from gradcam_repro.report import figures
from gradcam_repro.runtime import Runtime


def load_user_image(path: str | Path, size: int | tuple[int, int] = IMAGE_SIZE) -> tuple[torch.Tensor, list[str]]:
    """Read an image file as (3, H, W) uint8 (`size`: (H, W) or a side), with notices for any conversion made.

    Grayscale, palette and RGBA images are converted to RGB; other sizes are
    resized (bicubic, antialiased). Raises `UserError` for a folder, a missing
    or unreadable file, or more than MAX_IMAGE_PIXELS pixels.
    """
    from PIL import Image, UnidentifiedImageError

    height, width = (size, size) if isinstance(size, int) else size
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an image; fix: pass image files, e.g. {path}/*.png")
    if not path.is_file():
        raise UserError(f"no such image file: {path}; fix: check the path")
    notices = []
    # PIL's own bomb check raises before the size is known; ours (below) reads
    # the declared size first and names it. Only the header is read until then.
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise UserError(
                    f"image {path} is {im.size[0]}x{im.size[1]} = {im.size[0] * im.size[1]:,} pixels, above the "
                    f"limit of {MAX_IMAGE_PIXELS:,}; fix: downscale it first"
                )
            if im.mode != "RGB":
                notices.append(f"{path}: {im.mode} image converted to RGB")
                im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "LA", "PA") else im.convert("RGB")
            if im.size != (width, height):
                notices.append(f"{path}: resized from {im.size[0]}x{im.size[1]} to {width}x{height} (width x height), "
                               "the model's input size")
                im = im.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
            pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(height, width, 3)
    except UnidentifiedImageError:
        raise UserError(f"not an image file: {path}; fix: pass PNG or JPEG images") from None
    except OSError as exc:
        raise UserError(f"cannot read image {path} ({exc}); fix: pass an intact PNG or JPEG image") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    return pixels.permute(2, 0, 1).contiguous(), notices


def _layer(model: torch.nn.Module, method: str, layer: str | None, size: tuple[int, int]) -> str:
    """The layer to explain: the given one, checked, or the written rule's; "input" for pixel methods."""
    if method in PIXEL_METHODS:
        return PIXEL_LAYER
    return chosen_layer(model, layer, size, "explain")


def top_k(logits: torch.Tensor, classes: tuple[str, ...], k: int = 3) -> list[tuple[str, float]]:
    probs = logits.softmax(-1)
    values, indices = probs.topk(min(k, len(classes)))
    return [(classes[int(i)], float(v)) for v, i in zip(values, indices)]


def read_images(images: list[str], log, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> list[tuple[Path, torch.Tensor]]:
    """Every image read at (H, W) `size` and checked (notices logged) before anything is written."""
    loaded = []
    for path in images:
        pixels, notices = load_user_image(path, size)
        for notice in notices:
            log(f"notice: {notice}")
        loaded.append((Path(path), pixels))
    return loaded


def explain_files(target: str | Path, images: list[str], out_dir: str | Path, layer: str | None, device: torch.device,
                  log=print, method: str = "gradcam", source: ModelSource | None = None) -> list[dict]:
    """Write `<out_dir>/<stem>_<method>.png` per image (input | each model's overlay with its top-3).

    Images are brought to the model's input size (its contract's; 32x32 for this project's models). Each model's
    map explains its own top class at `layer` (None: `explain.layers.default_layers`), in float32. Returns one
    record per image: {"image": its path, "file": the written PNG, "top3": {model name: [[class, probability]]}}.
    """
    models, classes = load_models(target, device, source)
    size = contract_of(next(iter(models.values()))).size or (IMAGE_SIZE, IMAGE_SIZE)
    layers = {name: _layer(model, method, layer, size) for name, model in models.items()}
    loaded = read_images(images, log, size)
    store.check_writable(out_dir)
    batch = torch.stack([pixels for _, pixels in loaded])
    runtime = Runtime(device)
    maps, tops = {}, {}
    for name, model in models.items():
        logits = predict_logits(model, batch, runtime)
        maps[name] = next(iter(explain_images(method, model, batch, logits.argmax(1), layers[name], runtime).values()))
        tops[name] = [top_k(row, classes) for row in logits]
    layer = ", ".join(sorted(set(layers.values())))
    written = []
    for i, (path, pixels) in enumerate(loaded):
        for name in models:
            log(f"{path}: {name}: " + ", ".join(f"{c} {p:.2f}" for c, p in tops[name][i]))
        fig = figures.explanation(pixels, {name: maps[name][i] for name in models},
                                  {name: tops[name][i] for name in models}, f"{path.name}: {display_name(method)} at {layer}")
        out = Path(out_dir) / f"{path.stem}_{method.replace('+', 'p')}.png"
        figures.save_figures({out.name: fig}, out.parent)
        written.append({"image": str(path), "file": str(out),
                        "top3": {name: [[c, p] for c, p in tops[name][i]] for name in models}})
    return written
