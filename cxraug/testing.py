"""Pytest fixtures and contract checks for cxraug plugin authors (loaded as a pytest plugin).

Use the fixtures in your plugin's tests::

    def test_my_gan_trains(cxraug_cli):
        result = cxraug_cli("train-gan", "my-gan", "--kimg", "0.01")
        assert result.exit_code == 0, result.output
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxraug.errors import DataError
from cxraug.interfaces import DatasetAdapter, Record
from cxraug.labels import VOCABULARY
from cxraug.workspace import Workspace


@pytest.fixture
def cxraug_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An empty workspace in a temporary folder, also set as CXRAUG_WORKSPACE."""
    root = tmp_path / "workspace"
    monkeypatch.setenv("CXRAUG_WORKSPACE", str(root))
    return Workspace(root)


@pytest.fixture
def cxraug_cli(cxraug_workspace: Workspace) -> Callable[..., Any]:
    """Run the cxraug CLI in-process: ``cxraug_cli("data", "list")`` -> click Result.

    Pass ``pm=`` to use a specific plugin manager (default: built-ins plus installed plugins).
    """
    from typer.testing import CliRunner

    from cxraug.cli import build_app

    def run(*args: str, pm: Any = None, input: str | None = None) -> Any:
        runner = CliRunner()
        env = {"COLUMNS": "200", "CXRAUG_WORKSPACE": str(cxraug_workspace.root)}
        return runner.invoke(build_app(pm), list(args), input=input, env=env)

    return run


def check_dataset_adapter(adapter: DatasetAdapter, root: Path | None) -> list[Record]:
    """Contract check: records are well formed, labels canonical, sources exist. Returns them."""
    records = list(adapter.records(root))
    assert records, f"{adapter.name} yielded no records from {root}"
    for rec in records:
        assert isinstance(rec, Record), f"{adapter.name} yielded {type(rec).__name__}, not Record"
        assert rec.label in VOCABULARY, f"{adapter.name}: label {rec.label!r} is not canonical"
        assert rec.split in (None, "train", "val", "test"), f"{adapter.name}: split {rec.split!r}"
        assert rec.patient_id is None or isinstance(rec.patient_id, str), (
            f"{adapter.name}: patient ids must be strings, got {type(rec.patient_id).__name__}"
        )
        assert rec.source == adapter.name, f"{adapter.name}: record source {rec.source!r}"
        if isinstance(rec.image, np.ndarray):
            assert rec.image.ndim in (2, 3), f"{adapter.name}: image array {rec.image.shape}"
        else:
            assert Path(rec.image).is_file(), f"{adapter.name}: {rec.image} does not exist"
    assert all(isinstance(n, str) for n in adapter.notes())
    if adapter.needs_root:
        missing = Path(os.devnull).parent / "cxraug-no-such-folder"
        with pytest.raises(DataError):
            list(adapter.records(missing))
    return records
