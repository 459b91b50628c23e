"""Each command's options are one dataclass: its flags, their help defaults and the parsing come from its fields."""

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from gradcam_repro.cli import StudyAxes, build_parser
from gradcam_repro.config import Config
from gradcam_repro.measure.comparison import CompareOptions
from gradcam_repro.options import add_options, flag_name, from_args, has_flag, parse_color, rgb_of
from gradcam_repro.pipeline.audit import AuditOptions
from gradcam_repro.pipeline.benchmark import BenchmarkOptions
from gradcam_repro.pipeline.repair import RepairOptions
from gradcam_repro.pipeline.study_tasks import StudyOptions


@dataclass(frozen=True)
class Example:
    name: str = field(metadata={"help": "a required name"})
    patch_size: int = field(default=6, metadata={"help": "side of the patch in px"})
    rate: float = field(default=0.25, metadata={"help": "a rate"})
    images: int | None = field(default=None, metadata={"help": "images to use", "default_text": "all"})
    sizes: tuple[int, ...] = field(default=(16, 32), metadata={"help": "sizes"})
    classes: tuple[str, ...] | None = field(default=None, metadata={"metavar": "CLASS", "help": "classes"})
    color: tuple[int, int, int] = field(default=(255, 255, 0), metadata={"type": parse_color, "help": "a colour"})
    force: bool = field(default=False, metadata={"help": "redo it"})
    augment: bool = field(default=True, metadata={"help": "augment"})
    fractions_axis: tuple[float, ...] | None = field(default=None, metadata={"flag": "--fractions", "help": "f"})
    internal_s: float = field(default=30.0, metadata={"cli": False})


def parser_for(cls, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_options(parser, cls, **kwargs)
    return parser


def help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return action.help % {"default": action.default}


def test_a_fields_default_appears_once_in_its_help():
    parser = parser_for(Example)
    assert help_of(parser, "--patch-size") == "side of the patch in px (default 6)"
    assert help_of(parser, "--images") == "images to use (default: all)"
    assert help_of(parser, "--sizes") == "sizes (default 16 32)"
    assert help_of(parser, "--color") == "a colour (default 255,255,0)"
    assert help_of(parser, "--augment") == "augment (default on)"  # not argparse's own "(default: True)" as well
    assert help_of(parser, "--force") == "redo it"  # a switch: leaving it out is off
    text = parser.format_help()
    assert text.count("(default 6)") == 1 and text.count("0.25") == 1


def test_from_args_round_trips_a_dataclass():
    given = Example("x", patch_size=3, rate=0.5, images=40, sizes=(8,), classes=("frog", "cat"), color=(1, 2, 3),
                    force=True, augment=False, fractions_axis=(0.0, 1.0))
    argv = ["--name", "x", "--patch-size", "3", "--rate", "0.5", "--images", "40", "--sizes", "8",
            "--classes", "frog", "cat", "--color", "1,2,3", "--force", "--no-augment", "--fractions", "0", "1"]
    assert from_args(Example, parser_for(Example).parse_args(argv)) == given
    defaults = from_args(Example, parser_for(Example).parse_args(["--name", "x"]))
    assert defaults == Example("x")  # lists become tuples; a field without a flag keeps its default
    assert from_args(Example, parser_for(Example).parse_args(["--name", "x"]), patch_size=9).patch_size == 9


def test_optional_and_tuple_fields_parse_to_their_inner_types():
    args = parser_for(Example).parse_args(["--name", "n", "--images", "12", "--sizes", "16", "24", "--fractions", "0.5"])
    assert args.images == 12 and args.sizes == [16, 24] and args.fractions_axis == [0.5]
    assert parser_for(Example).parse_args(["--name", "n", "--color", "yellow"]).color == (255, 255, 0)
    for bad in (["--name", "n", "--images", "many"], ["--name", "n", "--sizes", "1.5"], []):  # [] misses --name
        with pytest.raises(SystemExit):
            parser_for(Example).parse_args(bad)


def test_all_default_none_leaves_what_is_not_given_to_the_preset_and_still_names_the_default():
    parser = parser_for(Example, all_default_none=True, overrides={"name": {"default": "kept"}})
    args = parser.parse_args([])
    assert args.patch_size is None and args.augment is None and args.force is None and args.name == "kept"
    assert help_of(parser, "--patch-size") == "side of the patch in px (default 6)"


def _dests(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest for a in sub._actions}


@pytest.mark.parametrize("command, cls", [("run", Config), ("study", Config), ("audit", AuditOptions),
                                          ("repair", RepairOptions), ("compare", CompareOptions),
                                          ("study", StudyOptions), ("study", StudyAxes), ("benchmark", BenchmarkOptions)])
def test_every_field_of_each_options_class_has_a_flag(command, cls):
    missing = [f.name for f in dataclasses.fields(cls) if has_flag(f) and f.name not in _dests(command)]
    assert not missing, f"`{command}` has no flag for {cls.__name__} fields {missing}"


def test_the_flags_keep_their_plain_names():
    assert [flag_name(f) for f in dataclasses.fields(StudyAxes)] == [
        "--seeds", "--fractions", "--patch-sizes", "--patch-colors", "--artefacts", "--placements", "--patch-offsets",
        "--bias-classes", "--archs", "--presets", "--methods"]
    args = build_parser().parse_args(["study", "--fractions", "0", "0.5", "--patch-colors", "red", "0,0,255",
                                      "--train-resolutions", "16,24,32", "--cam-images", "all"])
    axes = from_args(StudyAxes, args)
    assert axes.by_field() == {"bias_fraction": (0.0, 0.5), "patch_color": ((255, 0, 0), (0, 0, 255))}
    assert args.train_resolutions == (16, 24, 32) and args.cam_images == "all" and args.preset is None
    assert from_args(StudyOptions, args) == StudyOptions()


def test_command_options_come_from_their_flags():
    args = build_parser().parse_args(["audit", "runs/x", "--classes", "frog", "cat", "--images", "50", "--device", "cpu"])
    assert from_args(AuditOptions, args) == AuditOptions(classes=("frog", "cat"), images=50, device="cpu")
    args = build_parser().parse_args(["repair", "runs/x", "--strategy", "rrr", "--from-audit", "--share", "0.3"])
    assert from_args(RepairOptions, args, box=None) == RepairOptions("rrr", from_audit="", share=0.3)
    args = build_parser().parse_args(["compare", "runs/x", "--methods", "gradcam", "--images", "10"])
    assert from_args(CompareOptions, args) == CompareOptions(methods=("gradcam",), images=10)
    assert build_parser().parse_args(["run"]).preset == "quick"


def test_every_commands_help_renders():
    # argparse expands '%' in help texts: a help that says "90% clean" stops `run --help` with a TypeError.
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) >= {"run", "study", "benchmark", "audit", "repair", "explain", "compare"}
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert f"usage: gradcam-repro {name}" in text and "--help" in text


def test_a_colour_is_a_name_rgb_text_or_three_integers_and_anything_else_is_none():
    assert rgb_of("Yellow") == (255, 255, 0) and rgb_of("1,2,3") == (1, 2, 3) and rgb_of([0, 128, 255]) == (0, 128, 255)
    for bad in ("rouge", "1,2", "1,2,256", (300, 0, 0), (1.5, 0, 0), (True, False, True), 7, None):
        assert rgb_of(bad) is None
    assert parse_color("cyan") == (0, 255, 255)
