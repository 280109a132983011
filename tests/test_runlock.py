from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxraug.errors import CxrError
from cxraug.runlock import RunInUseError, RunLock, read_holder

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from cxraug.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A separate process that holds the lock on tmp_path until killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    watchdog = threading.Timer(20, proc.kill)  # never let a stuck child hang the suite
    watchdog.start()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_lock_held_by_another_process_dies_with_it(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(RunInUseError) as caught:
        RunLock(tmp_path).acquire()
    message = str(caught.value)
    assert f"in use by process {holder.pid} on {socket.gethostname()}" in message
    assert message.startswith(f"{tmp_path} is in use")
    assert message.endswith("wait for it to finish or stop it, then try again")
    assert "\n" not in message
    assert isinstance(caught.value, CxrError)
    assert caught.value.holder is not None and caught.value.holder["pid"] == holder.pid

    holder.kill()  # SIGKILL on POSIX: no cleanup code runs in the holder
    holder.wait()
    with RunLock(tmp_path) as lock:
        assert lock.held
        assert read_holder(tmp_path)["pid"] == os.getpid()  # type: ignore[index]


def test_holder_info_and_release(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    info = json.loads((tmp_path / ".lock").read_text(encoding="utf-8"))
    assert info["pid"] == os.getpid()
    assert info["hostname"] == socket.gethostname()
    assert info["command"] == sys.argv
    assert info["started"].endswith("+00:00")

    lock.release()
    assert not lock.held
    # The file stays (deleting it races with a waiting locker) but says nobody holds it.
    assert (tmp_path / ".lock").read_text(encoding="utf-8") == ""
    lock.release()  # a second release is harmless
    with RunLock(tmp_path):
        pass


def test_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(RunInUseError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()


def test_acquiring_twice_from_one_object_is_a_bug(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        with pytest.raises(RuntimeError, match="already acquired"):
            lock.acquire()
        assert lock.held


def test_unreadable_holder_info_falls_back(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        (tmp_path / ".lock").write_text("{not json", encoding="utf-8")
        with pytest.raises(RunInUseError) as caught:
            RunLock(tmp_path).acquire()
    assert str(caught.value) == (
        f"{tmp_path} is in use by another process; wait for it to finish or stop it, then try again"
    )


def test_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="cannot open the run lock"):
        RunLock(tmp_path / "nope").acquire()


FORKING_HOLDER = """
import os, sys, time
from cxraug.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
if os.fork() == 0:  # like a DataLoader worker; fork's after-child hooks have run by now
    os.write(1, f"child {os.getpid()}\\n".encode())
    time.sleep(60)
    os._exit(0)
os.write(1, f"parent {os.getpid()}\\n".encode())
time.sleep(60)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_keep_a_dead_parents_lock(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    child = 0
    watchdog = threading.Timer(20, parent.kill)
    watchdog.start()
    try:
        assert parent.stdout is not None
        # Both report in (in either order), so the child has closed its copy of the lock by now.
        pids = dict(parent.stdout.readline().split() for _ in range(2))
        child = int(pids["child"])
        with pytest.raises(RunInUseError):
            RunLock(tmp_path).acquire()
        parent.kill()
        parent.wait()
        os.kill(child, 0)  # the child is still alive ...
        with RunLock(tmp_path):  # ... and the lock is free all the same
            pass
    finally:
        watchdog.cancel()
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if child:
            os.kill(child, signal.SIGKILL)
