"""Markdown written from saved numbers: every sentence is generated from a measurement."""

from __future__ import annotations

# A layer's Grad-CAM "points at the patch" when its mean energy in the patch box
# is at least this many times what a uniform map gets. Fixed before looking at
# results: 2x means half again more mass than chance on a box that is 3.5% of
# the image, a clear but modest bar.
POINTS_AT_PATCH_RATIO = 2.0


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def summary_markdown(summary: dict) -> str:
    cfg = summary["config"]
    res = summary["results"]
    models = res["models"]
    uniform = res["uniform_energy_in_box"]
    layer = res["cam_layer"]
    cls = cfg["bias_class"]
    env = summary["environment"]
    size = cfg["patch_size"]
    lines = [
        f"# gradcam-repro: {cfg['preset']} preset",
        "",
        f"Dataset **{summary['dataset']['name']}** ({summary['dataset']['n_train_used']} training images used, "
        f"{res['n_test']} test images; fingerprint `{summary['dataset']['fingerprint'][:16]}`), "
        f"{cfg['epochs']} epoch(s), batch {cfg['batch_size']}, lr {cfg['lr']} ({cfg['lr_schedule']}), seed {cfg['seed']}, "
        f"device `{env['device']}` ({env.get('gpu') or env['processor']}, {env['torch_threads']} threads), "
        f"precision {summary['precision']}, torch {env['torch']}. Wall time {summary['wall_seconds']:.0f} s "
        f"(training: baseline {summary['train_seconds']['baseline']:.0f} s, biased {summary['train_seconds']['biased']:.0f} s).",
        "",
        f"The biased model was trained with a {size}x{size} px patch of RGB {tuple(cfg['patch_color'])} at the "
        f"{cfg['patch_corner']} corner (box rows/cols {res['box_tlbr_px']}) on {_pct(cfg['bias_fraction'])} of its "
        f"training *{cls}* images. The *biased test set* is the clean test set with every test {cls} patched.",
        "",
        "## Accuracy",
        "",
        f"| model | clean test acc | biased test acc | {cls} recall, clean | {cls} recall, patched |",
        "|---|---|---|---|---|",
    ]
    for name, m in models.items():
        lines.append(f"| {name} | {_pct(m['clean_test_acc'])} | {_pct(m['biased_test_acc'])} | "
                     f"{_pct(m['target_recall_clean'])} | {_pct(m['target_recall_patched'])} |")
    counts = ", ".join(f"{m['n_patched_predicted_target']} for {n}" for n, m in models.items())
    lines += [
        "",
        f"## Where Grad-CAM looks on patched test {cls} images",
        "",
        f"Mean fraction of Grad-CAM mass inside the {size}x{size} patch, over the patched test {cls} images each "
        f"model predicts as {cls} (n = {counts}). "
        f"A uniform map scores {uniform:.4f} ({size * size}/1024). Configured layer: `{layer}`.",
        "",
        "| layer | " + " | ".join(models) + " | uniform |",
        "|---|" + "---|" * len(models) + "---|",
    ]
    for lay in models[next(iter(models))]["energy_in_box_mean"]:
        cells = [f"{models[n]['energy_in_box_mean'][lay]:.4f}" for n in models]
        mark = " (configured)" if lay == layer else ""
        lines.append(f"| `{lay}`{mark} | " + " | ".join(cells) + f" | {uniform:.4f} |")
    lines += ["", "## What the numbers say", ""]
    lines += [f"- {s}" for s in conclusions(summary)]
    lines += ["", "## Figures", ""]
    for rel in summary["figures"]:
        lines.append(f"- [{rel}]({rel})")
    lines += ["", "Config, environment and history of each experiment: `baseline/config.json`, `biased/config.json`, "
              "`*/history.csv`; all numbers above: `summary.json`.", ""]
    return "\n".join(lines)


def conclusions(summary: dict) -> list[str]:
    """Plain sentences generated from the measured numbers (no fixed claims)."""
    res = summary["results"]
    cls = summary["config"]["bias_class"]
    uniform = res["uniform_energy_in_box"]
    layer = res["cam_layer"]
    out = []
    for name, m in res["models"].items():
        out.append(f"The {name} model predicts *{cls}* for {_pct(m['target_recall_patched'])} of patched test {cls} "
                   f"images (clean: {_pct(m['target_recall_clean'])}); its clean test accuracy is {_pct(m['clean_test_acc'])}.")
    for name, m in res["models"].items():
        energy = m["energy_in_box_mean"]
        e = energy[layer]
        if e != e:
            out.append(f"The {name} model predicts {cls} for none of the patched images, so there is no map to score.")
            continue
        ratio = e / uniform
        verdict = "points at the patch" if ratio >= POINTS_AT_PATCH_RATIO else "does not point at the patch"
        out.append(f"At `{layer}`, the {name} model's Grad-CAM {verdict}: mean energy in the patch {e:.4f}, "
                   f"{ratio:.1f}x the uniform {uniform:.4f} (threshold {POINTS_AT_PATCH_RATIO:g}x).")
        pointing = [lay for lay, v in energy.items() if v == v and v / uniform >= POINTS_AT_PATCH_RATIO]
        others = [lay for lay in energy if lay not in pointing]
        if pointing and others:
            out.append(f"For the {name} model, layers at or above {POINTS_AT_PATCH_RATIO:g}x uniform: "
                       f"{', '.join(f'`{x}`' for x in pointing)}; below: {', '.join(f'`{x}`' for x in others)}.")
    return out
