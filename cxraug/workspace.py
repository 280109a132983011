"""The workspace folder: prepared data under data/NAME, runs under runs/, reports under reports/."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cxraug.errors import DataError
from cxraug.fileio import ensure_writable, work_folders
from cxraug.runlock import RunInUseError, RunLock

log = logging.getLogger(__name__)

WORKSPACE_ENV = "CXRAUG_WORKSPACE"
DEFAULT_WORKSPACE = Path("cxraug-workspace")
DEMO_DATASET = "demo"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


#: Longest dataset/run name: room for ".NAME.partial-PID@HOST" and "dataset-NAME.lock" in 255 bytes.
MAX_NAME = 120


def check_name(name: str, what: str = "--name") -> str:
    """A safe folder name: letters, digits, '.', '_' and '-', not starting with a dot."""
    if not _NAME.match(name):
        raise DataError(
            f"{what} {name!r}: use letters, digits, '.', '_' and '-' only (it becomes a folder name)"
        )
    if len(name) > MAX_NAME:  # lock and work folders add to it; file systems stop at 255 bytes
        raise DataError(f"{what} {name[:20]}...: {len(name)} characters; at most {MAX_NAME}")
    return name


@dataclass
class Workspace:
    """Paths inside one workspace; nothing is created until something is written."""

    root: Path

    @classmethod
    def from_option(cls, path: Path | None) -> Workspace:
        if path is None:
            path = Path(os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE)
        root = Path(path).expanduser()
        # a file where the workspace (or a folder above it) should be fails at the first mkdir,
        # deep inside some command; say so here, naming the flag
        existing = root
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise DataError(
                f"--workspace {root}: {existing} is a file, not a folder; choose a workspace folder"
            )
        return cls(root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def dataset_dir(self, name: str) -> Path:
        return self.data_dir / check_name(name, "dataset name")

    def dataset_lock(self, name: str) -> RunLock:
        """The lock every writer of dataset ``name`` holds (prepare, augment).

        Its file is .locks/dataset-NAME.lock, outside the dataset folder, which does not exist before
        the first prepare and is replaced as a whole by --force.
        """
        lock_file = self.root / ".locks" / f"dataset-{check_name(name, 'dataset name')}.lock"
        return RunLock(self.dataset_dir(name), lock_file=lock_file)

    def writable_data_dir(self) -> Path:
        """data/, created if needed; one-line CxrError when it cannot be written."""
        return ensure_writable(self.data_dir, "workspace data folder")

    def remove_stale_work_folders(self, holding: str | None = None) -> list[Path]:
        """Remove what killed writers left in data/: their ``.NAME.partial-PID@HOST`` folders, and
        their ``.NAME.old-...`` copies (put back as NAME when a kill came between the two renames of
        a swap, so the only copy is never lost).

        Only folders of processes that have exited on this machine are touched, each under its
        dataset's lock (``holding``: the dataset whose lock the caller already holds). Returns what
        was removed or restored.
        """
        touched: list[Path] = []
        for work in work_folders(self.data_dir):
            if not work.dead:
                continue
            try:
                with contextlib.nullcontext() if work.name == holding else self.dataset_lock(work.name):
                    if not work.path.is_dir():  # another process cleaned it meanwhile
                        continue
                    target = self.data_dir / work.name
                    if work.kind == "old" and not target.exists():
                        work.path.rename(target)
                        log.warning("restored %s from %s, left by a killed process", target, work.path)
                    else:
                        shutil.rmtree(work.path, ignore_errors=True)
                        log.info("removed %s, left by process %d that has exited", work.path, work.pid)
            except (RunInUseError, DataError):  # its dataset is being written now, or an odd name
                continue
            touched.append(work.path)
        return touched

    def dataset_names(self) -> list[str]:
        """Prepared datasets, oldest first (by the time recorded when they were prepared)."""
        if not self.data_dir.is_dir():
            return []
        found = []
        for info_path in self.data_dir.glob("*/info.json"):
            if info_path.parent.name.startswith("."):  # a dataset being written, or a swapped-out one
                continue
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = None
            # a damaged info.json still names a dataset, so opening it says what is wrong with it
            created = info.get("created", "") if isinstance(info, dict) else ""
            found.append((str(created), info_path.parent.name))
        return [name for _, name in sorted(found)]

    def latest_dataset(self) -> str | None:
        names = self.dataset_names()
        return names[-1] if names else None
