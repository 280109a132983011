"""One process per run folder: an OS lock on FOLDER/.lock that dies with the process holding it."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from cxraug.errors import CxrError

LOCK_FILE = ".lock"

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    # Lock one byte far past the holder info, so other processes can still read who holds it.
    _WIN_LOCK_OFFSET = 1 << 30

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLOCK):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class RunInUseError(CxrError):
    """Another process holds the run folder's lock."""

    def __init__(self, folder: Path, holder: dict[str, Any] | None) -> None:
        self.folder = folder
        self.holder = holder
        super().__init__(_in_use_message(folder, holder))


def _in_use_message(folder: Path, holder: dict[str, Any] | None) -> str:
    advice = "wait for it to finish or stop it, then try again"
    if not holder or "pid" not in holder:
        return f"{folder} is in use by another process; {advice}"
    command = holder.get("command")
    if isinstance(command, list):
        command = " ".join(str(part) for part in command)
    # The message is one line even if an argument held a newline.
    command = " ".join(str(command or "unknown command").split())
    return (
        f"{folder} is in use by process {holder['pid']} on {holder.get('hostname', 'unknown host')} "
        f"(since {holder.get('started', 'unknown time')}: {command}); {advice}"
    )


def read_holder(folder: Path) -> dict[str, Any] | None:
    """The holder info in FOLDER/.lock, or None when there is none or it cannot be read."""
    return _read_holder_file(Path(folder) / LOCK_FILE)


def _read_holder_file(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
        info = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


# Locks held by this process: a forked child (e.g. a DataLoader worker) closes its copies, so a killed
# parent's lock is not kept alive by its children.
_held: weakref.WeakSet[RunLock] = weakref.WeakSet()
_held_guard = threading.Lock()


def _close_in_forked_child() -> None:
    global _held_guard
    # Another thread may have held the guard at fork time; the child gets a fresh one.
    _held_guard = threading.Lock()
    for lock in list(_held):
        lock._forget_after_fork()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_forked_child)


class RunLock:
    """Exclusive, non-blocking lock on a run folder; ``with RunLock(folder): ...``.

    The OS drops the lock when the holding process dies, however it dies. Not re-entrant: acquiring an
    already acquired RunLock is a bug and raises RuntimeError. ``lock_file`` puts the lock outside the
    folder, for a folder that does not exist yet or is replaced while locked (a dataset being prepared);
    messages still name ``folder``.
    """

    def __init__(self, folder: Path, *, lock_file: Path | None = None) -> None:
        self.folder = Path(folder)
        self.path = Path(lock_file) if lock_file is not None else self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise RunInUseError naming the process that has it."""
        if self._fd is not None:
            raise RuntimeError(f"RunLock({self.folder}) is already acquired by this object; release it first")
        try:
            if self.path.parent != self.folder:  # a lock file kept elsewhere: its folder may be new
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CxrError(
                f"{self.path}: cannot open the run lock ({exc.strerror}); "
                f"check that {self.path.parent} exists and is writable"
            ) from None
        try:
            locked = _try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise RunInUseError(self.folder, self._wait_for_holder())
        try:
            self._write_holder(fd)
        except BaseException as exc:
            _unlock(fd)
            os.close(fd)
            if isinstance(exc, OSError) and exc.filename is None:  # os.write names no file (disk full)
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
            raise
        self._fd = fd
        with _held_guard:
            _held.add(self)
        return self

    def release(self) -> None:
        """Let go of the lock; the lock file stays (deleting it would race with a process about to lock)."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        with _held_guard:
            _held.discard(self)
        try:
            # Clear the holder info while still holding the lock, so a new holder's info is never wiped.
            os.ftruncate(fd, 0)
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.folder)!r}, held={self.held})"

    def _write_holder(self, fd: int) -> None:
        info = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": list(sys.argv),
        }
        data = (json.dumps(info) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)

    def _wait_for_holder(self) -> dict[str, Any] | None:
        # The holder writes its info just after locking; give a fresh holder a moment to finish.
        for _ in range(3):
            info = _read_holder_file(self.path)
            if info is not None:
                return info
            time.sleep(0.05)
        return None

    def _forget_after_fork(self) -> None:
        # Closing (not unlocking) a forked copy leaves the parent's lock in place.
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
