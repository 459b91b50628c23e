"""Writing results safely: every file goes to a temporary name, then is renamed into place.

A run interrupted at any point therefore leaves either the previous complete
file or the new complete file, never half of one.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should be readable like any other
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def torch_save(path: str | Path, obj) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold `folder/.lock` (holding our pid) for the duration; refuse if a live process holds it.

    A lock left by a process that no longer exists (killed, machine restarted) is taken over.
    """
    from gradcam_repro.errors import UserError

    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                raise UserError(
                    f"another gradcam-repro process (pid {holder}) is writing to {folder}; "
                    "fix: wait for it to finish or pass another --out"
                ) from None
            path.unlink(missing_ok=True)  # stale lock
    else:
        raise UserError(f"cannot take the lock {path}; fix: remove it if no gradcam-repro process is running")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _lock_holder(path: Path) -> int | None:
    """The pid in a lock file if that process is alive, else None."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def check_writable(folder: str | Path) -> None:
    """Raise `UserError` unless `folder` can be created and written to."""
    from gradcam_repro.errors import UserError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot write to output folder {folder} ({exc.strerror or exc}); fix: pass --out with a writable folder"
        ) from None


def environment_info(device: str | None = None) -> dict:
    """Versions, threads and hardware: recorded next to every result."""
    import numpy
    import torch
    import torchvision

    from gradcam_repro import __version__

    info = {
        "gradcam_repro": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (NaN where the OS does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024  # bytes on macOS, KiB on Linux


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
