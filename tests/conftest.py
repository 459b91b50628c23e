import pytest
from cam_helpers import seeded_resnet


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
    # Every test that needs the shared smoke run waits for a minute of training: it is slow, whatever it checks.
    for item in items:
        if "shapes_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
