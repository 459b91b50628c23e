"""`gradcam-repro`: command-line entry point. Flags map one-to-one onto `Config` fields."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import matplotlib

from gradcam_repro import __version__
from gradcam_repro.config import (
    ALL,
    CORNERS,
    DEFAULT_PRESET,
    LR_SCHEDULES,
    MAX_IMAGE_PIXELS,
    PRECISIONS,
    PRESETS,
    SEED_LAYER,
    STUDY_PRESET,
    Config,
    preset_config,
)
from gradcam_repro.data.registry import DATASETS
from gradcam_repro.errors import UserError, report_error
from gradcam_repro.explain.registry import CAM_METHODS, EXPLAINERS
from gradcam_repro.measure.spray import AUDIT_LAYER, AUDIT_METHOD, TOP_CANDIDATES
from gradcam_repro.pipeline.audit import AuditOptions, audit, audit_summary
from gradcam_repro.pipeline.compare import CompareOptions, compare_methods
from gradcam_repro.pipeline.explain_files import explain_files
from gradcam_repro.pipeline.grid import DEFAULT_METHODS, read_study_file, study_grid
from gradcam_repro.pipeline.progress import Reporter, compare_summary, run_final_line, run_summary
from gradcam_repro.pipeline.repair import STRATEGIES, RepairOptions, parse_box, repair
from gradcam_repro.pipeline.run import evaluate_run, report_run, run
from gradcam_repro.pipeline.study import run_study
from gradcam_repro.pipeline.study_tasks import StudyOptions
from gradcam_repro.pipeline.view import DEFAULT_PORT, open_report, serve
from gradcam_repro.runtime import choose_device

COLORS = {"yellow": (255, 255, 0), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
          "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255), "black": (0, 0, 0)}


def count_or_all(text: str) -> int | str:
    """A sample size: a whole number, or 'all' (every image, also where the preset samples)."""
    if text.strip().lower() == ALL:
        return ALL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images; use a whole number or 'all'") from None


def parse_color(text: str) -> tuple[int, int, int]:
    """'255,255,0' or a name like 'yellow' -> (r, g, b)."""
    if text.lower() in COLORS:
        return COLORS[text.lower()]
    try:
        rgb = tuple(int(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a colour; use R,G,B with values 0..255 (e.g. 255,255,0) or one of {', '.join(COLORS)}"
        )
    return rgb


def parse_sizes(text: str) -> tuple[int, ...]:
    """'16,24,32' -> (16, 24, 32); '' -> () (always full size)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of sizes; use e.g. 16,24,32") from None


