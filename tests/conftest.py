import pytest

from gradcam_repro.cli import main


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory):
    """A finished `run --preset smoke --dataset shapes`, shared read-only by the tests that inspect one."""
    out = tmp_path_factory.mktemp("shapes") / "run"
    assert main(["run", "--preset", "smoke", "--dataset", "shapes", "--out", str(out)]) == 0
    return out
