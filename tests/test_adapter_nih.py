"""The nih adapter reads NIH ChestX-ray14 as downloaded: Kaggle's images_0XX/images/ or box.com's images/."""

from __future__ import annotations

from pathlib import Path

import pytest
from miniature_layouts import by_split, manifest, prepare, write_text, xray

from cxraug.errors import DataError
from cxraug.plugins.datasets.nih import NIHAdapter
from cxraug.testing import check_dataset_adapter

# The Kaggle copy's header ends with a comma (pandas shows an "Unnamed: 11" column), and its
# unquoted OriginalImage[Width,Height] spans two columns.
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
)
ROWS = [
    ("00000001_000.png", "Cardiomegaly", "1", "PA", "train"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", "1", "PA", "train"),
    ("00000002_000.png", "No Finding", "2", "PA", "train"),
    ("00000003_000.png", "Effusion", "3", "AP", "test"),
    ("00000003_001.png", "Effusion|Atelectasis", "3", "AP", "test"),
    ("00000004_000.png", "No Finding", "4", "PA", "test"),
    ("00000005_000.png", "Pneumonia", "5", "PA", "train"),
    ("00000006_000.png", "Effusion", "6", "PA", "train"),
    ("00000007_000.png", "No Finding", "7", "PA", "train"),
    ("00000008_000.png", "Nodule", "8", "PA", "train"),  # no image file
    ("00000009_000.png", "Atelectasis|Effusion", "9", "PA", "train"),
    ("00000010_000.png", "No Finding", "10", "PA", "train"),
    ("00000011_000.png", "Pleural_Thickening", "11", "PA", "train"),
    ("00000012_000.png", "No Finding", "12", "PA", "train"),
]


def _table(rows: list[tuple[str, str, str, str, str]]) -> str:
    return HEADER + "".join(
        f"{name},{found},0,{pid},58,M,{view},2682,2749,0.143,0.143,\n" for name, found, pid, view, _ in rows
    )


def _dataset(root: Path, layout: str = "kaggle", table: str = "Data_Entry_2017.csv") -> Path:
    write_text(root / table, _table(ROWS), bom=True)
    train = [r[0] for r in ROWS if r[4] == "train"]
    test = [r[0] for r in ROWS if r[4] == "test"]
    write_text(root / "train_val_list.txt", "\n".join(train) + "\n")
    write_text(root / "test_list.txt", "\r\n".join(test))
    for i, (name, *_rest) in enumerate(ROWS):
        if name == "00000008_000.png":
            continue
        folder = root / "images" if layout == "box" else root / f"images_00{1 + i // 7}" / "images"
        xray(folder / name, seed=i)
    return root


def test_kaggle_layout(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    adapter = NIHAdapter()
    check_dataset_adapter(adapter, root)
    records = list(adapter.records(root))
    summary = {r.original: (r.label, r.findings, r.patient_id, r.view, r.split) for r in records}
    assert summary["images_001/images/00000001_001.png"] == (
        "cardiomegaly",
        ("cardiomegaly", "emphysema"),
        "1",
        "PA",
        "train",
    )
    assert summary["images_001/images/00000003_000.png"] == ("effusion", ("effusion",), "3", "AP", "test")
    assert summary["images_002/images/00000009_000.png"][:2] == ("atelectasis", ("atelectasis", "effusion"))
    assert summary["images_002/images/00000011_000.png"][0] == "pleural_thickening"
    assert summary["images_001/images/00000002_000.png"][0] == "normal"
    assert summary["images_001/images/00000005_000.png"][0] == "pneumonia"
    assert len(records) == 13
    notes = adapter.notes()
    assert "labels from Data_Entry_2017.csv" in notes
    assert any(
        n.startswith("1 rows of Data_Entry_2017.csv have no image") and "00000008_000.png" in n for n in notes
    )
    assert "3 images carry several findings (see --multilabel)" in notes


def test_box_layout_prefers_the_2020_table_and_filters_views(tmp_path: Path) -> None:
    root = _dataset(tmp_path, layout="box", table="Data_Entry_2017_v2020.csv")
    write_text(root / "Data_Entry_2017.csv", HEADER)  # the older table, empty: not read
    adapter = NIHAdapter(NIHAdapter.Options(views=("pa",)))
    records = list(adapter.records(root))
    assert {r.original.split("/")[0] for r in records} == {"images"}
    assert len(records) == 11 and all(r.view == "PA" for r in records)
    assert "labels from Data_Entry_2017_v2020.csv" in adapter.notes()
    assert "left out 2 rows with views other than pa: AP (2)" in adapter.notes()


def test_without_list_files_there_is_no_official_split(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    (root / "train_val_list.txt").unlink()
    (root / "test_list.txt").unlink()
    adapter = NIHAdapter()
    assert {r.split for r in adapter.records(root)} == {None}
    assert any("no official split" in n for n in adapter.notes())


def test_unknown_finding_is_refused_with_file_and_line(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    table = root / "Data_Entry_2017.csv"
    write_text(table, _table([*ROWS[:2], ("00000002_000.png", "Effusion|Flu", "2", "PA", "train")]))
    records = list(NIHAdapter().records(root))
    assert records[2].refused == (
        f"{table}:4: unknown finding(s) 'Flu' in Finding Labels; expected NIH's fourteen or No Finding"
    )


def test_short_row_and_missing_pieces_are_clear_errors(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    write_text(root / "Data_Entry_2017.csv", HEADER + "00000001_000.png,Cardiomegaly,0\n")
    with pytest.raises(DataError, match=r"Data_Entry_2017.csv:2: 3 fields, the header names 11"):
        list(NIHAdapter().records(root))
    (root / "Data_Entry_2017.csv").unlink()
    with pytest.raises(DataError, match="the NIH label table not found"):
        list(NIHAdapter().records(root))
    empty = tmp_path / "empty"
    write_text(empty / "Data_Entry_2017.csv", _table(ROWS))
    with pytest.raises(DataError, match="no PNG images in images/"):
        list(NIHAdapter().records(empty))


def test_prepare_end_to_end(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = _dataset(tmp_path / "nih")
    report = prepare(cxraug_cli, cxraug_workspace, "nih", root, "--classes", "effusion,normal")
    rows = manifest(cxraug_workspace)
    assert by_split(rows) == {"train+val": {"effusion": 1, "normal": 4}, "test": {"effusion": 1, "normal": 1}}
    assert report["multilabel"] == {
        "policy": "skip",
        "skipped": 3,
        "skipped_by_source": {"nih": 3},
        "resolved": 0,
        "resolved_by_source": {},
    }
    assert report["excluded_by_class"] == {"cardiomegaly": 1, "pneumonia": 1, "pleural_thickening": 1}
    assert "carved from the official train split" in report["split_method"]
    test_patients = {r["patient_id"] for r in rows if r["split"] == "test"}
    assert test_patients == {"3", "4"}
    assert not test_patients & {r["patient_id"] for r in rows if r["split"] != "test"}
    assert report["patients"] == 7 and report["rows_without_patient_id"] == 0
    assert any("have no image" in n for n in report["notes"])

    first = prepare(
        cxraug_cli,
        cxraug_workspace,
        "nih",
        root,
        "--classes",
        "effusion,normal",
        "--multilabel",
        "first",
        name="f",
    )
    # Cardiomegaly|Emphysema is resolved, then left out by --classes: not counted
    assert first["multilabel"]["resolved"] == 2 and first["multilabel"]["skipped"] == 0
    assert by_split(manifest(cxraug_workspace, "f"))["test"] == {"effusion": 2, "normal": 1}
    assert first["excluded_by_class"]["cardiomegaly"] == 2  # Cardiomegaly|Emphysema: no wanted finding

    # first follows the source's order, priority the order of --classes.
    args = ("--classes", "atelectasis,effusion")
    prepare(cxraug_cli, cxraug_workspace, "nih", root, *args, "--multilabel", "first", name="a")
    prepare(cxraug_cli, cxraug_workspace, "nih", root, *args, "--opt", "multilabel=priority", name="b")

    def label_of(name: str) -> dict[str, str]:
        return {r["original"].split("/")[-1]: r["label"] for r in manifest(cxraug_workspace, name)}

    assert label_of("a")["00000003_001.png"] == "effusion"  # Effusion|Atelectasis
    assert label_of("a")["00000009_000.png"] == "atelectasis"  # Atelectasis|Effusion
    assert label_of("b")["00000003_001.png"] == "atelectasis"
    assert label_of("b")["00000009_000.png"] == "atelectasis"


def test_unknown_class_names_the_declared_labels(cxraug_cli, tmp_path: Path) -> None:
    root = _dataset(tmp_path / "nih")
    result = cxraug_cli("data", "prepare", "nih", "--root", str(root), "--classes", "efusion,normal")
    assert result.exit_code == 2
    assert "unknown label 'efusion'" in result.output and "pleural_thickening" in result.output


def test_tables_and_images_outside_the_root_are_refused(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "nih")
    outside = xray(tmp_path / "outside" / "secret.png", seed=99)
    target = root / "images_001" / "images" / "00000002_000.png"
    target.unlink()
    target.symlink_to(outside)
    records = {r.original: r for r in NIHAdapter().records(root)}
    assert "is a link to" in str(records["images_001/images/00000002_000.png"].refused)
    with pytest.raises(DataError, match="points outside the dataset folder"):
        list(NIHAdapter(NIHAdapter.Options(labels_file="../outside/Data_Entry_2017.csv")).records(root))
    (root / "Data_Entry_2017.csv").rename(tmp_path / "outside" / "Data_Entry_2017.csv")
    (root / "Data_Entry_2017.csv").symlink_to(tmp_path / "outside" / "Data_Entry_2017.csv")
    with pytest.raises(DataError, match="is a link to .*outside the dataset folder"):
        list(NIHAdapter().records(root))


def test_multilabel_counts_only_kept_images_and_says_why_nothing_is_left(
    cxraug_cli, cxraug_workspace, tmp_path: Path
) -> None:
    root = _dataset(tmp_path / "nih")
    first = prepare(
        cxraug_cli, cxraug_workspace, "nih", root, "--classes", "effusion,normal",
        "--multilabel", "first", name="counted",
    )  # fmt: skip
    kept_multi = [r for r in manifest(cxraug_workspace, "counted") if "|" in r["provenance"]]
    assert first["multilabel"]["resolved"] == len(kept_multi)
    assert first["multilabel"]["resolved_by_source"] == {"nih": len(kept_multi)}

    result = cxraug_cli(
        "data", "prepare", "nih", "--root", str(root), "--classes", "hernia", "--name", "none"
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no images to prepare: --classes hernia left out every image (labels found:" in result.output


def test_prefixed_option_with_a_single_source(cxraug_cli, tmp_path: Path) -> None:
    """``--opt nih.views=PA`` (the spelling several sources need) works with one source too."""
    root = _dataset(tmp_path / "nih")
    result = cxraug_cli("data", "prepare", "nih", "--root", str(root), "--opt", "nih.views=PA", "--dry-run")
    assert result.exit_code == 0, result.output
    assert '"PA"' in result.output and '"AP"' not in result.output
