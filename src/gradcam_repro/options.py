"""Command-line flags from an options dataclass: each field is one `--field-name`, its help and default written once.

A field's `metadata` says what argparse needs beyond the field's name, type and default:

    help          what the flag does; "(default X)" is appended from the field's default
    default_text  said instead of the default, e.g. "all" where None means every image ("(default: all)")
    group         the title of the argument group the flag is listed under in --help
    flag          a flag name other than --field-name (the parsed value still lands on the field's name)
    aliases       more names for the same flag, e.g. ("--placement",)
    type          a parser for the text, e.g. `parse_color` (it replaces the one the annotation implies)
    choices, nargs, const, metavar   passed to argparse as they are
    negatable     a bool defaulting to False is --x/--no-x (BooleanOptionalAction) instead of store_true
    cli           False: the field has no flag (set from the API only)

The annotation drives parsing: int, float, str; `X | None` parses X; `tuple[X, ...]` takes one or more
values (nargs "+"); bool is a switch. `from_args` builds the dataclass back from the parsed namespace.
Like `config`, this module imports nothing from the rest of the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from numbers import Integral

ALL = "all"  # a sample-size flag's value for "every image" (the field's None), e.g. --counterfactual-images all

COLORS = {"yellow": (255, 255, 0), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
          "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255), "black": (0, 0, 0)}

# Metadata keys passed to `add_argument` unchanged.
_ARGPARSE_KEYS = ("choices", "nargs", "const", "metavar")


def count_or_all(text: str) -> int | str:
    """A sample size: a whole number, or 'all' (every image, also where the preset samples)."""
    if text.strip().lower() == ALL:
        return ALL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of images; use a whole number or 'all'") from None


def rgb_of(color) -> tuple[int, int, int] | None:
    """(r, g, b) of a colour given as a name of COLORS, as 'R,G,B' text or as three integers in 0..255; None if it is
    none of these."""
    if isinstance(color, str):
        if color.lower() in COLORS:
            return COLORS[color.lower()]
        try:
            color = tuple(int(v) for v in color.split(","))
        except ValueError:
            return None
    values = tuple(color) if isinstance(color, Iterable) else ()
    if len(values) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) and 0 <= v <= 255
                                   for v in values):  # True is an Integral 1, not a level
        return None
    return tuple(int(v) for v in values)


def parse_color(text: str) -> tuple[int, int, int]:
    """'255,255,0' or a name like 'yellow' -> (r, g, b)."""
    rgb = rgb_of(text)
    if rgb is None:
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


def flag_name(field: dataclasses.Field) -> str:
    """The flag of a field: metadata "flag", else --field-name (underscores become dashes)."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def has_flag(field: dataclasses.Field) -> bool:
    return field.metadata.get("cli", True) is not False


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _shown(value, joiner: str) -> str | None:
    """How a default reads in --help; None where there is nothing to say (None, an empty tuple)."""
    if value is None or value == () or value is dataclasses.MISSING:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return joiner.join(str(v) for v in value)
    return str(value)


def help_text(field: dataclasses.Field, joiner: str = " ", switch: bool = False) -> str | None:
    """The field's help with its default appended once: "(default 6)", or "(default: all)" from default_text.

    A switch (store_true) says no default: off is what leaving it out means."""
    text, said = field.metadata.get("help"), field.metadata.get("default_text")
    shown = f"(default: {said})" if said is not None else None
    if shown is None and not switch and (value := _shown(_default(field), joiner)) is not None:
        shown = f"(default {value})"
    if shown is None:
        return text
    shown = shown.replace("%", "%%")  # argparse formats help with %
    return f"{text} {shown}" if text else shown


def _unwrap(hint) -> type:
    """`X | None` -> X; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def flag_kwargs(field: dataclasses.Field, hint) -> dict:
    """`add_argument` keyword arguments for one field, from its annotation `hint`, default and metadata."""
    meta, default, kind = field.metadata, _default(field), _unwrap(hint)
    kwargs = {"required": True} if default is dataclasses.MISSING else {"default": default}
    if kind is bool:
        negatable = default is True or meta.get("negatable", False)
        kwargs["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
    elif "type" in meta:
        kwargs["type"] = meta["type"]
    elif typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        kwargs["type"] = args[0]
        kwargs["nargs"] = "+" if args[-1] is Ellipsis else len(args)
    else:
        kwargs["type"] = kind
    kwargs.update({key: meta[key] for key in _ARGPARSE_KEYS if key in meta})
    joiner = " " if kwargs.get("nargs") in ("+", "*") or isinstance(kwargs.get("nargs"), int) else ","
    kwargs["help"] = help_text(field, joiner, switch=kwargs.get("action") == "store_true")
    return kwargs


def add_options(parser: argparse.ArgumentParser, cls, *, skip=(), only=None, overrides: dict | None = None,
                all_default_none: bool = False) -> dict[str, argparse._ArgumentGroup]:
    """Add one flag per field of the dataclass `cls` to `parser` (those in `only`, less those in `skip`).

    overrides: field name -> `add_argument` keyword arguments that win over the derived ones (e.g. choices
    held by a registry this module cannot import). all_default_none: every flag defaults to None, so that
    a value counts only when given (a preset fills the rest); the help still names the field's default.
    Returns the argument groups made, by title, so that the caller can add its own flags to them.
    """
    hints, groups = typing.get_type_hints(cls), {}
    for field in dataclasses.fields(cls):
        if not has_flag(field) or field.name in skip or (only is not None and field.name not in only):
            continue
        kwargs = flag_kwargs(field, hints[field.name])
        if all_default_none:
            kwargs.pop("required", None)
            kwargs["default"] = None
        kwargs.update((overrides or {}).get(field.name, {}))
        title = field.metadata.get("group")
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = groups[title] if title is not None else parser
        default = kwargs.pop("default", None)
        # Set after creation: BooleanOptionalAction would otherwise append its own "(default: ...)".
        target.add_argument(flag_name(field), *field.metadata.get("aliases", ()), dest=field.name,
                            **kwargs).default = default
    return groups


def from_args(cls, args: argparse.Namespace, **fixed):
    """The dataclass `cls` from parsed `args`: every field with a value in `args` (lists become tuples),
    `fixed` (field -> value) winning; fields neither holds keep their defaults."""
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in fixed:
            values[field.name] = fixed[field.name]
        elif hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
