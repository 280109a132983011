"""An append-only metric log (log.jsonl) with its derived table (log.csv), safe against kills."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxraug.fileio import atomic_write

if TYPE_CHECKING:
    from cxraug.training.trackers import Trackers

JSONL_FILE = "log.jsonl"
CSV_FILE = "log.csv"


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def effective_rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metric rows still valid after every resume marker in ``lines``, in order.

    A marker ``{"event": "resume", "step": N}`` drops earlier rows with step > N: training went back to
    step N and logged those steps again. Lines with an "event" key are never rows themselves.
    """
    rows: list[dict[str, Any]] = []
    for line in lines:
        if "event" not in line:
            rows.append(line)
        elif line["event"] == "resume":
            step = line.get("step")
            if isinstance(step, (int, float)):
                rows = [r for r in rows if _step(r) <= step]
    return rows


def _step(row: dict[str, Any]) -> float:
    step = row.get("step", 0)
    return step if isinstance(step, (int, float)) else 0


class MetricLog:
    """Appends rows to log.jsonl, never rewriting it; a resume adds a marker instead of deleting rows.

    ``rows`` is the effective history (see ``effective_rows``); log.csv is derived from it. Each
    appended row also goes to ``trackers`` (the run's ``--logger`` plugins), so every command that
    logs rows logs them there too.
    """

    def __init__(
        self, folder: Path, resume_step: int | None = None, trackers: Trackers | None = None
    ) -> None:
        self.folder = Path(folder)
        self.trackers = trackers
        self.jsonl = self.folder / JSONL_FILE
        self.csv = self.folder / CSV_FILE
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = self.read()
        # Without this, the next row would be glued onto a line a kill cut short, and both would be lost.
        self._end_with_newline()
        if resume_step is not None:
            marker = {"event": "resume", "step": resume_step, "time": _now_iso()}
            self._write_line(marker)
            lines.append(marker)
        self._rows = effective_rows(lines)
        self._write_csv()

    def read(self) -> list[dict[str, Any]]:
        """Every parsable line of log.jsonl (rows and markers), skipping damaged ones."""
        if not self.jsonl.is_file():
            return []
        out: list[dict[str, Any]] = []
        for raw in self.jsonl.read_bytes().split(b"\n"):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # a line cut by a kill; the lines after it are still good
            if isinstance(item, dict):
                out.append(item)
        return out

    def append(self, row: dict[str, Any]) -> None:
        """Log one metric row (it should carry a "step")."""
        if "event" in row:
            raise ValueError(f"metric rows must not have an 'event' key (reserved for markers): {row!r}")
        self._write_line(row)
        self._rows.append(row)
        if self.trackers:
            step = row.get("step", len(self._rows))
            self.trackers.log_scalars(int(step) if isinstance(step, (int, float)) else len(self._rows), row)

    def flush_csv(self) -> None:
        """Rewrite log.csv from ``rows`` (atomically; from memory, log.jsonl is not re-read)."""
        self._write_csv()

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The effective metric history: later rows replace those a resume went back over."""
        return self._rows

    def _end_with_newline(self) -> None:
        try:
            with open(self.jsonl, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return
                fh.seek(-1, os.SEEK_END)
                last = fh.read(1)
        except FileNotFoundError:
            return
        if last != b"\n":
            with open(self.jsonl, "ab") as fh:
                fh.write(b"\n")

    def _write_line(self, item: dict[str, Any]) -> None:
        # One write of a whole line, so a kill can cut at most this line, never an earlier one.
        data = (json.dumps(item) + "\n").encode("utf-8")
        with open(self.jsonl, "ab") as fh:
            fh.write(data)
            fh.flush()

    def _write_csv(self) -> None:
        keys: list[str] = []
        seen: set[str] = set()
        for row in self._rows:
            for key in row:
                if key not in seen:
                    seen.add(key)
                    keys.append(key)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys or ["step"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        data = buf.getvalue().encode("utf-8")
        atomic_write(self.csv, lambda fh: fh.write(data))
