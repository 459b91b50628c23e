"""Markdown written from measured results: every number and every sentence comes from a run's `RunMetrics`
(metrics.json) and, for the method comparison, `MethodsResult` (methods.json). Pure functions; nothing here reads files."""

from __future__ import annotations

from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure.comparison_results import MethodsResult, StaleMethods
from gradcam_repro.measure.results import CAM_SETS, PATCHED_TARGET, RunMetrics
from gradcam_repro.report.format import interval, percent, seconds
from gradcam_repro.report.repair_table import repair_table

# How the reports name each CAM evaluation set of `measure.results.CAM_SETS`.
CAM_SET_LABELS = dict(zip(CAM_SETS, ("patched {cls} images called {cls}", "non-{cls} images flipped to {cls} by the patch",
                                     "clean {cls} images (control)")))
VARIANTS = {
    "none": "no patch (reference)",
    "patch": "the training patch",
    "other_color": "same place, complementary colour",
    "other_corner": "same colour, opposite corner",
}


def cam_display_name(m: RunMetrics) -> str:
    """The CAM method a run's metrics were computed with, as the papers spell it."""
    return display_name(m.config.get("cam", "gradcam"))


def _figure(m: RunMetrics, rel: str, alt: str) -> list[str]:
    """A markdown image line and a blank line, if the run wrote that figure."""
    return [f"![{alt}]({rel})", ""] if rel in m.figures else []


def _header(m: RunMetrics) -> list[str]:
    cfg, env, ds = m.config, m.environment, m.dataset
    secs = m.seconds
    train = ", ".join(f"{k.removeprefix('train_')} {v:.0f} s" for k, v in secs.items() if k.startswith("train_"))
    return [
        f"Preset **{cfg['preset']}** on **{ds['name']}** ({ds['n_train_used']} training images used, "
        f"{m.shortcut.n['test']} test images; dataset fingerprint `{ds['fingerprint'][:16]}`): {cfg['epochs']} epoch(s), "
        f"batch {cfg['batch_size']}, lr {cfg['lr']} ({cfg['lr_schedule']}), seed {cfg['seed']}, precision {m.precision}.",
        f"Machine: device `{env['device']}` ({env.get('gpu') or env['processor']}, {env['torch_threads']} threads), "
        f"torch {env['torch']}, torchvision {env['torchvision']}, Python {env['python']}."
        + (f" Training time: {train}." if train else ""),
        "",
        f"The biased model was trained with {artefact_phrase(cfg, m.box_tlbr_px)} "
        f"on {percent(cfg['bias_fraction'])} of its training *{cfg['bias_class']}* images. "
        f"The *biased test set* is the clean test set with every test {cfg['bias_class']} patched.",
    ]


def summary_markdown(m: RunMetrics) -> str:
    """The short summary: accuracies and where Grad-CAM looks on patched target images."""
    cfg = m.config
    cls, layer, uniform = cfg["bias_class"], m.cam_layer, m.shortcut.uniform["energy_in_box"]
    cam = cam_display_name(m)
    models = m.models
    lines = [f"# gradcam-repro: {cfg['preset']} preset", "", *_header(m), "", "## Accuracy", "",
             f"| model | clean test acc | biased test acc | {cls} recall, clean | {cls} recall, patched |",
             "|---|---|---|---|---|"]
    for name, r in models.items():
        lines.append(f"| {name} | {percent(r.clean_test_acc.mean)} | {percent(r.biased_test_acc.mean)} | "
                     f"{percent(r.target_recall_clean.mean)} | {percent(r.target_recall_patched.mean)} |")
    counts = ", ".join(f"{r.energy(layer, PATCHED_TARGET).n} for {n}" for n, r in models.items())
    lines += ["", f"## Where {cam} looks on patched test {cls} images", "",
              f"Mean fraction of {cam} mass inside the patch, over patched test {cls} images each model predicts "
              f"as {cls} (n = {counts}), explaining the {cls} logit. A uniform map scores {uniform:.4f} "
              f"({where_text(cfg, m.box_tlbr_px, share=True)}). Configured layer: `{layer}`.", "",
              "| layer | " + " | ".join(models) + " | uniform |", "|---|" + "---|" * len(models) + "---|"]
    for lay in m.layers:
        cells = [f"{models[n].energy(lay, PATCHED_TARGET).mean:.4f}" for n in models]
        lines.append(f"| `{lay}`{' (configured)' if lay == layer else ''} | " + " | ".join(cells) + f" | {uniform:.4f} |")
    lines += ["", "## What the numbers say", "", *[f"- {s}" for s in conclusions(m)], "",
              "Full tables with 95% confidence intervals, counterfactual tests and verdicts: [REPORT.md](REPORT.md). "
              "Figures: " + ", ".join(f"[{f}]({f})" for f in m.figures) + ".", ""]
    return "\n".join(lines)


