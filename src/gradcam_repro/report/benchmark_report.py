"""BENCHMARK.md and the benchmark's heat map: pure functions of a `measure.detection.BenchmarkResult`."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np

from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure.detection import BenchmarkResult, Detection, Rate
from gradcam_repro.measure.results import Interval


def _rate(r: Rate) -> str:
    """'2/3 (9-99%)': k of n with its interval, or '-' where no model qualified."""
    return f"{r.text()} ({100 * r.low:.0f}-{100 * r.high:.0f}%)" if r.n else "-"


def _row_label(d: Detection) -> str:
    return f"{display_name(d.method)} @ {d.layer}" if d.layer != "input" else display_name(d.method)


def _kind_rows(result: BenchmarkResult) -> list[str]:
    rows = ["| kind | dose | flip rate per seed | relies | relies partly | controls ignore it | audit: discovered "
            "(IoU >= 0.5) | class confirmed | confirmed, moving region or unexplained | transplant agrees with flip (partly) | "
            "target not cleared (partly) | false discovery on controls | target not cleared on controls |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result.summaries:
        flips = ", ".join(f"{f:.2f}" for f in s.flips) or "-"
        found = _rate(s.discovery) if s.localisable else f"no localised artefact ({s.discovery.n} models)"
        rows.append(f"| {s.kind} | {s.dose:g} | {flips} | {_rate(s.reliance)} | {_rate(s.partly)} | "
                    f"{_rate(s.controls_ignore)} | {found} | {_rate(s.class_confirmed)} | {_rate(s.flagged)} | "
                    f"{_rate(s.transplant_agrees)} | {_rate(s.partly_not_cleared)} | {_rate(s.false_discovery)} | "
                    f"{_rate(s.false_flag)} |")
    return rows + [""]


def _detection_rows(result: BenchmarkResult, dose: float) -> list[str]:
    kinds = list(result.recipes)
    rows = [f"| method @ layer | {' | '.join(kinds)} |", "|---|" + "---|" * len(kinds)]
    by_row: dict[str, dict[str, Detection]] = {}
    for d in result.detections:
        if d.dose == dose:
            by_row.setdefault(_row_label(d), {})[d.kind] = d
    for label, cells in by_row.items():
        rows.append(f"| {label} | " + " | ".join(
            f"{cells[k].detected.text()} / {cells[k].false_alarm.text()}" if k in cells else "-" for k in kinds) + " |")
    return rows + [""]


def _pct(interval: Interval | None) -> str:
    return f"{interval.mean:.1%} [{interval.low:.1%}, {interval.high:.1%}]" if interval is not None else "-"


def _audit_rows(result: BenchmarkResult) -> list[str]:
    """The audit of each biased model: how its target class came to be confirmed, a moving region, flagged or
    missed (empty for BENCHMARK.json files written before the rows were kept)."""
    if not result.audits:
        return []
    rows = ["## The audit, model by model", "",
            "What the audit said of the target class on each biased model (the artefact pasted on half of that class's "
            "test images): its verdict, the test that gave it, the share of other classes' images its transplant "
            "moved, and the model's flip rate with the real artefact.", "",
            "| kind | dose | seed | flip rate | target verdict | test | transplant | IoU | flagged unexplained | "
            "confirmed classes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result.audits:
        a = row.audit
        iou = f"{a.target_iou:.2f}" if a.target_iou is not None else "-"
        rows.append(f"| {row.kind} | {row.dose:g} | {row.seed} | {_pct(row.flip)} | {a.target_verdict} | "
                    f"{a.target_test or '-'} | {_pct(a.target_transplant)} | {iou} | {'yes' if a.target_unexplained else 'no'} | "
                    f"{', '.join(a.confirmed) or 'none'} |")
    return rows + [""]


def benchmark_markdown(result: BenchmarkResult, figures: dict | None = None) -> str:
    """BENCHMARK.md from BENCHMARK.json's content."""
    env, s = result.environment, result.seconds
    audit = s.get("audit_per_cell", float("nan"))
    machine = f"{env.get('gpu') or env.get('processor', '?')}, torch {env.get('torch', '?')}" if env else "no cell finished"
    lines = ["# Shortcut benchmark: which explanations and audits catch which artefacts", "",
             f"Preset `{result.preset}`, seeds {', '.join(map(str, result.seeds))}, doses "
             f"{', '.join(f'{d:g}' for d in result.doses)} (and a clean control per seed, shared by every kind); "
             f"{result.cells['done']} of {result.cells['total']} cells finished"
             + (f", {result.cells['failed']} failed" if result.cells["failed"] else "") + f". Machine: {machine}. "
             f"Cost, in one worker's seconds: {s['train_per_model']:.0f} s to train a model (one per seed and "
             f"kind and dose, and one control per seed: {s['models']:.0f} models), {s['evaluate_per_cell']:.0f} s to "
             f"measure and audit a cell"
             + ("" if math.isnan(audit) else f" ({audit:.0f} s of them the audit)")  # NaN: no audited cell, or an older file
             + f"; the whole grid {s['grid_worker_s'] / 60:.0f} worker-minutes, so "
             f"{s['grid_worker_s'] / 120:.0f} min on 2 workers and {s['grid_worker_s'] / 960:.0f} min on a 16-worker "
             f"Ray cluster (tasks are independent, so the time divides by the workers up to the {s['models']:.0f} "
             f"models). This call took {s['wall']:.0f} s.", "",
             "## The artefacts", "", "| kind | what | flags |", "|---|---|---|"]
    lines += [f"| {k} | {r['help']} | `{r['flags']}` |" for k, r in result.recipes.items()] + [""]
    lines += ["## Reliance and the audit, per kind", "", *_kind_rows(result), *_audit_rows(result)]
    for dose in result.doses:
        lines += [f"## Explanations at dose {dose:g}: detected on relying models / false alarms on controls", "",
                  "Each cell is k/n models (seeds): detection over the biased models that rely on the artefact, false "
                  "alarms over the controls that ignore it.", "", *_detection_rows(result, dose)]
    lines += [f"![{rel}]({rel})" for rel in (figures or {})] + [""]
    lines += ["## Rules", "", *[f"- {k}: {v}" for k, v in result.rules.items()], ""]
    return "\n".join(lines)


