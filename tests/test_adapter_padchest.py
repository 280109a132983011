"""The padchest adapter reads PadChest as downloaded from BIMCV: one label CSV, numbered PNG folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from miniature_layouts import manifest, prepare, write_text, xray
from PIL import Image

from cxraug.errors import DataError
from cxraug.plugins.datasets.padchest import CSV_NAME, PadChestAdapter, parse_labels
from cxraug.testing import check_dataset_adapter

# The columns of PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (a pandas-written index
# column leads, nameless).
HEADER = (
    ",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,"
    "ViewPosition_DICOM,Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,"
    "PhotometricInterpretation_DICOM,PixelRepresentation_DICOM,PixelAspectRatio_DICOM,"
    "SpatialResolution_DICOM,BitsStored_DICOM,WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,"
    "Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,ExposureTime,"
    "RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,Localizations,"
    "LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS\n"
)


def image_id(n: int) -> str:
    """An ImageID in PadChest's form (a long number, an underscore, a short code)."""
    return f"2168401113669640128192070611120103071426{n:05d}_04-014-{n:03d}.png"


# (ImageID, ImageDir, PatientID, Projection, Labels as written in the CSV)
ROWS = [
    ("20536686640136348236148679891455886468_k6ga29.png", "0", "p1", "PA", "['normal']"),
    (image_id(1), "0", "p1", "L", "['normal']"),
    (image_id(2), "0", "p2", "PA", "['pneumonia', 'infiltrates']"),
    (image_id(3), "1", "p3", "AP", "[' pleural effusion', 'cardiomegaly']"),
    (image_id(4), "1", "p4", "AP_horizontal", "['pleural effusion']"),
    (image_id(5), "1", "p5", "PA", "['normal']"),
    (image_id(6), "1", "p6", "PA", "['chronic changes']"),
    (image_id(7), "0", "p7", "PA", "['exclude']"),
    (image_id(8), "0", "p8", "PA", "['pneumonia'"),
    (image_id(9), "0", "p9", "PA", ""),
    (image_id(10), "0", "p10", "PA", "['aortic elongation', 'normal']"),
    (image_id(11), "0", "p11", "PA", "['pleural effusion', 'aortic elongation']"),
    (image_id(12), "2", "p12", "PA", "['normal']"),  # no file
    (image_id(13), "flat", "p13", "PA", "['normal']"),
    (image_id(14), "0", "p14", "PA", "['pleural effusion']"),
    (image_id(15), "0", "p15", "PA", "['normal']"),
]


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text


def _table(rows: list[tuple[str, str, str, str, str]]) -> str:
    lines = []
    for i, (image, folder, patient, projection, labels) in enumerate(rows):
        folder = "3" if folder == "flat" else folder
        cells = [
            str(i),
            image,
            folder,
            "20140709",
            f"study{patient}",
            patient,
            "1935",
            "F",
            "POSTEROANTERIOR",
        ]
        cells += [projection, "Manual review of DICOM fields", "No", "CR", "PhilipsMedicalSystems"]
        cells += ["MONOCHROME2", "0", "", "0.139", "12", "2048", "4096", "2828", "2320", "", "", "", ""]
        cells += ["", "4765", _csv_field("sin hallazgos, normal."), "Physician", _csv_field(labels)]
        cells += ["[]", _csv_field(f"[[{labels}]]"), "[]", "[]"]
        lines.append(",".join(cells) + "\n")
    return HEADER + "".join(lines)


def _dataset(root: Path, *, gz: bool = True) -> Path:
    write_text(root / (f"{CSV_NAME}.gz" if gz else CSV_NAME), _table(ROWS), gz=gz)
    for i, (image, folder, *_rest) in enumerate(ROWS):
        if folder == "2":
            continue
        xray(root / image if folder == "flat" else root / folder / image, seed=300 + i, sixteen_bit=True)
    return root


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("['normal']", ["normal"]),
        ("['pneumonia', 'infiltrates']", ["pneumonia", "infiltrates"]),
        ("[' pleural effusion', \"cardiomegaly\" ]", ["pleural effusion", "cardiomegaly"]),
        ("[]", []),
        ("['pneumonia'", None),
        ("['a'] + ['b']", None),
        ("[__import__('os')]", None),
        ("['a', ['b']]", None),
        ("pneumonia", None),
    ],
)
def test_parse_labels_is_strict(text: str, parsed: list[str] | None) -> None:
    assert parse_labels(text) == parsed


