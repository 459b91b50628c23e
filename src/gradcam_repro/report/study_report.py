"""STUDY.md and the dose-response figures of `gradcam-repro study`: pure functions of a `StudyResult`.

Every number is shown as "mean [low, high] ±h": the mean over seeds, its 95% t-interval over seeds, and
the mean image-level 95% half-width within one seed; every verdict as "k/n" (holds in k of n seeds).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullLocator

from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure.aggregate import DOSE_AXIS
from gradcam_repro.measure.scores import POINTS_AT_PATCH_RATIO, RELIES_FLIP_RATE
from gradcam_repro.measure.study_results import SeedInterval, StudyCondition, StudyResult, Tally
from gradcam_repro.report.format import seed_interval, tally

FLIP_VARIANTS = (("patch", "patch"), ("other_color", "other colour"), ("other_corner", "other corner"), ("none", "no patch"))
SYMLOG_LINEAR_BELOW = 0.01  # the smallest non-zero fraction of the default grid: 0 and 0.01 stay apart


def fmt_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def condition_label(axes: dict) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in axes.items()) or "(all)"


def _interval(value: SeedInterval | None, digits: int = 3) -> str:
    return seed_interval(value.to_dict() if value is not None else None, digits=digits)


def _tally(value: Tally | None) -> str:
    return tally(value.to_dict() if value is not None else None)


def _layers(condition, method: str) -> tuple[str, ...]:
    """The layers a condition's cells scored `method` at (an architecture's own stages)."""
    prefix = f"energy/{method}/"
    return tuple(n[len(prefix):] for n in condition.metrics if n.startswith(prefix))


def _by_layers(study: StudyResult, method: str) -> dict[tuple[str, ...], list]:
    """The study's conditions grouped by the layers they were scored at: one group, unless the grid has an arch axis."""
    groups: dict[tuple[str, ...], list] = {}
    for c in study.conditions:
        groups.setdefault(_layers(c, method), []).append(c)
    return groups


def _cap(caps: list[int]) -> str:
    """The sample caps of the cells in words: [0] (no cap) -> 'all the', else e.g. 'at most 100' or 'at most 100/all'."""
    if caps == [0]:
        return "all the"
    return "at most " + "/".join(str(c) if c else "all" for c in caps)


def header(study: StudyResult) -> list[str]:
    cells = study.cells.values()
    count = {s: sum(c.status == s for c in cells) for s in ("done", "failed", "missing")}
    axes = " x ".join(f"{k} ({', '.join(fmt_value(v) for v in vals)})" for k, vals in study.grid["axes"].items())
    s = study.settings
    return [
        "# Study: does the shortcut verdict replicate across seeds?", "",
        f"Dataset {study.dataset}, shortcut class **{study.bias_class}**. Grid: {axes}. "
        f"{len(study.cells)} cells: {count['done']} done, {count['failed']} failed, {count['missing']} not run. "
        f"Methods: {', '.join(display_name(m) for m in study.methods)}.", "",
        f"How to read: `mean [low, high] ±h` is the mean over seeds, [low, high] its {s['seed_ci']} (none with "
        f"one seed), and ±h the {s['image_ci']}. Verdicts are `k/n`: the verdict holds in k of n seeds.", "",
        f"Flip-to-target tests paste each patch on {_cap(s['counterfactual_images'])} non-target test images of a cell's "
        f"test set; CAM scores use {_cap(s['cam_images'])} images per set (a seeded choice; the counts per cell are "
        "`n` in `cells/<key>.json`).", "",
    ]


def reliance_table(study: StudyResult) -> list[str]:
    cols = ["clean acc", "target recall clean", "target recall patched", *[f"flip-to-target: {label}" for _, label in FLIP_VARIANTS]]
    lines = ["## Does the model rely on the patch?", "",
             f"Rates over the test set; *relies* = lower bound of the image-level CI of flip-to-target (patch) "
             f">= {RELIES_FLIP_RATE}, counted per seed.", "",
             "| condition | seeds | " + " | ".join(cols) + " | relies |", "|---" * (len(cols) + 3) + "|"]
    for c in study.conditions:
        m = c.metrics
        values = [m["clean_test_acc"], m["target_recall_clean"], m["target_recall_patched"],
                  *[m[f"flip_to_target/{v}"] for v, _ in FLIP_VARIANTS]]
        lines.append(f"| {condition_label(c.axes)} | {len(c.seeds)} | " + " | ".join(_interval(v) for v in values)
                     + f" | {_tally(c.verdicts.get('relies_on_patch'))} |")
    return lines + [""]