def conclusions(m: RunMetrics) -> list[str]:
    """Plain sentences generated from the measured numbers (no fixed claims)."""
    cfg = m.config
    cls, layer, uniform = cfg["bias_class"], m.cam_layer, m.shortcut.uniform["energy_in_box"]
    cam = cam_display_name(m)
    s = m.settings
    out = []
    for name, r in m.models.items():
        flip = r.flip_to_target["patch"].mean
        relies = r.verdict.relies_on_patch
        out.append(
            f"The {name} model {'relies' if relies else 'does not rely'} on the patch: pasting it on non-{cls} test "
            f"images makes it predict {cls} for {percent(flip)} of them (rule: lower 95% bound >= {percent(s['relies_flip_rate'])}); "
            f"it calls {percent(r.target_recall_patched.mean)} of patched and {percent(r.target_recall_clean.mean)} "
            f"of clean test {cls} images {cls}. Clean test accuracy {percent(r.clean_test_acc.mean)}.")
    for name, r in m.models.items():
        e = r.energy(layer, PATCHED_TARGET)
        if e.n == 0:
            out.append(f"The {name} model calls no patched {cls} image {cls}, so {cam} has nothing to score there.")
            continue
        points = r.verdict.points_at_patch
        out.append(f"At the configured layer `{layer}`, the {name} model's {cam} "
                   f"{'points' if points[layer] else 'does not point'} at the patch: mean energy in the patch "
                   f"{e.mean:.4f} ({e.mean / uniform:.1f}x the uniform {uniform:.4f}; rule: lower 95% bound >= "
                   f"{s['points_at_patch_ratio']:g}x uniform).")
        yes = [f"`{x}`" for x, v in points.items() if v]
        no = [f"`{x}`" for x, v in points.items() if not v]
        out.append(f"For the {name} model, {cam} points at the patch at {', '.join(yes) or 'no layer'}"
                   f" and not at {', '.join(no) or 'any other layer'}.")
        relies = r.verdict.relies_on_patch
        agree = [f"`{x}`" for x, v in r.verdict.agrees.items() if v]
        disagree = [f"`{x}`" for x, v in r.verdict.agrees.items() if not v]
        out.append(f"Since the {name} model {'relies' if relies else 'does not rely'} on the patch, {cam}'s evidence "
                   f"agrees with the counterfactual ground truth at {', '.join(agree) or 'no layer'}"
                   + (f" and contradicts it at {', '.join(disagree)}." if disagree else "."))
    for name, r in m.models.items():
        if r.localisation is not None:
            e = r.localisation[layer].energy
            u = m.shortcut.uniform["energy_in_mask"]
            out.append(f"On the shapes test images, the {name} model's {cam} at `{layer}` puts {e.mean:.3f} of its "
                       f"mass on the object mask, {e.mean / u:.1f}x a uniform map ({u:.3f}).")
    return out


