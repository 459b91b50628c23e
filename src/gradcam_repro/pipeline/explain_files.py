"""`gradcam-repro explain`: a user's own image files explained by saved models (CAM overlays, top-3 predictions)."""

from __future__ import annotations

from pathlib import Path

import torch

from gradcam_repro import store
from gradcam_repro.config import MAX_IMAGE_PIXELS
from gradcam_repro.data.images import IMAGE_SIZE
from gradcam_repro.errors import UserError
from gradcam_repro.explain.cam import get_layer
from gradcam_repro.explain.registry import display_name, explain_images
from gradcam_repro.measure.predict import predict_logits
from gradcam_repro.pipeline.experiment import load_models
from gradcam_repro.report import figures
from gradcam_repro.runtime import Runtime


def load_user_image(path: str | Path, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, list[str]]:
    """Read an image file as (3, size, size) uint8, with notices for any conversion made.

    Grayscale, palette and RGBA images are converted to RGB; other sizes are
    resized (bicubic, antialiased). Raises `UserError` for a folder, a missing
    or unreadable file, or more than MAX_IMAGE_PIXELS pixels.
    """
    from PIL import Image, UnidentifiedImageError

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
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UserError(
                    f"image {path} is {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{MAX_IMAGE_PIXELS:,}; fix: downscale it first"
                )
            if im.mode != "RGB":
                notices.append(f"{path}: {im.mode} image converted to RGB")
                im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "LA", "PA") else im.convert("RGB")
            if im.size != (size, size):
                notices.append(f"{path}: resized from {width}x{height} to {size}x{size}, the model's input size")
                im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
            pixels = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)
    except UnidentifiedImageError:
        raise UserError(f"not an image file: {path}; fix: pass PNG or JPEG images") from None
    except OSError as exc:
        raise UserError(f"cannot read image {path} ({exc}); fix: pass an intact PNG or JPEG image") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    return pixels.permute(2, 0, 1).contiguous(), notices


def top_k(logits: torch.Tensor, classes: tuple[str, ...], k: int = 3) -> list[tuple[str, float]]:
    probs = logits.softmax(-1)
    values, indices = probs.topk(min(k, len(classes)))
    return [(classes[int(i)], float(v)) for v, i in zip(values, indices)]


def read_images(images: list[str], log) -> list[tuple[Path, torch.Tensor]]:
    """Every image read and checked (notices logged) before anything is written."""
    loaded = []
    for path in images:
        pixels, notices = load_user_image(path)
        for notice in notices:
            log(f"notice: {notice}")
        loaded.append((Path(path), pixels))
    return loaded


def explain_files(target: str | Path, images: list[str], out_dir: str | Path, layer: str, device: torch.device,
                  log=print, method: str = "gradcam") -> list[dict]:
    """Write `<out_dir>/<stem>_<method>.png` per image (input | each model's overlay with its top-3).

    Each model's map explains its own top class, in float32. Returns one record per image:
    {"image": its path, "file": the written PNG, "top3": {model name: [[class, probability], ...]}}.
    """
    models, classes = load_models(target, device)
    for model in models.values():
        get_layer(model, layer)
    loaded = read_images(images, log)
    store.check_writable(out_dir)
    batch = torch.stack([pixels for _, pixels in loaded])
    runtime = Runtime(device)
    maps, tops = {}, {}
    for name, model in models.items():
        logits = predict_logits(model, batch, runtime)
        maps[name] = explain_images(method, model, batch, logits.argmax(1), layer, runtime)[layer]
        tops[name] = [top_k(row, classes) for row in logits]
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
