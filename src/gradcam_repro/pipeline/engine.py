"""The Ray engine of `study` and `run --parallel`: a Ray session, shared data in the object store, and a batch
of tasks handed back one by one as they end. It knows nothing of grids, cells or runs.

Ray is imported where it is used, so that the package imports without it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import gradcam_repro
from gradcam_repro.errors import UserError


@dataclass(frozen=True)
class TaskResources:
    """What each task of a batch asks Ray for: `cpus` and `gpus` (fractions share a GPU), the torch `threads`
    it runs with, and `max_retries` after an exception in the task (None: Ray's default, which retries only
    when a worker dies)."""

    cpus: int = 1
    gpus: float = 0.0
    threads: int = 1
    max_retries: int | None = None

    def ray_options(self) -> dict:
        options = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.max_retries is not None:
            options |= {"max_retries": self.max_retries, "retry_exceptions": True}
        return options


@dataclass(frozen=True)
class Ended:
    """A task that ended: the `job` it was submitted with and its `result`, or its `error` as one line
    ("Type: first line") when it still failed after its retries."""

    job: Any
    result: Any = None
    error: str | None = None


@contextmanager
def ray_session(address: str | None, log=print) -> Iterator[None]:
    """Ray for a batch of tasks: the one this process already started, else the cluster at `address` or
    $RAY_ADDRESS (joined unchanged; the package's code travels with the tasks), else a new local Ray with
    one CPU per core, shut down on leaving."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env={"py_modules": [str(Path(gradcam_repro.__file__).parent)]},
                     logging_level="warning")
        except (ConnectionError, RuntimeError) as e:
            raise UserError(join_error(address, e)) from e
        log(f"ray: joined the cluster at {address}")
    else:
        # Ray >= 2.59 warns at every local start that it turned token authentication on; keep it on, and quiet.
        with _quiet_logger("ray._private.authentication.authentication_token_setup"):
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning")
        log(f"ray: started a local Ray with {os.cpu_count()} CPUs")
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Drop the warnings of the logger `name` inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """`UserError` if nothing accepts connections at a "host:port" or "ray://host:port" address (Ray itself
    waits without end for a cluster that is not there). "auto" and other forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise UserError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}); fix: start one "
                        "with `ray start --head` and pass the address it prints, or leave --address and "
                        "RAY_ADDRESS unset for a local Ray") from None


def join_error(address: str, error: BaseException) -> str:
    """The one-line message for a failed `ray.init(address=...)`, with the fix for a missing auth token."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    chain, cause = [], error
    while cause is not None:
        chain.append(f"{type(cause).__name__} {cause}")
        cause = cause.__cause__ or cause.__context__
    if any("authtoken" in text.lower().replace(" ", "").replace("_", "") or "authentication" in text.lower()
           for text in chain):
        return (f"could not join the Ray cluster at {address}: it wants an auth token ({reason}); fix: run with "
                "RAY_AUTH_MODE=token and the head node's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (since Ray "
                "2.59 `ray start` turns token authentication on)")
    return (f"could not join the Ray cluster at {address} ({reason}); fix: check the address with `ray status` "
            "on the head node, or leave --address and RAY_ADDRESS unset for a local Ray")


def share(value: Any) -> Any:
    """`value` put into the object store once; pass the returned reference as a task's argument and every
    task on a node reads the same copy instead of getting its own."""
    import ray

    return ray.put(value)


def cluster_slots(resources: TaskResources) -> int:
    """How many tasks the cluster runs at once: its CPUs (and GPUs) over what one task asks for."""
    import ray

    available = ray.cluster_resources()
    slots = available.get("CPU", 1) // resources.cpus
    if resources.gpus > 0:
        slots = min(slots, available.get("GPU", 0) // resources.gpus)
    return max(1, int(slots))


def error_line(exc: BaseException) -> str:
    """The task's own exception as "Type: first line" (Ray wraps it with a traceback)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()


def _threaded(threads: int, fn: Callable, *args) -> Any:
    """What runs on a worker: `fn(*args)` with torch on `threads` threads (Ray sets none for a task)."""
    torch.set_num_threads(threads)
    return fn(*args)


class TaskBatch:
    """One Ray task per job, `fn(*args)` with `resources`, submitted at once in the order given."""

    def __init__(self, fn: Callable, resources: TaskResources, jobs: list[tuple[Any, tuple]]):
        import ray

        # Named after `fn`, not the wrapper, in Ray's dashboard and errors.
        remote = ray.remote(_threaded).options(name=fn.__name__, **resources.ray_options())
        self._running = {remote.remote(resources.threads, fn, *args): job for job, args in jobs}

    @property
    def running(self) -> list:
        """The jobs not handed back yet, in submission order."""
        return list(self._running.values())

    def as_they_end(self, wait_s: float = 1.0) -> Iterator[Ended | None]:
        """Each task as it ends, in the order they end; None after each `wait_s` in which none did (short
        waits keep Ctrl-C prompt and let the caller report progress)."""
        import ray

        while self._running:
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=wait_s)
            if not ready:
                yield None
                continue
            job = self._running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                yield Ended(job, error=error_line(exc))
            else:
                yield Ended(job, result)

    def in_order(self) -> Iterator[tuple[Any, Any]]:
        """(job, result) of each task in submission order, waiting for each; a failed task raises here."""
        import ray

        for ref, job in list(self._running.items()):
            result = ray.get(ref)
            del self._running[ref]
            yield job, result

    def cancel(self) -> None:
        """Stop every task not handed back yet (e.g. on Ctrl-C)."""
        import ray

        for ref in self._running:
            ray.cancel(ref, force=True)