def report_markdown(m: RunMetrics, methods: MethodsResult | StaleMethods | None = None) -> str:
    """REPORT.md: config, environment, data, all tables with CIs, verdicts, figures and conclusions.

    `methods` (what `gradcam-repro compare` measured on the same models) adds the method x layer comparison,
    sanity check and faithfulness sections; `StaleMethods` says it was measured on other models.
    """
    cfg, s = m.config, m.settings
    lines = [f"# {cam_display_name(m)} and the {cfg['bias_class']} shortcut: {cfg['preset']} preset", "", *_header(m), "",
             f"Every mean and rate carries a 95% {s['bootstrap_method']} bootstrap interval "
             f"({s['bootstrap_resamples']} resamples, seed {cfg['seed']}), written `mean [low, high]`.", "",
             "## Conclusions", "", *[f"- {c}" for c in conclusions(m)], "",
             *_training_section(m), *_accuracy_section(m), *_counterfactual_section(m), *_cam_section(m),
             *_verdict_section(m), *_localisation_section(m), *repair_section(m),
             "", "## Figures", "", *[f"- [{f}]({f})" for f in m.figures], "",
             "## Reproduce", "",
             f"`gradcam-repro run --preset {cfg['preset']}` with the config in `run.json` "
             "(every value can be passed as a flag); `gradcam-repro evaluate RUN` recomputes these numbers from the "
             "saved models and `gradcam-repro report RUN` rebuilds this file from `metrics.json`.", ""]
    if isinstance(methods, StaleMethods):
        lines += ["## Which method and layer see the shortcut", "",
                  "`methods.json` was measured on other models (the run was retrained); rerun `gradcam-repro compare RUN`.", ""]
    elif methods is not None:
        lines += methods_markdown(methods)
    return "\n".join(lines)


