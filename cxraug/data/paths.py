"""File names read from inside a dataset are confined to its ``--root``.

Label files, metadata tables and folder trees are data a user downloaded, not commands: a line
``P900 ../../outside/secret.png pneumonia``, an absolute file name or a symlink that points out of
the tree must not make ``data prepare`` read a file outside the dataset. Every dataset adapter
joins, checks and shows the paths it finds through ``DatasetRoot``; ``prepare`` checks every file
record against its source's root again, so a third-party adapter gets the same guarantee.
"""

from __future__ import annotations

import os
from pathlib import Path


def _lexical(path: Path) -> Path:
    """Absolute and with ``.``/``..`` folded, without touching the file system."""
    return Path(os.path.normpath(os.path.abspath(path)))


class DatasetRoot:
    """A dataset's ``--root`` (a folder, or for single-file sources the file itself)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root)
        self._lexical = _lexical(self.path)
        self._real = self.path.resolve()

    def escapes(self, path: Path) -> str | None:
        """Why ``path`` leaves the root, or None when it stays inside (links followed).

        A ``..`` or absolute name is refused from its spelling alone, so nothing outside the root
        is even looked at; only a name that stays inside is resolved, to catch symlinks out.
        """
        path = Path(path)
        shown = self.original(path)
        if not _lexical(path).is_relative_to(self._lexical):
            return f"{shown!r} points outside the dataset folder {self.path}; refused"
        try:
            real = path.resolve(strict=False)
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop on Python < 3.13
            return f"{shown!r} is a link that cannot be followed (a loop?); refused"
        if not real.is_relative_to(self._real):
            return f"{shown!r} is a link to {real}, outside the dataset folder {self.path}; refused"
        return None

    def original(self, path: Path) -> str:
        """``path`` relative to the root, POSIX style, as written; never raises."""
        try:
            relative = Path(path).relative_to(self.path)
        except ValueError:
            return Path(path).as_posix()
        return relative.as_posix() or "."
