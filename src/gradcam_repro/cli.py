"""`gradcam-repro`: command-line entry point. Flags map one-to-one onto `Config` fields."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import matplotlib

from gradcam_repro import __version__
from gradcam_repro.config import (
    DEFAULT_PRESET,
    EXPLANATION,
    MAX_IMAGE_PIXELS,
    PLACEMENTS,
    PRESETS,
    Config,
    preset_config,
)
from gradcam_repro.data.registry import DATASETS
from gradcam_repro.errors import UserError, report_error
from gradcam_repro.explain.registry import CAM_METHODS, EXPLAINERS
from gradcam_repro.model.arch import TRAINABLE
from gradcam_repro.model.sources import source_from_flags
from gradcam_repro.options import add_options, from_args, parse_color
from gradcam_repro.pipeline.audit import AuditOptions, audit, audit_summary
from gradcam_repro.pipeline.benchmark import BenchmarkOptions, run_benchmark
from gradcam_repro.pipeline.compare import CompareOptions, compare_methods
from gradcam_repro.pipeline.explain_files import explain_files
from gradcam_repro.pipeline.grid import DEFAULT_AXES, DEFAULT_METHODS, read_study_file, study_grid
from gradcam_repro.pipeline.progress import Reporter, compare_summary, run_final_line, run_summary
from gradcam_repro.pipeline.repair import STRATEGIES, RepairOptions, parse_box, repair
from gradcam_repro.pipeline.run import evaluate_run, report_run, run
from gradcam_repro.pipeline.study import run_study
from gradcam_repro.pipeline.study_tasks import StudyOptions
from gradcam_repro.pipeline.view import DEFAULT_PORT, open_report, serve
from gradcam_repro.runtime import choose_device


def _parent(*flags: tuple[list[str], dict]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    for names, kwargs in flags:
        parent.add_argument(*names, **kwargs)
    return parent


def _config_parent(*names: str, **overrides: dict) -> argparse.ArgumentParser:
    """A parent parser with the flags of these `Config` fields, defaulting to None (the run's or the preset's value)."""
    parent = argparse.ArgumentParser(add_help=False)
    add_options(parent, Config, only=names, overrides=overrides, all_default_none=True)
    return parent


# Flags several commands share, declared once; the Config fields among them have their help in config.py.
DEBUG = _parent((["--debug"], {"action": "store_true", "default": argparse.SUPPRESS, "help": "show full tracebacks on errors"}))
DEVICE = _config_parent("device")
DATA_ROOT = _config_parent("data_root")
CAM = _config_parent("cam", "cam_layer", cam={"choices": CAM_METHODS})
SHARED = ("device", "data_root")  # option fields whose flags come from the parents above
# The artefact's flags (the run's, overridden for `audit --patch-test-fraction` where given).
ARTEFACT_FIELDS = ("artefact", "patch_size", "patch_color", "patch_corner", "patch_offset", "artefact_text", "opacity",
                   "strength", "jpeg_quality")
ARTEFACT = _config_parent(*ARTEFACT_FIELDS)
# Choices held by registries, which config.py (beneath every stage) cannot import.
CONFIG_CHOICES = {"preset": {"choices": list(PRESETS)}, "dataset": {"choices": list(DATASETS)}}
OUTPUT = _parent((["--quiet"], {"action": "store_true", "help": "print only errors and the final line (no progress bars, "
                                                               "no log lines)"}),
                 (["--json"], {"action": "store_true", "help": "for scripts: stdout gets one JSON summary at the end and "
                                                              "nothing else (log lines and progress go to stderr)"}))
# Any model (issue 22): with --arch, the model argument is a state-dict checkpoint of that architecture.
MODEL_SOURCE = _parent(
    (["--arch"], {"default": None, "help": "the model's architecture, when it is not this project's: torchvision:NAME, "
                                           "timm:NAME or a Python entry point module:function returning an nn.Module; "
                                           "the model argument is then its state-dict checkpoint ('random': random "
                                           "weights)", "metavar": "ARCH"}),
    (["--num-classes"], {"type": int, "default": None, "help": "classes of --arch's output layer (default 10)"}),
    (["--arch-option"], {"action": "append", "default": None, "metavar": "KEY=VALUE",
                         "help": "keyword argument for --arch's constructor, e.g. patch_size=4 (repeatable)"}))
RUN_DIR = _parent((["run_dir"], {"metavar": "RUN_DIR", "help": "folder written by `gradcam-repro run`"}))


def _add_run_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = (), **overrides: dict) -> dict:
    """One flag per `Config` field (defaulting to None: the preset's value) but those of the shared parents and
    `skip`; returns the argument groups by title."""
    return add_options(p, Config, skip=(*SHARED, "cam", "cam_layer", *skip),
                       overrides={**CONFIG_CHOICES, **overrides}, all_default_none=True)


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
                                            "models, figures, metrics.json, summary.md and REPORT.md under --out. "
                                            "The defaults shown are the seed protocol's; --preset replaces some of "
                                            "them, and a flag overrides both.")
    groups = _add_run_flags(run_parser, preset={**CONFIG_CHOICES["preset"], "default": DEFAULT_PRESET})
    groups[EXPLANATION].add_argument("--force", action="store_true", help="retrain even if a finished experiment with the "
                                "same config exists in --out (default: reuse it; interrupted runs resume)")
    run_parser.add_argument("--parallel", action="store_true",
                            help="train the baseline and the biased model side by side on a local Ray, one CPU and "
                                 "one torch thread each (the study engine), then measure as usual")
    sub.add_parser("evaluate", parents=[DEBUG, DEVICE, DATA_ROOT, CAM, OUTPUT, RUN_DIR],
                   help="recompute metrics, figures and reports of a finished run from its models",
                   description="Recompute metrics.json, the figures, summary.md and REPORT.md of RUN_DIR from its "
                               "saved model.pt files, without retraining (--cam/--cam-layer default to the run's).")
    ex = sub.add_parser("explain", parents=[DEBUG, DEVICE, CAM, OUTPUT, MODEL_SOURCE],
                        help="CAM overlays and top-3 predictions for your own images with a saved model",
                        description="Explain your own image files with the models of a run (or one model.pt, or any "
                                    "torchvision/timm/Python model with --arch). Images are resized to the model's "
                                    "input size (32x32 for this project's); grayscale and RGBA are converted to RGB; "
                                    f"images above {MAX_IMAGE_PIXELS:,} pixels are refused. The layer defaults by "
                                    "architecture (docs: Any model).")
    ex.add_argument("model", metavar="RUN_OR_MODEL", help="runs/<name> (every model), runs/<name>/experiments/<key>, "
                                                          "a model.pt, or with --arch a state-dict checkpoint")
    ex.add_argument("images", metavar="IMAGE", nargs="+", help="PNG or JPEG files")
    ex.add_argument("--out", default="explanations", help="folder for <image>_<method>.png (default: ./explanations)")
    sub.add_parser("report", parents=[DEBUG, RUN_DIR], help="rebuild summary.md, REPORT.md and REPORT.html from a run's metrics.json (seconds)")
    _add_compare_parser(sub)
    _add_study_parser(sub)
    _add_benchmark_parser(sub)
    _add_view_parser(sub)
    _add_audit_parser(sub)
    _add_repair_parser(sub)
    return parser


def _add_repair_parser(sub) -> None:
    rp = sub.add_parser("repair", parents=[DEBUG, DEVICE, DATA_ROOT, OUTPUT, RUN_DIR],
                        help="remove the biased model's shortcut (augment, rrr or last-layer) and measure the repaired "
                             "model like the others",
                        description="Repair RUN_DIR's biased model against an artefact (the run's planted patch, an "
                                    "audit's confirmed candidate, or a box), save it as one more experiment of the run, "
                                    "and re-measure the run: metrics.json, figures and REPORT.md/.html gain its column.")
    strategies = "; ".join(f"{s.name} = {s.help}" for s in STRATEGIES.values())
    add_options(rp, RepairOptions, skip=SHARED, overrides={"strategy": {"help": strategies}})


def _add_view_parser(sub) -> None:
    view = sub.add_parser("view", parents=[DEBUG, RUN_DIR], help="open a run's REPORT.html in the browser, or serve it (--serve)",
                          description="Open RUN_DIR/REPORT.html in the default browser. On a remote machine, --serve "
                                      "serves the run folder on 127.0.0.1 and prints the URL (reach it through "
                                      "`ssh -L PORT:127.0.0.1:PORT HOST`); Ctrl-C stops it.")
    view.add_argument("--serve", action="store_true", help="serve the run folder over HTTP on 127.0.0.1 instead")
    view.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port for --serve (default {DEFAULT_PORT}; 0: any free port)")



def _add_audit_parser(sub) -> None:
    au = sub.add_parser("audit", parents=[DEBUG, DEVICE, DATA_ROOT, OUTPUT, ARTEFACT, MODEL_SOURCE],
                        help="find and causally confirm a shortcut nobody told you about (SpRAy clustering of "
                             "explanations, then transplant/removal tests)",
                        description="Cluster each class's explanation maps spectrally (SpRAy), rank classes and clusters "
                                    "by how consistently relevance sits at one place, and test the top candidates "
                                    "causally: paste the region's pixels on other classes' images, remove them from the "
                                    "cluster's own. Writes audit.json, AUDIT.md and figures under --out.")
    au.add_argument("model", metavar="MODEL_OR_RUN", help="runs/<name> (its biased experiment; see --experiment), "
                                                          "runs/<name>/experiments/<key>, or a model.pt")
    add_options(au, AuditOptions, skip=SHARED,
                overrides={"dataset": {"choices": list(DATASETS)}, "method": {"choices": list(EXPLAINERS)}})


def _add_compare_parser(sub) -> None:
    cmp = sub.add_parser("compare", parents=[DEBUG, DEVICE, DATA_ROOT, OUTPUT, RUN_DIR],
                         help="every CAM method x layer and pixel-space baselines on a finished run: "
                              "shortcut evidence, shapes localisation, sanity check, deletion/insertion",
                         description="Measure every registered explanation method (" + ", ".join(EXPLAINERS) + ") "
                                     "at each layer of the sweep on RUN_DIR's models; writes RUN_DIR/methods.json, "
                                     "figures and a section of REPORT.md.")
    add_options(cmp, CompareOptions, skip=SHARED)


AXES = "grid axes (every combination is one cell)"


@dataclass(frozen=True)
class StudyAxes:
    """The grid axes of `gradcam-repro study`: each lists the values of the Config field named by its "axis"."""

    seeds: tuple[int, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "seed", "metavar": "N", "help": "seeds",
        "default_text": " ".join(str(v) for v in DEFAULT_AXES["seed"])})
    bias_fraction_axis: tuple[float, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "bias_fraction", "flag": "--fractions", "metavar": "F",
        "help": "bias fractions in [0, 1]; 0 is each seed's shared baseline",
        "default_text": " ".join(f"{v:g}" for v in DEFAULT_AXES["bias_fraction"])})
    patch_sizes: tuple[int, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "patch_size", "metavar": "PX", "help": "patch sides in px"})
    patch_colors: tuple[tuple[int, int, int], ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "patch_color", "type": parse_color, "nargs": "+", "metavar": "COLOR",
        "help": "R,G,B or colour names"})
    artefacts: tuple[str, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "artefact", "metavar": "KIND", "help": "artefact kinds (square, logo, text, ...)"})
    placements: tuple[str, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "patch_corner", "choices": list(PLACEMENTS), "metavar": "PLACE",
        "help": "artefact placements: corners, centre, random"})
    patch_offsets: tuple[int, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "patch_offset", "metavar": "PX", "help": "artefact distances from the corner in px"})
    bias_classes: tuple[str, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "bias_class", "metavar": "CLASS", "help": "shortcut classes"})
    archs: tuple[str, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "arch", "choices": list(TRAINABLE), "metavar": "ARCH",
        "help": f"architectures trained: {', '.join(TRAINABLE)}"})
    presets: tuple[str, ...] | None = field(default=None, metadata={
        "group": AXES, "axis": "preset", "choices": list(PRESETS), "help": "training presets"})
    methods: tuple[str, ...] | None = field(default=None, metadata={
        "group": AXES, "choices": list(EXPLAINERS), "metavar": "METHOD",
        "help": "explanation methods scored in every cell", "default_text": " ".join(DEFAULT_METHODS)})

    def by_field(self) -> dict[str, tuple]:
        """The axes given, keyed by the Config field each varies."""
        return {f.metadata["axis"]: getattr(self, f.name) for f in dataclasses.fields(self)
                if "axis" in f.metadata and getattr(self, f.name)}


def _add_study_parser(sub) -> None:
    st = sub.add_parser("study", parents=[DEBUG, DEVICE, DATA_ROOT, CAM, OUTPUT],
                        help="a grid of seeds x bias fraction x patch size ... on Ray, aggregated across seeds",
                        description="Train and measure every cell of a grid (default: seeds 0 1 2 x fractions 0 0.01 "
                                    "0.03 0.1 0.3 0.6 1.0 with --preset sweep) on Ray, then write study.json, STUDY.md "
                                    "and dose-response figures under --out (default runs/study). Finished cells are "
                                    "skipped on a rerun. Every `run` flag sets a value fixed for all cells (the "
                                    "defaults shown are the seed protocol's; the preset replaces some of them).")
    st.add_argument("study_file", metavar="STUDY_FILE", nargs="?", help="TOML study file (see README, Studies); flags win")
    _add_run_flags(st, skip=("out",))  # --preset defaults to None: a study file's preset, else sweep
    add_options(st, StudyAxes)
    add_options(st, StudyOptions)  # --out, --force, --against and the Ray flags


def _add_benchmark_parser(sub) -> None:
    bp = sub.add_parser("benchmark", parents=[DEBUG, DEVICE, DATA_ROOT, OUTPUT],
                        help="which explanations and audits catch which artefact kinds, and their false alarms",
                        description="Train biased models for every artefact recipe (kind x seed x dose) and a clean "
                                    "control per seed on the study engine (Ray, resumable), measure every method and "
                                    "layer and audit every model, then write BENCHMARK.json, BENCHMARK.md and heat "
                                    "maps under --out (default runs/benchmark).")
    add_options(bp, BenchmarkOptions)
    add_options(bp, StudyOptions, skip=("against",), overrides={"out": {
        "default": "runs/benchmark", "help": "output folder (default runs/benchmark)"}})


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
    source = source_from_flags(args.arch, args.num_classes, args.arch_option)
    written = explain_files(args.model, args.images, args.out, args.cam_layer, choose_device(args.device or "auto"),
                            method=args.cam or "gradcam", source=source,
                      log=lambda line: (reporter.notice if line.startswith("notice:") else reporter.log)(line))
    reporter.final(f"wrote {len(written)} file(s) to {args.out}")
    reporter.summary({"command": "explain", "out": args.out, "files": [w["file"] for w in written], "images": written})


def _compare(args) -> None:
    options = from_args(CompareOptions, args)
    reporter = reporter_for(args)
    methods = compare_methods(args.run_dir, options, log=reporter)
    reporter.summary(compare_summary(methods, args.run_dir))


def _study(args) -> None:
    settings = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__ and k not in ("out", "show")
                and v is not None}
    axes = from_args(StudyAxes, args)
    grid = study_grid(read_study_file(args.study_file) if args.study_file else {}, settings, axes.by_field(), axes.methods)
    options = from_args(StudyOptions, args)
    reporter = reporter_for(args)
    study = run_study(grid, options, log=reporter).to_dict()
    reporter.summary({"command": "study", "out": options.out, "study_md": f"{options.out}/STUDY.md",
                      "cells": study["cells"], "thresholds": study["thresholds"],
                      **({"against": study["against"]} if "against" in study else {})})



def _benchmark(args) -> None:
    settings = {k: getattr(args, k) for k in ("device", "data_root") if getattr(args, k, None) is not None}
    options, study = from_args(BenchmarkOptions, args), from_args(StudyOptions, args)
    reporter = reporter_for(args)
    result = run_benchmark(options, study, settings, log=reporter)
    reporter.summary({"command": "benchmark", "out": study.out, "benchmark_md": f"{study.out}/BENCHMARK.md",
                      "cells": result.cells, "summaries": [s.to_dict() for s in result.summaries]})


def _audit(args) -> None:
    given = tuple((k, getattr(args, k)) for k in ARTEFACT_FIELDS if getattr(args, k) is not None)
    options = from_args(AuditOptions, args, pasted=given,
                        source=source_from_flags(args.arch, args.num_classes, args.arch_option))
    reporter = reporter_for(args)
    done = audit(args.model, options, log=reporter)
    reporter.final(done.final_line)
    reporter.summary(audit_summary(done.result, done.out))


def _repair(args) -> None:
    options = from_args(RepairOptions, args, box=parse_box(args.box) if args.box else None)  # parse_box: a UserError
    reporter = reporter_for(args)
    metrics = repair(args.run_dir, options, log=reporter)
    repairs = {name: r.to_dict() for name, r in metrics.repairs.items()}
    reporter.summary({**run_summary(metrics, args.run_dir, command="repair"), "repairs": repairs})


COMMANDS = {"run": _run, "evaluate": _evaluate, "explain": _explain, "compare": _compare, "study": _study,
            "benchmark": _benchmark,
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
