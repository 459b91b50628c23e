"""The repair section's table and target checks, as data: REPORT.md and REPORT.html render the same rows.

Columns: baseline | biased | each repaired model. Rows: clean accuracy, target recall on clean and on
patched target images, flip-to-target with the training patch, the CAM's energy in the patch box per layer
(patched target images called target), and the cost in seconds. Every measured value keeps its 95% CI.
"""

from __future__ import annotations

from gradcam_repro.measure.results import PATCHED_TARGET, Interval, RunMetrics

# The targets a repair must reach (issue "repair"), fixed before any repair was measured.
MAX_RECALL_DROP = 0.05  # clean target recall >= the baseline's - 5 points
MAX_FLIP_RATE = 0.05  # flip-to-target with the training patch <= 5%
MAX_ACCURACY_DROP = 0.02  # clean accuracy >= the baseline's - 2 points
ENERGY_LAYERS = ("layer2", "layer3")  # CAM energy in the box back within the baseline's CI at these layers


def repair_table(m: RunMetrics) -> dict | None:
    """{"columns": model names, "rows": [(label, {name: Interval, or seconds (float or None) in "cost (s)"})],
    "targets": {repaired name: [(target, measured, met)]}}; None when the run has no repaired model."""
    repairs, models = m.repairs, m.models
    if not repairs or "baseline" not in models or "biased" not in models:
        return None
    cls = m.config["bias_class"]
    columns = ["baseline", "biased", *[n for n in models if n in repairs]]
    rows: list[tuple[str, dict[str, Interval | float | None]]] = [
        ("clean test accuracy", {n: models[n].clean_test_acc for n in columns}),
        (f"{cls} recall, clean", {n: models[n].target_recall_clean for n in columns}),
        (f"{cls} recall, patched", {n: models[n].target_recall_patched for n in columns}),
        (f"flip-to-{cls}, training patch", {n: models[n].flip_to_target["patch"] for n in columns})]
    for layer in m.layers:
        rows.append((f"energy in box at {layer}", {n: models[n].energy(layer, PATCHED_TARGET) for n in columns}))
    seconds = {n: m.seconds.get(f"train_{n}") for n in ("baseline", "biased")}
    seconds.update({n: repairs[n].seconds for n in repairs if n in models})
    rows.append(("cost (s)", seconds))
    return {"columns": columns, "rows": rows, "targets": {n: repair_targets(m, n) for n in columns if n in repairs}}


def repair_targets(m: RunMetrics, name: str) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for one repaired model against the baseline, by the MAX_* rules above."""
    cls, base, rep = m.config["bias_class"], m.models["baseline"], m.models[name]
    recall, acc = rep.target_recall_clean.mean, rep.clean_test_acc.mean
    flip = rep.flip_to_target["patch"].mean
    out = [(f"clean {cls} recall >= baseline's - {MAX_RECALL_DROP * 100:.0f} points "
            f"({base.target_recall_clean.mean - MAX_RECALL_DROP:.3f})", f"{recall:.3f}",
            recall >= base.target_recall_clean.mean - MAX_RECALL_DROP),
           (f"flip-to-{cls} with the training patch <= {MAX_FLIP_RATE:.0%}", f"{flip:.3f}", flip <= MAX_FLIP_RATE),
           (f"clean accuracy >= baseline's - {MAX_ACCURACY_DROP * 100:.0f} points "
            f"({base.clean_test_acc.mean - MAX_ACCURACY_DROP:.3f})", f"{acc:.3f}",
            acc >= base.clean_test_acc.mean - MAX_ACCURACY_DROP)]
    for layer in ENERGY_LAYERS:
        if layer not in m.layers:
            continue
        b, r = base.energy(layer, PATCHED_TARGET), rep.energy(layer, PATCHED_TARGET)
        met = r.n > 0 and r.mean <= b.high
        out.append((f"energy in box at {layer} back within the baseline's CI (<= {b.high:.3f})",
                    f"{r.mean:.3f}" if r.n else "n/a (no patched image called " + cls + ")", met))
    return out
