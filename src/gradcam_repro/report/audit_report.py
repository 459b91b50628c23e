"""AUDIT.md and the audit's figures: pure functions of an `AuditResult` (and, for the figures,
`measure.spray.audit_model`'s examples). Nothing here reads or writes files."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from gradcam_repro.explain.registry import PIXEL_METHODS, display_name
from gradcam_repro.measure.audit_results import AuditCandidate, AuditResult, ColourCast, RankedCluster
from gradcam_repro.measure.results import Interval
from gradcam_repro.measure.spray import CANDIDATE, CONFIRMED, EXAMPLE_IMAGES, MOVING, UNEXPLAINED
from gradcam_repro.report.figures import draw_box, layout_under_suptitle, overlay, to_hwc
from gradcam_repro.report.format import interval

VERDICT_COLOURS = {CONFIRMED: "tab:red", MOVING: "tab:purple", CANDIDATE: "tab:orange", "none": "tab:blue",
                   "not tested": "0.75"}
PANEL_IN = 1.35  # inches per image panel


def _pct(stat: Interval | None) -> str:
    """A rate with its interval, or "not measured" for the occluded control of a transplant below the candidate
    bar (rules 6)."""
    return interval(stat, pct=True, units_in_brackets=False) if stat is not None else "not measured"


def explainer_text(result: AuditResult) -> str:
    s = result.settings
    where = "the input" if s["method"] in PIXEL_METHODS else f"`{s['layer']}`"
    chosen = "the audit's default" if result.default_method_layer else "chosen with --method/--layer"
    return f"{display_name(s['method'])} at {where} ({chosen})"


def class_verdicts(result: AuditResult) -> dict[str, str]:
    """{class: verdict of its tested candidate, or "not tested"} for every discovered class."""
    tested = {c.class_name: c.verdict for c in result.candidates}
    return {name: tested.get(name, "not tested") for name in result.classes}


def box_text(box) -> str:
    """(t, l, b, r) -> 'rows t-(b-1), cols l-(r-1)' (inclusive, as a reader counts)."""
    top, left, bottom, right = box
    return f"rows {top}-{bottom - 1}, cols {left}-{right - 1}"


def region_text(c: AuditCandidate) -> str:
    """Where a candidate's region is: its box, or for a per-image test the median region's size and place."""
    if c.per_image:
        top, left, bottom, right = c.box_tlbr_px
        return f"each image's own region (median {bottom - top}x{right - left} px, wherever it is)"
    if c.pattern:
        rms = f", RMS {c.pattern_rms:.1f} levels" if c.pattern_rms is not None else ""
        return f"a faint pattern added over {box_text(c.box_tlbr_px)}{rms}"
    if c.blurred:
        sigma = f" at sigma {c.blur_sigma:g} px" if c.blur_sigma is not None else ""
        return f"region {box_text(c.box_tlbr_px)} blurred{sigma}"
    return f"region {box_text(c.box_tlbr_px)}"


def overall_verdict(result: AuditResult) -> str:
    """The audit's verdict in one line. Never a bare "no shortcut": what was not found is said with its limits,
    a class whose relevance stands out unexplained is named, and so is the class a faint global colour cast turns
    most images into (a measurement, not a verdict)."""
    if result.confirmed:
        return f"confirmed shortcut: {', '.join(result.confirmed)}"
    candidates = [c.class_name for c in result.candidates if c.verdict == CANDIDATE]
    moving = [c for c in result.candidates if c.verdict == MOVING]
    parts = [f"no fixed-place shortcut confirmed in the {len(result.candidates)} classes tested"]
    if moving:
        parts.append("a small region that moves decides: " + ", ".join(
            f"{c.class_name} ({100 * c.transplant_flip.mean:.0f}% of other images follow it)" for c in moving)
            + " - a moving artefact or a small object; look at the examples")
    if candidates:
        parts.append(f"candidate only: {', '.join(candidates)}")
    if result.unexplained:
        parts.append("unexplained concentration: " + ", ".join(
            f"{u.class_name} ({max(u.fixed_place_ratio, u.peak_ratio, u.effect_ratio or float('nan'), key=_finite):.1f}x "
            "the median class)"
            for u in result.unexplained) + " - possibly a non-local or moving artefact; not an all-clear")
    elif not candidates and not moving:
        parts.append("no localised artefact found (a global one such as a colour cast has no region to find)")
    if result.colour_casts:  # where nothing is confirmed, the class a faint cast pushes towards is named too
        parts.append(f"{cast_text(result.colour_casts[0])} (measured, no verdict)")
    return "; ".join(parts)


def cast_text(c: ColourCast) -> str:
    """"a global colour cast of (+8, -8, +8) levels turns 44% of other images into frog" (the re-measured rate;
    the scan's where no other image was left to measure it on)."""
    rate = c.flip.mean if c.flip.n else c.scan_flip
    return f"a global colour cast of {_rgb_text(c)} levels turns {100 * rate:.0f}% of other images into {c.class_name}"


def _rgb_text(c: ColourCast) -> str:
    return "(" + ", ".join(f"{v:+d}" for v in c.rgb_levels) + ")"


def _finite(x: float) -> float:
    return x if x == x else float("-inf")


def summary_lines(result: AuditResult) -> list[str]:
    """What the CLI prints at the end: one line per tested candidate and the overall verdict."""
    lines = [f"#{c.rank} {c.class_name} ({test_text(c)}, n={c.n}): {c.verdict}; {region_text(c)} "
             f"({c.kind}); pasted on other classes -> {c.class_name} {_pct(c.transplant_flip)}; "
             f"{'rolled out of place' if c.effect else 'occluded'} {_pct(_control(c))}; removal changes "
             f"{_removal(c)}" + _group_text(c)
             for c in result.candidates]
    lines.append(overall_verdict(result))
    return lines


def _control(c: AuditCandidate) -> Interval | None:
    """The second control's rate: the region occluded, or for a shared pattern or blur the same rolled out of place."""
    return c.rolled_flip if c.effect else c.occluded_flip


def _removal(c: AuditCandidate) -> str:
    """The removal test's rate, or why there is none (a blur cannot be undone)."""
    return "not possible (a blur)" if c.blurred else _pct(c.removal_change)


def _blur_fit(settings: dict) -> str:
    """How the blur's extent was fitted by the audit rules of `settings` (rules version 9: in logarithms)."""
    return "least squares of the logarithms" if settings.get("rules_version", 0) >= 9 else "least squares"


def test_text(c: AuditCandidate) -> str:
    """"fixed place test, cluster 2", "per image test, cluster 0" or "shared pixels test" (no cluster)."""
    return f"{c.test or 'fixed place'} test" + (f", cluster {c.cluster}" if c.cluster is not None else "")


def _group_text(candidate: AuditCandidate) -> str:
    """"; carried by clusters 1, 2 (515 images)" for a confirmed candidate's sub-population, else ""."""
    if candidate.artefact_clusters is None:
        return ""
    clusters = ", ".join(str(c) for c in candidate.artefact_clusters)
    return f"; carried by cluster(s) {clusters} ({candidate.artefact_images} images)"


# ----- markdown -----------------------------------------------------------------------------------------

def _header(result: AuditResult) -> list[str]:
    d = result.dataset
    lines = [f"# Shortcut audit: {result.experiment}", ""]
    confirmed = result.confirmed
    lines += [(f"**Confirmed shortcut: {', '.join(confirmed)}.**" if confirmed else f"**{overall_verdict(result)}.**"), ""]
    for u in result.unexplained or ():
        lines += [f"- **{UNEXPLAINED}: {u.class_name}**: {u.reason} (fixed-place score {u.fixed_place_ratio:.1f}x, peak "
                  f"score {u.peak_ratio:.1f}x the median class's).", ""]
    lines += [f"Model `{result.model}`; dataset **{d['name']}** from `{d['source']}` ({d['n_test']} test images, "
              f"fingerprint `{d['fingerprint'][:16]}`); explanations: {explainer_text(result)}, precision "
              f"{result.precision}, device `{result.environment['device']}`; audit took "
              f"{result.seconds['audit']:.0f} s.", ""]
    pasted = d.get("patched_test")
    if pasted:
        p = pasted["patch"]
        where = box_text(pasted["box_tlbr_px"]) if pasted["box_tlbr_px"] is not None else f"{p['corner']} places"
        looks = f"sigma {p['strength']:g} px" if p.get("kind") == "blur" and p.get("strength") else f"RGB {tuple(p['color'])}"
        lines += [f"Test set: {len(pasted['indices'])} of the *{pasted['class']}* test images ({pasted['fraction']:.0%}) carry a "
                  f"{p.get('kind', 'square')} artefact of {p['patch_size']} px, {looks}, at {where} "
                  "(`--patch-test-fraction`). The audit is not told this; it is used only to score the audit "
                  "(adjusted Rand index, overlap of the found region with the patch).", ""]
    return lines


def _candidate_rows(result: AuditResult) -> list[str]:
    rows = ["| rank | class | test | cluster (n) | region | found by | pasted on other classes: called this class | "
            "region occluded only (a pattern or blur: rolled out of place) | untouched | removal changes the prediction | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result.candidates:
        cluster = c.cluster if c.cluster is not None else "carriers"
        rows.append(f"| {c.rank} | {c.class_name} | {c.test or 'fixed place'} | {cluster} ({c.n}) | {region_text(c)} | {c.kind} | "
                    f"{_pct(c.transplant_flip)} | {_pct(_control(c))} | {_pct(c.untouched)} | "
                    f"{_removal(c)} | **{c.verdict}** |")
    rows.append("")
    for c in result.candidates:
        iou = f" Overlap with the planted patch: IoU {c.iou_with_planted_box:.2f}." if c.iou_with_planted_box is not None else ""
        other = "".join(f" The {t.test} test{_of_cluster(t)}: {t.verdict}, {_pct(t.transplant_flip)}." for t in c.also_tested or ())
        what = "Added pattern" if c.pattern else "The carriers' blurred region" if c.blurred else "Pasted pixels"
        rows.append(f"- #{c.rank} {c.class_name}: {c.reason}. {what}: mean RGB {tuple(c.mean_rgb)}.{iou}{other}")
    return rows + [""]


def _of_cluster(test) -> str:
    return f" of cluster {test.cluster}" if test.cluster is not None else ""


def _best_clusters(result: AuditResult) -> dict[str, RankedCluster]:
    """{class: its best-ranked cluster}, best class first."""
    best = {}
    for row in result.ranking:
        best.setdefault(row.class_name, row)
    return best


def _class_rows(result: AuditResult) -> list[str]:
    verdicts = class_verdicts(result)
    best = _best_clusters(result)
    rows = ["| class | images | clusters (eigengap) | fixed-place energy, whole class | best cluster (n) | its fixed-place "
            "energy | x uniform (lower bound) | verdict |", "|---|---|---|---|---|---|---|---|"]
    order = [r.class_name for r in best.values()] + [n for n in result.classes if n not in best]
    for name in order:
        rec = result.classes[name]
        if not rec.discovered:
            rows.append(f"| {name} | {rec.n_images} | skipped: too few images | | | | | |")
            continue
        b = best.get(name)
        cluster = rec.clusters[b.cluster] if b else None
        rows.append(f"| {name} | {rec.n_images} | {rec.n_clusters} ({rec.eigengap:.3f}) | {interval(rec.fixed_place)} | "
                    + (f"{b.cluster} ({b.n}) | {interval(cluster.fixed_place)} | {b.score:.1f}x | " if b else "none | | | ")
                    + f"{verdicts[name]} |")
    return rows + [""]


def _ground_truth_rows(result: AuditResult) -> list[str]:
    rows = []
    for name, rec in result.classes.items():
        if rec.adjusted_rand_index is not None:
            shares = ", ".join(f"cluster {c.cluster}: {c.patched_share:.0%} of {c.n}" for c in rec.clusters)
            group = (f" The confirmed artefact's sub-population (its clusters together) against patched/unpatched: "
                     f"{rec.adjusted_rand_index_artefact:.3f}." if rec.adjusted_rand_index_artefact is not None else "")
            ari = (f"Adjusted Rand index of the clusters against patched/unpatched: {rec.adjusted_rand_index:.3f} over "
                   f"the true {name} images, {rec.adjusted_rand_index_all:.3f} over every image assigned to the class."
                   + group
                   if rec.patched_share_true < 1 else
                   f"Every true {name} image assigned to it is patched, so there is no split to score.")
            rows.append(f"- {name}: {rec.n_patched} patched images among the {rec.n_images} assigned to it; patched share "
                        f"per cluster: {shares}. {ari}")
    return ["## Checked against the pasted patch", ""] + rows + [""] if rows else []


def _cast_rows(result: AuditResult) -> list[str]:
    """The colour-cast scan's classes (`measure.casts`), or nothing where the audit did not scan."""
    if result.colour_casts is None:
        return []
    c = result.settings["colour_casts"]
    rows = ["## Global colour casts (measured, no verdict)", "",
            f"A cast over the whole image has no region to find, so the audit transplants its effect: every pixel of "
            f"{c['scan_images']} of the images is shifted by {c['levels']} levels along each of the {c['directions']} "
            "directions of the RGB cube (each channel -, 0 or +), and for every class the share of images not called "
            f"it before that are called it after is counted. The {c['checked_classes']} classes a cast turns most "
            f"images into, each with its strongest cast measured again on up to {c['check_images']} other images:", "",
            "| class | cast (R, G, B levels) | other images turned into it | in the scan |", "|---|---|---|---|"]
    for cast in result.colour_casts:
        rows.append(f"| {cast.class_name} | {_rgb_text(cast)} | {_pct(cast.flip)} | {100 * cast.scan_flip:.1f}% |")
    return rows + ["", "No verdict is drawn from these rates: models react to faint casts without any shortcut (on "
                   "15 of this project's CIFAR-10 ResNet-18s that rely on no cast, the strongest one turned 9-28% of "
                   "other images into one class, mostly deer under a green cast). A class far above that, for which "
                   "no region was found, is worth comparing with a model trained without the suspected cast.", ""]


def _rules(result: AuditResult) -> list[str]:
    s = result.settings
    return [
        "## How the audit works (rules fixed before measuring)", "",
        f"1. **Discover** (SpRAy): each class's maps (of the test images predicted as it, explaining that class) are "
        f"pooled to {s['embed_grid']}x{s['embed_grid']} and L2-normalised, linked into a symmetric "
        f"{s['knn_neighbours']}-nearest-neighbour graph and clustered spectrally (scikit-learn); the number of clusters "
        f"(1..{s['max_clusters']}) is where the normalised Laplacian's spectrum jumps most (eigengap). Classes with fewer "
        f"than {s['min_class_images']} images are skipped.",
        f"2. **Fixed-place energy**: the share of each image's relevance on its cluster's {s['fixed_place_px']} most relevant "
        f"pixels, against {s['fixed_place_px']}/{_pixels(s)} for a uniform map. Clusters of at least {s['min_cluster_images']} images "
        f"are ranked by its lower 95% bound; the best cluster of "
        + ("every class" if s.get("top_candidates") is None else f"each of the top {s['top_candidates']} classes")
        + " is tested.",
        f"3. **Candidate region**: where the cluster's mean map is at least {s['region_threshold']} of its maximum, narrowed "
        f"(within {s['search_margin_px']} px) to pixels whose spread across the cluster's images is below "
        f"{s['constant_pixel_ratio']} of their spread over the whole test set, if there are such ('constant pixels'; else "
        "'relevance only').",
        f"4. **Transplant**: the region's per-pixel median is pasted at the same place on up to {s['transplant_images']} test "
        f"images of other classes; controls: the same images untouched, and with the region only occluded (filled with "
        f"the mean of a {s['removal_ring_px']} px ring around it)"
        + (f", the latter measured only where the transplant's lower bound reaches {s['candidate_flip_rate']} (below "
           "it the verdict is *none* whatever the controls say)" if s.get("rules_version", 1) >= 6 else "")
        + ". **Removal**: the region is filled the same way in the cluster's own images.",
        f"5. **Verdict**: *{CONFIRMED}* when the transplant's flip rate has a lower 95% bound >= {s['confirm_flip_rate']} "
        f"and above both controls' upper bounds; *{CANDIDATE}* when the region holds constant pixels and either the "
        f"transplant's lower bound is >= {s['candidate_flip_rate']} and above both controls, or removing them changes "
        f">= {s['candidate_removal_rate']} of the cluster's predictions (lower bound); *none* otherwise.",
        f"6. **An artefact that moves**: each class's maps are clustered again by what their relevance looks like "
        f"(|2-D FFT| of the pooled maps, unchanged by a shift), each group scored by the share of every map's relevance on "
        f"its own {s.get('peak_share', 1 / 16):.4g} most relevant pixels; the most peaked group is tested *per image*: each "
        f"image's own region (around its peak, at most {s.get('max_region_share', 1 / 8):.3g} of the image"
        + (", grown up to {:.3g} of it until its removal changes the image's class".format(max(c for _, c in s["region_ladder"]))
           if s.get("region_ladder") else "")
        + ") is pasted where it was onto another class's image, with the same controls and the verdict rule of 5 "
        "('relevance only'). "
        "Each class keeps its stronger test; findings are ranked by causal effect (transplant lower bound minus the "
        "larger control's upper bound).",
        *_later_rules(s), "",
        f"Rates and energies are means with 95% percentile-bootstrap intervals ({s['bootstrap_resamples']} resamples, seed "
        f"{s['seed']}).", ""]


def _later_rules(s: dict) -> list[str]:
    """Rules 7 on, numbered in order: the tests an audit's rules version had (read off its settings), then the
    unexplained-concentration flag."""
    tests = [
        *([f"**Shared pixels** (without relevance): the pixels where the share of the class's images holding one colour "
           f"(within {s['shared_tolerance']} levels, largest channel) is at least {s['shared_min_share']} and "
           f"{s['shared_ratio']}x that share over as many images of other classes; their largest group is pasted "
           "(those pixels only, in the colour the class's images share) with the controls of 4, and removed from the "
           f"images that hold the colours on at least {s['shared_carrier_share']} of its pixels; verdict as in 5. It "
           "finds an artefact at one place that only some of the class's images carry, where relevance does not "
           "concentrate on it."] if "shared_ratio" in s else []),
        *(["**A shared faint pattern** (without relevance): each image's residual "
           f"(the image minus its local {s['pattern_local_mean_px']}x{s['pattern_local_mean_px']} mean) is scored by "
           "its projection on the class's mean residual less that of as many images of other classes, cross-fitted on "
           "two halves; the images scoring more than the other classes' mean plus "
           f"{s['pattern_carrier_sigmas']} of their standard deviations carry a pattern. Where at least "
           f"{s['min_cluster_images']} do, their mean residual (less the other classes') is added to other classes' "
           "images (control: the same images untouched; the rate with the pattern rolled by half the image says "
           "whether the model answers this exact pattern) and subtracted from the carriers; verdict as in 5, a class "
           "keeping its pixel tests at the same verdict. It finds an artefact added over the image, such as a sensor's "
           "fixed noise, which has no region and no constant pixels."] if "pattern_carrier_sigmas" in s else []),
        *(["**A shared blur** (without relevance): each image's detail (its mean absolute residual, as for the "
           "pattern) where the class's images lack detail is compared with other classes' images and with the same "
           "image elsewhere (a log ratio, cross-fitted on two halves); the images scoring more than the other classes' "
           f"mean plus {s['pattern_carrier_sigmas']} of their standard deviations carry a blur. Where at least "
           f"{s['min_cluster_images']} do, the box where they lack most (grown by "
           f"{', '.join(str(v) for v in s['blur_grow_px'])} px) and a sigma (of "
           f"{', '.join(f'{v:g}' for v in s['blur_sigma_ladder_px'])} px) are chosen as the blur that brings the other "
           f"classes' images' mean detail map nearest the carriers' ({_blur_fit(s)}), and that box is blurred at that "
           "sigma on other classes' images (control: the same images untouched; the same blur rolled by half the image is "
           "reported); a blur cannot be undone, so there is no removal test; verdict as in 5, a class keeping its "
           "pixel tests at the same verdict."] if "blur_sigma_ladder_px" in s else []),
        "**Unexplained concentration**: a class none of whose tests found anything, whose best group scores at least "
        f"{s.get('unexplained_ratio', 1.5)}x the median class's (fixed-place or peak score), or whose tested regions, "
        f"pasted, move other images to it at a rate whose lower bound is >= {s.get('candidate_flip_rate', 0.1)}, above "
        f"both controls and at least {s.get('unexplained_ratio', 1.5)}x the median tested class's rate, is reported as "
        "such: the audit could not localise what the model looks at, which is not an all-clear. It is a lead, not a "
        "finding: on clean CIFAR-10 models it also fires on classes whose relevance is naturally concentrated or whose "
        "objects, pasted, carry their class (docs: zoo)."]
    return [f"{number}. {text}" for number, text in enumerate(tests, start=7)]


def audit_markdown(result: AuditResult) -> str:
    """AUDIT.md from audit.json's content."""
    lines = _header(result) + ["## Causal tests of the top candidates", ""] + _candidate_rows(result)
    lines += ["## Discovery: every class", ""] + _class_rows(result) + _ground_truth_rows(result) + _cast_rows(result)
    lines += ["## Figures", ""]
    for rel in result.figures:
        lines += [f"![{rel}]({rel})", ""]
    lines += _rules(result)
    return "\n".join(lines)


# ----- figures --------------------------------------------------------------------------------------------

def _panel(ax, picture, title: str, box=None, colour: str = "white") -> None:
    ax.imshow(picture, interpolation="nearest")
    if box is not None:
        draw_box(ax, box, colour, dashed=False)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def ranking_figure(result: AuditResult):
    """Left: each class's best cluster, fixed-place energy as x uniform with its CI, coloured by verdict.
    Right: each class's normalised-Laplacian spectrum with the eigengap's choice of k marked."""
    verdicts = class_verdicts(result)
    best = _best_clusters(result)
    names = list(best)[::-1]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 0.35 * max(len(names), 6) + 1.4))
    for y, name in enumerate(names):
        c = result.classes[name].clusters[best[name].cluster]
        fp, u = c.fixed_place, c.uniform
        ax.barh(y, fp.mean / u, color=VERDICT_COLOURS[verdicts[name]],
                xerr=[[(fp.mean - fp.low) / u], [(fp.high - fp.mean) / u]], capsize=3)
    ax.axvline(1.0, color="k", ls="--", lw=0.8)
    ax.set_yticks(range(len(names)), [f"{n} (cluster {best[n].cluster}, n={best[n].n})" for n in names], fontsize=8)
    ax.set_xlabel("fixed-place energy of the best cluster, x uniform (dashed: 1)\nbar: mean, whisker: 95% CI; ranked by the lower bound")
    handles = [plt.Rectangle((0, 0), 1, 1, color=col) for col in VERDICT_COLOURS.values()]
    ax.legend(handles, list(VERDICT_COLOURS), fontsize=7, loc="lower right")
    ax.set_title("classes ranked by how consistently relevance sits at one place", fontsize=9)
    cmap = plt.get_cmap("tab10")
    for i, (name, rec) in enumerate(r for r in result.classes.items() if r[1].discovered):
        ev = rec.eigenvalues
        ax2.plot(range(1, len(ev) + 1), ev, "-o", ms=3, lw=1, color=cmap(i % 10), label=f"{name} (k={rec.n_clusters})")
        ax2.plot([rec.n_clusters], [ev[rec.n_clusters - 1]], "s", ms=8, mfc="none", color=cmap(i % 10))
    ax2.set_xlabel("eigenvalue index")
    ax2.set_ylabel("normalised-Laplacian eigenvalue")
    ax2.set_title("spectra: the square marks k, the last eigenvalue before the largest gap", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)
    layout_under_suptitle(fig, f"Shortcut audit of {result.experiment}: {explainer_text(result)}")
    return fig


