"""How far a study is: the progress line and the model behind its ETA."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tasks only for their type: study_tasks imports this module
    from gradcam_repro.pipeline.study_tasks import SpecTask


def progress_line(done: int, running: int, failed: int, total: int, eta_s: float | None) -> str:
    """E.g. "cells: 5/21 done, 2 running, 0 failed, ETA 34 min" (`eta_s` None: not known yet)."""
    if done + failed == total:
        eta = "all finished"
    elif eta_s is None:
        eta = "ETA unknown"
    else:
        eta = f"ETA {eta_s / 60:.0f} min" if eta_s >= 120 else f"ETA {eta_s:.0f} s"
    return f"cells: {done}/{total} done, {running} running, {failed} failed, {eta}"


class EtaPace:
    """The ETA of a study: the cells left x the mean time a worker took per finished cell / the cells that run
    at once, less the time since the last cell finished (so it counts down between finishes).

    While trainings are left, only cells whose task trains pace it: a restored model is only measured (~10x
    faster) and would make the pace look fast; after them, the restored cells pace the rest. Dividing by the
    worker count matters in the first wave: after one of two side-by-side cells finishes, "time so far / cells
    done" would say twice the real remainder."""

    def __init__(self, tasks: list[SpecTask], slots: int):
        self.slots = max(1, slots)
        self.left = {True: 0, False: 0}  # cells not yet ended, by "its task trains"
        for t in tasks:
            self.left[t.experiment_files is None] += len(t.cells)
        self.seconds: dict[bool, list[float]] = {True: [], False: []}  # worker seconds per finished cell
        self.last_finish_s = 0.0

    def ended(self, task: SpecTask, cell_seconds: list[float], at_s: float) -> None:
        """`task` ended `at_s` seconds in; `cell_seconds`: its workers' seconds per cell saved (none: failed)."""
        trained = task.experiment_files is None
        self.left[trained] -= len(task.cells)
        self.seconds[trained] += cell_seconds
        if cell_seconds:
            self.last_finish_s = at_s

    def eta_s(self, now_s: float) -> float | None:
        """Seconds left, `now_s` seconds in; None before a cell that paces it has finished."""
        trains = self.left[True] > 0  # else only restored cells are left, paced by their own kind
        left, seconds = self.left[trains], self.seconds[trains]
        if not left or not seconds:
            return None if left else 0.0
        per_cell = sum(seconds) / len(seconds)
        return max(left * per_cell / min(self.slots, left) - (now_s - self.last_finish_s), 0.0)
