"""Console and progress bars shared by the CLI and the engines below it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

#: Human-facing output goes to stderr so that --json output on stdout stays clean.
console = Console(stderr=True)

log = logging.getLogger("cxraug.progress")

#: Seconds between progress log lines when the output is not a terminal (CI logs, nohup, a file).
LOG_EVERY_S = 30.0


class LoggedProgress(Progress):
    """A rich progress bar that, when its console is not a terminal, also logs "n/N, rate, ETA"
    every ``LOG_EVERY_S`` seconds, and at the end of a task that logged before: a bar alone shows
    nothing in a log file until it ends. A task shorter than ``LOG_EVERY_S`` logs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log_lines = not self.console.is_terminal
        self._last_log: dict[TaskID, float] = {}
        self._logged_once: set[TaskID] = set()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_log(task_id)

    def _maybe_log(self, task_id: TaskID) -> None:
        if not self._log_lines:
            return
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is None:
            return
        now = time.monotonic()
        last = self._last_log.setdefault(task_id, now)
        if task.finished:
            if task_id not in self._logged_once:  # short, or already logged as finished
                return
            self._logged_once.discard(task_id)
        elif now - last < LOG_EVERY_S:
            return
        else:
            self._last_log[task_id] = now
            self._logged_once.add(task_id)
        total = f"/{task.total:.0f}" if task.total is not None else ""
        speed = f", {task.speed:.1f}/s" if task.speed else ""
        remaining = task.time_remaining
        eta = f", ETA {_duration(remaining)}" if remaining is not None and not task.finished else ""
        done = ", done" if task.finished else ""
        what = Text.from_markup(task.description).plain
        log.info("%s: %.0f%s%s%s%s", what, task.completed, total, speed, eta, done)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_bar(*extra_columns: object, transient: bool = False) -> Progress:
    """The standard cxraug progress bar (description, bar, n/total, elapsed, remaining)."""
    return LoggedProgress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
    )


def track(items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
    """Iterate with a progress bar."""
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
