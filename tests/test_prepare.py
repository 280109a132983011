"""The prepare engine: decoding, duplicates, patient-level splits, reports and refusals."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxraug.data.prepare import PrepareSettings, Source, prepare_dataset
from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError
from cxraug.interfaces import DatasetAdapter, Record
from cxraug.plugins.datasets.imagefolder import ImageFolderAdapter
from cxraug.workspace import Workspace


class ListAdapter(DatasetAdapter):
    """Records handed in by the test."""

    name = "listed"
    needs_root = False

    def __init__(self, records: list[Record]) -> None:
        super().__init__()
        self._records = records

    def records(self, root):
        return iter(self._records)


def _img(seed: int, size: int = 32) -> np.ndarray:
    """A distinct smooth random image (not a near-duplicate of other seeds)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _rec(
    i: int,
    label: str = "normal",
    patient: str | None = None,
    split: str | None = None,
    image: np.ndarray | None = None,
) -> Record:
    return Record(
        image=_img(i) if image is None else image,
        label=label,
        source="listed",
        original=f"listed:{i}",
        patient_id=patient if patient is not None else f"p{i}",
        split=split,
    )


def _prepare(ws: Workspace, records: list[Record], **kw) -> tuple[PreparedDataset, dict]:
    settings = PrepareSettings(name=kw.pop("name", "t"), size=kw.pop("size", 16), **kw)
    result = prepare_dataset(ws, [Source(ListAdapter(records), None)], settings)
    return result.dataset, result.report


def test_patients_never_span_splits(tmp_path: Path) -> None:
    records = [_rec(i, label=("covid", "normal")[i % 2], patient=f"p{i // 4}") for i in range(120)]
    ds, report = _prepare(Workspace(tmp_path), records, ratios=(0.6, 0.2, 0.2), seed=3)
    by_patient: dict[str, set[str]] = {}
    for row in ds.rows:
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    counts = ds.counts()
    total = sum(sum(c.values()) for c in counts.values())
    assert total == 120 and report["patients"] == 30
    assert 0.45 < sum(counts["train"].values()) / total < 0.75
    for split in ("train", "val", "test"):
        assert set(counts[split]) == {"covid", "normal"}, "stratified: both labels in every split"


def test_split_is_deterministic_by_seed(tmp_path: Path) -> None:
    records = [_rec(i) for i in range(40)]
    a, _ = _prepare(Workspace(tmp_path / "a"), records, seed=1)
    b, _ = _prepare(Workspace(tmp_path / "b"), records, seed=1)
    c, _ = _prepare(Workspace(tmp_path / "c"), records, seed=2)
    split = lambda ds: {r["original"]: r["split"] for r in ds.rows}  # noqa: E731
    assert split(a) == split(b) and split(a) != split(c)
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))


def test_exact_and_near_duplicates(tmp_path: Path) -> None:
    base = _img(1000, 64)
    noisy = np.clip(base.astype(int) + np.random.default_rng(0).integers(-3, 4, base.shape), 0, 255)
    records = [_rec(i) for i in range(30)] + [
        _rec(100, image=base, patient="a"),
        _rec(101, image=base.copy(), patient="b"),  # exact copy: removed
        _rec(102, image=noisy.astype(np.uint8), patient="c"),  # near copy: same split as "a"
        _rec(103, image=_img(7), label="covid", patient="d"),  # same pixels as p7, other label
    ]
    ds, report = _prepare(Workspace(tmp_path), records)
    originals = {r["original"]: r for r in ds.rows}
    assert "listed:101" not in originals and report["exact_duplicates"] == 2
    assert "listed:7" not in originals and "listed:103" not in originals  # conflicting labels
    assert originals["listed:100"]["split"] == originals["listed:102"]["split"]
    assert any(p["a"] == "listed:100" and p["b"] == "listed:102" for p in report["near_duplicate_pairs"])
    reasons = {d["original"]: d["reason"] for d in report["dropped"]}
    assert "conflicting labels" in reasons["listed:7"] and "exact duplicate" in reasons["listed:101"]


def test_official_split_kept_and_leaking_train_rows_dropped(tmp_path: Path) -> None:
    records = [_rec(i, split="train") for i in range(10)] + [_rec(i, split="test") for i in range(10, 14)]
    records.append(_rec(99, patient="p10", split="train"))  # patient p10 is in test
    ds, report = _prepare(Workspace(tmp_path), records)
    counts = ds.counts()
    assert counts["test"] == {"normal": 4}, "the official test split stays as published"
    # no official val split: one is carved from the official train split (default 0.15 / 0.85 of it)
    assert counts["train"]["normal"] + counts["val"]["normal"] == 10 and counts["val"]["normal"] >= 1
    assert "carved from the official train split" in report["split_method"]
    assert report["dropped"][0]["original"] == "listed:99"
    assert "test" in report["dropped"][0]["reason"]