def _cluster_members(ex: dict, cluster: int) -> torch.Tensor:
    """Global indices of a cluster's example images, most fixed-place relevance first."""
    members = ex["members"][ex["cluster_ids"] == cluster]
    return members[ex["clusters"][cluster]["example_order"]]


def prototypes_figure(result: AuditResult, examples: dict):
    """One row per class (ranked): per cluster, its mean map with the candidate region and its top example."""
    names = list(dict.fromkeys(r.class_name for r in result.ranking))
    names += [n for n in examples["classes"] if n not in names]
    cols = 2 * max(result.classes[n].n_clusters for n in names)
    fig, axes = plt.subplots(len(names), cols, figsize=(PANEL_IN * cols, PANEL_IN * len(names) + 0.6), squeeze=False)
    for row, name in zip(axes, names):
        rec, ex = result.classes[name], examples["classes"][name]
        for ax in row:
            ax.axis("off")
        for j, cluster in enumerate(rec.clusters):
            box = cluster.region.box if cluster.region else None
            mean = ex["clusters"][j]["mean_map"]
            _panel(row[2 * j], plt.get_cmap("jet")(mean.numpy())[..., :3],
                   f"{name} c{j} n={cluster.n}\n{cluster.score:.1f}x uniform", box)
            first = _cluster_members(ex, j)[0]
            _panel(row[2 * j + 1], overlay(examples["images"][first], examples["maps"][first]), "top example", box)
    layout_under_suptitle(fig, "Cluster prototypes: mean map (box: candidate region) | image with the most fixed-place relevance")
    return fig


