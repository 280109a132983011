"""File helpers every engine shares: atomic writes, leftover temp files and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
