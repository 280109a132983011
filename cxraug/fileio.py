"""File helpers every engine shares: atomic writes, leftover temp files and content hashes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from cxraug.errors import ENVIRONMENT_ERRNOS, CxrError

_DISK_FULL = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
# atomic_write's temporaries are ".{name}.{random}.tmp"; mkstemp's random part is [a-z0-9_].
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")
_umask_lock = threading.Lock()


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    # Linux >= 4.7 reports it in /proc; this avoids the brief umask(0) window that other threads would see.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    # The umask can change at any time, so it is read on every call, never cached.
    with _umask_lock:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _default_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give a new file right now."""
    return 0o666 & ~_current_umask()


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, flush + fsync, then rename over ``path``.

    Readers never see half a file, and a crash leaves the previous version in place. The new file gets
    the mode an ordinary ``open()`` would give (0o666 minus the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _default_mode())
            os.fsync(f.fileno())
        if not hasattr(os, "fchmod"):  # Windows: only the read-only bit exists, so this is best effort
            os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        refused = _write_refusal(exc, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if refused is not None:
            raise refused from exc
        raise


def _write_refusal(exc: BaseException, path: Path) -> OSError | None:
    """The file-system refusal (disk full, read-only, ...) behind a failed write of ``path``, naming it.

    Writers wrap it: torch.save raises RuntimeError("unexpected pos ...") with the OSError as its
    context, and numpy's tofile (np.save to a file) an OSError without errno on a short write.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in ENVIRONMENT_ERRNOS:
            return OSError(seen.errno, os.strerror(seen.errno), str(path))
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, OSError) and exc.errno is None and _nearly_full(path.parent):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def remove_orphan_temps(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Delete the ``.{name}.{random}.tmp`` files atomic_write leaves behind when killed mid-write.

    Only call it while no writer can be active in ``folder`` (e.g. under the run's lock). Returns the
    removed paths, sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    # os.walk does not follow symlinked folders, so nothing outside ``folder`` is touched.
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if not _TEMP_NAME.fullmatch(name):
                continue
            candidate = Path(root) / name
            try:
                if not stat.S_ISREG(candidate.lstat().st_mode):
                    continue
                candidate.unlink()
            except FileNotFoundError:
                continue
            removed.append(candidate)
        if not recursive:
            break
    return sorted(removed)


#: Set to 1 / true / yes to make every download refuse (clusters without internet, test suites).
OFFLINE_ENV = "CXRAUG_OFFLINE"


def check_online(url: str) -> None:
    """OSError (which every download site reports in one line) when $CXRAUG_OFFLINE forbids ``url``."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in ("1", "true", "yes"):
        raise OSError(f"downloads are turned off (${OFFLINE_ENV}={value}); not fetching {url}")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ disk space, folders


def reserve_space(fd: int, nbytes: int, path: Path) -> None:
    """Allocate ``nbytes`` on disk for the open file ``fd`` now, or raise OSError(ENOSPC) naming ``path``.

    A memory-mapped file is created sparse: its blocks are taken only when a page is first written,
    and a write into a full disk then kills the process with SIGBUS instead of raising. Reserving
    the blocks first turns that into an ordinary error before anything is written.
    """
    if nbytes <= 0:
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no fallocate here: check the free space
                check_free(path, nbytes - os.fstat(fd).st_blocks * 512)
                return
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    else:  # pragma: no cover - macOS and Windows
        check_free(path, nbytes - os.fstat(fd).st_size)


def check_free(path: Path, needed: int) -> None:
    """Raise OSError(ENOSPC) naming ``path`` when its disk has fewer than ``needed`` bytes free."""
    if needed > 0 and shutil.disk_usage(path.parent).free < needed:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def open_npy_memmap(path: Path, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.memmap:
    """A new ``.npy`` file mapped for writing (like ``np.lib.format.open_memmap``), its space reserved.

    Raises OSError(ENOSPC) naming ``path`` (and removes the file) when the disk cannot hold it.
    """
    path = Path(path)
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in ENVIRONMENT_ERRNOS and exc.filename is None:  # the header's write
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None
        raise
    try:
        with open(path, "r+b") as fh:
            reserve_space(fh.fileno(), os.fstat(fh.fileno()).st_size, path)
    except BaseException:
        del array
        path.unlink(missing_ok=True)
        raise
    return array


def write_npy_rows(path: Path, shape: tuple[int, ...], rows: Iterable[np.ndarray]) -> None:
    """A new uint8 ``.npy`` of ``shape`` written row by row (space reserved first).

    Plain writes, not a mapping: the pages of a mapped output would count in the process's resident
    memory until unmapped, so memory would grow with the dataset.
    """
    path = Path(path)
    expected = int(np.prod(shape[1:], dtype=np.int64))
    written = 0
    try:
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": tuple(shape)}
            )
            fh.flush()
            reserve_space(fh.fileno(), fh.tell() + int(np.prod(shape, dtype=np.int64)), path)
            for row in rows:
                data = np.ascontiguousarray(row, dtype=np.uint8).tobytes()
                if len(data) != expected:
                    raise ValueError(f"{path}: row {written} has {len(data)} bytes, expected {expected}")
                fh.write(data)
                written += 1
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if written != shape[0]:
        path.unlink(missing_ok=True)
        raise ValueError(f"{path}: {written} rows written, expected {shape[0]}")


@contextlib.contextmanager
def writing_into(folder: Path, shown: Path | None = None) -> Iterator[None]:
    """Name a path in the file-system refusals (disk full, read-only, ...) met while writing into
    ``folder``: plain ``write()`` errors name no file at all.

    Those get ``folder``, or ``shown`` when given (the final folder a temporary one becomes); with
    ``shown``, refusals naming a file inside ``folder`` get it too. Refusals naming a file outside
    ``folder`` (an input that could not be read) pass unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        if exc.filename is None:
            raise OSError(exc.errno, os.strerror(exc.errno), str(shown or folder)) from None
        if shown is not None and Path(os.fsdecode(exc.filename)).is_relative_to(folder):
            raise OSError(exc.errno, os.strerror(exc.errno), str(shown)) from None
        raise


def ensure_writable(folder: Path, what: str = "folder") -> Path:
    """Create ``folder`` if needed and check that files can be made in it; CxrError in one line if not.

    Checked before a command starts work, so a read-only or foreign-owned workspace is reported
    up front rather than as a failure half-way.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise  # a full disk is reported as such by the CLI, naming the path
        # Any other refusal to make a folder is the place's doing (read-only, no permission, a file
        # in the way, a pseudo file system such as /proc), not a bug.
        reason = (exc.strerror or "refused").lower()
        raise CxrError(
            f"{what} {folder} cannot be created ({reason}: {exc.filename}); use a writable --workspace "
            "(or --out)"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_mount(folder) else "no write permission"
        raise CxrError(f"{what} {folder} is not writable ({reason}); use a writable --workspace (or --out)")
    return folder


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
        return False


# A folder being written (".NAME.partial-PID@HOST") or the previous version during a swap
# (".NAME.old-PID@HOST"); folders named by older versions have no "@HOST".
_WORK_FOLDER = re.compile(
    r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9._-]+))?"
)


def host_tag() -> str:
    """This machine's name as it may appear in a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def work_folder_name(name: str, kind: str = "partial") -> str:
    """The hidden name of a folder this process is writing (``partial``) or swapping out (``old``)."""
    return f".{name}.{kind}-{os.getpid()}@{host_tag()}"


@dataclass(frozen=True)
class WorkFolder:
    """A hidden work folder found in a folder, and who made it."""

    path: Path
    name: str
    kind: str
    pid: int
    host: str | None

    @property
    def dead(self) -> bool:
        """True when the process that made it has certainly exited.

        Only a process of this machine can be checked; another machine's folder (on a shared disk)
        is never called dead. Folders of older versions carry no machine name and are taken to be
        this machine's.
        """
        if self.host is not None and self.host != host_tag():
            return False
        return self.pid != os.getpid() and not pid_alive(self.pid)


def work_folders(folder: Path) -> Iterator[WorkFolder]:
    """The ``.NAME.partial-PID@HOST`` / ``.NAME.old-PID@HOST`` folders directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        match = _WORK_FOLDER.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        yield WorkFolder(entry, match["name"], match["kind"], int(match["pid"]), match["host"])


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (when unsure: True)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
