"""Helpers for the tests that build miniature copies of the large collections' download layouts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxraug.data.prepared import PreparedDataset


def xray(path: Path, seed: int, *, sixteen_bit: bool = False, fmt: str | None = None) -> Path:
    """A small distinct grayscale image (no two seeds are near-duplicates), written to ``path``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 6)).astype(np.uint8)
    image = Image.fromarray(small).resize((40, 32), Image.Resampling.BICUBIC)
    if sixteen_bit:
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt or ("JPEG" if path.suffix.lower() == ".jpg" else "PNG"))
    return path


def write_text(path: Path, text: str, *, gz: bool = False, bom: bool = False) -> Path:
    """``text`` as UTF-8 (with a byte-order mark if asked), gzipped if asked."""
    data = ("\ufeff" if bom else "").encode() + text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def prepare(cli: Any, workspace: Any, adapter: str, root: Path, *args: str, name: str = "t") -> dict:
    """Run ``cxraug data prepare ADAPTER --root ROOT ARGS`` through the CLI; return its report."""
    result = cli("data", "prepare", adapter, "--root", str(root), "--size", "16", "--name", name, *args)
    assert result.exit_code == 0, result.output
    return json.loads((workspace.data_dir / name / "report.json").read_text())


def manifest(workspace: Any, name: str = "t") -> list[dict[str, str]]:
    return PreparedDataset(workspace.data_dir / name).rows


def by_split(rows: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """{split: {label: count}} of manifest rows, train and val merged into ``train+val``."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        split = "test" if row["split"] == "test" else "train+val"
        out.setdefault(split, {}).setdefault(row["label"], 0)
        out[split][row["label"]] += 1
    return out
