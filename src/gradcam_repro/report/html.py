"""REPORT.html: the run's report as one self-contained page, built from measured results alone.

Pure functions: a run's `RunMetrics` (metrics.json), `MethodsResult` (methods.json), gallery.json (still a dict) and the
figures' PNG bytes in, an HTML string out; nothing here reads or writes a file. Figures are inline `data:`
URIs, the gallery switches model, method and layer with a few lines of plain JavaScript in the page, and
nothing refers to any other address, so the file opens offline, from a mail attachment as well as from
`gradcam-repro view`.
The sentences are `report.markdown.conclusions`, the same as REPORT.md's.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from importlib.resources import files

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from gradcam_repro.explain.registry import PIXEL_METHODS, display_name
from gradcam_repro.measure.comparison_results import MethodsResult, StaleMethods
from gradcam_repro.measure.results import PATCHED_TARGET, Interval, RunMetrics
from gradcam_repro.report.figures import CAM_ALPHA
from gradcam_repro.report.format import as_interval, missing, number, percent, seconds
from gradcam_repro.report.markdown import (
    CAM_SET_LABELS,
    VARIANTS,
    artefact_phrase,
    cam_display_name,
    conclusions,
    is_square,
    method_name,
    where_text,
)
from gradcam_repro.report.repair_table import repair_table

# Map PNGs are palette images: pixel value = round(255 * map), drawn with the figures' jet colormap.
JET_PALETTE = (colormaps["jet"](np.arange(256))[:, :3] * 255).round().astype(np.uint8).tobytes()
# Figures placed in a section; every other figure of the run goes under "More figures".
PLACED_FIGURES = ("figures/training_curves.png", "figures/per_class_accuracy.png", "figures/counterfactual_gallery.png",
                  "figures/layer_sweep.png", "figures/layers_one_image.png", "figures/side_by_side.png",
                  "figures/energy_distribution.png", "figures/methods_layers.png", "figures/deletion_insertion.png")


def _b64_png(picture: Image.Image) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_png(image: torch.Tensor) -> str:
    """(3, H, W) uint8 image -> base64 RGB PNG."""
    return _b64_png(Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy()))


def map_png(cam: torch.Tensor) -> str:
    """(H, W) map in [0, 1] -> base64 palette PNG (value = round(255 * map), jet colours); about 1 kB at 32x32."""
    picture = Image.fromarray((cam.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    picture.putpalette(JET_PALETTE)
    return _b64_png(picture)


def _box_style(box_tlbr_px: list[int] | None, size: int) -> str:
    """The dashed box's CSS over a gallery tile; hidden where the artefact has no one fixed box."""
    if box_tlbr_px is None:
        return "display:none"
    top, left, bottom, right = box_tlbr_px
    return (f'top:{100 * top / size:.3f}%;left:{100 * left / size:.3f}%;'
            f'height:{100 * (bottom - top) / size:.3f}%;width:{100 * (right - left) / size:.3f}%')


def gallery_record(g: dict, classes: list[str], box_tlbr_px: list[int] | None) -> dict:
    """gallery.json: `measure.examples.gallery_maps`'s output with images and maps as base64 PNGs, classes by name
    and energies rounded to 4 digits. Everything the report's gallery needs, so it is rebuilt without a model."""
    def names(index: torch.Tensor) -> list[str]:
        return [classes[i] for i in index.tolist()]

    return {
        "size_px": int(g["images"].shape[-1]),
        "target": classes[g["target"]],
        "box_tlbr_px": list(box_tlbr_px) if box_tlbr_px is not None else None,
        "images": [image_png(im) for im in g["images"]],
        "labels": names(g["labels"]),
        "patched_target": g["patched_target"].tolist(),
        "layers": g["layers"],
        "models": {name: {"clean": names(e["clean"]), "shown": names(e["shown"]), "flipped": e["flipped"].tolist(),
                          "maps": {method: {layer: [map_png(x) for x in maps] for layer, maps in by_layer.items()}
                                   for method, by_layer in e["maps"].items()},
                          "energy": {method: {layer: [round(v, 4) for v in energy.tolist()] for layer, energy in by_layer.items()}
                                     for method, by_layer in e["energy"].items()}}
                   for name, e in g["models"].items()},
    }


