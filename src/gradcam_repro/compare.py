"""Which explanation sees the shortcut? Every CAM method at every layer, plus pixel-space baselines.

`gradcam-repro compare RUN [--shapes-run SHAPES_RUN]` loads a finished run's
models and measures, for each method (and each layer of the sweep for CAM methods):
- shortcut evidence: energy in the patch box and pointing game on patched test
  target images that each model calls target (biased vs baseline model);
- localisation: energy in the object mask on a shapes run's test images;
- the sanity check (cascading parameter randomisation) at the run's CAM layer;
- deletion/insertion AUCs on clean test images, against random maps.
It writes methods.json and figures into RUN and appends a section to REPORT.md.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import torch

from gradcam_repro import artifacts, faithfulness, figures, metrics, sanity
from gradcam_repro.attribution import PIXEL_DISPLAY_NAMES, PIXEL_METHODS, pixel_attribution
from gradcam_repro.bias import inject_patch
from gradcam_repro.errors import UserError
from gradcam_repro.evaluate import predict_logits, score_maps, seeded_cap
from gradcam_repro.gradcam import CAM_DISPLAY_NAMES, CAM_METHODS, make_cam
from gradcam_repro.model import load_model, normalize

PIXEL_LAYER = "input"  # the "layer" column of pixel-space methods
DISPLAY_NAMES = {**CAM_DISPLAY_NAMES, **PIXEL_DISPLAY_NAMES, "random": "random map"}


def method_maps(model, images: torch.Tensor, targets: torch.Tensor, method: str, layers: list[str], device,
                amp_dtype=None, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """(N, 3, H, W) uint8 images -> {layer: (N, H, W) maps in [0, 1]} on the CPU, one batched pass per batch.

    CAM methods explain every layer of `layers` from the same pass; pixel-space
    methods give one map under the key "input".
    """
    keys = [PIXEL_LAYER] if method in PIXEL_METHODS else list(layers)
    parts: dict[str, list] = {k: [] for k in keys}
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        t = targets[start:start + batch_size].to(device)
        if method in PIXEL_METHODS:
            parts[PIXEL_LAYER].append(pixel_attribution(model, x, t, method, amp_dtype).cpu())
        else:
            for layer, result in make_cam(method, model, layers, amp_dtype).per_layer(x, t).items():
                parts[layer].append(result.maps.cpu())
    h, w = images.shape[-2:]
    return {k: torch.cat(v) if v else torch.empty(0, h, w) for k, v in parts.items()}


def _explainer(method: str, layer: str, amp_dtype):
    """explain_fn(model, normalised images, targets) -> maps, as the sanity check expects."""
    if method in PIXEL_METHODS:
        return lambda model, x, t: pixel_attribution(model, x, t, method, amp_dtype)
    return lambda model, x, t: make_cam(method, model, layer, amp_dtype)(x, t).maps


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_fingerprints(run_dir: str | Path) -> dict[str, str]:
    """sha256 of each experiment's model.pt: methods.json is only shown with the models it measured."""
    return {name: _file_sha(Path(run_dir) / name / "model.pt") for name in ("baseline", "biased")
            if (Path(run_dir) / name / "model.pt").is_file()}


def _load(run_dir: Path, log, device: str | None, data_root: str | None):
    from gradcam_repro.experiment import EXPERIMENTS, load_run_config, prepare

    config = load_run_config(run_dir)
    config = replace(config, out=str(run_dir), **{k: v for k, v in {"device": device, "data_root": data_root}.items() if v})
    p = prepare(config, log)
    models = {name: load_model(run_dir / name / "model.pt", len(p.data.classes), p.device) for name in EXPERIMENTS}
    return p, models


