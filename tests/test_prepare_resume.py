"""An interrupted ``data prepare`` resumes without decoding again what it already wrote."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cxraug.data.prepare as prepare_mod
from cxraug.data.decode_cache import cache_folder
from cxraug.data.prepare import PrepareSettings, Source, prepare_dataset
from cxraug.errors import DataError
from cxraug.plugins.datasets.imagefolder import ImageFolderAdapter
from cxraug.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"
N = 48
REAL_DECODE = prepare_mod._decode_one

# Runs `data prepare` with decoding slowed down (so a test can kill it part-way), in its own process.
SLOW_RUNNER = """
import sys, time
import cxraug.data.prepare as p
real = p._decode_one
def slow(args):
    time.sleep(0.05)
    return real(args)
p._decode_one = slow
from cxraug.cli import main
main(sys.argv[1:])
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Real PneumoniaMNIST images as PNG files in an imagefolder layout."""
    with np.load(MNIST) as z:
        images, labels = z["test_images"][:N], z["test_labels"][:N, 0]
    root = tmp_path / "tree"
    for k, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / ("PNEUMONIA" if label else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(folder / f"img{k:03d}.png")
    return root


def _prepare(ws: Workspace, root: Path, **kw: object) -> tuple[Path, dict]:
    settings = PrepareSettings(**{"name": "t", "size": 32, "workers": 1, "force": True, **kw})  # type: ignore[arg-type]
    result = prepare_dataset(ws, [Source(ImageFolderAdapter(ImageFolderAdapter.Options()), root)], settings)
    return result.dataset.path, result.report


def _count_decodes(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> list[int]:
    calls: list[int] = []
    real = REAL_DECODE

    def counting(args):  # type: ignore[no-untyped-def]
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(1)
        return real(args)

    monkeypatch.setattr(prepare_mod, "_decode_one", counting)
    return calls


def _contents(path: Path) -> tuple[bytes, str]:
    return (path / "images.npy").read_bytes(), (path / "manifest.csv").read_text(encoding="utf-8")


def test_interrupted_prepare_resumes_and_matches_an_uninterrupted_one(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clean, _ = _prepare(Workspace(tmp_path / "clean"), tree)
    ws = Workspace(tmp_path / "ws")
    _count_decodes(monkeypatch, stop_after=20)
    with pytest.raises(KeyboardInterrupt):
        _prepare(ws, tree)
    assert "20 decoded images are kept" in caplog.text
    assert not ws.dataset_dir("t").exists()
    assert cache_folder(ws.data_dir, "t").is_dir()

    calls = _count_decodes(monkeypatch)
    path, report = _prepare(ws, tree)
    assert len(calls) == N - 20  # only what the first run had not decoded
    assert report["decoded_before_interruption"] == 20
    assert "reused 20 decoded images" in caplog.text
    assert _contents(path) == _contents(clean)
    assert not cache_folder(ws.data_dir, "t").exists()  # gone once the dataset is in place


def test_a_changed_file_or_other_settings_are_decoded_again(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace(tmp_path / "ws")
    _count_decodes(monkeypatch, stop_after=N - 1)
    with pytest.raises(KeyboardInterrupt):
        _prepare(ws, tree)
    changed = sorted(tree.rglob("*.png"))[0]
    Image.fromarray(np.full((28, 28), 7, np.uint8), "L").save(changed)
    os.utime(changed, ns=(1, 1))  # another size and time: another file
    calls = _count_decodes(monkeypatch)
    _, report = _prepare(ws, tree)
    assert len(calls) == 2 and report["decoded_before_interruption"] == N - 2

    _count_decodes(monkeypatch, stop_after=10)
    with pytest.raises(KeyboardInterrupt):
        _prepare(ws, tree)
    calls = _count_decodes(monkeypatch)
    _, report = _prepare(ws, tree, size=40)  # decoded at 32 px before: nothing to reuse
    assert len(calls) == N and report["decoded_before_interruption"] == 0


def test_a_torn_index_line_and_unindexed_pixels_are_ignored(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean, _ = _prepare(Workspace(tmp_path / "clean"), tree)
    ws = Workspace(tmp_path / "ws")
    _count_decodes(monkeypatch, stop_after=12)
    with pytest.raises(KeyboardInterrupt):
        _prepare(ws, tree)
    folder = cache_folder(ws.data_dir, "t")
    with open(folder / "index.jsonl", "a", encoding="utf-8") as fh:
        fh.write('["file:/x", 12, "ab')  # a kill in the middle of a line
    with open(folder / "pixels.bin", "ab") as fh:
        fh.write(b"\x01" * 500)  # and in the middle of a row
    calls = _count_decodes(monkeypatch)
    path, report = _prepare(ws, tree)
    assert len(calls) == N - 12 and report["decoded_before_interruption"] == 12
    assert _contents(path) == _contents(clean)


@pytest.mark.slow
def test_a_prepare_killed_with_sigkill_resumes(tree: Path, tmp_path: Path) -> None:
    """kill -9 part-way through decoding, then the same command: the earlier images are reused."""
    clean, _ = _prepare(Workspace(tmp_path / "clean"), tree)
    ws = tmp_path / "ws"
    args = ["data", "prepare", "imagefolder", "--root", str(tree), "--name", "t", "--size", "32"]
    args += ["--workers", "1", "-w", str(ws)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUNNER, *args], env=env, stdout=subprocess.DEVNULL)
    index = ws / "data" / ".t.decoding" / "index.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not (index.exists() and len(index.read_bytes().splitlines()) >= 10):
            assert proc.poll() is None, "prepare ended before it could be killed"
            assert time.monotonic() < deadline, "prepare never wrote its decode cache"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(index.read_bytes().splitlines())  # lines flushed before the kill (whole or torn)
    rerun = subprocess.run(
        [sys.executable, "-m", "cxraug", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    report = json.loads((ws / "data" / "t" / "report.json").read_text(encoding="utf-8"))
    assert 10 <= report["decoded_before_interruption"] <= done
    assert _contents(ws / "data" / "t") == _contents(clean)


def test_a_failed_decode_is_tried_again(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that failed (say, for want of a decoder the user then installs) is not cached as failed."""
    ws = Workspace(tmp_path / "ws")
    broken = sorted(tree.rglob("*.png"))[3]

    def failing(args):  # type: ignore[no-untyped-def]
        if Path(args[0]) == broken:
            return False, "no installed decoder reads it", "", 0, None
        return REAL_DECODE(args)

    monkeypatch.setattr(prepare_mod, "_decode_one", failing)
    with pytest.raises(DataError, match="--strict: 1 file"):
        _prepare(ws, tree, strict=True)
    calls = _count_decodes(monkeypatch)
    _, report = _prepare(ws, tree, strict=True)
    assert len(calls) == 1 and report["decoded_before_interruption"] == N - 1 and not report["skipped"]


def test_data_list_names_what_an_interrupted_prepare_left(
    tree: Path, monkeypatch: pytest.MonkeyPatch, cxraug_cli, cxraug_workspace: Workspace
) -> None:
    _count_decodes(monkeypatch, stop_after=5)
    with pytest.raises(KeyboardInterrupt):
        _prepare(cxraug_workspace, tree)
    result = cxraug_cli("data", "list")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "An interrupted `data prepare --name t` left" in flat and "run that prepare again" in flat