def report_html(m: RunMetrics, methods: MethodsResult | StaleMethods | None, gallery: dict | None,
                figs: dict[str, bytes]) -> str:
    """REPORT.html from a run's metrics `m`, compare's results (None: absent), gallery.json (None: absent) and
    {figure path relative to the run: PNG bytes}. Figures missing from `figs` are left out."""
    cfg, cam = m.config, cam_display_name(m)
    title = f"{cam} and the {cfg['bias_class']} shortcut: {cfg['preset']} preset on {m.dataset['name']}"
    sections = [("verdicts", "Verdicts", "Verdicts", _verdicts(m)),
                ("gallery", "Gallery", "Gallery: switch model, method and layer", _gallery(m, gallery)),
                ("accuracy", "Accuracy", "Accuracy", _accuracy(m, figs)),
                ("counterfactual", "Patch use", "Does the model use the patch?", _counterfactual(m, figs)),
                ("cam", "Where it looks", f"Where {cam} looks, layer by layer", _cam(m, figs)),
                ("by-layer", "By layer", "Verdicts by layer", _by_layer(m))]
    if any(r.localisation is not None for r in m.models.values()):
        sections.append(("localisation", "Localisation", "Localisation on the object masks", _localisation(m)))
    sections.append(("repair", "Repair", "Repair: is the shortcut gone?", _repair(m)))
    if methods is not None:
        sections.append(("methods", "Methods", "Which method and layer see the shortcut", _methods(methods, figs)))
    sections += [("training", "Training", "Training", _training(m, figs)),
                 ("more", "Figures", "More figures", _more_figures(m, methods, figs)),
                 ("reproduce", "Reproduce", "Reproduce", _reproduce(m))]
    nav = "".join(f'<a href="#{key}">{html.escape(short)}</a>' for key, short, _, body in sections if body)
    body = "".join(f'<section id="{key}"><h2>{html.escape(name)}</h2>{body}</section>'
                   for key, _, name, body in sections if body)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f'<style>{CSS}</style></head><body><header><h1>{html.escape(title)}</h1>{_facts(m)}</header>'
            f'<nav>{nav}</nav><main>{body}</main><footer>Written by gradcam-repro from metrics.json'
            f'{", methods.json" if isinstance(methods, MethodsResult) else ""}{", gallery.json" if gallery else ""}. '
            'One file, no network.</footer>'
            f'</body></html>\n')


