"""`cxraug data prepare rsna|siim` end to end: real DICOM files decoded into a prepared dataset.

Needs DICOM pixel decoding in ``data prepare`` (MONOCHROME1 and MONOCHROME2, 12-bit data).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from dicom_writer import write_dicom

from cxraug.data.prepared import PreparedDataset

RSNA_IMAGES = [
    # (patientId, class, boxes, view, photometric)
    ("0004cfab-14fd-4e49-80ba-63a80b6bddd6", "No Lung Opacity / Not Normal", 0, "AP", "MONOCHROME2"),
    ("003d8fa0-6bf1-40ed-b54c-ac657f8495c5", "Normal", 0, "PA", "MONOCHROME1"),
    ("00436515-870c-4b36-a041-de91049b9ab4", "Lung Opacity", 2, "PA", "MONOCHROME2"),
    ("00569f44-917d-4c86-a842-81832af98c30", "Normal", 0, "AP", "MONOCHROME2"),
    ("006cec2e-6ce2-4549-bffa-eadfcd1e9970", "Lung Opacity", 1, "AP", "MONOCHROME1"),
    ("00704310-78a8-4b38-8475-49f4573b2dbb", "Normal", 0, "PA", "MONOCHROME2"),
    ("008c19e8-a820-403a-930a-bc74a4053664", "Lung Opacity", 1, "PA", "MONOCHROME2"),
    ("009482dc-3db5-48d4-8580-5c89c4f01334", "No Lung Opacity / Not Normal", 0, "PA", "MONOCHROME2"),
]


def _rsna(root: Path) -> Path:
    classes, labels = ["patientId,class"], ["patientId,x,y,width,height,Target"]
    for i, (pid, cls, boxes, view, photometric) in enumerate(RSNA_IMAGES):
        for _ in range(max(boxes, 1)):
            classes.append(f"{pid},{cls}")
        labels += [f"{pid},10.0,20.0,30.0,40.0,1"] * boxes or [f"{pid},,,,,0"]
        write_dicom(
            root / "stage_2_train_images" / f"{pid}.dcm",
            patient_id=pid,
            view=view,
            photometric=photometric,
            seed=100 + i,
        )
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(classes) + "\n")
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    return root


def test_prepare_rsna(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = _rsna(tmp_path / "rsna-pneumonia-detection-challenge")
    result = cxraug_cli(
        "data", "prepare", "rsna", "--root", str(root), "--size", "16", "--name", "rsna",
        "--classes", "lung_opacity,normal", "--split", "0.5,0.25,0.25",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = cxraug_workspace.data_dir / "rsna"
    dataset = PreparedDataset(folder)
    assert Counter(r["label"] for r in dataset.rows) == {"lung_opacity": 3, "normal": 3}
    assert {r["patient_id"] for r in dataset.rows} == {
        pid for pid, cls, *_ in RSNA_IMAGES if cls != "No Lung Opacity / Not Normal"
    }
    assert {(r["patient_id"], r["view"]) for r in dataset.rows} >= {
        ("003d8fa0-6bf1-40ed-b54c-ac657f8495c5", "PA"),
        ("006cec2e-6ce2-4549-bffa-eadfcd1e9970", "AP"),
    }
    report = json.loads((folder / "report.json").read_text())
    assert report["skipped"] == []
    assert report["excluded_by_class"] == {"not_normal": 2}
    assert any("one id per image" in note for note in report["notes"])
    info = json.loads((folder / "info.json").read_text())
    assert info["classes"] == ["normal", "lung_opacity"]
    # Decoded pixels, not a blank: every image has contrast.
    images = dataset.images
    assert all(int(images[i].max()) - int(images[i].min()) > 50 for i in range(len(dataset.rows)))


# (study, series, image, PatientID, class column set to 1)
SIIM_IMAGES = [
    ("00086460a852", "9e8302230c91", "000a312787f2", "9f2ad0a3cb10", "Typical Appearance"),
    ("00086460a852", "9e8302230c91", "0012ff7358bc", "9f2ad0a3cb10", "Typical Appearance"),
    ("000c9c05fd14", "e555410bd2cd", "000c3a3f293f", "9f2ad0a3cb10", "Negative for Pneumonia"),
    ("00292f8c37bd", "73120b4a13cb", "001398f4ff4f", "5a57bc2d5a83", "Indeterminate Appearance"),
    ("00292f8c37bd", "ca867739fd1b", "001bd15d1891", "5a57bc2d5a83", "Indeterminate Appearance"),
    ("005057b3f880", "a46d8ebec0be", "0022227f5adf", "1c3e5a7b9d0f", "Atypical Appearance"),
    ("0051d9b12e72", "4e7a3b1fd3c0", "0023f02ae886", "2d4f6a8c0e1b", "Typical Appearance"),
    ("00c74279c5b7", "8b21c9a4a8c2", "002a34c58c5b", "3e5a7c9e1f2d", "Negative for Pneumonia"),
    (
        "00ccd633fb0e",
        "ab4a2c1f5e0d",
        "003ad2e6b1c4",
        "4f6b8d0a2c3e",
        "Typical Appearance|Atypical Appearance",
    ),
]
COLUMNS = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance")


def _siim(root: Path) -> Path:
    rows = {}
    for i, (study, series, image, patient, classes) in enumerate(SIIM_IMAGES):
        one_hot = ",".join("1" if c in classes.split("|") else "0" for c in COLUMNS)
        rows[study] = f"{study}_study,{one_hot}"
        write_dicom(
            root / "train" / study / series / f"{image}.dcm",
            patient_id=patient,
            view="AP" if i % 2 else "PA",
            photometric="MONOCHROME1" if i % 3 == 0 else "MONOCHROME2",
            seed=200 + i,
        )
    (root / "train_study_level.csv").write_text(
        "id," + ",".join(COLUMNS) + "\n" + "\n".join(rows.values()) + "\n"
    )
    return root


def test_prepare_siim(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = _siim(tmp_path / "siim-covid19-detection")
    result = cxraug_cli(
        "data", "prepare", "siim", "--root", str(root), "--size", "16", "--name", "siim",
        "--split", "0.5,0.25,0.25",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = cxraug_workspace.data_dir / "siim"
    dataset = PreparedDataset(folder)
    assert Counter(r["label"] for r in dataset.rows) == {
        "typical_appearance": 3,
        "negative_for_pneumonia": 2,
        "indeterminate_appearance": 2,
        "atypical_appearance": 1,
    }
    # The three images of patient 9f2ad0a3cb10 (two studies) share one split, as do a study's series.
    splits: dict[str, set[str]] = {}
    for row in dataset.rows:
        splits.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert len([r for r in dataset.rows if r["patient_id"] == "9f2ad0a3cb10"]) == 3
    report = json.loads((folder / "report.json").read_text())
    assert report["skipped"] == []
    # The study filed as both typical and atypical: skipped by the default --multilabel skip.
    assert report["multilabel"]["skipped"] == 1
    assert sorted(json.loads((folder / "info.json").read_text())["classes"]) == sorted(
        ["negative_for_pneumonia", "typical_appearance", "indeterminate_appearance", "atypical_appearance"]
    )


def test_prepare_siim_classes_and_mapping(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = _siim(tmp_path / "siim-covid19-detection")
    result = cxraug_cli(
        "data", "prepare", "siim", "--root", str(root), "--size", "16", "--name", "typical",
        "--classes", "typical_appearance,negative_for_pneumonia", "--multilabel", "first",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    dataset = PreparedDataset(cxraug_workspace.data_dir / "typical")
    assert Counter(r["label"] for r in dataset.rows) == {"typical_appearance": 4, "negative_for_pneumonia": 2}
    result = cxraug_cli(
        "data", "prepare", "siim", "--root", str(root), "--size", "16", "--name", "covid",
        "--opt", "mapping=covid_typical",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    dataset = PreparedDataset(cxraug_workspace.data_dir / "covid")
    assert Counter(r["label"] for r in dataset.rows) == {"covid": 4}
