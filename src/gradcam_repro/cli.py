"""`gradcam-repro`: command-line entry point. Flags map one-to-one onto `Config` fields."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import matplotlib

from gradcam_repro.config import CORNERS, LR_SCHEDULES, MAX_IMAGE_PIXELS, PRECISIONS, PRESETS, Config, preset_config
from gradcam_repro.data.registry import DATASETS
from gradcam_repro.errors import UserError
from gradcam_repro.explain.registry import CAM_METHODS, EXPLAINERS
from gradcam_repro.model.resnet import DEFAULT_LAYER
from gradcam_repro.pipeline.compare import CompareOptions, compare_methods
from gradcam_repro.pipeline.run import evaluate_run, report_run, run
from gradcam_repro.pipeline.user_images import explain
from gradcam_repro.runtime import choose_device

COLORS = {"yellow": (255, 255, 0), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
          "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255), "black": (0, 0, 0)}


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
              (["--cam-layer"], {"help": f"explained layer as a dotted path (default {DEFAULT_LAYER} = the seed's "
                                         "layer4[-1].conv2; e.g. layer4, layer3, layer3.1.conv2, layer2)"}))


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="named config: paper = seed protocol on all 50,000 images (5 epochs SGD lr 0.01); "
                        "quick = both experiments in <= 15 min on a 2-core CPU; smoke = about a minute, for tests "
                        "(default: quick). Every other flag overrides the preset.")
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
    e.add_argument("--counterfactual-images", type=int, help="non-target test images the patch is pasted on for the "
                   "flip-to-target tests (seeded choice; default: all)")
    e.add_argument("--cam-images", type=int, help="images per Grad-CAM evaluation set (seeded choice; default: all)")
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_parser = sub.add_parser("run", parents=[DEBUG, DEVICE, DATA_ROOT, CAM],
                                help="train the baseline and the biased model, then explain and summarise",
                                description="Train a baseline and a frog-biased ResNet-18, compute Grad-CAM, write "
                                            "models, figures, metrics.json, summary.md and REPORT.md under --out.")
    _add_run_flags(run_parser)
    ev = sub.add_parser("evaluate", parents=[DEBUG, DEVICE, DATA_ROOT, CAM],
                        help="recompute metrics, figures and reports of a finished run from its models",
                        description="Recompute metrics.json, the figures, summary.md and REPORT.md of RUN_DIR from its "
                                    "saved model.pt files, without retraining (--cam/--cam-layer default to the run's).")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `gradcam-repro run`")
    ex = sub.add_parser("explain", parents=[DEBUG, DEVICE, CAM],
                        help="CAM overlays and top-3 predictions for your own images with a saved model",
                        description="Explain your own image files with the models of a run (or one model.pt). Images "
                                    "of any size are resized to 32x32; grayscale and RGBA are converted to RGB; images "
                                    f"above {MAX_IMAGE_PIXELS:,} pixels are refused.")
    ex.add_argument("model", metavar="RUN_OR_MODEL", help="runs/<name> (every model), runs/<name>/experiments/<key>, or a model.pt")
    ex.add_argument("images", metavar="IMAGE", nargs="+", help="PNG or JPEG files")
    ex.add_argument("--out", default="explanations", help="folder for <image>_<method>.png (default: ./explanations)")
    rep = sub.add_parser("report", parents=[DEBUG], help="rebuild summary.md and REPORT.md from a run's metrics.json (seconds)")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `gradcam-repro run`")
    _add_compare_parser(sub)
    return parser


def _add_compare_parser(sub) -> None:
    cmp = sub.add_parser("compare", parents=[DEBUG, DEVICE, DATA_ROOT],
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


def config_from_args(args: argparse.Namespace) -> Config:
    fields = set(Config.__dataclass_fields__) - {"preset"}  # `force` is a run option, not part of the config
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    return preset_config(args.preset, **overrides)


def _run(args) -> None:
    config = config_from_args(args)
    if not config.show:
        matplotlib.use("Agg")
    run(config, force=args.force)


def _evaluate(args) -> None:
    evaluate_run(args.run_dir, data_root=args.data_root, device=args.device, cam_layer=args.cam_layer, cam=args.cam)


def _explain(args) -> None:
    written = explain(args.model, args.images, args.out, args.cam_layer or DEFAULT_LAYER, choose_device(args.device or "auto"),
                      method=args.cam or "gradcam",
                      log=lambda line: print(line, file=sys.stderr if line.startswith("notice:") else sys.stdout))
    print(f"wrote {len(written)} file(s) to {args.out}")


def _compare(args) -> None:
    options = CompareOptions(methods=tuple(args.methods) if args.methods else None, images=args.images,
                             scorecam_images=args.scorecam_images, sanity_images=args.sanity_images,
                             faithfulness_images=args.faithfulness_images, shapes_run=args.shapes_run,
                             device=args.device, data_root=args.data_root)
    compare_methods(args.run_dir, options)


COMMANDS = {"run": _run, "evaluate": _evaluate, "explain": _explain, "compare": _compare,
            "report": lambda args: print(report_run(args.run_dir))}


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
        if args.debug:
            raise
        print(f"gradcam-repro: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("gradcam-repro: interrupted; finished files and per-epoch checkpoints are intact, "
              "rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