def inline_markdown(text: str) -> str:
    """The little markdown `conclusions` uses (`code`, **bold**, *italic*) as escaped HTML."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\*([^*]+)\*", r"<i>\1</i>", out)


def _ci(stat: Interval | dict, pct: bool = False, digits: int = 3, n: bool = False) -> str:
    """A mean with its 95% interval below it ('n/a' when nothing was measured), optionally with n."""
    stat = as_interval(stat)
    if missing(stat.mean):
        return f'<span class="na" title="nothing to measure (n = {stat.n})">n/a</span>'

    def fmt(x: float) -> str:
        return number(x, digits, pct)

    count = f' <span class="n">n={stat.n}</span>' if n else ""
    return f'<span class="m">{fmt(stat.mean)}</span>{count}<span class="ci">[{fmt(stat.low)}, {fmt(stat.high)}]</span>'


def _table(head: list[str], rows: list[list[str]], caption: str = "") -> str:
    """An HTML table; cells are HTML already."""
    cap = f"<caption>{caption}</caption>" if caption else ""
    thead = "".join(f"<th>{h}</th>" for h in head)
    tbody = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table>{cap}<thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table></div>'


def _figure(figs: dict[str, bytes], rel: str, caption: str) -> str:
    if rel not in figs:
        return ""
    src = "data:image/png;base64," + base64.b64encode(figs[rel]).decode("ascii")
    return (f'<figure><img src="{src}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)} <span class="path">{html.escape(rel)}</span></figcaption></figure>')


def _layer(lay: str, m: RunMetrics) -> str:
    return f"<code>{html.escape(lay)}</code>" + (' <span class="tag">configured</span>' if lay == m.cam_layer else "")


def _facts(m: RunMetrics) -> str:
    cfg, env, ds = m.config, m.environment, m.dataset
    rgb = tuple(cfg["patch_color"])
    facts = [f"preset <b>{html.escape(cfg['preset'])}</b>", f"dataset <b>{html.escape(ds['name'])}</b>",
             f"{ds['n_train_used']:,} training images", f"{m.shortcut.n['test']:,} test images",
             f"{cfg['epochs']} epoch(s)", f"seed {cfg['seed']}", f"precision {html.escape(m.precision)}",
             f"{html.escape(env.get('gpu') or env['processor'])} ({html.escape(env['device'])})",
             f"torch {html.escape(env['torch'])}"]
    swatch = f'<span class="swatch" style="background:rgb{rgb}"></span>'
    what = (f"a {cfg['patch_size']}x{cfg['patch_size']} px patch {swatch} RGB {rgb} at the "
            f"{html.escape(cfg['patch_corner'])} corner" if is_square(cfg, m.box_tlbr_px)
            else f"{html.escape(artefact_phrase(cfg, m.box_tlbr_px))} {swatch}")
    patch = (f"The <b>biased</b> model was trained with {what} on {percent(cfg['bias_fraction'])} of its "
             f"training <i>{html.escape(cfg['bias_class'])}</i> images; the <b>baseline</b> never saw the patch.")
    return f'<p class="facts">{" · ".join(facts)}</p><p class="lede">{patch}</p>'


def verdict_texts(m: RunMetrics, name: str) -> dict[str, str]:
    """One model's verdicts at the configured layer as plain sentences: relies on the patch, points at it, agree."""
    layer, cam = m.cam_layer, cam_display_name(m)
    v = m.models[name].verdict
    return {"relies_on_patch": f"The {name} model {'relies' if v.relies_on_patch else 'does not rely'} on the patch",
            "points_at_patch": f"{cam} at {layer} {'points' if v.points_at_patch[layer] else 'does not point'} at the patch",
            "agrees": f"Explanation and behaviour {'agree' if v.agrees[layer] else 'disagree'} at {layer}"}


def _verdict_card(m: RunMetrics, name: str) -> str:
    r, s, u = m.models[name], m.settings, m.shortcut.uniform["energy_in_box"]
    cls, layer = html.escape(m.config["bias_class"]), m.cam_layer
    v, texts = r.verdict, verdict_texts(m, name)
    e = r.energy(layer, PATCHED_TARGET)
    flip = r.flip_to_target["patch"]
    why = {
        "relies_on_patch": f"pasting the patch on non-{cls} test images makes it say {cls} for {_ci(flip, pct=True)} of "
                           f"them (relies when the lower bound is at least {percent(s['relies_flip_rate'])})",
        "points_at_patch": (f"no patched {cls} image was called {cls}, so there is nothing to score" if e.n == 0 else
                            f"energy in the patch {_ci(e, digits=4)} on {e.n} patched {cls} images called {cls}, "
                            f"{e.mean / u:.1f}x a uniform map (points when the lower bound is at least "
                            f"{s['points_at_patch_ratio']:g}x)"),
        "agrees": "both say yes or both say no" if v.agrees[layer] else "one says yes, the other no",
    }
    values = {"relies_on_patch": v.relies_on_patch, "points_at_patch": v.points_at_patch[layer],
              "agrees": v.agrees[layer]}
    rows = []
    for key, text in texts.items():
        yes = values[key]
        badge = ("agree" if yes else "disagree") if key == "agrees" else ("yes" if yes else "no")
        rows.append(f'<div class="vrow"><span class="badge {badge}">{badge}</span><div>'
                    f'<p class="verdict" data-model="{html.escape(name)}" data-verdict="{key}" data-value="{str(yes).lower()}">'
                    f'{html.escape(text)}</p><p class="why">{why[key]}</p></div></div>')
    acc = f"clean test accuracy {_ci(r.clean_test_acc, pct=True)}"
    title = html.escape(name[:1].upper() + name[1:])
    return f'<div class="card"><h3>{title} model</h3><p class="why">{acc}</p>{"".join(rows)}</div>'


