"""Fuzz: ``data prepare`` on hundreds of hostile files ends cleanly and accounts for every file."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile_files import ANY, CONFLICT, OK, SKIP, make_hostile_tree
from PIL import Image

#: (folder, hits) pairs the audit hook watches; the hook is added once and is idle when empty.
_WATCHED: list[tuple[str, list[str]]] = []
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHED or event not in ("open", "os.listdir", "os.scandir"):
        return
    target = args[0] if args else None
    if not isinstance(target, (str, bytes, os.PathLike)):
        return  # a file descriptor or None
    _WATCHED_now = list(_WATCHED)
    _WATCHED.clear()  # realpath below must not re-enter the hook's bookkeeping
    try:
        real = os.path.realpath(os.fsdecode(target))
        for folder, hits in _WATCHED_now:
            if real == folder or real.startswith(folder + os.sep):
                hits.append(f"{event} {real}")
    finally:
        _WATCHED.extend(_WATCHED_now)


@contextmanager
def reads_under(folder: Path) -> Iterator[list[str]]:
    """Every file opened or folder listed under ``folder`` (links resolved) while inside the block."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed; idle outside this block
        _HOOKED = True
    hits: list[str] = []
    entry = (os.path.realpath(folder), hits)
    _WATCHED.append(entry)
    try:
        yield hits
    finally:
        _WATCHED.remove(entry)


def _outcomes(dataset: Path) -> tuple[set[str], dict[str, str], dict[str, str], set[str]]:
    report = json.loads((dataset / "report.json").read_text(encoding="utf-8"))
    with (dataset / "manifest.csv").open(encoding="utf-8", newline="") as handle:
        manifest = {row["original"] for row in csv.DictReader(handle)}
    skipped = {s["original"]: s["reason"] for s in report["skipped"]}
    dropped = {d["original"]: d["reason"] for d in report["dropped"]}
    conflicts = {m["original"] for group in report["conflicts"] for m in group["members"]}
    return manifest, skipped, dropped, conflicts


@pytest.mark.parametrize("seed", [0, 1])
def test_prepare_survives_hostile_files(cxraug_cli, cxraug_workspace, tmp_path: Path, seed: int) -> None:
    root = tmp_path / "tree"
    expected = make_hostile_tree(root, 200, seed)
    assert len(expected) >= 200 and set(expected.values()) == {OK, SKIP, CONFLICT, ANY}
    with reads_under(tmp_path / "tree-outside") as outside_reads:
        # One process, so the audit hook sees every file the decoding opens.
        result = cxraug_cli(
            "data", "prepare", "imagefolder", "--root", str(root), "--size", "32", "--workers", "1"
        )
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.output
    assert outside_reads == [], "read outside --root"

    manifest, skipped, dropped, conflicts = _outcomes(cxraug_workspace.data_dir / "imagefolder")
    assert manifest <= set(expected), f"rows that are no generated file: {manifest - set(expected)}"
    for path, kind in expected.items():
        where = [
            name
            for name, found in (("manifest", manifest), ("skipped", skipped), ("dropped", dropped))
            if path in found
        ]
        assert len(where) == 1, (path, kind, where)
        if kind == OK:
            assert where != ["skipped"], (path, skipped.get(path))
        elif kind == SKIP:
            assert where == ["skipped"] and skipped[path], (path, where)
        elif kind == CONFLICT:
            assert where == ["dropped"] and path in conflicts, (path, where)
            assert "conflicting labels" in dropped[path]
    assert all(reason.strip() for reason in [*skipped.values(), *dropped.values()])


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC).save(path)
    return path


def test_covidx_label_file_with_hostile_rows(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    """The attack's rows: names out of the root, absolute names, links out; and a NaN TIFF."""
    root, outside = tmp_path / "covidx", tmp_path / "outside"
    secret = _image(outside / "secret.png", 99)
    lines = []
    for i in range(12):
        _image(root / "train" / f"{i}.png", i)
        lines.append(f"P{i} {i}.png {('normal', 'COVID-19')[i % 2]}")
    (root / "train" / "link.png").symlink_to(secret)
    arr = np.ones((8, 8), np.float32)
    arr[2, 2] = np.inf
    Image.fromarray(arr).save(root / "train" / "inf.png", format="TIFF")  # a TIFF named .png
    lines += [
        "P900 ../../outside/secret.png pneumonia",
        f"P901 {secret} pneumonia",
        "P902 link.png pneumonia",
        "P903 inf.png normal",
    ]
    (root / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i in range(4):
        _image(root / "test" / f"t{i}.png", 50 + i)
    (root / "test.txt").write_text("".join(f"T{i} t{i}.png normal\n" for i in range(4)), encoding="utf-8")

    with reads_under(outside) as probe:
        Image.open(root / "train" / "link.png").close()
    assert probe == [f"open {secret}"], "the audit hook sees reads through links"
    with reads_under(outside) as outside_reads:
        result = cxraug_cli(
            "data", "prepare", "covidx", "--root", str(root), "--size", "16", "--workers", "1"
        )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and outside_reads == []
    manifest, skipped, _, _ = _outcomes(cxraug_workspace.data_dir / "covidx")
    assert len(manifest) == 16
    labels = root / "train.txt"
    assert skipped == {
        "train/../../outside/secret.png": f"{labels}:13: 'train/../../outside/secret.png' points outside "
        f"the dataset folder {root}; refused",
        secret.as_posix(): f"{labels}:14: {str(secret)!r} points outside the dataset folder {root}; refused",
        "train/link.png": f"{labels}:15: 'train/link.png' is a link to {secret}, outside the dataset "
        f"folder {root}; refused",
        "train/inf.png": "1 of 64 pixel values are NaN or infinite (a floating-point image without a "
        "valid range); not an X-ray cxraug can scale",
    }
