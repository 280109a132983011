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
from cxraug.errors import DataError, OptionsError
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


def _png(path: Path, arr: np.ndarray, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", **save)
    return path


def _tree_with_one_picture_under_two_labels(root: Path) -> None:
    for i in range(6):
        _png(root / "normal" / f"n{i}.png", _img(i, 48))
        _png(root / "covid" / f"c{i}.png", _img(100 + i, 48))
    picture = _img(500, 48)
    a = _png(root / "normal" / "same.png", picture, compress_level=1)
    b = _png(root / "covid" / "same.png", picture, compress_level=9)
    assert a.read_bytes() != b.read_bytes(), "the copies differ in bytes, not in pixels"


def test_recompressed_copy_under_another_label_is_dropped_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    _tree_with_one_picture_under_two_labels(root)
    settings = PrepareSettings(name="t", size=16)
    result = prepare_dataset(Workspace(tmp_path / "ws"), [Source(ImageFolderAdapter(), root)], settings)
    originals = {r["original"] for r in result.dataset.rows}
    assert "normal/same.png" not in originals and "covid/same.png" not in originals
    assert len(originals) == 12
    (group,) = result.report["conflicts"]
    assert group["labels"] == ["covid", "normal"] and group["action"] == "dropped every copy"
    members = {(m["original"], m["label"]) for m in group["members"]}
    assert members == {("normal/same.png", "normal"), ("covid/same.png", "covid")}
    assert all(len(m["id"]) == 16 and m["source"] == "imagefolder" for m in group["members"])
    reasons = {d["original"]: d["reason"] for d in result.report["dropped"]}
    assert (
        "conflicting labels" in reasons["normal/same.png"] and "covid/same.png" in reasons["normal/same.png"]
    )
    md = (result.dataset.path / "prepare-report.md").read_text()
    assert "## Duplicates with conflicting labels" in md
    assert "`normal/same.png` (imagefolder" in md and "`covid/same.png` (imagefolder" in md
    assert json.loads((result.dataset.path / "info.json").read_text())["settings"]["conflicts"] == "drop"


def test_conflict_policies_keep_first_and_error(tmp_path: Path) -> None:
    base = _img(1000, 64)
    noisy = np.clip(base.astype(int) + np.random.default_rng(0).integers(-3, 4, base.shape), 0, 255)
    records = [_rec(i, label=("covid", "normal")[i % 2]) for i in range(20)] + [
        _rec(100, image=base, label="normal"),
        _rec(101, image=noisy.astype(np.uint8), label="covid"),  # near copy, other label
        _rec(102, image=base.copy(), label="normal"),  # exact copy, same label as the first
    ]
    ds, report = _prepare(Workspace(tmp_path / "keep"), records, conflicts="keep-first")
    originals = {r["original"] for r in ds.rows}
    assert "listed:100" in originals and not {"listed:101", "listed:102"} & originals
    (group,) = report["conflicts"]
    assert [m["original"] for m in group["members"]] == ["listed:100", "listed:101", "listed:102"]
    assert group["action"].startswith("kept listed:100 (normal)")
    reasons = {d["original"]: d["reason"] for d in report["dropped"]}
    assert "keep-first" in reasons["listed:101"] and "exact duplicate" in reasons["listed:102"]

    ds, report = _prepare(Workspace(tmp_path / "drop"), records)
    assert not {"listed:100", "listed:101", "listed:102"} & {r["original"] for r in ds.rows}

    ws = Workspace(tmp_path / "error")
    with pytest.raises(DataError, match=r"--conflicts error: 1 group.*listed:100 \(normal\)"):
        _prepare(ws, records, conflicts="error")
    assert not ws.data_dir.exists() or not any(ws.data_dir.iterdir())
    with pytest.raises(OptionsError, match="--conflicts 'first'"):
        _prepare(ws, records, conflicts="first")


class _PathAdapter(ListAdapter):
    """A third-party adapter that yields whatever paths it is given, unchecked."""

    name = "paths"


def test_files_outside_the_root_are_refused_whatever_the_adapter(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    secret = _png(outside / "secret.png", _img(7, 32))
    inside = [_png(root / f"{i}.png", _img(i, 32)) for i in range(8)]
    (root / "link.png").symlink_to(secret)
    paths = [*inside, root / "sub" / ".." / ".." / "outside" / "secret.png", root / "link.png"]
    records = [
        Record(image=p, label="normal", source="paths", original=p.name, patient_id=f"p{i}")
        for i, p in enumerate(paths)
    ]
    records.append(
        Record(image=inside[0], label="covid", source="paths", original="r", refused="labels.txt:3: bad")
    )
    settings = PrepareSettings(name="t", size=16)
    result = prepare_dataset(Workspace(tmp_path / "ws"), [Source(_PathAdapter(records), root)], settings)
    assert len(result.dataset.rows) == 8
    skipped = [(s["original"], s["reason"]) for s in result.report["skipped"]]
    assert skipped[0][0] == "secret.png" and "points outside the dataset folder" in skipped[0][1]
    assert skipped[1][0] == "link.png" and f"is a link to {secret}" in skipped[1][1]
    assert skipped[2] == ("r", "labels.txt:3: bad")
    strict = PrepareSettings(name="s", size=16, strict=True)
    with pytest.raises(DataError, match=r"--strict: 3 file\(s\) were skipped"):
        prepare_dataset(Workspace(tmp_path / "ws"), [Source(_PathAdapter(records), root)], strict)


def test_nan_float_tiff_is_skipped_with_its_name(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for i in range(6):
        _png(root / "normal" / f"n{i}.png", _img(i, 32))
    arr = np.asarray(_img(50, 32), np.float32)
    arr[3, 3] = np.nan
    Image.fromarray(arr).save(root / "normal" / "nan.tif")
    settings = PrepareSettings(name="t", size=16)
    result = prepare_dataset(Workspace(tmp_path / "ws"), [Source(ImageFolderAdapter(), root)], settings)
    assert "normal/nan.tif" not in {r["original"] for r in result.dataset.rows}
    (skipped,) = result.report["skipped"]
    assert skipped["original"] == "normal/nan.tif" and "NaN or infinite" in skipped["reason"]
    assert "`normal/nan.tif`" in (result.dataset.path / "prepare-report.md").read_text()


def test_images_above_the_pixel_limit_are_skipped_and_the_limit_recorded(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for i in range(6):
        _png(root / "covid" / f"c{i}.png", _img(i, 32))
    _png(root / "covid" / "big.png", _img(99, 64))  # 4096 pixels
    ws = Workspace(tmp_path / "ws")
    settings = PrepareSettings(name="t", size=16, max_pixels=2000)
    result = prepare_dataset(ws, [Source(ImageFolderAdapter(), root)], settings)
    (skipped,) = result.report["skipped"]
    assert skipped["original"] == "covid/big.png" and "64x64 pixels" in skipped["reason"]
    assert json.loads((result.dataset.path / "info.json").read_text())["settings"]["max_pixels"] == 2000
    with pytest.raises(DataError, match=r"none of the 7 images could be used \(covid/big.png: 64x64"):
        prepare_dataset(
            ws, [Source(ImageFolderAdapter(), root)], PrepareSettings(name="u", size=16, max_pixels=100)
        )
    with pytest.raises(OptionsError, match="--max-pixels 0"):
        prepare_dataset(ws, [Source(ImageFolderAdapter(), root)], PrepareSettings(name="v", max_pixels=0))


def test_similar_images_of_different_classes_are_not_conflicts(tmp_path: Path) -> None:
    """Phantoms of different classes are similar enough to share a split (correlation up to 0.986)
    but are different pictures: the demo keeps every image; a JPEG copy still conflicts."""
    import io

    from PIL import Image

    from cxraug.plugins.datasets.phantom import PhantomAdapter

    adapter = PhantomAdapter(PhantomAdapter.Options(n_per_class=200))
    result = prepare_dataset(
        Workspace(tmp_path / "ws"), [Source(adapter, None)], PrepareSettings(name="p", size=64)
    )
    assert result.report["conflicts"] == [] and len(result.dataset.rows) == 600

    base = _img(1000, 64)
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, "JPEG", quality=50)
    jpeg = np.asarray(Image.open(buf))
    records = [_rec(i, label=("covid", "normal")[i % 2]) for i in range(20)]
    records += [_rec(100, image=base, label="normal"), _rec(101, image=jpeg, label="covid")]
    ds, report = _prepare(Workspace(tmp_path / "jpeg"), records)
    assert {m["original"] for g in report["conflicts"] for m in g["members"]} == {"listed:100", "listed:101"}
