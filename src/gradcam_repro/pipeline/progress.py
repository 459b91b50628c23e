"""What a command shows while it works: progress bars or plain progress lines, log lines, the final line.

A `Reporter` is the pipeline's `log` callable (calling it logs a line) that can also show progress:
    auto   a tqdm bar with rate and ETA when the progress stream is a terminal, else as plain
    plain  one-line progress for logs and CI, at most one line per tenth of the work and per 30 s, e.g.
           "[biased] epoch 2/3: 6000/18000 img (33%), 180 img/s, ETA 67 s"
    quiet  no log lines and no progress: only errors (printed by the CLI) and the final line
With `json=True`, stdout carries one JSON document (`summary`) and nothing else; log lines and the
final line go to the progress stream (stderr) instead.

Science code never sees a Reporter: it takes a plain callback `progress(done, total)` (training:
`progress(epoch, done, total)`), which the pipeline builds with `Reporter.tracker`. Pipeline functions
that receive a plain `log` callable (tests, notebooks) work unchanged: `as_reporter(log)` wraps it
without progress.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from gradcam_repro.explain.registry import display_name
from gradcam_repro.measure.comparison_results import MethodsResult
from gradcam_repro.measure.results import PATCHED_TARGET, RunMetrics

MODES = ("auto", "plain", "quiet")
# Plain lines, for logs: a line when another tenth of the work is done, but never two within 30 s (so a step
# shorter than 30 s prints none: the line reporting its result follows at once); after 5 min without a line,
# one anyway, so that a slow step still shows it is alive.
PLAIN_STEPS = 10
PLAIN_MIN_GAP_S = 30.0
PLAIN_HEARTBEAT_S = 300.0


class Task:
    """One long step's progress: `update(n)` after each n units of work; closes on leaving a `with` block.

    This base class shows nothing (quiet mode, plain `log` callables).
    """

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PlainTask(Task):
    """Progress as a few plain lines: percentage, rate and ETA (see PLAIN_* for when a line is written)."""

    def __init__(self, description: str, total: int, unit: str, write: Callable[[str], None], clock):
        self.description, self.total, self.unit, self.write, self.clock = description, max(int(total), 0), unit, write, clock
        self.done, self.start, self.lines = 0, clock(), 0
        self.last_step, self.last_s = 0, self.start
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        step = self.done * PLAIN_STEPS // self.total if self.total else PLAIN_STEPS  # tenths done, in integers
        since = now - self.last_s
        if step < PLAIN_STEPS and since >= PLAIN_MIN_GAP_S and (step > self.last_step or since >= PLAIN_HEARTBEAT_S):
            self.write(self._line(now))
            self.lines, self.last_step, self.last_s = self.lines + 1, step, now

    def close(self) -> None:
        """The closing line (count, rate, seconds taken), written only where progress lines were."""
        if self.closed:
            return
        self.closed = True
        if self.lines:
            elapsed = self.clock() - self.start
            self.write(f"{self.description}: {self.done}/{self.total} {self.unit} (100%), "
                       f"{_rate(self.done, elapsed, self.unit)}, done in {elapsed:.0f} s")

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        eta = (self.total - self.done) * elapsed / self.done if self.done else math.inf
        return (f"{self.description}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%), "
                f"{_rate(self.done, elapsed, self.unit)}, ETA {eta:.0f} s")


def _rate(done: int, elapsed_s: float, unit: str) -> str:
    rate = done / elapsed_s if elapsed_s > 0 else math.inf
    digits = ".0f" if rate >= 10 else ".1f" if rate >= 1 else ".2g"
    return f"{rate:{digits}} {unit}/s"


class BarTask(Task):
    """A tqdm bar on a terminal: count, percentage, elapsed time, ETA and rate; erased when it closes."""

    def __init__(self, description: str, total: int, unit: str, stream: TextIO):
        self.bar = tqdm(total=total, desc=description, unit=unit, file=stream, leave=False, dynamic_ncols=True,
                        mininterval=0.2)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class Tracker:
    """A plain `progress(done, total)` callback for science code, shown as tasks of a `Reporter`.

    A task starts at the first call, again when `stage` changes or `done` goes back (a new pass), and
    closes when `done` reaches `total` or the `with` block ends.
    """

    def __init__(self, reporter: Reporter, description: str, unit: str):
        self.reporter, self.description, self.unit = reporter, description, unit
        self.task: Task | None = None
        self.stage, self.done = "", 0

    def __call__(self, done: int, total: int, stage: str = "") -> None:
        if self.task is None or stage != self.stage or done < self.done:
            self.close()
            self.task = self.reporter.task(f"{self.description} {stage}".strip(), total, self.unit)
            self.stage, self.done = stage, 0
        self.task.update(done - self.done)
        self.done = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Reporter:
    """Log lines, progress and the final line of one command (see the module docstring for the modes).

    stream: where progress goes (default stderr); out: where log lines and the final line go (default
    stdout); log_to: send log lines to this callable instead (no progress then); clock: seconds, for tests.
    """

    def __init__(self, mode: str = "auto", json: bool = False, stream: TextIO | None = None, out: TextIO | None = None,
                 log_to: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        self.out = out if out is not None else sys.stdout
        self.mode, self.json, self.log_to, self.clock = mode, json, log_to, clock
        self.bars = mode == "auto" and log_to is None and _is_terminal(self.stream)

    def log(self, line: str) -> None:
        """One line of what happened (nothing in quiet mode)."""
        if self.log_to is not None:
            self.log_to(line)
        elif self.mode != "quiet":
            self._write(self.stream if self.json else self.out, line)

    __call__ = log

    def notice(self, line: str) -> None:
        """A line worth seeing that is not a result (a converted input, a skipped file): always on stderr."""
        if self.log_to is not None:
            self.log_to(line)
        elif self.mode != "quiet":
            self._write(self.stream, line)

    def final(self, line: str) -> None:
        """The command's last line: where to look and the headline numbers (printed in quiet mode too)."""
        if self.log_to is not None:
            self.log_to(line)
        elif not (self.json and self.mode == "quiet"):
            self._write(self.stream if self.json else self.out, line)

    def summary(self, document: dict) -> None:
        """With `json=True`, the one JSON document on stdout (NaN written as null); otherwise nothing."""
        if self.json:
            self.out.write(json.dumps(_finite(document), indent=2) + "\n")
            self.out.flush()

    def task(self, description: str, total: int, unit: str = "it") -> Task:
        """Progress of one long step of `total` units: a bar, plain lines or nothing, by mode."""
        if self.log_to is not None or self.mode == "quiet":
            return Task()
        if self.bars:
            return BarTask(description, total, unit, self.stream)
        return PlainTask(description, total, unit, lambda line: self._write(self.stream, line), self.clock)

    def tracker(self, description: str, unit: str = "it") -> Tracker:
        """A `progress(done, total, stage="")` callback for science code, shown as tasks."""
        return Tracker(self, description, unit)

    def _write(self, stream: TextIO, line: str) -> None:
        if self.bars:
            tqdm.write(line, file=stream)  # clears the bars, writes the line, redraws them
        else:
            print(line, file=stream)
        stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _finite(value):
    """`value` with every NaN or infinity replaced by None, so that the document is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def as_reporter(log: Callable[[str], None]) -> Reporter:
    """`log` itself if it is a Reporter, else a Reporter that sends every line to `log` and shows no progress."""
    return log if isinstance(log, Reporter) else Reporter(log_to=log)


def epoch_progress(log: Callable[[str], None], description: str, epochs: int) -> Callable[[int, int, int], None]:
    """Training's `progress(epoch, done, total)` as one task per epoch, e.g. "[biased] epoch 2/3"."""
    tracker = as_reporter(log).tracker(description, "img")
    return lambda epoch, done, total: tracker(done, total, f"epoch {epoch}/{epochs}")