def _matrix(result: BenchmarkResult, dose: float, which: str) -> tuple[list[str], list[str], np.ndarray, list[list[str]]]:
    kinds = list(result.recipes)
    rows = list(dict.fromkeys(_row_label(d) for d in result.detections if d.dose == dose))
    values = np.full((len(rows), len(kinds)), np.nan)
    text = [["" for _ in kinds] for _ in rows]
    for d in result.detections:
        if d.dose == dose:
            r = getattr(d, which)
            i, j = rows.index(_row_label(d)), kinds.index(d.kind)
            values[i, j], text[i][j] = r.rate, r.text()
    return rows, kinds, values, text


def heatmap(result: BenchmarkResult, dose: float):
    """Method/layer x kind at one dose: detection rate (left) and false-alarm rate (right), each cell k/n."""
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.3 * len(result.recipes), 1.5 + 0.32 * len(result.detections) / max(
        len(result.recipes) * len(result.doses), 1)), squeeze=False)
    for ax, which, title in zip(axes[0], ("detected", "false_alarm"), ("detected (relying models)", "false alarm (controls)")):
        rows, kinds, values, text = _matrix(result, dose, which)
        ax.imshow(np.nan_to_num(values, nan=-0.2), vmin=-0.2, vmax=1, cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(kinds)):
                ax.text(j, i, text[i][j] or "-", ha="center", va="center", fontsize=6, color="w")
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows if which == "detected" else [""] * len(rows), fontsize=6)
        ax.set_title(f"{title}, dose {dose:g}", fontsize=9)
    fig.tight_layout()
    return fig


def benchmark_figures(result: BenchmarkResult) -> dict:
    """{path relative to the benchmark folder: figure}: one heat map per dose."""
    return {f"figures/benchmark_dose_{dose:g}.png": heatmap(result, dose) for dose in result.doses}