def energy_tables(study: StudyResult) -> list[str]:
    lines = ["## Does the explanation show it?", "",
             "Energy in the patch box divided by a uniform map's, on patched target images the model calls target. "
             f"*points* = image-level lower bound >= {POINTS_AT_PATCH_RATIO:g}x uniform (the run's rule); *flags* = "
             "that, and above the same seed's fraction-0 baseline's upper bound.", ""]
    for method in study.methods:
        lines += [f"### {display_name(method)}", ""]
        for layers, conditions in _by_layers(study, method).items():
            lines += _energy_table(method, layers, conditions)
    return lines


def _energy_table(method: str, layers: tuple[str, ...], conditions: list) -> list[str]:
    """One method's energy table over `conditions` scored at the same `layers`."""
    lines = ["| condition | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
    for c in conditions:
        row = []
        for layer in layers:
            v = c.verdicts
            row.append(f"{_interval(c.metrics[f'energy_ratio/{method}/{layer}'], digits=2)}; points "
                       f"{_tally(v.get(f'points_at_patch/{method}/{layer}'))}, "
                       f"flags {_tally(v.get(f'flags/{method}/{layer}'))}")
        lines.append(f"| {condition_label(c.axes)} | " + " | ".join(row) + " |")
    return lines + [""]


def threshold_table(study: StudyResult) -> list[str]:
    lines = ["## Detection thresholds", "",
             f"The smallest tested bias fraction at which the model relies on the patch (lower seed-CI bound of "
             f"flip-to-target >= {RELIES_FLIP_RATE}) and at which each method/layer flags it (lower seed-CI bound of the "
             f"energy >= {POINTS_AT_PATCH_RATIO:g}x uniform and above the fraction-0 baseline's upper seed-CI bound). "
             "'not reached': at no tested fraction; with one seed no threshold can be claimed.", ""]
    for t in study.thresholds:
        fracs = ", ".join(fmt_value(f) for f in t.fractions)
        lines += [f"**{condition_label(t.series)}** (fractions {fracs}; {t.n_seeds} seed(s)): the model relies "
                  f"from **{_dose(t.relies_on_patch)}**.", ""]
        layers = list(dict.fromkeys(layer for by_layer in t.flags.values() for layer in by_layer))
        lines += ["| method | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
        for method, by_layer in t.flags.items():
            lines.append(f"| {display_name(method)} | " + " | ".join(_dose(by_layer[la]) if la in by_layer else "-"
                                                                    for la in layers) + " |")
        lines.append("")
    return lines


def _dose(fraction) -> str:
    return "not reached" if fraction is None else fmt_value(fraction)


def cells_section(study: StudyResult) -> list[str]:
    done = [c for c in study.cells.values() if c.status == "done"]
    failed = [c for c in study.cells.values() if c.status == "failed"]
    lines = ["## Cells", ""]
    if done:
        train = np.mean([c.seconds["train"] for c in done])
        evaluate = np.mean([c.seconds["evaluate"] for c in done])
        nodes = sorted({c.node_id for c in done})
        lines += [f"{len(done)} finished cells, run on {len(nodes)} Ray node id(s) (a local Ray gets a new id at each "
                  f"start); per cell, on average, {train:.0f} s to train (or restore) its model and {evaluate:.0f} s "
                  "to measure it.", ""]
    if failed:
        lines += ["Failed cells (rerun the same command to retry them):", "", "| cell | error |", "|---|---|"]
        lines += [f"| {condition_label(c.axes)} | {c.error} |" for c in failed]
        lines.append("")
    return lines


def against_section(study: StudyResult) -> list[str]:
    """Whether the seed-robust verdicts (every seed or no seed) agree with those of the study given by --against."""
    against = study.against
    if against is None:
        return []
    lines = [f"## Against `{against.study}`", "",
             "At each condition both studies have, the seed-robust verdicts: those that hold in every seed and "
             "those that hold in no seed (only verdicts measured in both).", ""]
    if not against.conditions:
        return lines + ["No condition (the same axes but the seed) is in both studies.", ""]
    counts = against.counts
    lines += [f"Of the {counts.robust_there} verdicts seed-robust there, **{counts.same} hold the same way "
              f"here**; {counts.robust_here} are seed-robust here.", ""]
    words = {"every": "every seed", "none": "no seed", "some": "some seeds"}
    for c in against.conditions:
        n_here, n_there = c.seeds
        robust = sum(a != "some" for a, _ in c.states.values())
        lines += [f"**{condition_label(c.axes)}** ({n_here} seeds here, {n_there} there): "
                  + ("the same" if c.same else f"**{len(c.differs)} differ**")
                  + f" ({robust} of {len(c.states)} verdicts are seed-robust here).", ""]
        if c.same:
            continue
        lines += ["| verdict | here | there | holds in |", "|---|---|---|---|"]
        for name in c.differs:
            (here, there), (a, b) = c.tallies[name], c.states[name]
            note = f"{words[a]} here, {words[b]} there" + (" (contradicted)" if name in c.contradicted else "")
            lines.append(f"| {name} | {_tally(here)} | {_tally(there)} | {note} |")
        lines.append("")
    return lines


def study_markdown(study: StudyResult) -> str:
    """STUDY.md: the header, reliance, explanations, thresholds, the comparison with --against, figures and
    cells sections."""
    lines = header(study)
    if study.conditions:
        lines += reliance_table(study) + energy_tables(study) + threshold_table(study)
    lines += against_section(study)
    lines += ["## Figures", ""] + [f"![{rel}]({rel})" for rel in study.figures or []] + [""]
    return "\n".join(lines + cells_section(study))


def _series(conditions: list[StudyCondition]) -> dict[str, list[StudyCondition]]:
    """Conditions grouped into dose-response curves by every axis but the bias fraction, each sorted by it."""
    groups: dict[str, list[StudyCondition]] = {}
    for c in conditions:
        groups.setdefault(condition_label({k: v for k, v in c.axes.items() if k != DOSE_AXIS}), []).append(c)
    return {label: sorted(g, key=lambda c: c.axes.get(DOSE_AXIS, 0)) for label, g in groups.items()}


def _curve(ax, group: list[StudyCondition], name: str, label: str) -> None:
    """One metric of a series against the bias fraction, with its seed-CI as error bars."""
    x = [c.axes.get(DOSE_AXIS, 0) for c in group]
    m = [c.metrics.get(name) for c in group]
    y = np.array([v.mean if v else math.nan for v in m], dtype=float)
    low = np.nan_to_num(y - np.array([v.low if v else math.nan for v in m], dtype=float))
    high = np.nan_to_num(np.array([v.high if v else math.nan for v in m], dtype=float) - y)
    ax.errorbar(x, y, yerr=[low, high], marker="o", ms=4, capsize=3, label=label)


FRACTION_LABEL = "bias fraction (share of target-class training images patched)"


def _fractions(study: StudyResult) -> list[float]:
    return sorted({c.axes.get(DOSE_AXIS, 0) for c in study.conditions})


def _fraction_axis(ax, fractions: list[float]) -> None:
    """Symlog x axis from 0 to the largest fraction, ticked at the tested fractions only."""
    ax.set_xscale("symlog", linthresh=SYMLOG_LINEAR_BELOW)
    ax.set_xlim(-SYMLOG_LINEAR_BELOW / 4, max(max(fractions), SYMLOG_LINEAR_BELOW) * 1.4)
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3)


def reliance_figure(study: StudyResult):
    """Flip-to-target (patch) against the bias fraction, one curve per series, seed-CI error bars."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, group in _series(study.conditions).items():
        _curve(ax, group, "flip_to_target/patch", label)
    ax.axhline(RELIES_FLIP_RATE, color="grey", ls="--", lw=1, label=f"relies threshold ({RELIES_FLIP_RATE})")
    _fraction_axis(ax, _fractions(study))
    ax.set_xlabel(FRACTION_LABEL)
    ax.set_ylabel(f"flip-to-{study.bias_class} rate with the patch")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("Reliance on the patch (mean and 95% t-interval over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def energy_figure(study: StudyResult, group: list[StudyCondition], label: str):
    """One series: energy in the box / uniform against the bias fraction, a panel per method, a curve per layer."""
    methods = study.methods
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.6), squeeze=False, sharey=True)
    fractions = _fractions(study)
    for ax, method in zip(axes[0], methods):
        for layer in _layers(group[0], method):  # a series is one architecture: its conditions share their layers
            _curve(ax, group, f"energy_ratio/{method}/{layer}", layer)
        ax.axhline(POINTS_AT_PATCH_RATIO, color="grey", ls="--", lw=1)
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        _fraction_axis(ax, fractions)
        ax.set_title(display_name(method), fontsize=9)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("CAM energy in patch / uniform")
    fig.supxlabel(FRACTION_LABEL, fontsize=9)
    fig.suptitle(f"Explanation energy on the patch {label} (dashed: {POINTS_AT_PATCH_RATIO:g}x uniform, "
                 "dotted: uniform; mean and 95% t-interval over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def study_figures(study: StudyResult) -> dict:
    """{relative path: figure}: the reliance dose-response and one energy dose-response per series."""
    if not study.conditions:
        return {}
    out = {"figures/dose_response_reliance.png": reliance_figure(study)}
    series = _series(study.conditions)
    for i, (label, group) in enumerate(series.items()):
        name = "dose_response_energy.png" if len(series) == 1 else f"dose_response_energy_{i + 1}.png"
        out[f"figures/{name}"] = energy_figure(study, group, "" if len(series) == 1 else f"({label})")
    return out