def run_summary(metrics: RunMetrics, run_dir: str | Path, command: str = "run") -> dict:
    """The JSON summary of `run`/`evaluate`: each model's headline numbers (with CIs), the paths, the seconds."""
    run_dir = Path(run_dir)
    layer = metrics.cam_layer
    models = {}
    for name, m in metrics.models.items():
        models[name] = {
            "clean_test_acc": m.clean_test_acc.to_dict(),
            "target_recall_clean": m.target_recall_clean.to_dict(),
            "target_recall_patched": m.target_recall_patched.to_dict(),
            "flip_to_target": m.flip_to_target["patch"].to_dict(),
            "energy_in_box": m.energy(layer, PATCHED_TARGET).to_dict(),
            "relies_on_patch": m.verdict.relies_on_patch,
            "points_at_patch": m.verdict.points_at_patch[layer],
        }
    cfg = metrics.config
    return {"command": command, "run_dir": str(run_dir), "report_md": str(run_dir / "REPORT.md"),
            "report_html": str(run_dir / "REPORT.html"), "metrics_json": str(run_dir / "metrics.json"),
            "target_class": cfg["bias_class"], "cam": cfg["cam"], "cam_layer": layer,
            "uniform_energy_in_box": metrics.shortcut.uniform["energy_in_box"], "models": models,
            "seconds": dict(metrics.seconds)}