def test_manifest_violating_invariant_is_refused(tmp_path: Path) -> None:
    records = [_rec(i, patient=f"p{i // 2}") for i in range(40)]
    ds, _ = _prepare(Workspace(tmp_path), records)
    manifest = ds.path / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    first = rows[0]
    partner = next(r for r in rows[1:] if r["patient_id"] == first["patient_id"])
    partner["split"] = "test" if first["split"] != "test" else "train"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"manifest\.csv:\d+: patient .* a leak between splits"):
        PreparedDataset(ds.path)


def test_near_duplicates_checked_when_manifest_was_edited(tmp_path: Path) -> None:
    base = _img(5, 64)
    near = np.clip(base.astype(int) + 2, 0, 255).astype(np.uint8)
    records = [_rec(i) for i in range(20)] + [_rec(50, image=base), _rec(51, image=near)]
    ds, _ = _prepare(Workspace(tmp_path), records)
    manifest = ds.path / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    for row in rows:
        if row["original"] == "listed:51":
            row["split"] = "test" if row["split"] != "test" else "val"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match="near-duplicate images"):
        PreparedDataset(ds.path)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_real_files_unreadable_skipped_source_untouched(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "src" / "covid"
    shutil.copytree(shared_data / "cxr-samples", src)
    (src / "zero.png").write_bytes(b"")
    (src / "text.jpg").write_text("not an image")
    before = _tree_digest(tmp_path / "src")
    ws = Workspace(tmp_path / "ws")
    adapter = ImageFolderAdapter()
    settings = PrepareSettings(name="real", size=32, workers=2)
    result = prepare_dataset(ws, [Source(adapter, tmp_path / "src")], settings)
    assert len(result.dataset.rows) == 16
    skipped = {Path(s["original"]).name: s["reason"] for s in result.report["skipped"]}
    assert set(skipped) == {"zero.png", "text.jpg"}
    assert "empty" in skipped["zero.png"]
    assert _tree_digest(tmp_path / "src") == before
    assert result.dataset.images.shape == (16, 32, 32)
    md = (result.dataset.path / "prepare-report.md").read_text()
    assert "zero.png" in md and "padded with black" in md
    with pytest.raises(DataError, match="--strict: 2 file"):
        prepare_dataset(
            ws,
            [Source(adapter, tmp_path / "src")],
            PrepareSettings(name="strict", size=32, strict=True, workers=1),
        )
    assert not (ws.data_dir / "strict").exists()


def test_existing_dataset_kept_unless_forced(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ds, _ = _prepare(ws, [_rec(i) for i in range(10)])
    before = (ds.path / "manifest.csv").read_bytes()
    with pytest.raises(DataError, match="already exists.*--force"):
        _prepare(ws, [_rec(i) for i in range(12)])
    assert (ds.path / "manifest.csv").read_bytes() == before
    ds2, _ = _prepare(ws, [_rec(i) for i in range(12)], force=True)
    assert len(ds2.rows) == 12
    assert [p.name for p in ws.data_dir.iterdir()] == ["t"]  # no partial or old folders left


def test_classes_and_label_map(tmp_path: Path) -> None:
    records = [_rec(i, label=("covid", "pneumonia_viral", "normal")[i % 3]) for i in range(30)]
    ds, report = _prepare(
        Workspace(tmp_path),
        records,
        label_map={"pneumonia_viral": "pneumonia"},
        classes=("covid", "pneumonia"),
    )
    assert ds.classes == ["covid", "pneumonia"]
    assert report["excluded_by_class"] == {"normal": 10}
    info = json.loads((ds.path / "info.json").read_text())
    assert info["settings"]["map"] == {"pneumonia_viral": "pneumonia"}


def test_torch_dataset_reads_memmap(tmp_path: Path) -> None:
    ds, _ = _prepare(Workspace(tmp_path), [_rec(i, label=("covid", "normal")[i % 2]) for i in range(20)])
    tds = ds.torch_dataset("train")
    image, target = tds[0]
    assert image.shape == (1, 16, 16) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert int(target) in (0, 1)
    assert isinstance(ds.images, np.memmap)
