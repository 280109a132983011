"""Progress reaches a log file: periodic "n/N, rate, ETA" lines when the output is not a terminal."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

import cxraug.ui as ui


def _run(monkeypatch: pytest.MonkeyPatch, every: float, terminal: bool) -> None:
    monkeypatch.setattr(ui, "LOG_EVERY_S", every)
    console = Console(file=io.StringIO(), force_terminal=terminal)
    with ui.LoggedProgress(console=console) as progress:
        task = progress.add_task("[bold]decoding 5 images", total=5)
        for _ in range(5):
            progress.advance(task)


def test_not_a_terminal_logs_progress_and_the_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cxraug.progress")
    _run(monkeypatch, every=0.0, terminal=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "cxraug.progress"]
    assert lines[0].startswith("decoding 5 images: 1/5")  # markup stripped
    assert lines[-1].startswith("decoding 5 images: 5/5") and lines[-1].endswith(", done")
    assert len(lines) == 5


def test_short_tasks_and_terminals_log_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cxraug.progress")
    _run(monkeypatch, every=3600.0, terminal=False)
    _run(monkeypatch, every=0.0, terminal=True)
    assert not [r for r in caplog.records if r.name == "cxraug.progress"]