def compare_methods(
    run_dir: str | Path,
    shapes_run: str | Path | None = None,
    methods: list[str] | None = None,
    images: int = 100,
    scorecam_images: int = 8,
    sanity_images: int = 16,
    faithfulness_images: int = 64,
    device: str | None = None,
    data_root: str | None = None,
    log=print,
) -> dict:
    """Measure every method on a finished run (and a shapes run); write methods.json, figures, REPORT.md section.

    Sample sizes: `images` per scored set (seeded choice), `scorecam_images` of
    them for Score-CAM (K forward passes per image and layer), `sanity_images`
    for the randomisation cascade, `faithfulness_images` for deletion/insertion.
    """
    from gradcam_repro.experiment import sweep_layers

    run_dir = Path(run_dir)
    methods = list(methods or [*CAM_METHODS, *PIXEL_METHODS])
    unknown = [m for m in methods if m not in CAM_METHODS and m not in PIXEL_METHODS]
    if unknown:
        raise UserError(f"unknown methods {unknown}; fix: use some of {', '.join([*CAM_METHODS, *PIXEL_METHODS])}")
    for name, value in (("--images", images), ("--scorecam-images", scorecam_images), ("--sanity-images", sanity_images),
                        ("--faithfulness-images", faithfulness_images)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if shapes_run is not None and not (Path(shapes_run) / "baseline" / "model.pt").is_file():
        raise UserError(f"{shapes_run} has no baseline/model.pt; fix: pass a folder written by "
                        "`gradcam-repro run --dataset shapes`")
    wall = time.perf_counter()
    p, models = _load(run_dir, log, device, data_root)
    cfg, d = p.config, p.data
    layers = sweep_layers(cfg.cam_layer)
    seed = cfg.seed

    def cap(n_images: int, method: str) -> int:
        return min(n_images, scorecam_images) if method == "scorecam" else n_images

    out: dict = {"methods": methods, "layers": layers, "cam_layer": cfg.cam_layer, "models": model_fingerprints(run_dir),
                 "settings": {"images": images, "scorecam_images": scorecam_images, "sanity_images": sanity_images,
                              "faithfulness_images": faithfulness_images,
                              "pixels_per_step": 64, "deletion_baseline": "mean colour (0 after normalisation)",
                              "insertion_canvas": f"Gaussian blur, kernel {faithfulness.INSERTION_BLUR_KERNEL_PX} px, "
                                                  f"sigma {faithfulness.INSERTION_BLUR_SIGMA_PX} px",
                              "sanity_max_spearman": sanity.SANITY_MAX_SPEARMAN,
                              "precision": "every explanation and deletion/insertion pass in the run's precision, "
                                           f"{str(p.amp_dtype or torch.float32).replace('torch.', '')}"},
                 "seconds": {}}

    # 1. Shortcut evidence: patched target images each model calls target, explained for the target class.
    start = time.perf_counter()
    target_images = inject_patch(d.test_images[d.test_labels == p.target], **p.patch)
    shortcut = {m: {} for m in methods}
    for name, model in models.items():
        called = predict_logits(model, target_images, p.device, amp_dtype=p.amp_dtype).argmax(1) == p.target
        chosen = target_images[seeded_cap(called.nonzero().squeeze(1), images, seed)]
        log(f"[compare] {name}: {len(chosen)} patched {cfg.bias_class} images called {cfg.bias_class}")
        for method in methods:
            batch = chosen[:cap(len(chosen), method)]
            maps = method_maps(model, batch, torch.full((len(batch),), p.target), method, layers, p.device, p.amp_dtype)
            for layer, m in maps.items():
                shortcut[method].setdefault(layer, {})[name] = score_maps(m, p.box, seed)
    out["shortcut"] = shortcut
    out["uniform"] = {"energy_in_box": metrics.uniform_energy(p.box, d.test_images.shape[-1]),
                      "pointing": metrics.uniform_pointing(p.box, d.test_images.shape[-1])}
    out["flags_shortcut"] = {m: {layer: _flags(s, out["uniform"]["energy_in_box"]) for layer, s in by_layer.items()}
                             for m, by_layer in shortcut.items()}
    out["seconds"]["shortcut"] = time.perf_counter() - start

    # 2. Localisation on shapes (true object masks), the baseline model of the shapes run.
    if shapes_run is not None or d.test_masks is not None:
        start = time.perf_counter()
        sp, smodels = (p, models) if shapes_run is None else _load(Path(shapes_run), log, device, None)
        sd = sp.data
        if sd.test_masks is None:
            raise UserError(f"{shapes_run} is not a shapes run (no object masks); fix: pass a run made with --dataset shapes")
        chosen = seeded_cap(torch.arange(len(sd.test_labels)), images, seed)
        localisation = {m: {} for m in methods}
        for method in methods:
            idx = chosen[:cap(len(chosen), method)]
            maps = method_maps(smodels["baseline"], sd.test_images[idx], sd.test_labels[idx], method, layers, sp.device,
                               sp.amp_dtype)
            for layer, m in maps.items():
                localisation[method][layer] = score_maps(m, None, seed, masks=sd.test_masks[idx])
        out["localisation"] = localisation
        out["uniform"]["energy_in_mask"] = metrics.uniform_energy(sd.test_masks[chosen])
        out["shapes_run"] = str(shapes_run) if shapes_run is not None else str(run_dir)
        out["seconds"]["localisation"] = time.perf_counter() - start

    # 3. Sanity check: cascading randomisation of the baseline model, clean test images, true class.
    start = time.perf_counter()
    base = models["baseline"]
    sanity_pick = seeded_cap(torch.arange(len(d.test_labels)), sanity_images, seed + 1)
    x = normalize(d.test_images[sanity_pick].to(p.device))
    t = d.test_labels[sanity_pick].to(p.device)
    out["sanity"], cascade_maps = {}, {}
    for method in methods:
        n = cap(len(x), method)
        layer = PIXEL_LAYER if method in PIXEL_METHODS else cfg.cam_layer
        result = sanity.cascading_randomisation(base, x[:n], t[:n], _explainer(method, layer, p.amp_dtype), seed=seed,
                                                keep_images=1)
        verdict = sanity.sanity_verdict(result, "fc" if method in PIXEL_METHODS else cfg.cam_layer)
        out["sanity"][method] = {
            "layer": layer,
            "steps": [{k: s[k] for k in ("name", "spearman", "abs_spearman", "ssim", "undefined_spearman")}
                      for s in result["steps"]],
            "verdict": verdict,
        }
        cascade_maps[method] = {k: v[0] for k, v in result["maps"].items()}
    out["seconds"]["sanity"] = time.perf_counter() - start

    # 4. Faithfulness: deletion/insertion on clean test images, the baseline model's predicted class.
    start = time.perf_counter()
    pick = seeded_cap(torch.arange(len(d.test_labels)), faithfulness_images, seed + 2)
    imgs = d.test_images[pick]
    predicted = predict_logits(base, imgs, p.device, amp_dtype=p.amp_dtype).argmax(1)
    out["faithfulness"], curves = {}, {}
    for method in [*methods, "random"]:
        n = cap(len(imgs), method)
        if method == "random":
            maps = faithfulness.random_maps(n, tuple(imgs.shape[-2:]), seed)
        else:
            layer = PIXEL_LAYER if method in PIXEL_METHODS else cfg.cam_layer
            maps = method_maps(base, imgs[:n], predicted[:n], method, [cfg.cam_layer], p.device, p.amp_dtype)[layer]
        result = faithfulness.deletion_insertion(base, normalize(imgs[:n].to(p.device)), predicted[:n].to(p.device),
                                                 maps, amp_dtype=p.amp_dtype, device=p.device)
        out["faithfulness"][method] = faithfulness.summarise_faithfulness(result, seed)
        curves[DISPLAY_NAMES[method]] = result
    out["seconds"]["faithfulness"] = time.perf_counter() - start

    out["figures"] = _figures(run_dir, out, cascade_maps, curves, d.test_images[sanity_pick[:1]])
    out["seconds"]["total"] = time.perf_counter() - wall
    out["environment"] = artifacts.environment_info(str(p.device))
    artifacts.write_json(run_dir / "methods.json", out)
    _refresh_report(run_dir)
    log(f"[compare] done in {out['seconds']['total']:.0f} s: {run_dir / 'methods.json'}, section in {run_dir / 'REPORT.md'}")
    return out


def _flags(by_model: dict, uniform: float) -> bool:
    """The pair flags the shortcut: biased-model energy in the box >= 2x uniform at its CI's lower bound,
    and above the baseline model's upper bound (the same rule as the main report, plus the control)."""
    biased, baseline = by_model.get("biased"), by_model.get("baseline")
    if biased is None or biased["energy"]["n"] == 0:
        return False
    above_uniform = biased["energy"]["low"] >= metrics.POINTS_AT_PATCH_RATIO * uniform
    above_baseline = baseline is None or baseline["energy"]["n"] == 0 or biased["energy"]["low"] > baseline["energy"]["high"]
    return bool(above_uniform and above_baseline)


def _figures(run_dir: Path, out: dict, cascade_maps: dict, curves: dict, sanity_image) -> list[str]:
    written = []

    def save(fig, rel):
        artifacts.save_figure(fig, run_dir / rel)
        figures.close(fig)
        written.append(rel)

    save(figures.method_layer_heatmap(out, DISPLAY_NAMES), "figures/methods_layers.png")
    if len(sanity_image):
        for method, maps in cascade_maps.items():
            save(figures.sanity_cascade(sanity_image[0], maps, f"{DISPLAY_NAMES[method]}: cascading randomisation "
                                                               f"(baseline model, top to bottom)"),
                 f"figures/sanity_{method.replace('+', 'p')}.png")
    save(figures.deletion_insertion_curves(curves, "deletion and insertion, baseline model, clean test images"),
         "figures/deletion_insertion.png")
    return written


def _refresh_report(run_dir: Path) -> None:
    from gradcam_repro.report import report_markdown

    path = run_dir / "metrics.json"
    if path.is_file():
        artifacts.write_text(run_dir / "REPORT.md", report_markdown(artifacts.read_json(path), run_dir=run_dir))