def _parent(*flags: tuple[list[str], dict]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    for names, kwargs in flags:
        parent.add_argument(*names, **kwargs)
    return parent


# Flags several commands share, declared once.
DEBUG = _parent((["--debug"], {"action": "store_true", "default": argparse.SUPPRESS, "help": "show full tracebacks on errors"}))
DEVICE = _parent((["--device"], {"help": "auto (default: CUDA if available), cpu, cuda or cuda:N"}))
DATA_ROOT = _parent((["--data-root"], {"help": "folder holding cifar-10-batches-py/ or train/<class>/ + test/<class>/ "
                                                "(default: where the run found it, else $GRADCAM_DATA_ROOT, else ./data; "
                                                "download is tried if empty)"}))
CAM = _parent((["--cam"], {"choices": CAM_METHODS, "help": "CAM method (default gradcam; scorecam costs one forward pass "
                                                          "per channel, ~500x gradcam at layer4)"}),
              (["--cam-layer"], {"help": f"explained layer as a dotted path (default {SEED_LAYER} = the seed's "
                                         "layer4[-1].conv2; e.g. layer4, layer3, layer3.1.conv2, layer2)"}))
OUTPUT = _parent((["--quiet"], {"action": "store_true", "help": "print only errors and the final line (no progress bars, "
                                                               "no log lines)"}),
                 (["--json"], {"action": "store_true", "help": "for scripts: stdout gets one JSON summary at the end and "
                                                              "nothing else (log lines and progress go to stderr)"}))


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                   help="named config: paper = seed protocol on all 50,000 images (5 epochs SGD lr 0.01); "
                        "quick = both experiments in <= 15 min on a 2-core CPU; sweep = one `study` cell (21 in "
                        "<= 60 min); smoke = about a minute, for tests (default: " f"{DEFAULT_PRESET}; study: {STUDY_PRESET}). Every other "
                        "flag overrides the preset.")
    g.add_argument("--dataset", choices=list(DATASETS), help="cifar10 (default) or the synthetic shapes set with object masks")
    g.add_argument("--out", help="output folder (default: runs/<preset>)")
    g.add_argument("--seed", type=int, help="seed for initialisation, subsets, shuffling and augmentation (default 0)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, help="training epochs per experiment (seed: 5)")
    t.add_argument("--batch-size", type=int, help="training batch size (seed: 128)")
    t.add_argument("--lr", type=float, help="SGD learning rate, the peak for onecycle (seed: 0.01)")
    t.add_argument("--momentum", type=float, help="SGD momentum (seed: 0.9)")
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    t.add_argument("--weight-decay", type=float, help="L2 weight decay (seed: 0)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="constant (seed) or onecycle: linear warm-up over 25%% of steps, then linear decay")
    t.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (seed: 0)")
    t.add_argument("--train-subset", type=int, help="train on a class-balanced subset of this many images (default: all)")
    t.add_argument("--eval-subset", type=int, help="test images scored after each epoch (default: all); final metrics use --test-subset")
    t.add_argument("--test-subset", type=int, help="final metrics and figures on a class-balanced subset of the test set (default: all)")
    t.add_argument("--train-resolutions", type=parse_sizes,
                   help="progressive resizing: training input side per epoch, e.g. 16,24,32 (the last repeats; "
                        "default: 32 throughout). Evaluation and Grad-CAM always use 32 px")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (zero pad 4 px) + horizontal flip (default: on)")
    t.add_argument("--precision", choices=PRECISIONS, help="auto (bf16 where the hardware has it, default), bf16 or fp32")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train through torch.compile (default: off). Measured slower on a 2-core CPU; it helps "
                        "mainly on GPUs")
    b = p.add_argument_group("shortcut (bias injection)")
    b.add_argument("--bias-class", help="class whose training images get the patch (default: frog; hbar for --dataset shapes)")
    b.add_argument("--patch-size", type=int, help="side of the square patch in px (default 6)")
    b.add_argument("--patch-color", type=parse_color, help="R,G,B or a colour name (default 255,255,0 = yellow)")
    b.add_argument("--patch-corner", choices=CORNERS, help="where the patch goes (default top-left)")
    b.add_argument("--patch-offset", type=int, help="distance of the patch from the corner in px (default 0)")
    b.add_argument("--bias-fraction", type=float, help="fraction of the class's training images patched, in [0, 1] (default 1.0)")
    e = p.add_argument_group("explanation and output")
    e.add_argument("--cam-batch-size", type=int, help="images per Grad-CAM forward/backward pass (default 256)")
    e.add_argument("--counterfactual-images", type=count_or_all, help="non-target test images the patch is pasted on "
                   "for the flip-to-target tests (seeded choice; 'all' for every one; default: all)")
    e.add_argument("--cam-images", type=count_or_all, help="images per Grad-CAM evaluation set (seeded choice; 'all' "
                   "for every one; default: all)")
    e.add_argument("--figure-images", type=int, help="images per figure grid (default 8)")
    e.add_argument("--shapes-train", type=int, help="shapes dataset: number of training images (default 10000)")
    e.add_argument("--shapes-test", type=int, help="shapes dataset: number of test images (default 2000)")
    e.add_argument("--show", action="store_true", default=None, help="also show the figures on screen")
    e.add_argument("--force", action="store_true", help="retrain even if a finished experiment with the same config "
                                                        "exists in --out (default: reuse it; interrupted runs resume)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradcam-repro",
        description="Reproduce Grad-CAM on CIFAR-10 and measure whether a ResNet-18 uses a planted shortcut "
                    "(a yellow square on every frog).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_parser = sub.add_parser("run", parents=[DEBUG, DEVICE, DATA_ROOT, CAM, OUTPUT],
                                help="train the baseline and the biased model, then explain and summarise",
                                description="Train a baseline and a frog-biased ResNet-18, compute Grad-CAM, write "
                                            "models, figures, metrics.json, summary.md and REPORT.md under --out.")
    _add_run_flags(run_parser)
    run_parser.add_argument("--parallel", action="store_true",
                            help="train the baseline and the biased model side by side on a local Ray, one CPU and "
                                 "one torch thread each (the study engine), then measure as usual")
    ev = sub.add_parser("evaluate", parents=[DEBUG, DEVICE, DATA_ROOT, CAM, OUTPUT],
                        help="recompute metrics, figures and reports of a finished run from its models",
                        description="Recompute metrics.json, the figures, summary.md and REPORT.md of RUN_DIR from its "
                                    "saved model.pt files, without retraining (--cam/--cam-layer default to the run's).")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `gradcam-repro run`")
    ex = sub.add_parser("explain", parents=[DEBUG, DEVICE, CAM, OUTPUT],
                        help="CAM overlays and top-3 predictions for your own images with a saved model",
                        description="Explain your own image files with the models of a run (or one model.pt). Images "
                                    "of any size are resized to 32x32; grayscale and RGBA are converted to RGB; images "
                                    f"above {MAX_IMAGE_PIXELS:,} pixels are refused.")
    ex.add_argument("model", metavar="RUN_OR_MODEL", help="runs/<name> (every model), runs/<name>/experiments/<key>, or a model.pt")
    ex.add_argument("images", metavar="IMAGE", nargs="+", help="PNG or JPEG files")
    ex.add_argument("--out", default="explanations", help="folder for <image>_<method>.png (default: ./explanations)")
    rep = sub.add_parser("report", parents=[DEBUG], help="rebuild summary.md, REPORT.md and REPORT.html from a run's metrics.json (seconds)")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `gradcam-repro run`")
    _add_compare_parser(sub)
    _add_study_parser(sub)
    _add_view_parser(sub)
    _add_audit_parser(sub)
    _add_repair_parser(sub)
    return parser


def _add_repair_parser(sub) -> None:
    defaults = RepairOptions("augment")
    rp = sub.add_parser("repair", parents=[DEBUG, DEVICE, DATA_ROOT, OUTPUT],
                        help="remove the biased model's shortcut (augment, rrr or last-layer) and measure the repaired "
                             "model like the others",
                        description="Repair RUN_DIR's biased model against an artefact (the run's planted patch, an "
                                    "audit's confirmed candidate, or a box), save it as one more experiment of the run, "
                                    "and re-measure the run: metrics.json, figures and REPORT.md/.html gain its column.")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `gradcam-repro run`")
    rp.add_argument("--strategy", required=True, metavar="STRATEGY",
                    help="; ".join(f"{s.name} = {s.help}" for s in STRATEGIES.values()))
    rp.add_argument("--from-audit", nargs="?", const="", metavar="AUDIT",
                    help="take the artefact from an audit's top confirmed candidate (default folder: RUN_DIR/audit)")
    rp.add_argument("--box", help="the artefact is what the bias class's training images hold in this box: "
                                  "top,left,bottom,right in px (bottom/right exclusive)")
    rp.add_argument("--share", type=float, default=defaults.share,
                    help=f"augment: share of each class's training images given the artefact (default {defaults.share})")
    rp.add_argument("--rrr-weight", type=float, default=defaults.rrr_weight,
                    help=f"rrr: weight of the input-gradient penalty (default {defaults.rrr_weight})")
    rp.add_argument("--repair-epochs", type=int, default=defaults.repair_epochs,
                    help=f"rrr: fine-tuning epochs (default {defaults.repair_epochs})")
    rp.add_argument("--repair-lr", type=float, default=defaults.repair_lr,
                    help=f"rrr: constant SGD learning rate (default {defaults.repair_lr})")
    rp.add_argument("--repair-images", type=int, help="rrr: fine-tune on a class-balanced subset of this many training "
                                                      "images (default: all the biased model saw)")
    rp.add_argument("--per-class", type=int, default=defaults.per_class,
                    help=f"last-layer: training images per class, each with and without the artefact (default {defaults.per_class})")
    rp.add_argument("--force", action="store_true", help="redo the repair even if the same one is saved in the run")


def _add_view_parser(sub) -> None:
    view = sub.add_parser("view", parents=[DEBUG], help="open a run's REPORT.html in the browser, or serve it (--serve)",
                          description="Open RUN_DIR/REPORT.html in the default browser. On a remote machine, --serve "
                                      "serves the run folder on 127.0.0.1 and prints the URL (reach it through "
                                      "`ssh -L PORT:127.0.0.1:PORT HOST`); Ctrl-C stops it.")
    view.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `gradcam-repro run`")
    view.add_argument("--serve", action="store_true", help="serve the run folder over HTTP on 127.0.0.1 instead")
    view.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port for --serve (default {DEFAULT_PORT}; 0: any free port)")



def _add_audit_parser(sub) -> None:
    au = sub.add_parser("audit", parents=[DEBUG, DEVICE, DATA_ROOT, OUTPUT],
                        help="find and causally confirm a shortcut nobody told you about (SpRAy clustering of "
                             "explanations, then transplant/removal tests)",
                        description="Cluster each class's explanation maps spectrally (SpRAy), rank classes and clusters "
                                    "by how consistently relevance sits at one place, and test the top candidates "
                                    "causally: paste the region's pixels on other classes' images, remove them from the "
                                    "cluster's own. Writes audit.json, AUDIT.md and figures under --out.")
    au.add_argument("model", metavar="MODEL_OR_RUN", help="runs/<name> (its biased experiment; see --experiment), "
                                                          "runs/<name>/experiments/<key>, or a model.pt")
    au.add_argument("--experiment", help="which experiment of a run folder to audit (default: biased)")
    au.add_argument("--dataset", choices=list(DATASETS), help="dataset of the test images (default: the one the model was "
                                                              "trained on, from spec.json; cifar10 for a bare model.pt)")
    au.add_argument("--method", default=AUDIT_METHOD, choices=list(EXPLAINERS),
                    help=f"explanation method (default {AUDIT_METHOD}: see README, Finding a shortcut)")
    au.add_argument("--layer", default=AUDIT_LAYER, help=f"explained layer, a dotted path (default {AUDIT_LAYER})")
    au.add_argument("--out", help="output folder (default: <run>/audit, or audits/<model> for a model.pt)")
    au.add_argument("--images", type=int, help="audit a class-balanced subset of this many test images (default: all)")
    au.add_argument("--classes", nargs="+", metavar="CLASS", help="audit only these classes (default: all)")
    au.add_argument("--candidates", type=int, default=TOP_CANDIDATES,
                    help=f"how many top-ranked classes are tested causally (default {TOP_CANDIDATES})")
    au.add_argument("--patch-test-fraction", type=float, metavar="F",
                    help="paste the run's patch (its size, colour, corner) on a seeded share F of --patch-test-class's "
                         "test images, recorded in audit.json, to check the audit (default: the test set as it is)")
    au.add_argument("--patch-test-class", help="class whose test images get the patch (default: the run's bias class)")
    au.add_argument("--seed", type=int, default=0, help="seed of the subsets, the pasted share, clustering and bootstrap (default 0)")


def _add_compare_parser(sub) -> None:
    cmp = sub.add_parser("compare", parents=[DEBUG, DEVICE, DATA_ROOT, OUTPUT],
                         help="every CAM method x layer and pixel-space baselines on a finished run: "
                              "shortcut evidence, shapes localisation, sanity check, deletion/insertion",
                         description="Measure every registered explanation method (" + ", ".join(EXPLAINERS) + ") "
                                     "at each layer of the sweep on RUN_DIR's models; writes RUN_DIR/methods.json, "
                                     "figures and a section of REPORT.md.")
    cmp.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `gradcam-repro run`")
    cmp.add_argument("--shapes-run", help="a run made with --dataset shapes: adds localisation against object masks")
    cmp.add_argument("--methods", nargs="+", metavar="METHOD", help="subset of methods (default: all)")
    cmp.add_argument("--images", type=int, default=100, help="images per scored set (default 100)")
    cmp.add_argument("--scorecam-images", type=int, default=8, help="of those, how many Score-CAM explains (default 8)")
    cmp.add_argument("--sanity-images", type=int, default=16, help="images in the randomisation cascade (default 16)")
    cmp.add_argument("--faithfulness-images", type=int, default=64, help="images for deletion/insertion (default 64)")


def _add_study_parser(sub) -> None:
    st = sub.add_parser("study", parents=[DEBUG, DEVICE, DATA_ROOT, CAM, OUTPUT],
                        help="a grid of seeds x bias fraction x patch size ... on Ray, aggregated across seeds",
                        description="Train and measure every cell of a grid (default: seeds 0 1 2 x fractions 0 0.01 "
                                    "0.03 0.1 0.3 0.6 1.0 with --preset sweep) on Ray, then write study.json, STUDY.md "
                                    "and dose-response figures under --out (default runs/study). Finished cells are "
                                    "skipped on a rerun. Every `run` flag sets a value fixed for all cells.")
    st.add_argument("study_file", metavar="STUDY_FILE", nargs="?", help="TOML study file (see README, Studies); flags win")
    _add_run_flags(st)
    st.set_defaults(preset=None)  # a study file's preset, else sweep
    g = st.add_argument_group("grid axes (every combination is one cell)")
    g.add_argument("--seeds", type=int, nargs="+", metavar="N", help="seeds (default 0 1 2)")
    g.add_argument("--fractions", type=float, nargs="+", metavar="F", dest="bias_fraction_axis",
                   help="bias fractions in [0, 1]; 0 is each seed's shared baseline (default 0 0.01 0.03 0.1 0.3 0.6 1.0)")
    g.add_argument("--patch-sizes", type=int, nargs="+", metavar="PX", help="patch sides in px")
    g.add_argument("--patch-colors", type=parse_color, nargs="+", metavar="COLOR", help="R,G,B or colour names")
    g.add_argument("--bias-classes", nargs="+", metavar="CLASS", help="shortcut classes")
    g.add_argument("--presets", nargs="+", choices=list(PRESETS), help="training presets")
    g.add_argument("--methods", nargs="+", choices=list(EXPLAINERS), metavar="METHOD",
                   help=f"explanation methods scored in every cell (default {' '.join(DEFAULT_METHODS)})")
    st.add_argument("--against", metavar="STUDY_DIR",
                    help="compare with another study's verdicts (its study.json) at the conditions both have, e.g. "
                         "a cheaper preset against quick: STUDY.md and study.json say which verdicts hold in every "
                         "seed of one study only")
    r = st.add_argument_group("Ray")
    r.add_argument("--address", help="join this Ray cluster unchanged (default: $RAY_ADDRESS, else start a local Ray "
                                     "with one worker per core)")
    r.add_argument("--cpus-per-cell", type=int, default=1, help="Ray CPUs and torch threads per cell (default 1)")
    r.add_argument("--gpus-per-cell", type=float, default=0.0, help="Ray GPUs per cell; fractions share a GPU (default 0)")
    r.add_argument("--max-retries", type=int, default=2, help="retries of a failed cell before it is reported (default 2)")


STUDY_AXIS_FLAGS = {"seeds": "seed", "bias_fraction_axis": "bias_fraction", "patch_sizes": "patch_size",
                    "patch_colors": "patch_color", "bias_classes": "bias_class", "presets": "preset"}


def config_from_args(args: argparse.Namespace) -> Config:
    fields = set(Config.__dataclass_fields__) - {"preset"}  # `force` is a run option, not part of the config
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    return preset_config(args.preset, **overrides)


def reporter_for(args) -> Reporter:
    """What a command prints: progress and log lines (default), only the final line (--quiet), JSON (--json)."""
    return Reporter("quiet" if args.quiet else "auto", json=args.json)


def _run(args) -> None:
    config = config_from_args(args)
    if not config.show:
        matplotlib.use("Agg")
    reporter = reporter_for(args)
    metrics = run(config, log=reporter, force=args.force, parallel=args.parallel)
    reporter.summary(run_summary(metrics, config.out_dir))


def _evaluate(args) -> None:
    reporter, start = reporter_for(args), time.perf_counter()
    metrics = evaluate_run(args.run_dir, log=reporter, data_root=args.data_root, device=args.device,
                           cam_layer=args.cam_layer, cam=args.cam)
    reporter.final(run_final_line(metrics, args.run_dir, time.perf_counter() - start))
    reporter.summary(run_summary(metrics, args.run_dir, command="evaluate"))


def _explain(args) -> None:
    reporter = reporter_for(args)
    written = explain_files(args.model, args.images, args.out, args.cam_layer or SEED_LAYER, choose_device(args.device or "auto"),
                      method=args.cam or "gradcam",
                      log=lambda line: (reporter.notice if line.startswith("notice:") else reporter.log)(line))
    reporter.final(f"wrote {len(written)} file(s) to {args.out}")
    reporter.summary({"command": "explain", "out": args.out, "files": [w["file"] for w in written], "images": written})


def _compare(args) -> None:
    options = CompareOptions(methods=tuple(args.methods) if args.methods else None, images=args.images,
                             scorecam_images=args.scorecam_images, sanity_images=args.sanity_images,
                             faithfulness_images=args.faithfulness_images, shapes_run=args.shapes_run,
                             device=args.device, data_root=args.data_root)
    reporter = reporter_for(args)
    methods = compare_methods(args.run_dir, options, log=reporter)
    reporter.summary(compare_summary(methods, args.run_dir))


def _study(args) -> None:
    settings = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__ and k not in ("out", "show")
                and v is not None}
    axes = {axis: getattr(args, flag) for flag, axis in STUDY_AXIS_FLAGS.items() if getattr(args, flag)}
    grid = study_grid(read_study_file(args.study_file) if args.study_file else {}, settings, axes, args.methods)
    options = StudyOptions(out=args.out or "runs/study", address=args.address, cpus_per_cell=args.cpus_per_cell,
                           gpus_per_cell=args.gpus_per_cell, max_retries=args.max_retries, force=args.force,
                           against=args.against)
    reporter = reporter_for(args)
    study = run_study(grid, options, log=reporter)
    reporter.summary({"command": "study", "out": options.out, "study_md": f"{options.out}/STUDY.md",
                      "cells": study["cells"], "thresholds": study["thresholds"],
                      **({"against": study["against"]} if "against" in study else {})})



