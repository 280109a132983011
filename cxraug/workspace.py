"""The workspace folder: prepared data under data/NAME, runs under runs/, reports under reports/."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cxraug.errors import DataError

log = logging.getLogger(__name__)

WORKSPACE_ENV = "CXRAUG_WORKSPACE"
DEFAULT_WORKSPACE = Path("cxraug-workspace")
DEMO_DATASET = "demo"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_name(name: str, what: str = "--name") -> str:
    """A safe folder name: letters, digits, '.', '_' and '-', not starting with a dot."""
    if not _NAME.match(name):
        raise DataError(
            f"{what} {name!r}: use letters, digits, '.', '_' and '-' only (it becomes a folder name)"
        )
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

    def dataset_names(self) -> list[str]:
        """Prepared datasets, oldest first (by the time recorded when they were prepared)."""
        if not self.data_dir.is_dir():
            return []
        found = []
        for info_path in self.data_dir.glob("*/info.json"):
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
