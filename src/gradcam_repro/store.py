"""Writing results safely: every file goes to a temporary name, then is renamed into place.

A run interrupted at any point therefore leaves either the previous complete
file or the new complete file, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy
import torch
import torchvision

from gradcam_repro import __version__
from gradcam_repro.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import filelock  # the fallback lock where fcntl is missing
except ImportError:
    filelock = None

DEFAULT_FIX = ("fix: rerun the command that wrote it (for a run folder: `gradcam-repro evaluate RUN`; "
               "`gradcam-repro run` with the same flags retrains only what is missing)")
_LOCK_TRIES = 10

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


def read_json(path: str | Path, fix: str | None = None):
    """Parse a JSON file; raise a one-line `UserError` naming the file and `fix` if it is missing or unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(_missing_message(path, fix)) from None
    except json.JSONDecodeError as exc:
        raise UserError(_unreadable_message(path, f"truncated or not JSON: {exc.msg} at line {exc.lineno}", fix)) from None
    except UnicodeDecodeError:
        raise UserError(_unreadable_message(path, "not UTF-8 text", fix)) from None
    except OSError as exc:
        raise UserError(_unreadable_message(path, exc.strerror or type(exc).__name__, fix)) from None


def torch_save(path: str | Path, obj) -> str:
    """`torch.save` atomically; returns the sha256 of the bytes written. Through a file object, so the archive's
    inner folder is always "archive" (given a path, torch names it after the random temporary file and equal
    models hash differently)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def torch_load(path: str | Path, fix: str | None = None):
    """`torch.load` to the CPU with `weights_only=True`; a missing, truncated or foreign file raises a one-line `UserError`."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(_missing_message(path, fix)) from None
    except OSError as exc:
        raise UserError(_unreadable_message(path, exc.strerror or type(exc).__name__, fix)) from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
        reason = _first_line(str(exc))
        reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise UserError(_unreadable_message(path, f"truncated or not a checkpoint: {reason}", fix)) from None


def _fix_text(fix: str | None) -> str:
    if fix is None:
        return DEFAULT_FIX
    fix = _first_line(fix, limit=300)
    return fix if fix.startswith("fix:") else f"fix: {fix}"


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _missing_message(path: Path, fix: str | None) -> str:
    return f"no {path.name} at {path}; {_fix_text(fix)}"


def _unreadable_message(path: Path, reason: str, fix: str | None) -> str:
    return f"cannot read {path} ({_first_line(reason)}); {_fix_text(fix)}"


def save_figure(fig, path: str | Path, dpi: int = 110) -> bytes:
    """Save a matplotlib figure atomically, in the format its suffix names; returns the bytes written (so that a
    page can embed them without reading the file back)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return data


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an OS lock on `folder/.lock` for the duration; raise `UserError` if another process holds it.

    The lock is `fcntl.flock` (the `filelock` package where fcntl is missing, else no lock): the OS
    releases it when the holder dies, however it dies, so a lock file left behind never blocks, and a
    pid in it (written for information only) is never trusted.
    """
    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        with _fallback_lock(path, folder):
            yield path
        return
    fd = _flock(path, folder)
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        if fd is not None:
            # Removed while still held: a process that opened this file meanwhile sees, once it gets
            # the lock, that the file is no longer at `path` and starts over (see `_flock`).
            path.unlink(missing_ok=True)
            os.close(fd)


def _flock(path: Path, folder: str | Path) -> int | None:
    """An fd of `path` holding an exclusive flock; None where the file system cannot lock."""
    for _ in range(_LOCK_TRIES):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _held_error(path, folder) from None
            return None  # e.g. ENOLCK on some network file systems: run without a lock, as before locks existed
        if _is_current(fd, path):
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    raise UserError(f"cannot take the lock {path} (it keeps being replaced); fix: wait for the other process or pass another --out")


def _is_current(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (not one unlinked by its previous holder)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)


@contextmanager
def _fallback_lock(path: Path, folder: str | Path) -> Iterator[None]:
    if filelock is None:
        yield
        return
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise _held_error(path, folder) from None
    try:
        yield
    finally:
        lock.release()


def _held_error(path: Path, folder: str | Path) -> UserError:
    try:
        pid = int(path.read_text().strip())
        who = f" (pid {pid})"
    except (OSError, ValueError):
        who = ""
    return UserError(f"another gradcam-repro process{who} is writing to {folder}; "
                     "fix: wait for it to finish or pass another --out")


def check_writable(folder: str | Path) -> None:
    """Raise `UserError` unless `folder` can be created and written to."""
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