def test_records(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    adapter = PadChestAdapter()
    check_dataset_adapter(adapter, root)
    records = {r.patient_id: r for r in adapter.records(root)}
    assert sorted(records, key=lambda p: int(p[1:])) == [
        "p1",
        "p2",
        "p3",
        "p4",
        "p5",
        "p8",
        "p10",
        "p11",
        "p13",
        "p14",
        "p15",
    ]
    assert records["p1"].original == f"0/{ROWS[0][0]}" and records["p1"].view == "PA"
    assert records["p2"].findings == ("pneumonia", "infiltration")
    assert records["p3"].findings == ("effusion", "cardiomegaly")
    assert records["p4"].label == "effusion" and records["p4"].view == "AP_horizontal"
    assert records["p10"].findings == ("aortic_elongation", "normal")
    assert records["p13"].original == ROWS[13][0]  # found directly under the root
    assert records["p8"].refused == (
        f"{root / (CSV_NAME + '.gz')}:10: Labels \"['pneumonia'\" is not a list of quoted names such as "
        "['pneumonia', 'infiltrates']; fix the row"
    )
    assert records["p1"].extra == {"study_id": "studyp1", "method_label": "Physician"}
    assert all(r.split is None for r in records.values())
    notes = adapter.notes()
    assert "left out 1 images with projections other than PA, AP, AP_horizontal: L (1)" in notes
    assert "left out images labelled exclude (1)" in notes
    assert "left out 1 rows with an empty Labels list" in notes
    assert "left out 1 images none of whose labels is a declared label" in notes
    assert "1 label entries map to no declared label and were not used: chronic changes (1)" in notes
    assert any(n.startswith("1 rows point to missing images, skipped: 2/") for n in notes)
    assert notes[-1] == "no official split in this source"


def test_sixteen_bit_images_keep_their_range(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    record = next(iter(PadChestAdapter().records(root)))
    assert Image.open(record.image).mode.startswith("I")
    from cxraug.imageio import decode_source

    pixels, _, _ = decode_source(record.image, 16, "pad", 10**7)
    assert pixels.dtype == np.uint8 and pixels.max() > 200 and pixels.min() < 60


def test_plain_csv_and_rows_naming_other_folders(tmp_path: Path) -> None:
    root = _dataset(tmp_path, gz=False)
    table = root / CSV_NAME
    rows = [
        ROWS[0],
        ("../../etc/passwd", "0", "p9", "PA", "['normal']"),
        (ROWS[2][0], "../x", "p2", "PA", "['normal']"),
    ]
    table.write_text(_table(rows))
    records = list(PadChestAdapter().records(root))
    assert records[0].refused is None
    assert records[1].refused == (
        f"{table}:3: ImageDir '0' / ImageID '../../etc/passwd' is not a folder number and a file name; "
        "fix the row"
    )
    assert str(records[2].refused).startswith(f"{table}:4: ImageDir '../x'")
    (root / CSV_NAME).unlink()
    with pytest.raises(DataError, match="the PadChest label table not found"):
        list(PadChestAdapter().records(root))


def test_prepare_end_to_end(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = _dataset(tmp_path / "padchest")
    report = prepare(cxraug_cli, cxraug_workspace, "padchest", root, "--classes", "effusion,normal")
    rows = manifest(cxraug_workspace)
    labels = {r["patient_id"]: r["label"] for r in rows}
    assert labels == {
        "p1": "normal",
        "p4": "effusion",
        "p5": "normal",
        "p13": "normal",
        "p14": "effusion",
        "p15": "normal",
    }
    assert report["multilabel"]["skipped"] == 4  # p2, p3, p10, p11
    assert [s["original"] for s in report["skipped"]] == [f"0/{ROWS[8][0]}"]
    assert "split_method" in report and report["split_method"].startswith("patient-level stratified ratios")

    args = ("--classes", "effusion,normal", "--multilabel", "first")
    prepare(cxraug_cli, cxraug_workspace, "padchest", root, *args, name="first")
    labels = {r["patient_id"]: r["label"] for r in manifest(cxraug_workspace, "first")}
    assert labels["p3"] == "effusion" and labels["p10"] == "normal" and labels["p11"] == "effusion"
    assert "p2" not in labels  # pneumonia and infiltration: neither wanted