def _audit(args) -> None:
    options = AuditOptions(experiment=args.experiment, dataset=args.dataset, data_root=args.data_root, method=args.method,
                           layer=args.layer, out=args.out, device=args.device, images=args.images,
                           classes=tuple(args.classes) if args.classes else None, candidates=args.candidates,
                           patch_test_fraction=args.patch_test_fraction, patch_test_class=args.patch_test_class,
                           seed=args.seed)
    reporter = reporter_for(args)
    result = audit(args.model, options, log=reporter)
    reporter.final(result["final_line"])
    reporter.summary(audit_summary(result))


def _repair(args) -> None:
    options = RepairOptions(args.strategy, from_audit=args.from_audit, box=parse_box(args.box) if args.box else None,
                            share=args.share, rrr_weight=args.rrr_weight, repair_epochs=args.repair_epochs,
                            repair_lr=args.repair_lr, repair_images=args.repair_images, per_class=args.per_class,
                            device=args.device, data_root=args.data_root, force=args.force)
    reporter = reporter_for(args)
    metrics = repair(args.run_dir, options, log=reporter)
    repairs = {name: r.to_dict() for name, r in metrics.repairs.items()}
    reporter.summary({**run_summary(metrics, args.run_dir, command="repair"), "repairs": repairs})


COMMANDS = {"run": _run, "evaluate": _evaluate, "explain": _explain, "compare": _compare, "study": _study,
            "report": lambda args: print(report_run(args.run_dir)),
            "view": lambda args: serve(args.run_dir, args.port) if args.serve else open_report(args.run_dir),
            "audit": _audit, "repair": _repair}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so that cleanup (temporary files, the lock) runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command != "run":
        matplotlib.use("Agg")
    try:
        COMMANDS[args.command](args)
        return 0
    except UserError as exc:
        return report_error(exc, "gradcam-repro", args.debug)
    except KeyboardInterrupt as exc:
        print("gradcam-repro: interrupted; finished files and per-epoch checkpoints are intact, "
              "rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
