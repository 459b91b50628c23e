import importlib.util
import os
import signal
from pathlib import Path

import pytest
from cam_helpers import seeded_resnet

# `make test` and `make test-fast` run on two pytest-xdist workers (`-n 2 --dist loadscope`): docs/architecture.md
# (The tests) has the times. Each worker, and every process it starts (CLI subprocesses, notebook kernels, Ray
# workers), computes on one thread; two workers of two threads each were no faster.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")

# The work a worker takes as one unit: a test file (its module fixtures are built once), except for the files that
# start Ray clusters, which share one worker so that two clusters never compete for the cores.
ONE_WORKER = {"test_study.py": "ray", "test_zoo_benchmark.py": "ray"}

# Files handed out first, the longest first (minutes each on 2 cores), so that the two workers finish together;
# every other file follows in its usual order. Only the order changes, never what runs.
LONGEST_FIRST = ("test_study.py", "test_zoo_benchmark.py", "test_repair.py", "test_compare.py", "test_robustness.py",
                 "test_notebook.py", "test_pipeline.py", "test_audit.py", "test_progress.py", "test_benchmarks.py")


def pytest_configure(config):
    if XDIST_WORKER:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        import torch

        torch.set_num_threads(1)
        # An xdist worker ignores SIGINT, and an ignored signal stays ignored in the processes it starts: give
        # them Ctrl-C back, so that a test can interrupt a study as a user would.
        signal.signal(signal.SIGINT, signal.default_int_handler)


if importlib.util.find_spec("xdist"):
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") != "loadscope":
            return None  # another --dist the caller chose: xdist's own scheduler
        from xdist.scheduler import LoadScopeScheduling

        class ByFile(LoadScopeScheduling):
            def _split_scope(self, nodeid):
                file = nodeid.split("::", 1)[0]
                return ONE_WORKER.get(Path(file).name, file)

        config.option.loadscopereorder = False  # xdist would otherwise hand out the files with most tests first
        return ByFile(config, log)


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory):
    """A finished `run --preset smoke --dataset shapes`, shared read-only by the tests that inspect one."""
    from gradcam_repro.cli import main

    out = tmp_path_factory.mktemp("shapes") / "run"
    assert main(["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Small models run as fast on one thread and do not stall when the 2 cores are shared (opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def resnet():
    """Seeded CIFAR ResNet-18 in eval mode with non-trivial BatchNorm statistics (see cam_helpers.seeded_resnet)."""
    return seeded_resnet()


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
    # Every test that needs the shared smoke run waits for a minute of training: it is slow, whatever it checks.
    for item in items:
        if "shapes_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
