"""Console and progress bars shared by the CLI and the engines below it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

#: Human-facing output goes to stderr so that --json output on stdout stays clean.
console = Console(stderr=True)


def progress_bar(*extra_columns: object, transient: bool = False) -> Progress:
    """The standard cxraug progress bar (description, bar, n/total, elapsed, remaining)."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,  # type: ignore[arg-type]
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
