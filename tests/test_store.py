"""Saved files: unreadable ones give one-line errors naming the file and the fix; the run lock is an OS lock."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gradcam_repro import store
from gradcam_repro.errors import UserError
from gradcam_repro.model.resnet import load_model, resnet18_cifar, save_model


def _one_line_error(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "fix:" in message, message
    return message


# ----------------------------------------------------------------------------- JSON


def test_read_json_round_trips(tmp_path):
    store.write_json(tmp_path / "metrics.json", {"models": {"a": [1, 2.5, None]}})
    assert store.read_json(tmp_path / "metrics.json") == {"models": {"a": [1, 2.5, None]}}


def test_a_truncated_json_names_the_file_the_reason_and_the_default_fix(tmp_path):
    path = tmp_path / "quick" / "metrics.json"
    store.write_json(path, {"models": {"baseline": {"accuracy": 0.9}}, "histories": {}})
    path.write_bytes(path.read_bytes()[:30])
    message = _one_line_error(lambda: store.read_json(path))
    assert f"cannot read {path} (" in message
    assert "truncated or not JSON" in message and "at line" in message
    assert "gradcam-repro evaluate" in message


def test_a_caller_fix_replaces_the_default(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("")
    message = _one_line_error(lambda: store.read_json(path, fix="rerun `gradcam-repro evaluate runs/quick`"))
    assert message.endswith("; fix: rerun `gradcam-repro evaluate runs/quick`")
    assert "config.json" in message
    # A fix already starting with "fix:" is not doubled.
    message = _one_line_error(lambda: store.read_json(path, fix="fix: do it"))
    assert message.endswith("; fix: do it") and "fix: fix:" not in message


def test_a_missing_json_names_the_file_and_folder(tmp_path):
    message = _one_line_error(lambda: store.read_json(tmp_path / "run" / "history.json"))
    assert message.startswith(f"no history.json at {tmp_path / 'run' / 'history.json'}; fix:")


def test_a_json_that_is_not_text_or_not_a_file_is_a_user_error(tmp_path):
    (tmp_path / "methods.json").write_bytes(b"\xff\xfe\x00garbage")
    assert "methods.json" in _one_line_error(lambda: store.read_json(tmp_path / "methods.json"))
    (tmp_path / "config.json").mkdir()
    assert "config.json" in _one_line_error(lambda: store.read_json(tmp_path / "config.json"))


def test_a_multi_line_fix_is_kept_to_one_line(tmp_path):
    message = _one_line_error(lambda: store.read_json(tmp_path / "x.json", fix="first line\nsecond line"))
    assert "second line" not in message


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_model(resnet18_cifar(), path)
    return path


def test_a_saved_model_loads(saved_model):
    assert not load_model(saved_model).training


def test_a_truncated_checkpoint_is_a_one_line_user_error(saved_model, tmp_path):
    for fraction in (0.5, 0.99):
        path = tmp_path / "baseline" / "model.pt"
        path.parent.mkdir(exist_ok=True)
        data = saved_model.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        message = _one_line_error(lambda path=path: load_model(path))
        assert f"cannot read {path} (" in message
        assert "truncated or not a checkpoint" in message
        assert "fix: pass a model.pt written by gradcam-repro" in message


def test_torch_load_errors_name_the_file(tmp_path, saved_model):
    assert _one_line_error(lambda: store.torch_load(tmp_path / "checkpoint.pt")).startswith(
        f"no checkpoint.pt at {tmp_path / 'checkpoint.pt'}; fix:")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty.pt" in _one_line_error(lambda: store.torch_load(tmp_path / "empty.pt"))
    (tmp_path / "dir.pt").mkdir()
    assert "dir.pt" in _one_line_error(lambda: store.torch_load(tmp_path / "dir.pt", fix="retrain"))
    assert set(store.torch_load(saved_model)) == set(resnet18_cifar().state_dict())


def test_a_missing_checkpoint_keeps_its_message(tmp_path):
    assert "does not exist" in _one_line_error(lambda: load_model(tmp_path / "nope" / "model.pt"))


# ----------------------------------------------------------------------------- the run lock

HOLDER = textwrap.dedent("""
    import sys, time
    from gradcam_repro import store
    with store.run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """A child process holding the run lock on tmp_path/run."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_held_lock_refuses_a_second_process_until_the_holder_is_killed(tmp_path, holder):
    folder = tmp_path / "run"
    with pytest.raises(UserError) as info:
        with store.run_lock(folder):
            pytest.fail("took a lock that another process holds")
    message = str(info.value)
    assert message == (f"another gradcam-repro process (pid {holder.pid}) is writing to {folder}; "
                       "fix: wait for it to finish or pass another --out")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    start = time.monotonic()
    with store.run_lock(folder) as lock:  # no waiting, no stale-lock clean-up needed
        assert lock.read_text() == str(os.getpid())
    assert time.monotonic() - start < 1


def test_the_same_process_cannot_take_the_lock_twice(tmp_path):
    with store.run_lock(tmp_path):
        with pytest.raises(UserError, match="is writing to"):
            with store.run_lock(tmp_path):
                pass
    with store.run_lock(tmp_path):  # released on exit
        pass


def test_a_lock_file_with_a_live_unrelated_pid_does_not_block(tmp_path):
    (tmp_path / ".lock").write_text(str(os.getppid()))  # alive, but not holding any lock (a reused pid)
    with store.run_lock(tmp_path) as lock:
        assert lock.read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(str(dead.pid))
    with store.run_lock(tmp_path) as lock:
        assert lock.read_text() == str(os.getpid())


def test_a_waiter_that_opened_the_file_before_it_was_removed_takes_the_new_one(tmp_path):
    # The holder removes .lock while still holding it; an fd opened on the old file must not count as the lock.
    with store.run_lock(tmp_path) as lock:
        stale = os.open(lock, os.O_RDWR)
    try:
        assert not store._is_current(stale, lock)
        with store.run_lock(tmp_path) as again:
            current = os.open(again, os.O_RDONLY)
            assert store._is_current(current, again)
            os.close(current)
    finally:
        os.close(stale)


def test_without_fcntl_filelock_is_used_and_without_both_there_is_no_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "fcntl", None)
    with store.run_lock(tmp_path):
        with pytest.raises(UserError, match="is writing to"):
            with store.run_lock(tmp_path):
                pass
    monkeypatch.setattr(store, "filelock", None)
    with store.run_lock(tmp_path), store.run_lock(tmp_path):
        pass