def _verdicts(m: RunMetrics) -> str:
    cards = "".join(_verdict_card(m, name) for name in m.models)
    s = m.settings
    said = "".join(f"<li>{inline_markdown(c)}</li>" for c in conclusions(m))
    return (f'<div class="cards">{cards}</div><h3>In plain words</h3><ul class="plain">{said}</ul>'
            f'<p class="note">Every number carries a 95% {s["bootstrap_method"]} bootstrap interval '
            f'({s["bootstrap_resamples"]} resamples), written under it as [low, high]. The rules were fixed before '
            f"measuring (measure/scores.py).</p>")


def _gallery(m: RunMetrics, g: dict | None) -> str:
    if g is None:
        return ('<p class="note">No current gallery.json (the run was written by an older gradcam-repro, or its models '
                "changed since); <code>gradcam-repro evaluate RUN</code> writes it.</p>")
    models, methods = list(g["models"]), list(g["layers"])
    cam_layers = next((g["layers"][x] for x in methods if x not in PIXEL_METHODS), [])
    all_layers = list(dict.fromkeys([*cam_layers, *(lay for x in methods for lay in g["layers"][x])]))
    state = {"model": "biased" if "biased" in models else models[-1], "method": methods[0]}
    state["layer"] = m.cam_layer if m.cam_layer in g["layers"][state["method"]] else g["layers"][state["method"]][-1]
    labels = {"model": {x: x for x in models}, "method": {x: display_name(x) for x in methods},
              "layer": {x: x for x in all_layers}}
    controls = "".join(
        f'<div class="ctl"><span class="lbl">{group}</span><div class="seg">'
        + "".join(f'<button type="button" data-group="{group}" data-value="{html.escape(v)}" '
                  f'aria-pressed="{str(v == state[group]).lower()}">{html.escape(text)}</button>' for v, text in opts.items())
        + "</div></div>" for group, opts in labels.items())
    box = _box_style(g["box_tlbr_px"], g["size_px"])
    maps = g["models"][state["model"]]["maps"][state["method"]][state["layer"]]
    tiles = [f'<div class="tile"><div class="pic"><img class="base" src="data:image/png;base64,{img}" alt="test image {i + 1}">'
             f'<img class="heat" src="data:image/png;base64,{maps[i]}" alt="map"><div class="box" style="{box}"></div></div>'
             f'<div class="cap"></div></div>' for i, img in enumerate(g["images"])]
    data = json.dumps(g, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    cls = html.escape(g["target"])
    n_target = sum(g["patched_target"])
    rows = (f'<h4>{cls} images with the patch</h4><div class="grid">{"".join(tiles[:n_target])}</div>'
            f'<h4>other classes with the patch pasted</h4><div class="grid">{"".join(tiles[n_target:])}</div>')
    return (f'<p class="lede">The same {len(g["images"])} test images under each model, method and layer: the first '
            f"{n_target} are <i>{cls}</i> images with the patch, the others are images of other classes with the "
            f"patch pasted. Every map explains the <i>{cls}</i> score; the dashed square is the patch box, and "
            f"<i>energy</i> is the share of the map inside it (in brackets: that share over a flat map's). Below each "
            f"image: its true class, what the model predicts without → with the patch, and whether the patch flipped "
            f"it to <i>{cls}</i>. Pixel-space methods have one map, at the input.</p>"
            f'<div id="gallery-root" data-model="{html.escape(state["model"])}" data-method="{html.escape(state["method"])}" '
            f'data-layer="{html.escape(state["layer"])}" data-uniform="{m.shortcut.uniform["energy_in_box"]}">'
            f'<div class="controls">{controls}<div class="ctl"><span class="lbl">map opacity</span>'
            f'<input type="range" id="g-opacity" min="0" max="100" value="{round(100 * CAM_ALPHA)}"></div></div>'
            f'<p class="gsum" id="g-summary"></p>{rows}</div>'
            f'<script type="application/json" id="gallery-data">{data}</script><script>{GALLERY_JS}</script>')


def _accuracy(m: RunMetrics, figs: dict[str, bytes]) -> str:
    cls = html.escape(m.config["bias_class"])
    rows = [[f"<b>{html.escape(name)}</b>", _ci(r.clean_test_acc, pct=True), _ci(r.biased_test_acc, pct=True),
             _ci(r.target_recall_clean, pct=True), _ci(r.target_recall_patched, pct=True)]
            for name, r in m.models.items()]
    table = _table(["model", "clean test acc", f"biased test acc (every test {cls} patched)", f"{cls} recall, clean",
                    f"{cls} recall, patched"], rows)
    return table + _figure(figs, "figures/per_class_accuracy.png", "clean accuracy per class")


def _counterfactual(m: RunMetrics, figs: dict[str, bytes]) -> str:
    cls, models = html.escape(m.config["bias_class"]), m.models
    rows = []
    for variant, label in VARIANTS.items():
        spec = m.shortcut.counterfactual_patches.get(variant)
        swatch = f' <span class="swatch" style="background:rgb{tuple(spec["color"])}"></span> {spec["corner"]}' if spec else ""
        rows.append([html.escape(label) + swatch, *(_ci(models[n].flip_to_target[variant], pct=True) for n in models)])
    intro = (f'<p class="lede">Flip-to-<i>{cls}</i> rate: the share of {m.shortcut.n["counterfactual_non_target"]} non-{cls} '
             f"test images predicted <i>{cls}</i> once a patch is pasted on them. A model that uses the patch flips with "
             "the training patch, and much less with the same patch recoloured or moved.</p>")
    return (intro + _table(["patch pasted", *map(html.escape, models)], rows)
            + _figure(figs, "figures/counterfactual_gallery.png", f"pasting the patch on non-{cls} test images"))


def _cam(m: RunMetrics, figs: dict[str, bytes]) -> str:
    cfg, s, models = m.config, m.settings, m.models
    cls, cam, u = html.escape(cfg["bias_class"]), html.escape(cam_display_name(m)), m.shortcut.uniform["energy_in_box"]
    intro = (f'<p class="lede"><i>Energy in box</i>: the share of the map inside {where_text(cfg, m.box_tlbr_px)} '
             f"(a uniform map: {u:.4f}). <i>Pointing game</i>: the map's maximum lies within "
             f"{s['pointing_tolerance_px']} px of the box (a random peak: {m.shortcut.uniform['pointing']:.4f}). {cam} explains "
             f"the <i>{cls}</i> score.</p>")
    parts = [intro, _figure(figs, "figures/layer_sweep.png", f"{cam} by layer: energy in the patch box and pointing game")]
    for set_name, label in CAM_SET_LABELS.items():
        rows = []
        for lay in m.layers:
            cells = []
            for n in models:
                st = models[n].cam[lay][set_name]
                cells += [_ci(st.energy, digits=4, n=True), _ci(st.pointing)]
            rows.append([_layer(lay, m), *cells])
        head = ["layer", *(f"{html.escape(n)}: {x}" for n in models for x in ("energy in box", "pointing"))]
        parts.append(_table(head, rows, caption=html.escape(label.format(cls=cfg["bias_class"]))))
    grids = [f"figures/{n}_cam_grid.png" for n in models]
    parts += [_figure(figs, "figures/layers_one_image.png", f"one patched {cls} image at each layer"),
              '<div class="figs">', *(_figure(figs, rel, rel.removeprefix("figures/").removesuffix(".png").replace("_", " "))
                                      for rel in grids), "</div>",
              _figure(figs, "figures/side_by_side.png", f"patched {cls} test images under each model"),
              _figure(figs, "figures/energy_distribution.png", "energy in the patch box, image by image")]
    return "".join(parts)


def _by_layer(m: RunMetrics) -> str:
    models = m.models
    yn = {True: '<span class="badge yes">yes</span>', False: '<span class="badge no">no</span>'}
    agree = {True: '<span class="badge agree">agree</span>', False: '<span class="badge disagree">disagree</span>'}
    rows = [[_layer(lay, m), *(cell for n in models for cell in (yn[models[n].verdict.points_at_patch[lay]],
                                                                 yn[models[n].verdict.relies_on_patch],
                                                                 agree[models[n].verdict.agrees[lay]]))]
            for lay in m.layers]
    head = ["layer", *(f"{html.escape(n)}: {x}" for n in models for x in ("points at patch", "relies on patch", "agree?"))]
    return _table(head, rows)


def _localisation(m: RunMetrics) -> str:
    models, u = m.models, m.shortcut.uniform.get("energy_in_mask", float("nan"))
    rows = [[_layer(lay, m), *(cell for n in models for cell in (_ci(models[n].localisation[lay].energy),
                                                                 _ci(models[n].localisation[lay].pointing)))]
            for lay in m.layers if all(models[n].localisation is not None for n in models)]
    head = ["layer", *(f"{html.escape(n)}: {x}" for n in models for x in ("energy in mask", "pointing"))]
    return (f'<p class="lede">Clean test images, {html.escape(cam_display_name(m))} for the true class: the share of the map '
            f"on the object mask (a uniform map: {u:.4f}) and the pointing game (maximum on the mask).</p>"
            + _table(head, rows))


def _methods(c: MethodsResult | StaleMethods, figs: dict[str, bytes]) -> str:
    if isinstance(c, StaleMethods):
        return ('<p class="note">methods.json was measured on other models (the run was retrained); '
                "rerun <code>gradcam-repro compare RUN</code>.</p>")
    st, u, has_loc = c.settings, c.uniform, c.localisation is not None
    rows = []
    for method in c.methods:
        for i, (layer, by_model) in enumerate(c.shortcut[method].items()):
            cells = []
            for model in ("biased", "baseline"):
                r = by_model.get(model)
                cells += [_ci(r.energy, n=True), _ci(r.pointing)] if r else ["n/a", "n/a"]
            cells.append('<span class="badge yes">flags</span>' if c.flags_shortcut[method][layer] else "")
            if has_loc:
                loc = c.localisation.get(method, {}).get(layer)
                cells.append(_ci(loc.energy, n=True) if loc else "n/a")
            name = f"<b>{html.escape(method_name(method))}</b>" if i == 0 else ""  # once per group of layers
            rows.append([name, f"<code>{html.escape(layer)}</code>", *cells])
    intro = (f'<p class="lede">Patched test images each model calls the target class, explained for that class '
             f"({st.images} per model; Score-CAM the first {st.scorecam_images}). Energy in the patch box (uniform "
             f"{u['energy_in_box']:.4f}) and pointing game. <i>Flags</i>: the biased model's energy is at least 2x uniform "
             "at its lower bound and above the baseline's upper bound.</p>")
    shortcut = _table(["method", "layer", "biased: energy", "biased: pointing", "baseline: energy", "baseline: pointing",
                       "flags", *(["shapes: energy in mask"] if has_loc else [])], rows)
    sanity_figs = [f for f in c.figures if f.startswith("figures/sanity_")]
    return (intro + _figure(figs, "figures/methods_layers.png", "energy in the patch box, method x layer")
            + shortcut + _methods_checks(c, figs) + "".join(_figure(figs, f, f"sanity cascade {f}") for f in sanity_figs[:1]))


def _methods_checks(c: MethodsResult, figs: dict[str, bytes]) -> str:
    st = c.settings
    verdict = {True: '<span class="badge agree">passes</span>', False: '<span class="badge disagree">fails</span>'}
    sanity = [[html.escape(method_name(method)), f"<code>{html.escape(r.layer)}</code>", html.escape(str(r.verdict.step)),
               _ci(r.verdict.spearman), _ci(r.verdict.ssim), verdict[r.verdict.passes]]
              for method, r in c.sanity.items()]
    faith = [[html.escape(method_name(method)), _ci(r.deletion_auc), _ci(r.insertion_auc)]
             for method, r in c.faithfulness.items()]
    return (f'<h3>Sanity check: cascading randomisation</h3><p class="lede">The baseline model\'s weights are re-initialised '
            f"from the classifier down; a method passes when the upper bound of the mean Spearman correlation with its "
            f"original maps is below {st.sanity_max_spearman} once its layer is randomised.</p>"
            + _table(["method", "layer", "deciding step", "Spearman", "SSIM", "verdict"], sanity)
            + f'<h3>Faithfulness: deletion and insertion</h3><p class="lede">{st.faithfulness_images} clean test images; '
            "lower deletion AUC and higher insertion AUC are better; <i>random map</i> is chance.</p>"
            + _table(["method", "deletion AUC", "insertion AUC"], faith)
            + _figure(figs, "figures/deletion_insertion.png", "deletion and insertion curves"))


def _repair(m: RunMetrics) -> str:
    """The repaired models next to the baseline and the biased model, and each one's targets ("" if none)."""
    table = repair_table(m)
    if table is None:
        return ""
    cols = table["columns"]
    rows = [[html.escape(label), *[seconds(values.get(n)) if label == "cost (s)" else _ci(values[n]) for n in cols]]
            for label, values in table["rows"]]
    out = _table(["", *[f"<b>{html.escape(n)}</b>" for n in cols]], rows)
    for name, targets in table["targets"].items():
        r = m.repairs[name]
        items = "".join(f'<li class="{"ok" if ok else "miss"}">{"met" if ok else "missed"}: {html.escape(t)}; measured '
                        f"{html.escape(v)}</li>" for t, v, ok in targets)
        out += (f"<h3>{html.escape(name)}: {sum(ok for *_, ok in targets)} of {len(targets)} targets met</h3>"
                f'<p class="note">{html.escape(r.strategy)}; artefact: {html.escape(r.artefact["source"])}, box '
                f'{html.escape(str(r.artefact["box_tlbr_px"]))}; settings {html.escape(str(r.params))}</p>'
                f'<ul class="plain">{items}</ul>')
    return out


def _training(m: RunMetrics, figs: dict[str, bytes]) -> str:
    rows = [[html.escape(name), str(h["epoch"]), f"{h['loss']:.4f}", f"{h['train_acc']:.3f}", f"{h['test_acc']:.3f}",
             str(h.get("train_px", 32)), f"{h['seconds']:.1f}"] for name, history in m.histories.items() for h in history]
    table = _table(["model", "epoch", "loss", "train acc", "clean test acc (eval subset)", "px", "seconds"], rows)
    return (_figure(figs, "figures/training_curves.png", "training curves")
            + f"<details><summary>per epoch</summary>{table}</details>")


def _more_figures(m: RunMetrics, methods: MethodsResult | StaleMethods | None, figs: dict[str, bytes]) -> str:
    compared = methods.figures if isinstance(methods, MethodsResult) else ()
    listed = [*m.figures, *compared]
    placed = [*PLACED_FIGURES, *(f"figures/{n}_cam_grid.png" for n in m.models)]
    rest = [f for f in dict.fromkeys(listed) if f not in placed and not f.startswith("figures/sanity_")]
    sanity = [f for f in compared if f.startswith("figures/sanity_")][1:]
    return '<div class="figs">' + "".join(_figure(figs, f, f.removeprefix("figures/").removesuffix(".png").replace("_", " "))
                                          for f in [*rest, *sanity]) + "</div>"


def _reproduce(m: RunMetrics) -> str:
    cfg = m.config
    return (f"<p><code>gradcam-repro run --preset {html.escape(cfg['preset'])} --dataset {html.escape(cfg['dataset'])}</code> "
            "with the config in <code>run.json</code> (every value can be passed as a flag); "
            "<code>gradcam-repro evaluate RUN</code> recomputes the numbers from the saved models and "
            "<code>gradcam-repro report RUN</code> rebuilds this page from <code>metrics.json</code> and "
            "<code>gallery.json</code>. <code>gradcam-repro view RUN</code> opens it.</p>")


# The page's style sheet and the gallery's switching script (it reads the JSON block and redraws each tile's
# map and caption on every click) are package data in report/assets/, read once here.
_ASSETS = files("gradcam_repro.report") / "assets"
CSS = (_ASSETS / "report.css").read_text(encoding="utf-8")
GALLERY_JS = (_ASSETS / "gallery.js").read_text(encoding="utf-8")