def candidate_figure(result: AuditResult, examples: dict, rank: int):
    """One tested candidate: the cluster's examples with the region, the pasted pixels on other classes' images
    (before -> after), and the region removed from the cluster's images."""
    c, ex = result.candidates[rank - 1], examples["candidates"][rank - 1]
    classes = result.dataset["classes"]
    shared = c.cluster is None  # the shared-pixel or -pattern test: its carriers and a map of the class, no cluster
    members = (ex["carriers"] if shared else _cluster_members(examples["classes"][c.class_name], c.cluster))[:EXAMPLE_IMAGES]
    words = _PATTERN_WORDS if c.pattern else _BLUR_WORDS if c.blurred else _REGION_WORDS
    box = ex["box"]
    fig, axes = plt.subplots(3, EXAMPLE_IMAGES + 1, figsize=(PANEL_IN * (EXAMPLE_IMAGES + 1), PANEL_IN * 3 + 0.9))
    for ax in axes.ravel():
        ax.axis("off")
    mean = ex["share"] if shared else examples["classes"][c.class_name]["clusters"][c.cluster]["mean_map"]
    _panel(axes[0, 0], plt.get_cmap("jet")(mean.numpy())[..., :3], words["map"] if shared else "cluster mean map", box)
    for ax, i in zip(axes[0, 1:], members):
        _panel(ax, overlay(examples["images"][i], examples["maps"][i]), f"{classes[int(examples['predictions'][i])]}", box)
    canvas = np.full((*examples["images"].shape[-2:], 3), 0.85, dtype=np.float32)  # light grey: the image's extent
    top, left, bottom, right = box
    canvas[top:bottom, left:right] = to_hwc(ex["pixels"])
    _panel(axes[1, 0], canvas, words["pasted"], box, "k")
    for ax, img, before, after in zip(axes[1, 1:], ex["pasted"], ex["before"], ex["after"]):
        _panel(ax, to_hwc(img), f"{classes[int(before)]} -> {classes[int(after)]}", box)
    for ax, img, after in zip(axes[2, 1:], ex["removed"], ex["removed_after"]):
        _panel(ax, to_hwc(img), f"{words['removed']} -> {classes[int(after)]}", box)
    removal = f"removal changes\n{_pct(c.removal_change)}\nof {c.n} predictions" if not c.blurred else \
        "a blur cannot\nbe undone:\nno removal test"
    axes[2, 0].text(0.5, 0.5, removal, ha="center",
                    va="center", fontsize=7, transform=axes[2, 0].transAxes)
    layout_under_suptitle(fig, f"#{c.rank} {c.class_name}, {test_text(c)} (n={c.n}): {c.verdict}\n"
                                f"pasted on other classes -> {c.class_name}: {_pct(c.transplant_flip)}; {words['control']}: "
                                f"{_pct(_control(c))}", fontsize=9)
    return fig


