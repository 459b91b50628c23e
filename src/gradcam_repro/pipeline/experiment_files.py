"""An experiment folder as file contents, so that it travels between a Ray worker and the driver without a
shared file system: the worker trains in a temporary folder and returns the bytes, the driver writes them."""

from __future__ import annotations

from pathlib import Path

from gradcam_repro import store

EXPERIMENT_FILES = ("model.pt", "history.json", "history.csv", "spec.json")  # spec.json last: marks it finished


def read_experiment_files(folder: Path) -> dict[str, bytes]:
    """{name: bytes} of a finished experiment folder's files."""
    return {name: (folder / name).read_bytes() for name in EXPERIMENT_FILES}


def write_experiment_files(folder: Path, files: dict[str, bytes]) -> None:
    """An experiment folder from a worker's file contents, each file atomically, spec.json last (a folder
    without it is not reused)."""
    for name in EXPERIMENT_FILES:
        with store.atomic_path(folder / name) as tmp:
            tmp.write_bytes(files[name])
