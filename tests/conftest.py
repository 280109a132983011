from __future__ import annotations

from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401 - a fixture, shared by the Slurm tests

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_third_party_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the built-ins only, unless a test installs a plugin itself."""
    monkeypatch.setenv("CXRAUG_DISABLE_PLUGINS", "1")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never download (even on a machine with internet) and never see the user's caches."""
    monkeypatch.setenv("CXRAUG_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA
