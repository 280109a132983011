"""The one exception type for mistakes a user can make (bad input, missing files, wrong options)."""

from __future__ import annotations

import errno
import os


class CxrError(Exception):
    """A user-facing error: the message says what is wrong, where, and what to do.

    The CLI prints it without a traceback and exits with status 2.
    """


class DataError(CxrError):
    """A dataset, manifest or image on disk is not what cxraug expects."""


class OptionsError(CxrError):
    """A plugin option, config file or command-line value is invalid."""


class PluginError(CxrError):
    """A plugin name is unknown or a plugin could not be used."""


class TrainingInterruptedError(CxrError):
    """Training stopped by Ctrl-C after saving a snapshot (exit status 130)."""


#: errno values that mean the file system refused a write for a reason the user controls (a read-only
#: mount, missing permission, a full disk or quota), not a bug; the CLI reports them in one line.
ENVIRONMENT_ERRNOS: frozenset[int] = frozenset(
    code
    for code in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),  # not defined on Windows
    )
    if code is not None
)


def describe_os_error(exc: BaseException) -> str | None:
    """One line for an OSError the user's environment caused (see ENVIRONMENT_ERRNOS), else None."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = exc.filename
    reason = exc.strerror or os.strerror(exc.errno)
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", None):
        at = f" at {where}" if where else ""
        return (
            f"disk full{at} ({reason}); free some space (or use a --workspace/--out on another disk) "
            "and run the command again"
        )
    if exc.errno == errno.EROFS:
        return f"{where or 'a file'}: read-only file system; use a writable --workspace (or --out)"
    return (
        f"{where or 'a file'}: permission denied ({reason}); check its permissions, or use another "
        "--workspace (or --out) if cxraug was writing there"
    )
