"""The chexpert adapter reads CheXpert-v1.0(-small) as unpacked: train.csv, valid.csv, patient folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from miniature_layouts import by_split, manifest, prepare, write_text, xray

from cxraug.errors import DataError
from cxraug.plugins.datasets.chexpert import CheXpertAdapter
from cxraug.testing import check_dataset_adapter

HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
)
OBSERVATIONS = HEADER.strip().split(",")[5:]
DATASET = "CheXpert-v1.0-small"


def row(path: str, frontal: bool = True, ap_pa: str = "AP", **values: str) -> str:
    """One CSV row; ``values`` by observation name with spaces as underscores (blank otherwise)."""
    cells = [values.get(o.replace(" ", "_"), "") for o in OBSERVATIONS]
    view = ("Frontal", ap_pa) if frontal else ("Lateral", "")
    return ",".join([f"{DATASET}/{path}", "Female", "68", *view, *cells]) + "\n"


TRAIN = [
    row("train/patient00001/study1/view1_frontal.jpg", No_Finding="1.0", Support_Devices="1.0"),
    row("train/patient00001/study1/view2_lateral.jpg", frontal=False, No_Finding="1.0"),
    row("train/patient00002/study1/view1_frontal.jpg", ap_pa="PA", Pleural_Effusion="1.0", Edema="0.0"),
    row("train/patient00003/study1/view1_frontal.jpg", Pleural_Effusion="1.0", Atelectasis="-1.0"),
    row("train/patient00004/study1/view1_frontal.jpg", Edema="0.0", Pneumonia="-1.0"),
    row("train/patient00005/study1/view1_frontal.jpg", Cardiomegaly="1.0", Pleural_Effusion="1.0"),
    row("train/patient00006/study1/view1_frontal.jpg", No_Finding="1.0"),
    row("train/patient00007/study2/view1_frontal.jpg", Pleural_Effusion="1.0"),
    row("train/patient00008/study1/view1_frontal.jpg", No_Finding="1.0"),
    row("train/patient00009/study1/view1_frontal.jpg", Pleural_Effusion="1.0"),  # no file
    row("train/patient00010/study1/view1_frontal.jpg", No_Finding="1.0"),
    row("train/patient00011/study1/view1_frontal.jpg", Pleural_Effusion="1.0"),
]
VALID = [
    row("valid/patient64541/study1/view1_frontal.jpg", No_Finding="1.0"),
    row("valid/patient64542/study1/view1_frontal.jpg", Pleural_Effusion="1.0"),
    row("valid/patient64543/study1/view1_frontal.jpg", Lung_Opacity="1.0", Pneumonia="1.0"),
]


def _dataset(parent: Path, train: list[str] = TRAIN) -> Path:
    base = parent / DATASET
    write_text(base / "train.csv", HEADER + "".join(train))
    write_text(base / "valid.csv", HEADER + "".join(VALID), bom=True)
    for i, line in enumerate(train + VALID):
        path = line.split(",")[0].removeprefix(f"{DATASET}/")
        if "patient00009" not in path:
            xray(base / path, seed=100 + i)
    return parent


def test_records_labels_views_patients(tmp_path: Path) -> None:
    parent = _dataset(tmp_path)
    adapter = CheXpertAdapter()
    check_dataset_adapter(adapter, parent)
    records = {r.original: r for r in adapter.records(parent)}
    first = records[f"{DATASET}/train/patient00001/study1/view1_frontal.jpg"]
    assert (first.label, first.findings, first.patient_id, first.view, first.split) == (
        "normal",
        ("normal",),
        "patient00001",
        "AP",
        "train",
    )
    assert first.extra == {"study": "study1"}
    assert records[f"{DATASET}/train/patient00002/study1/view1_frontal.jpg"].view == "PA"
    assert records[f"{DATASET}/train/patient00005/study1/view1_frontal.jpg"].findings == (
        "cardiomegaly",
        "effusion",
    )
    assert records[f"{DATASET}/valid/patient64542/study1/view1_frontal.jpg"].split == "val"
    assert len(records) == 11  # lateral, two uncertain, one missing file left out
    assert adapter.notes() == [
        "left out 1 lateral views (frontal_only=true)",
        "left out 2 images with an uncertain (-1) observation (uncertain=ignore; zeros or ones keep them)",
        "2 images carry several findings (see --multilabel)",
        f"1 rows point to missing files, skipped: {DATASET}/train/patient00009/study1/view1_frontal.jpg",
        "official split: train.csv is train, valid.csv is val",
    ]


@pytest.mark.parametrize(
    ("policy", "patient3", "patient4"),
    [
        ("zeros", ("effusion",), None),  # Pneumonia -1 alone: no positive observation left
        ("ones", ("atelectasis", "effusion"), ("pneumonia",)),  # column order: Atelectasis first
    ],
)
def test_uncertain_policies(tmp_path: Path, policy: str, patient3: tuple, patient4: tuple | None) -> None:
    parent = _dataset(tmp_path)
    adapter = CheXpertAdapter(CheXpertAdapter.Options(uncertain=policy))
    found = {r.patient_id: r.findings for r in adapter.records(parent)}
    assert found["patient00003"] == patient3
    assert found.get("patient00004") == patient4
    if policy == "zeros":
        assert "read 2 uncertain (-1) observations as absent (uncertain=zeros)" in adapter.notes()
        assert any(n.startswith("left out 1 images with no positive observation") for n in adapter.notes())


def test_root_may_be_the_dataset_folder_and_laterals_kept_on_request(tmp_path: Path) -> None:
    base = _dataset(tmp_path) / DATASET
    adapter = CheXpertAdapter(CheXpertAdapter.Options(frontal_only=False))
    records = list(adapter.records(base))
    lateral = [r for r in records if r.view == "Lateral"]
    assert [r.original for r in lateral] == ["train/patient00001/study1/view2_lateral.jpg"]


def test_paths_relative_to_the_dataset_folder_and_bad_rows(tmp_path: Path) -> None:
    lines = [
        TRAIN[0].removeprefix(f"{DATASET}/"),  # some re-packagings drop the folder name
        row("train/patient00002/study1/view1_frontal.jpg", Pleural_Effusion="yes"),
        row("../../../secret/patient00003/study1/view1_frontal.jpg", No_Finding="1.0"),
    ]
    parent = _dataset(tmp_path, train=lines)
    table = parent / DATASET / "train.csv"
    records = list(CheXpertAdapter().records(parent))
    assert records[0].original == f"{DATASET}/train/patient00001/study1/view1_frontal.jpg"
    assert records[0].refused is None
    assert records[1].refused == (
        f"{table}:3: column 'pleural effusion' holds 'yes'; expected 1.0, 0.0, -1.0 or blank; fix the row or "
        "delete it"
    )
    assert "points outside the dataset folder" in str(records[2].refused)
    assert str(records[2].refused).startswith(f"{table}:4: ")


def test_missing_csvs_are_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train.csv or valid.csv here or one folder down"):
        list(CheXpertAdapter().records(tmp_path / "empty"))
    write_text(tmp_path / "bad" / "train.csv", "Path,Sex\nx.jpg,Male\n")
    with pytest.raises(DataError, match=r"train.csv:1: missing column\(s\) 'frontal/lateral'"):
        list(CheXpertAdapter().records(tmp_path / "bad"))


def test_prepare_end_to_end(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    parent = _dataset(tmp_path / "data")
    report = prepare(cxraug_cli, cxraug_workspace, "chexpert", parent, "--classes", "effusion,normal")
    rows = manifest(cxraug_workspace)
    counts = {
        s: {lb: sum(1 for r in rows if r["split"] == s and r["label"] == lb) for lb in ("effusion", "normal")}
        for s in ("train", "val", "test")
    }
    assert counts == {
        "train": {"effusion": 3, "normal": 4},
        "val": {"effusion": 1, "normal": 1},
        "test": {"effusion": 0, "normal": 0},
    }
    assert report["multilabel"]["skipped"] == 2 and report["multilabel"]["resolved"] == 0
    assert any("uncertain=ignore" in n for n in report["notes"])
    assert {r["patient_id"] for r in rows if r["split"] == "val"} == {"patient64541", "patient64542"}

    ones = prepare(
        cxraug_cli,
        cxraug_workspace,
        "chexpert",
        parent,
        "--classes",
        "effusion,normal",
        "--multilabel",
        "first",
        "--opt",
        "uncertain=ones",
        "--opt",
        "valid_split=test",
        name="ones",
    )
    # patient00003 (Effusion, Atelectasis -1) and patient00005 (Cardiomegaly, Effusion) become
    # effusion; patient64543 (Lung Opacity, Pneumonia) has no wanted finding, so --classes leaves
    # it out and it is not counted as resolved.
    assert ones["multilabel"] == {
        "policy": "first",
        "skipped": 0,
        "skipped_by_source": {},
        "resolved": 2,
        "resolved_by_source": {"chexpert": 2},
    }
    assert by_split(manifest(cxraug_workspace, "ones")) == {
        "train+val": {"effusion": 5, "normal": 4},
        "test": {"effusion": 1, "normal": 1},
    }
    assert "carved from the official train split" in ones["split_method"]
    assert ones["excluded_by_class"] == {"pneumonia": 1, "lung_opacity": 1}


def test_nih_and_chexpert_merge_under_shared_names(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    from test_adapter_nih import _dataset as nih_dataset

    nih = nih_dataset(tmp_path / "nih")
    chexpert = _dataset(tmp_path / "chexpert")
    result = cxraug_cli(
        "data", "prepare", f"nih={nih}", f"chexpert={chexpert}", "--size", "16", "--name", "both",
        "--classes", "effusion,normal",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = manifest(cxraug_workspace, "both")
    effusion = {(r["source"], r["label"]) for r in rows if r["label"] == "effusion"}
    assert effusion == {("nih", "effusion"), ("chexpert", "effusion")}
    assert {r["label"] for r in rows} == {"effusion", "normal"}
