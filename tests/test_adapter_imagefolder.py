"""The imagefolder adapter reads class-per-folder trees, with or without split folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from dicom_files import write_dicom
from PIL import Image
from pydantic import ValidationError

from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import imagefolder
from cxraug.plugins.datasets.imagefolder import NO_PATIENT_IDS, ImageFolderAdapter, alias


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 100).save(path, format="PNG")


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"text")


def summary(records: list[Record]) -> list[tuple]:
    return [(r.original, r.label, r.split) for r in records]


def test_flat_tree_with_aliases_and_nested_images(tmp_path: Path) -> None:
    image(tmp_path / "COVID-19" / "a.png")
    image(tmp_path / "Healthy" / "sub" / "deeper" / "b.JPG")
    image(tmp_path / "Healthy" / "c.jfif")
    image(tmp_path / "Viral Pneumonia" / "d.webp")
    image(tmp_path / "Lung_Opacity" / "e.tiff")
    image(tmp_path / "bacteria" / "f.bmp")
    image(tmp_path / "Pneumonia" / "g.pgm")
    image(tmp_path / "loose.png")
    touch(tmp_path / "Healthy" / "notes.txt")
    touch(tmp_path / "Healthy" / "labels.csv")
    touch(tmp_path / "Healthy" / ".DS_Store")
    adapter = ImageFolderAdapter()
    records = list(adapter.records(tmp_path))
    assert summary(records) == [
        ("COVID-19/a.png", "covid", None),
        ("Healthy/c.jfif", "normal", None),
        ("Healthy/sub/deeper/b.JPG", "normal", None),
        ("Lung_Opacity/e.tiff", "lung_opacity", None),
        ("Pneumonia/g.pgm", "pneumonia", None),
        ("Viral Pneumonia/d.webp", "pneumonia_viral", None),
        ("bacteria/f.bmp", "pneumonia_bacterial", None),
    ]
    assert all(r.patient_id is None and r.view is None and r.source == "imagefolder" for r in records)
    assert records[0].image == tmp_path / "COVID-19" / "a.png"
    assert adapter.notes() == [
        "class folders and their labels: COVID-19 -> covid, Healthy -> normal, Lung_Opacity -> "
        "lung_opacity, Pneumonia -> pneumonia, Viral Pneumonia -> pneumonia_viral, bacteria -> "
        "pneumonia_bacterial",
        NO_PATIENT_IDS,
        "skipped 1 images outside any class folder: loose.png",
        "skipped 2 non-image files: .csv (1), .txt (1)",
    ]


def test_split_folders_in_a_wrapper(tmp_path: Path) -> None:
    base = tmp_path / "Data"
    image(base / "test" / "pneumonia" / "z.png")
    image(base / "train" / "covid" / "x.png")
    image(base / "valid" / "NORMAL" / "y.png")
    image(base / "Validation" / "normal" / "w.png")
    records = list(ImageFolderAdapter().records(tmp_path))
    assert summary(records) == [
        ("Data/train/covid/x.png", "covid", "train"),
        ("Data/Validation/normal/w.png", "normal", "val"),
        ("Data/valid/NORMAL/y.png", "normal", "val"),
        ("Data/test/pneumonia/z.png", "pneumonia", "test"),
    ]


def test_label_map_and_ignore(tmp_path: Path) -> None:
    image(tmp_path / "train" / "TB" / "a.png")
    image(tmp_path / "train" / "Healthy" / "b.png")
    image(tmp_path / "train" / "Other" / "c.png")
    image(tmp_path / "masks" / "d.png")
    options = ImageFolderAdapter.Options(
        label_map={"tb": "pneumonia", "healthy": "covid"}, ignore=("OTHER", "masks")
    )
    adapter = ImageFolderAdapter(options)
    assert summary(list(adapter.records(tmp_path))) == [
        ("train/Healthy/b.png", "covid", "train"),
        ("train/TB/a.png", "pneumonia", "train"),
    ]
    assert adapter.notes()[-1] == "ignored folders (option ignore): masks, train/Other"


def test_unknown_folder_says_use_label_map(tmp_path: Path) -> None:
    image(tmp_path / "covid" / "a.png")
    image(tmp_path / "Tuberculosis" / "b.png")
    adapter = ImageFolderAdapter()
    with pytest.raises(DataError) as err:
        next(iter(adapter.records(tmp_path)))
    message = str(err.value)
    assert str(tmp_path / "Tuberculosis") in message
    assert "label_map" in message and "--map" in message and "ignore" in message


def test_split_and_class_folders_mixed(tmp_path: Path) -> None:
    image(tmp_path / "train" / "covid" / "a.png")
    image(tmp_path / "normal" / "b.png")
    with pytest.raises(DataError, match=r"split folders \(train\) and other folders \(normal\)"):
        list(ImageFolderAdapter().records(tmp_path))


def test_empty_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(ImageFolderAdapter().records(tmp_path / "nope"))
    with pytest.raises(DataError, match="no class folders"):
        list(ImageFolderAdapter().records(tmp_path))


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("COVID19", "covid"),
        ("covid-19", "covid"),
        ("Covid-19", "covid"),
        ("COVID", "covid"),
        ("covid19", "covid"),
        ("COVID_19", "covid"),
        ("No Finding", "normal"),
        ("no_finding", "normal"),
        ("No_findings", "normal"),
        ("NO-FINDINGS", "normal"),
        ("NORMAL", "normal"),
        ("Normal", "normal"),
        ("PNEUMONIA", "pneumonia"),
        ("Virus", "pneumonia_viral"),
        ("Viral Pneumonia", "pneumonia_viral"),
        ("viral__pneumonia", "pneumonia_viral"),
        ("Bacterial Pneumonia", "pneumonia_bacterial"),
        ("pneumonia_bacterial", "pneumonia_bacterial"),
        ("lung opacity", "lung_opacity"),
        ("Lung_Opacity", "lung_opacity"),
        (" Lung - Opacity ", "lung_opacity"),
        ("Tuberculosis", None),
        # Names that do not say one label stay refused.
        ("Non-COVID", None),
        ("non_covid", None),
        ("Other", None),
        ("Others", None),
        ("Abnormal", None),
        ("Pneumonia-or-COVID", None),
    ],
)
def test_aliases(name: str, label: str | None) -> None:
    assert alias(name) == label


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError, match="label 'Tuber Culosis' is neither a core label"):
        ImageFolderAdapter.Options(label_map={"TB": "Tuber Culosis"})
    assert ImageFolderAdapter(ImageFolderAdapter.Options(label_map={"TB": "tb"})).labels()[-1] == "tb"
    with pytest.raises(ValidationError):
        ImageFolderAdapter.Options(labels={"TB": "covid"})
    assert ImageFolderAdapter.Options(ignore=["x"]).ignore == ("x",)
    for field in ImageFolderAdapter.Options.model_fields.values():
        assert field.description and not field.is_required()
    registered: list[type] = []
    imagefolder.register_datasets(registered.append)
    assert registered == [ImageFolderAdapter]


def test_links_out_of_the_root_are_refused_or_not_walked(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    image(outside / "secret.png")
    image(outside / "folder" / "also-secret.png")
    image(root / "covid" / "a.png")
    image(root / "normal" / "b.png")
    (root / "normal" / "inside-link.png").symlink_to(root / "covid" / "a.png")
    (root / "normal" / "escape.png").symlink_to(outside / "secret.png")
    (root / "healthy").symlink_to(outside / "folder", target_is_directory=True)  # a label alias
    adapter = ImageFolderAdapter()
    records = list(adapter.records(root))
    assert [(r.original, r.refused is None) for r in records] == [
        ("covid/a.png", True),
        ("normal/b.png", True),
        ("normal/escape.png", False),
        ("normal/inside-link.png", True),
    ]
    assert str(records[2].refused).startswith(f"'normal/escape.png' is a link to {outside / 'secret.png'}")
    assert f"ignored folders that are links out of {root}: healthy" in adapter.notes()


# --- real download layouts ------------------------------------------------------------------------


def test_darkcovidnet_three_class_download(tmp_path: Path) -> None:
    # Ozturk et al.'s DarkCovidNet data as downloaded: "X-Ray Image DataSet/" with these folders.
    base = tmp_path / "X-Ray Image DataSet"
    image(base / "Covid-19" / "01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg")
    image(base / "No_findings" / "00000001_000.png")
    image(base / "Pneumonia" / "00000165_001.png")
    adapter = ImageFolderAdapter()
    assert summary(list(adapter.records(tmp_path))) == [
        ("X-Ray Image DataSet/Covid-19/01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg", "covid", None),
        ("X-Ray Image DataSet/No_findings/00000001_000.png", "normal", None),
        ("X-Ray Image DataSet/Pneumonia/00000165_001.png", "pneumonia", None),
    ]
    assert adapter.notes()[0] == (
        "class folders and their labels: Covid-19 -> covid, No_findings -> normal, Pneumonia -> pneumonia"
    )


def test_covid19_radiography_database_v4_skips_masks(tmp_path: Path) -> None:
    base = tmp_path / "COVID-19_Radiography_Dataset"
    for folder, stem in [
        ("COVID", "COVID"),
        ("Normal", "Normal"),
        ("Lung_Opacity", "Lung_Opacity"),
        ("Viral Pneumonia", "Viral Pneumonia"),
    ]:
        image(base / folder / "images" / f"{stem}-1.png")
        image(base / folder / "masks" / f"{stem}-1.png")
    touch(base / "COVID.metadata.xlsx")
    adapter = ImageFolderAdapter()
    records = list(adapter.records(tmp_path))
    assert [(r.original.split("/", 1)[1], r.label) for r in records] == [
        ("COVID/images/COVID-1.png", "covid"),
        ("Lung_Opacity/images/Lung_Opacity-1.png", "lung_opacity"),
        ("Normal/images/Normal-1.png", "normal"),
        ("Viral Pneumonia/images/Viral Pneumonia-1.png", "pneumonia_viral"),
    ]
    notes = adapter.notes()
    assert notes[0] == (
        "class folders and their labels: COVID -> covid, Lung_Opacity -> lung_opacity, Normal -> normal, "
        "Viral Pneumonia -> pneumonia_viral"
    )
    assert any(n.startswith("skipped mask folders (segmentation masks, not X-rays): ") for n in notes)
    assert "COVID-19_Radiography_Dataset/Normal/masks" in " ".join(notes)


def test_kermany_and_covid19_pneumonia_layouts(tmp_path: Path) -> None:
    kermany = tmp_path / "chest_xray"
    image(kermany / "train" / "NORMAL" / "IM-0115-0001.jpeg")
    image(kermany / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    image(kermany / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg")
    image(kermany / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg")
    assert [(r.label, r.split) for r in ImageFolderAdapter().records(tmp_path)] == [
        ("normal", "train"),
        ("pneumonia", "train"),
        ("normal", "val"),
        ("pneumonia", "test"),
    ]
    other = tmp_path / "other" / "Data"
    for folder in ("COVID19", "NORMAL", "PNEUMONIA"):
        image(other / "train" / folder / "a.jpg")
    assert [r.label for r in ImageFolderAdapter().records(tmp_path / "other")] == [
        "covid",
        "normal",
        "pneumonia",
    ]


def test_covid_qu_ex_non_covid_is_refused_with_todays_message(tmp_path: Path) -> None:
    for folder in ("COVID-19", "Non-COVID", "Normal"):
        image(tmp_path / "Lung Segmentation Data" / "Train" / folder / "images" / "a.png")
    with pytest.raises(DataError) as err:
        list(ImageFolderAdapter().records(tmp_path))
    message = str(err.value)
    assert "folder name 'Non-COVID' is not a known label" in message
    assert "--opt 'label_map.Non-COVID=LABEL'" in message and "--opt 'ignore=Non-COVID'" in message


def test_label_map_folders_are_marked_in_the_report(tmp_path: Path) -> None:
    image(tmp_path / "Non-COVID" / "a.png")
    image(tmp_path / "COVID-19" / "b.png")
    adapter = ImageFolderAdapter(ImageFolderAdapter.Options(label_map={"Non-COVID": "pneumonia"}))
    list(adapter.records(tmp_path))
    assert adapter.notes()[0] == (
        "class folders and their labels: COVID-19 -> covid, Non-COVID -> pneumonia (label_map)"
    )


# --- DICOM trees ----------------------------------------------------------------------------------


def test_dicom_tree_with_patient_ids_and_views(tmp_path: Path) -> None:
    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60
    write_dicom(tmp_path / "COVID" / "p1" / "study1.dcm", ramp, patient_id="P1", view="PA")
    write_dicom(tmp_path / "COVID" / "p1" / "1.2.840.113619.2.55.3.1", ramp, patient_id="P1", view="AP")
    write_dicom(tmp_path / "Normal" / "P2" / "IMG0001", ramp, patient_id="P2", view="PA")
    write_dicom(tmp_path / "Normal" / "scan.DICOM", ramp)  # no PatientID, no ViewPosition
    image(tmp_path / "Normal" / "photo.png")
    touch(tmp_path / "Normal" / "P2" / "README")  # extension-less, not DICOM
    touch(tmp_path / "Normal" / "broken.dcm")  # named DICOM, unreadable: listed, fails at decoding
    adapter = ImageFolderAdapter()
    records = list(adapter.records(tmp_path))
    assert [(r.original, r.label, r.patient_id, r.view) for r in records] == [
        ("COVID/p1/1.2.840.113619.2.55.3.1", "covid", "P1", "AP"),
        ("COVID/p1/study1.dcm", "covid", "P1", "PA"),
        ("Normal/broken.dcm", "normal", None, None),
        ("Normal/photo.png", "normal", None, None),
        ("Normal/scan.DICOM", "normal", None, None),
        ("Normal/P2/IMG0001", "normal", "P2", "PA"),
    ]
    notes = adapter.notes()
    assert NO_PATIENT_IDS not in notes
    assert (
        "patient ids from the DICOM PatientID tag: 3 images of 2 patients; the other 3 images have none "
        "and are split by image"
    ) in notes
    assert "skipped 1 non-image files: (no extension) (1)" in notes


def test_dicom_link_out_of_the_root_is_not_opened(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_dicom(outside / "secret", np.zeros((4, 4), np.uint16), patient_id="SECRET")
    write_dicom(outside / "secret.dcm", np.zeros((4, 4), np.uint16), patient_id="SECRET")
    image(root / "covid" / "a.png")
    (root / "covid" / "linked").symlink_to(outside / "secret")
    (root / "covid" / "linked.dcm").symlink_to(outside / "secret.dcm")
    records = list(ImageFolderAdapter().records(root))
    # The extension-less link is not sniffed (that would read outside); the .dcm one is refused.
    assert [(r.original, r.refused is not None, r.patient_id) for r in records] == [
        ("covid/a.png", False, None),
        ("covid/linked.dcm", True, None),
    ]


def test_prepare_a_dicom_tree_keeps_patients_together(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for p in range(8):
        for label in ("Covid-19", "No_findings"):
            for k in range(2):
                pixels = rng.integers(0, 4096, size=(24, 24)).astype(np.uint16)
                write_dicom(
                    tmp_path / "tree" / label / f"{p}_{k}",
                    pixels,
                    bits_stored=12,
                    patient_id=f"PAT{p}",
                    view="PA",
                    window=(2048, 1024),
                    photometric="MONOCHROME1" if k else "MONOCHROME2",
                )
    result = cxraug_cli(
        "data",
        "prepare",
        "imagefolder",
        "--root",
        str(tmp_path / "tree"),
        "--size",
        "16",
        "--name",
        "dcm",
        "--opt",
        "dicom_voi=full",
    )
    assert result.exit_code == 0, result.output
    ds_dir = cxraug_workspace.data_dir / "dcm"
    info = json.loads((ds_dir / "info.json").read_text())
    assert info["settings"]["dicom_voi"] == "full"
    with open(ds_dir / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 32
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        splits_of.setdefault(row["patient_id"], set()).add(row["split"])
        assert row["view"] == "PA"
    assert len(splits_of) == 8 and all(len(s) == 1 for s in splits_of.values())
    report = json.loads((ds_dir / "report.json").read_text())
    assert any(
        "patient ids from the DICOM PatientID tag: 32 images of 8 patients" in n for n in report["notes"]
    )
    again = cxraug_cli(
        "data",
        "prepare",
        "imagefolder",
        "--root",
        str(tmp_path / "tree"),
        "--size",
        "16",
        "--name",
        "dcm2",
        "--dicom-voi",
        "window",
        "--opt",
        "dicom_voi=full",
    )
    assert again.exit_code == 2 and "--opt dicom_voi=full and --dicom-voi window disagree" in again.output
    bad = cxraug_cli("data", "prepare", "imagefolder", "--root", str(tmp_path / "tree"), "--dicom-voi", "lut")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_new_label_from_label_map_and_preambleless_dicoms(
    cxraug_cli, cxraug_workspace, tmp_path: Path
) -> None:
    """Kaggle's TB database layout (Normal/, Tuberculosis/) with a label of the user's naming, and
    DICOM files written without preamble or extension, found by content."""
    rng = np.random.default_rng(1)
    for k in range(6):
        image(tmp_path / "tree" / "Normal" / f"Normal-{k}.png")
        pixels = rng.integers(0, 4096, size=(20, 20)).astype(np.uint16)
        write_dicom(tmp_path / "tree" / "Tuberculosis" / f"TB{k}", pixels, preamble=False, bits_stored=12)
    result = cxraug_cli(
        "data", "prepare", "imagefolder", "--root", str(tmp_path / "tree"), "--size", "16",
        "--name", "tb", "--opt", "label_map.Tuberculosis=tuberculosis",
        "--classes", "normal,tuberculosis",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads((cxraug_workspace.data_dir / "tb" / "info.json").read_text())
    assert info["classes"] == ["normal", "tuberculosis"]
    assert sum(c.get("tuberculosis", 0) for c in info["counts"].values()) == 6