def repair_section(m: RunMetrics) -> list[str]:
    """Baseline | biased | each repaired model, with CIs, and each repair's targets (none without repairs)."""
    table = repair_table(m)
    if table is None:
        return []
    cols = table["columns"]
    lines = ["", "## Repair: is the shortcut gone?", "",
             f"Each repaired model is measured exactly like the others ({cam_display_name(m)} energy: patched "
             f"{m.config['bias_class']} images the model calls {m.config['bias_class']}). Cost: training or "
             "repair wall time on the machine above.", "",
             "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, values in table["rows"]:
        cells = [seconds(values.get(n)) if label == "cost (s)" else interval(values[n]) for n in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, targets in table["targets"].items():
        r = m.repairs[name]
        lines += ["", f"**{name}** ({r.strategy}; artefact: {r.artefact['source']}, box "
                      f"{r.artefact['box_tlbr_px']}; settings {r.params}): "
                  f"{sum(ok for *_, ok in targets)} of {len(targets)} targets met.", "",
                  "| target | measured | met |", "|---|---|---|",
                  *[f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in targets]]
    return lines


def _training_section(m: RunMetrics) -> list[str]:
    lines = ["## Training", "", *_figure(m, "figures/training_curves.png", "training curves"),
             "| model | epoch | loss | train acc | clean test acc (eval subset) | px | seconds |", "|---|---|---|---|---|---|---|"]
    for name, history in m.histories.items():
        for h in history:
            lines.append(f"| {name} | {h['epoch']} | {h['loss']:.4f} | {h['train_acc']:.3f} | {h['test_acc']:.3f} | "
                         f"{h.get('train_px', 32)} | {h['seconds']:.1f} |")
    return lines


def _accuracy_section(m: RunMetrics) -> list[str]:
    cls, models = m.config["bias_class"], m.models
    lines = ["", "## Accuracy", "", f"| model | clean test acc | biased test acc | {cls} recall, clean | {cls} recall, patched |",
             "|---|---|---|---|---|"]
    for name, r in models.items():
        lines.append(f"| {name} | {interval(r.clean_test_acc, pct=True)} | {interval(r.biased_test_acc, pct=True)} | "
                     f"{interval(r.target_recall_clean, pct=True)} | {interval(r.target_recall_patched, pct=True)} |")
    return [*lines, "", *_figure(m, "figures/per_class_accuracy.png", "per-class accuracy")]


def _counterfactual_section(m: RunMetrics) -> list[str]:
    cls, models = m.config["bias_class"], m.models
    lines = ["## Counterfactual tests: does the model use the patch?", "",
             f"Flip-to-{cls} rate: the fraction of {m.shortcut.n['counterfactual_non_target']} non-{cls} test images "
             f"predicted *{cls}* after a patch is pasted on them.", "",
             "| patch pasted | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for variant, label in VARIANTS.items():
        spec = m.shortcut.counterfactual_patches.get(variant)
        where = f" (RGB {tuple(spec['color'])}, {spec['corner']})" if spec else ""
        rates = [interval(models[n].flip_to_target[variant], pct=True) for n in models]
        lines.append(f"| {label}{where} | " + " | ".join(rates) + " |")
    return [*lines, "", *_figure(m, "figures/counterfactual_gallery.png", "counterfactual gallery")]


def _cam_section(m: RunMetrics) -> list[str]:
    cfg, s, models, layer = m.config, m.settings, m.models, m.cam_layer
    cls, cam, u_box = cfg["bias_class"], cam_display_name(m), m.shortcut.uniform["energy_in_box"]
    lines = [f"## Where {cam} looks: energy in the patch box and pointing game, by layer", "",
             f"Energy in box: fraction of the map's mass inside {where_text(cfg, m.box_tlbr_px)} "
             f"(uniform map: {u_box:.4f}). Pointing game: the map's maximum lies within {s['pointing_tolerance_px']} px "
             f"of the box (a map peaking at a random pixel: {m.shortcut.uniform['pointing']:.4f}). "
             f"{cam} explains the *{cls}* logit.", ""]
    for set_name, label in CAM_SET_LABELS.items():
        lines += [f"### {label.format(cls=cls)}", "",
                  "| layer | " + " | ".join(f"{n} energy | {n} pointing" for n in models) + " | uniform energy |",
                  "|---|" + "---|---|" * len(models) + "---|"]
        for lay in m.layers:
            cells = []
            for n in models:
                st = models[n].cam[lay][set_name]
                cells += [f"{interval(st.energy, digits=4)} (n={st.energy.n})", interval(st.pointing)]
            lines.append(f"| `{lay}`{' (configured)' if lay == layer else ''} | " + " | ".join(cells) + f" | {u_box:.4f} |")
        lines.append("")
    return [*lines, *_figure(m, "figures/layer_sweep.png", "layer sweep"),
            *_figure(m, "figures/layers_one_image.png", "one image across layers"),
            *_figure(m, "figures/energy_distribution.png", "energy distribution")]


def _verdict_section(m: RunMetrics) -> list[str]:
    cfg, s, models = m.config, m.settings, m.models
    cls, cam = cfg["bias_class"], cam_display_name(m)
    lines = ["## Verdicts", "",
             f"Rules fixed before measuring: *{cam} points at the patch* when the lower 95% bound of the mean energy in "
             f"the box on patched {cls} images called {cls} is at least {s['points_at_patch_ratio']:g}x the uniform "
             f"{m.shortcut.uniform['energy_in_box']:.4f}; *the model relies on the patch* when the lower 95% bound of the "
             f"flip-to-{cls} rate is at least {s['relies_flip_rate']:g}. They agree when both say yes or both say no.", "",
             "| layer | " + " | ".join(f"{n}: points at patch | {n}: relies on patch | {n}: agree?" for n in models) + " |",
             "|---|" + "---|---|---|" * len(models)]
    yn = {True: "yes", False: "no"}
    for lay in m.layers:
        cells = []
        for n in models:
            v = models[n].verdict
            cells += [yn[v.points_at_patch[lay]], yn[v.relies_on_patch], "agree" if v.agrees[lay] else "**disagree**"]
        lines.append(f"| `{lay}` | " + " | ".join(cells) + " |")
    return lines


def _localisation_section(m: RunMetrics) -> list[str]:
    models = m.models
    if all(r.localisation is None for r in models.values()):
        return []
    u = m.shortcut.uniform["energy_in_mask"]
    lines = ["", "## Localisation against the true object masks (shapes)", "",
             f"Clean test images, {cam_display_name(m)} for the true class; energy in mask (uniform map: mean mask area "
             f"{u:.4f}) and pointing game (maximum on the mask).", "",
             "| layer | " + " | ".join(f"{n} energy in mask | {n} pointing" for n in models) + " |",
             "|---|" + "---|---|" * len(models)]
    for lay in m.layers:
        cells = []
        for n in models:
            st = models[n].localisation[lay]
            cells += [interval(st.energy), interval(st.pointing)]
        lines.append(f"| `{lay}` | " + " | ".join(cells) + " |")
    return lines


def is_square(cfg: dict, box: list[int] | None) -> bool:
    """Whether the run planted the seed's kind of artefact: a square at one fixed box."""
    return cfg.get("artefact", "square") == "square" and box is not None


def where_text(cfg: dict, box: list[int] | None, share: bool = False) -> str:
    """What the energy is measured in: "the 6x6 patch box" for the seed's square (its area as "36/1024" with
    `share`), else "each image's artefact mask" ("the masks' mean share of the image")."""
    if is_square(cfg, box):
        return f"{cfg['patch_size'] ** 2}/1024" if share else f"the {cfg['patch_size']}x{cfg['patch_size']} patch box"
    return "the artefact masks' mean share of the image" if share else "each image's artefact mask"


def artefact_phrase(cfg: dict, box: list[int] | None) -> str:
    """The planted artefact in words, e.g. "a 6x6 px patch of RGB (255, 255, 0) at the top-left corner (rows/cols
    [0, 0, 6, 6], bottom/right exclusive)" or "a text artefact '(c)' of RGB (...) at a random place on each image"."""
    kind, place, color = cfg.get("artefact", "square"), cfg["patch_corner"], tuple(cfg["patch_color"])
    where = {"random": "at a random place on each image", "centre": "at the centre"}.get(place, f"at the {place} corner")
    if kind == "square" and box is not None:
        what = f"a {cfg['patch_size']}x{cfg['patch_size']} px patch of RGB {color} {where}"
    else:
        text = f" {cfg['artefact_text']!r}" if kind == "text" else ""
        what = f"a {kind} artefact{text} of RGB {color}, size {cfg['patch_size']} px, {where}"
    options = {"opacity": cfg.get("opacity", 1.0) != 1.0, "strength": cfg.get("strength") is not None,
               "jpeg_quality": cfg.get("jpeg_quality") is not None}
    extras = [f"{name.replace('_', ' ')} {cfg[name]}" for name, given in options.items() if given]
    where_box = f" (rows/cols {box}, bottom/right exclusive)" if box is not None else ""
    return what + where_box + (f", {', '.join(extras)}" if extras else "")


def method_name(key: str) -> str:
    """How reports name a method of methods.json, its chance baseline ("random") included."""
    return "random map" if key == "random" else display_name(key)


def methods_markdown(c: MethodsResult) -> list[str]:
    """Markdown of compare's results: method x layer table, sanity check, deletion/insertion AUCs."""
    return [*_methods_table(c), *_sanity_section(c), *_faithfulness_section(c)]


def _methods_table(c: MethodsResult) -> list[str]:
    """Which method and layer flag the shortcut: energy in the box and pointing game, biased vs baseline model."""
    st, u = c.settings, c.uniform
    has_loc = c.localisation is not None
    lines = ["## Which method and layer see the shortcut (`gradcam-repro compare`)", "",
             f"Patched test images each model calls the target class, explained for that class: energy in the patch box "
             f"(uniform map {u['energy_in_box']:.4f}) and pointing game (random peak {u['pointing']:.4f}); "
             f"{st.images} images per model (Score-CAM: the first {st.scorecam_images}, it costs one forward pass "
             "per channel). *Flags* = the biased model's energy is at least 2x uniform at its lower 95% bound and above "
             f"the baseline model's upper bound. Precision: {st.precision}."
             + (f" Localisation: energy in the true object mask on shapes test images (uniform {u['energy_in_mask']:.4f})."
                if has_loc else ""), "",
             *(["![method x layer](figures/methods_layers.png)", ""] if "figures/methods_layers.png" in c.figures else []),
             "| method | layer | biased: energy in box | biased: pointing | baseline: energy in box | baseline: pointing | flags |"
             + (" shapes: energy in mask |" if has_loc else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if has_loc else "")]
    for method in c.methods:
        for layer, by_model in c.shortcut[method].items():
            cells = []
            for model in ("biased", "baseline"):
                r = by_model.get(model)
                cells += [f"{interval(r.energy)} (n={r.energy.n})", interval(r.pointing)] if r else ["n/a", "n/a"]
            flag = "**yes**" if c.flags_shortcut[method][layer] else "no"
            loc = (c.localisation or {}).get(method, {}).get(layer)
            extra = [(f"{interval(loc.energy)} (n={loc.energy.n})" if loc else "n/a")] if has_loc else []
            lines.append(f"| {method_name(method)} | `{layer}` | " + " | ".join([*cells, flag, *extra]) + " |")
    flagged = [f"{method_name(m)} at `{lay}`" for m, by in c.flags_shortcut.items() for lay, f in by.items() if f]
    return [*lines, "", f"Pairs that flag the shortcut: {', '.join(flagged) if flagged else 'none'}.", ""]


def _sanity_section(c: MethodsResult) -> list[str]:
    """The cascading randomisation check: does each method's map change when the weights do?"""
    st = c.settings
    lines = ["## Sanity check: cascading model parameter randomisation (Adebayo et al., 2018)", "",
             f"The baseline model's weights are re-initialised from the classifier down to the stem; after each step the "
             f"maps of {st.sanity_images} clean test images (true class; Score-CAM: the first {st.scorecam_images}) "
             "are compared with the original maps (Spearman rank correlation, SciPy; SSIM, scikit-image). A method "
             f"*passes* when the upper 95% bound of the mean Spearman correlation is below {st.sanity_max_spearman} at "
             "the step that randomises the block holding its layer (pixel methods: the classifier).", "",
             "| method | layer | deciding step | Spearman there | SSIM there | passes | mean Spearman per step (fc → stem) |",
             "|---|---|---|---|---|---|---|"]
    for method, r in c.sanity.items():
        v = r.verdict
        per_step = ", ".join(f"{s.spearman.mean:.2f}" for s in r.steps)
        lines.append(f"| {method_name(method)} | `{r.layer}` | {v.step} | {interval(v.spearman)} | "
                     f"{interval(v.ssim)} | {'yes' if v.passes else '**no**'} | {per_step} |")
    sanity_figs = [f for f in c.figures if f.startswith("figures/sanity_")]
    return [*lines, "", *[f"![sanity]({f})" for f in sanity_figs[:1]], "",
            *(["Cascade figures: " + ", ".join(f"[{f}]({f})" for f in sanity_figs), ""] if sanity_figs else [])]


def _faithfulness_section(c: MethodsResult) -> list[str]:
    """Deletion and insertion AUCs of each method against a random map, and where and how long it was measured."""
    st = c.settings
    lines = ["## Faithfulness: deletion and insertion (Petsiuk et al., 2018)", "",
             f"{st.faithfulness_images} seeded clean test images, the baseline model's predicted class; "
             f"{st.pixels_per_step} pixels per step, most salient first. Deletion sets pixels to the "
             f"{st.deletion_baseline}; insertion starts from a {st.insertion_canvas} of the image. Lower deletion "
             "AUC and higher insertion AUC are better; *random map* is the chance baseline.", "",
             "| method | deletion AUC | insertion AUC |", "|---|---|---|"]
    for method, r in c.faithfulness.items():
        lines.append(f"| {method_name(method)} | {interval(r.deletion_auc)} | {interval(r.insertion_auc)} |")
    return [*lines, "", *(["![deletion and insertion](figures/deletion_insertion.png)", ""]
                          if "figures/deletion_insertion.png" in c.figures else []),
            f"Measured in {c.seconds['total']:.0f} s on {c.environment.get('processor', '?')} "
            f"({c.environment.get('device', '?')}).", ""]