def run_final_line(metrics: RunMetrics, run_dir: str | Path, seconds: float) -> str:
    """Where to look and the three headline numbers: flip-to-target, clean accuracies, CAM energy in the patch.

    E.g. "done in 806 s: biased model relies on the patch (flip-to-frog 99.9%), clean acc 61.6% / 57.0%,
    Grad-CAM energy in patch at layer4.1.conv2 0.412 vs uniform 0.035; view: gradcam-repro view runs/quick
    (runs/quick/REPORT.html)". ASCII only, so that no log encoding can fail on it. The biased model is
    "biased" (as in `run`), else the last experiment.
    """
    models, cfg, layer = metrics.models, metrics.config, metrics.cam_layer
    biased = models.get("biased") or list(models.values())[-1]
    cls, flip = cfg["bias_class"], biased.flip_to_target["patch"].mean
    relies = "relies on the patch" if biased.verdict.relies_on_patch else "does not rely on the patch"
    accuracies = " / ".join(f"{100 * m.clean_test_acc.mean:.1f}%" for m in models.values())
    energy = biased.energy(layer, PATCHED_TARGET)
    cam = display_name(cfg["cam"])
    uniform = metrics.shortcut.uniform["energy_in_box"]
    measured = (f"{energy.mean:.3f} vs uniform {uniform:.3f}" if energy.n else
                f"not measurable (no patched {cls} image was called {cls})")
    run_dir = Path(run_dir)
    return (f"done in {seconds:.0f} s: biased model {relies} (flip-to-{cls} {100 * flip:.1f}%), "
            f"clean acc {accuracies} ({' / '.join(models)}), {cam} energy in patch at {layer} {measured}; "
            f"view: gradcam-repro view {shlex.quote(str(run_dir))} ({run_dir / 'REPORT.html'})")


def compare_summary(methods: MethodsResult, run_dir: str | Path) -> dict:
    """The JSON summary of `compare`: which method x layer flags the shortcut (methods.json's table), the paths."""
    run_dir = Path(run_dir)
    flags = methods.flags_shortcut
    flagged = [f"{method}@{layer}" for method, by_layer in flags.items() for layer, flag in by_layer.items() if flag]
    return {"command": "compare", "run_dir": str(run_dir), "methods_json": str(run_dir / "methods.json"),
            "report_md": str(run_dir / "REPORT.md"), "report_html": str(run_dir / "REPORT.html"),
            "flags_shortcut": flags, "flagged": flagged,
            "n_flagged": len(flagged), "n_measured": sum(len(by_layer) for by_layer in flags.values()),
            "seconds": methods.seconds}