# What the candidate figure's panels say for a region of pixels, and for a faint pattern added to the images.
_REGION_WORDS = {"map": "share of the class's images\nwith one colour", "pasted": "pasted pixels\n(titles: predicted\n"
                 "before -> after)", "removed": "region filled", "control": "occluded only"}
_PATTERN_WORDS = {"map": "the shared pattern's\nstrength", "pasted": "added pattern\n(grey: 0; titles:\npredicted "
                  "before -> after)", "removed": "pattern subtracted", "control": "rolled out of place"}
_BLUR_WORDS = {"map": "where the carriers\nlack detail", "pasted": "a carrier's region\n(titles: predicted\nbefore -> "
               "after, blurred)", "removed": "", "control": "blurred out of place"}


def per_image_figure(result: AuditResult, examples: dict, rank: int):
    """A per-image test: the group's images with their maps and own regions, those regions pasted where they were
    on other classes' images (before -> after), and the regions removed from the group's images."""
    c, ex = result.candidates[rank - 1], examples["candidates"][rank - 1]
    classes = result.dataset["classes"]
    fig, axes = plt.subplots(3, EXAMPLE_IMAGES, figsize=(PANEL_IN * EXAMPLE_IMAGES, PANEL_IN * 3 + 0.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, m, box in zip(axes[0], ex["sources"], ex["source_maps"], ex["boxes"]):
        _panel(ax, overlay(img, m), "its own region", box.tolist())
    for ax, img, box, before, after in zip(axes[1], ex["pasted"], ex["pasted_boxes"], ex["before"], ex["after"]):
        _panel(ax, to_hwc(img), f"{classes[int(before)]} -> {classes[int(after)]}", box.tolist())
    for ax, img, box, after in zip(axes[2], ex["removed"], ex["boxes"], ex["removed_after"]):
        _panel(ax, to_hwc(img), f"region filled -> {classes[int(after)]}", box.tolist())
    layout_under_suptitle(fig, f"#{c.rank} {c.class_name}, per-image test of group {c.cluster} (n={c.n}): {c.verdict}\n"
                                f"each image's region pasted on other classes -> {c.class_name}: {_pct(c.transplant_flip)}; "
                                f"occluded only: {_pct(c.occluded_flip)}; removal changes {_pct(c.removal_change)}", fontsize=9)
    return fig


# Candidate figures drawn: every confirmed or candidate finding, and at least this many of the strongest.
CANDIDATE_FIGURES = 3


def audit_figures(result: AuditResult, examples: dict) -> dict:
    """{path relative to the audit folder: figure} for every figure of an audit."""
    figs = {"figures/audit_ranking.png": ranking_figure(result),
            "figures/audit_prototypes.png": prototypes_figure(result, examples)}
    for c in result.candidates:
        if c.rank > CANDIDATE_FIGURES and c.verdict not in (CONFIRMED, MOVING, CANDIDATE):
            continue
        draw = per_image_figure if c.per_image else candidate_figure
        figs[f"figures/audit_candidate_{c.rank}_{c.class_name}.png"] = draw(result, examples, c.rank)
    return figs


def _pixels(settings: dict) -> int:
    """The audited images' pixel count (audit.json files written before any image size was recorded: 32x32)."""
    height, width = settings.get("image_hw_px", (32, 32))
    return height * width
