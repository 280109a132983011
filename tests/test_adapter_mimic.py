"""The mimic adapter reads MIMIC-CXR-JPG as downloaded from PhysioNet: *.csv.gz tables and files/pXX/."""

from __future__ import annotations

from pathlib import Path

import pytest
from miniature_layouts import manifest, prepare, write_text, xray

from cxraug.errors import DataError
from cxraug.plugins.datasets.mimic import MimicAdapter
from cxraug.testing import check_dataset_adapter

LABEL_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices\n"
)
OBSERVATIONS = LABEL_HEADER.strip().split(",")[2:]
META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning\n"
)

NORMAL = {"No Finding": "1.0"}
EFFUSION = {"Pleural Effusion": "1.0"}
UNSURE = {"Pleural Effusion": "1.0", "Atelectasis": "-1.0", "Support Devices": "1.0"}
TWO = {"Cardiomegaly": "1.0", "Pleural Effusion": "1.0"}


def dicom(n: int) -> str:
    """A dicom_id in MIMIC's form (five dash-separated hex groups)."""
    return f"{n:08x}-bde0afdd-112c0b34-7bc16630-4e384014"


# (subject, study, dicom_id, view, split, chexpert labels, negbio labels or a marker)
IMAGES = [
    ("10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA", "train", NORMAL, None),
    ("10000032", "50414267", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL", "train", None, None),
    ("10000764", "57375967", dicom(3), "AP", "train", UNSURE, EFFUSION),
    ("10000898", "50771383", dicom(4), "AP", "train", EFFUSION, None),
    ("10001122", "51234567", dicom(5), "PA", "train", TWO, None),
    ("10002233", "52345678", dicom(6), "PA", "train", NORMAL, None),
    ("11000011", "52000001", dicom(7), "PA", "validate", NORMAL, None),
    ("12000012", "53000001", dicom(8), "PA", "test", EFFUSION, None),
    ("12000013", "53000002", dicom(9), "AP", "test", NORMAL, None),
    ("13000013", "54000001", dicom(10), "PA", "train", "no label row", None),
    ("14000014", "55000001", dicom(11), "PA", "train", NORMAL, "no file"),
]


def _label_rows(which: int) -> str:
    lines, seen = [], set()
    for subject, study, _, _, _, chexpert, negbio in IMAGES:
        labels = (chexpert, negbio or chexpert)[which]
        if (subject, study) in seen or labels in (None, "no label row") or not isinstance(labels, dict):
            continue
        seen.add((subject, study))
        lines.append(",".join([subject, study, *(labels.get(o, "") for o in OBSERVATIONS)]) + "\n")
    return LABEL_HEADER + "".join(lines)


def _dataset(root: Path) -> Path:
    write_text(root / "mimic-cxr-2.0.0-chexpert.csv.gz", _label_rows(0), gz=True)
    write_text(root / "mimic-cxr-2.0.0-negbio.csv.gz", _label_rows(1), gz=True)
    split = "dicom_id,study_id,subject_id,split\n" + "".join(
        f"{d},{st},{su},{sp}\n" for su, st, d, _, sp, _, _ in IMAGES
    )
    write_text(root / "mimic-cxr-2.0.0-split.csv", split)  # unpacked: read as it is
    meta = META_HEADER + "".join(
        f"{d},{su},{st},CHEST (PA AND LAT),{v},3056,2544,21800506,213014.531,CHEST (PA AND LAT),"
        f"{'postero-anterior' if v == 'PA' else 'lateral'},Erect\n"
        for su, st, d, v, _, _, _ in IMAGES
    )
    write_text(root / "mimic-cxr-2.0.0-metadata.csv.gz", meta, gz=True, bom=True)
    for i, (subject, study, dicom, _, _, _, negbio) in enumerate(IMAGES):
        if negbio != "no file":
            xray(
                root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg",
                seed=200 + i,
            )
    return root


def test_records(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    adapter = MimicAdapter()
    check_dataset_adapter(adapter, root)
    records = list(adapter.records(root))
    summary = [(r.patient_id, r.label, r.findings, r.view, r.split) for r in records]
    assert summary == [
        ("10000032", "normal", ("normal",), "PA", "train"),
        ("10000898", "effusion", ("effusion",), "AP", "train"),
        ("10001122", "cardiomegaly", ("cardiomegaly", "effusion"), "PA", "train"),
        ("10002233", "normal", ("normal",), "PA", "train"),
        ("11000011", "normal", ("normal",), "PA", "val"),
        ("12000012", "effusion", ("effusion",), "PA", "test"),
        ("12000013", "normal", ("normal",), "AP", "test"),
    ]
    assert (
        records[0].original
        == "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    )
    assert records[0].extra == {"study_id": "50414267"}
    notes = adapter.notes()
    assert notes[0].startswith("labels from mimic-cxr-2.0.0-chexpert.csv.gz (chexpert labeller")
    assert "left out 1 images with views other than PA, AP: LATERAL (1)" in notes
    assert "left out 1 images whose study has no row in mimic-cxr-2.0.0-chexpert.csv.gz" in notes
    assert any(n.startswith("1 images of mimic-cxr-2.0.0-split.csv are not under files/") for n in notes)
    assert any("uncertain=ignore" in n for n in notes)


def test_negbio_labels_and_every_view(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    adapter = MimicAdapter(MimicAdapter.Options(labeler="negbio", views=()))
    found = {r.patient_id: r.findings for r in adapter.records(root)}
    assert found["10000764"] == ("effusion",)  # NegBio has no uncertain Atelectasis here
    assert len([r for r in adapter.records(root) if r.patient_id == "10000032"]) == 2  # PA and LATERAL


def test_bad_ids_values_and_missing_tables(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    split = root / "mimic-cxr-2.0.0-split.csv"
    split.write_text(
        "dicom_id,study_id,subject_id,split\n"
        "../../etc/passwd,50414267,10000032,train\n"
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,holdout\n"
    )
    records = MimicAdapter(MimicAdapter.Options(views=())).records(root)
    first = next(records)
    assert first.refused == (
        f"{split}:2: ids '10000032' / '50414267' / '../../etc/passwd' are not MIMIC ids; fix the row"
    )
    with pytest.raises(DataError, match=r"split.csv:3: split 'holdout'; expected train, validate or test"):
        next(records)
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    with pytest.raises(DataError, match="damaged or truncated gzip file"):
        list(MimicAdapter().records(root))
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(DataError, match="MIMIC-CXR-JPG's metadata table not found"):
        list(MimicAdapter().records(root))


def test_bad_label_value_is_refused_with_its_line(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    table = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    write_text(table, _label_rows(0).replace("10000898,50771383,", "10000898,50771383,2.0"), gz=True)
    records = {r.patient_id: r for r in MimicAdapter().records(root)}
    assert records["10000898"].refused == (
        f"{table}:4: column 'atelectasis' holds '2.0'; expected 1.0, 0.0, -1.0 or blank; fix the row"
    )


def test_prepare_end_to_end(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = _dataset(tmp_path / "mimic")
    report = prepare(cxraug_cli, cxraug_workspace, "mimic", root, "--classes", "effusion,normal")
    rows = manifest(cxraug_workspace)
    assert {(r["patient_id"], r["split"], r["label"]) for r in rows} == {
        ("10000032", "train", "normal"),
        ("10000898", "train", "effusion"),
        ("10002233", "train", "normal"),
        ("11000011", "val", "normal"),
        ("12000012", "test", "effusion"),
        ("12000013", "test", "normal"),
    }
    assert report["multilabel"]["skipped"] == 1 and report["patients"] == 6

    args = ("--classes", "effusion,normal", "--opt", "uncertain=ones", "--multilabel", "priority")
    ones = prepare(cxraug_cli, cxraug_workspace, "mimic", root, *args, name="ones")
    labels = {r["patient_id"]: r["label"] for r in manifest(cxraug_workspace, "ones")}
    assert labels["10000764"] == "effusion" and labels["10001122"] == "effusion"
    assert ones["multilabel"] == {
        "policy": "priority",
        "skipped": 0,
        "skipped_by_source": {},
        "resolved": 2,
        "resolved_by_source": {"mimic": 2},
    }
