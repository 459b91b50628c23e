"""How numbers read in every report (markdown, HTML, AUDIT.md, STUDY.md): one place for intervals, percentages
and seconds, so that the same number is written the same way everywhere. Pure functions of numbers.

A statistic is an `Interval` (`measure.results`), or still a {"mean", "low", "high", "n"} dict where a results
file is not typed yet; a NaN mean means nothing was measured, and reads "n/a".
"""

from __future__ import annotations

import math

from gradcam_repro.measure.results import Interval

NOT_MEASURED = "n/a"


def missing(x) -> bool:
    """True for None and NaN: a value that was not measured."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def percent(x: float, digits: int = 1) -> str:
    """0.1234 -> '12.3%'; 'n/a' when not measured."""
    return NOT_MEASURED if missing(x) else f"{100 * x:.{digits}f}%"


def number(x: float, digits: int = 3, pct: bool = False) -> str:
    """`x` with `digits` decimals, or as a percentage with `pct`."""
    return percent(x) if pct else f"{x:.{digits}f}"


def as_interval(stat: Interval | dict) -> Interval:
    """`stat` as an `Interval`; a {"mean", "low", "high"(, "n")} dict from an untyped results file is converted."""
    if isinstance(stat, Interval):
        return stat
    return Interval(stat["mean"], stat["low"], stat["high"], stat.get("n", 0))


def interval(stat: Interval | dict, pct: bool = False, digits: int = 3, units_in_brackets: bool = True) -> str:
    """'0.512 [0.480, 0.545]', or '51.2% [48.0%, 54.5%]' with `pct` ('51.2% [48.0, 54.5]' when
    `units_in_brackets` is False); 'n/a' when the mean was not measured."""
    stat = as_interval(stat)
    if missing(stat.mean):
        return NOT_MEASURED
    if pct and not units_in_brackets:
        return f"{percent(stat.mean)} [{100 * stat.low:.1f}, {100 * stat.high:.1f}]"
    return f"{number(stat.mean, digits, pct)} [{number(stat.low, digits, pct)}, {number(stat.high, digits, pct)}]"


def seed_interval(stat: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    """A mean over seeds: '0.612 [0.580, 0.644] ±0.021' (seed mean, seed t-interval when there are two seeds or
    more, then the mean image-level half-width); '-' when not measured."""
    if not stat or not stat.get("n"):
        return "-"
    text = number(stat["mean"] * scale, digits)
    if math.isfinite(stat["low"]):
        text += f" [{number(stat['low'] * scale, digits)}, {number(stat['high'] * scale, digits)}]"
    half = stat.get("image_half_width", math.nan)
    return text + (f" ±{number(half * scale, digits)}" if math.isfinite(half) else "")


def tally(t: dict | None) -> str:
    """'3/5' for {"k": 3, "n": 5} (a verdict that holds in k of n seeds); '-' when there is none."""
    return f"{t['k']}/{t['n']}" if t else "-"


def seconds(value) -> str:
    """Whole seconds ('85'); 'n/a' when not measured."""
    return NOT_MEASURED if missing(value) else f"{value:.0f}"
