from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxraug import fileio
from cxraug.fileio import atomic_write, remove_orphan_temps

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the umask after a test that changes it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_write_gives_the_mode_open_would(
    tmp_path: Path, umask: None, mask: int, expected: int
) -> None:
    os.umask(mask)
    target = tmp_path / "options.json"
    atomic_write(target, lambda f: f.write(b"{}"))
    assert target.read_bytes() == b"{}"
    assert _mode(target) == expected
    # An overwrite follows the umask of the moment, not the old file's mode.
    os.umask(0o077)
    atomic_write(target, lambda f: f.write(b"[]"))
    assert _mode(target) == 0o600


@posix_only
def test_default_mode_without_proc(monkeypatch: pytest.MonkeyPatch, umask: None) -> None:
    def no_proc(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc here")

    os.umask(0o027)
    monkeypatch.setattr(fileio, "open", no_proc, raising=False)
    assert fileio._default_mode() == 0o640
    assert os.umask(0o027) == 0o027  # the fallback put the umask back


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")

    def boom(f: object) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_remove_orphan_temps(tmp_path: Path) -> None:
    orphans = [
        _touch(tmp_path / "checkpoints" / ".ckpt-00000010.pt.abc123.tmp"),
        _touch(tmp_path / "units" / "a" / ".options.json.x.tmp"),
        _touch(tmp_path / ".log.csv.k2_j9zq1.tmp"),
    ]
    kept = [
        _touch(tmp_path / "notes.tmp"),
        _touch(tmp_path / "checkpoints" / "ckpt-1.pt"),
        _touch(tmp_path / "units" / "a" / ".hidden"),
        _touch(tmp_path / ".foo.tmp"),
        _touch(tmp_path / ".options.json.tmp.bak"),
    ]
    (tmp_path / ".dir.abc.tmp").mkdir()  # a folder with that name is not a temp file

    removed = remove_orphan_temps(tmp_path)

    assert removed == sorted(orphans)
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in kept)
    assert (tmp_path / ".dir.abc.tmp").is_dir()
    assert remove_orphan_temps(tmp_path) == []


def test_remove_orphan_temps_not_recursive(tmp_path: Path) -> None:
    top = _touch(tmp_path / ".options.json.abc.tmp")
    nested = _touch(tmp_path / "sub" / ".options.json.abc.tmp")
    assert remove_orphan_temps(tmp_path, recursive=False) == [top]
    assert nested.exists()


def test_remove_orphan_temps_matches_real_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "ckpt-00000010.pt"

    def killed(f: object) -> None:
        raise KeyboardInterrupt

    # A kill skips atomic_write's cleanup; a no-op unlink leaves the temp file the same way.
    with monkeypatch.context() as m:
        m.setattr(os, "unlink", lambda *a, **k: None)
        with pytest.raises(KeyboardInterrupt):
            atomic_write(target, killed)
    leftovers = list((tmp_path / "sub").iterdir())
    assert len(leftovers) == 1
    assert remove_orphan_temps(tmp_path) == leftovers


def test_remove_orphan_temps_missing_folder(tmp_path: Path) -> None:
    assert remove_orphan_temps(tmp_path / "nope") == []
