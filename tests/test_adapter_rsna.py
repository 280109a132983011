"""The rsna adapter reads the RSNA Pneumonia Detection Challenge download: DICOM + stage_2 CSVs."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_writer import write_dicom
from pydantic import ValidationError

from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import rsna
from cxraug.plugins.datasets.rsna import RsnaAdapter
from cxraug.testing import check_dataset_adapter

# patientId values are UUIDs, one per image, and the file is <patientId>.dcm.
OPACITY = "00436515-870c-4b36-a041-de91049b9ab4"
NORMAL = "003d8fa0-6bf1-40ed-b54c-ac657f8495c5"
NOT_NORMAL = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"
NO_TAG = "00313ee0-9eaa-42f4-b0ab-c148ed3241cd"
GONE = "00322d4d-1c29-4943-afc9-b6754be640eb"
UNLISTED = "00569f44-917d-4c86-a842-81832af98c30"

CLASS_INFO = (
    "patientId,class\n"
    f"{NOT_NORMAL},No Lung Opacity / Not Normal\n"
    f"{NORMAL},Normal\n"
    # One row per box: an image with two opacities is listed twice.
    f"{OPACITY},Lung Opacity\n"
    f"{OPACITY},Lung Opacity\n"
    f"{NO_TAG},Normal\n"
    f"{GONE},Lung Opacity\n"
)
TRAIN_LABELS = (
    "patientId,x,y,width,height,Target\n"
    f"{NOT_NORMAL},,,,,0\n"
    f"{NORMAL},,,,,0\n"
    f"{OPACITY},264.0,152.0,213.0,379.0,1\n"
    f"{OPACITY},562.0,152.0,256.0,453.0,1\n"
    f"{NO_TAG},,,,,0\n"
    f"{GONE},316.0,318.0,170.0,478.0,1\n"
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A miniature of the unzipped Kaggle download (stage 2 files, one test image)."""
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(CLASS_INFO, encoding="utf-8")
    (tmp_path / "stage_2_train_labels.csv").write_text(TRAIN_LABELS, encoding="utf-8")
    (tmp_path / "stage_2_sample_submission.csv").write_text("patientId,PredictionString\n")
    (tmp_path / "GCP Credits Request Link - RSNA.txt").write_text("https://...\n")
    images = tmp_path / "stage_2_train_images"
    write_dicom(images / f"{OPACITY}.dcm", patient_id=OPACITY, view="PA", seed=1)
    write_dicom(images / f"{NORMAL}.dcm", patient_id=NORMAL, view="AP", seed=2, photometric="MONOCHROME1")
    write_dicom(images / f"{NOT_NORMAL}.dcm", patient_id=NOT_NORMAL, view="AP", seed=3)
    write_dicom(images / f"{NO_TAG}.dcm", patient_id=None, view="PA", seed=4)
    write_dicom(images / f"{UNLISTED}.dcm", patient_id=UNLISTED, seed=5)
    write_dicom(tmp_path / "stage_2_test_images" / "000db696-cf54-4385-b10b-6b16fbb3f985.dcm", patient_id="t")
    return tmp_path


def summary(records: list[Record]) -> list[tuple]:
    return [(r.original, r.label, r.patient_id, r.view, r.extra["boxes"]) for r in records]


def test_records_labels_patients_views_and_notes(root: Path) -> None:
    records = check_dataset_adapter(RsnaAdapter(), root)
    adapter = RsnaAdapter()
    assert list(adapter.records(root)) == records  # notes() describe this call
    images = "stage_2_train_images"
    assert summary(records) == [
        (f"{images}/{NOT_NORMAL}.dcm", "not_normal", NOT_NORMAL, "AP", "0"),
        (f"{images}/{NORMAL}.dcm", "normal", NORMAL, "AP", "0"),
        (f"{images}/{OPACITY}.dcm", "lung_opacity", OPACITY, "PA", "2"),
        # No PatientID tag: the file's patientId stands in.
        (f"{images}/{NO_TAG}.dcm", "normal", NO_TAG, "PA", "0"),
    ]
    assert all(r.split is None and r.refused is None and r.findings == () for r in records)
    assert records[0].extra["class"] == "No Lung Opacity / Not Normal"
    assert adapter.labels() == ("lung_opacity", "normal", "not_normal")
    assert adapter.notes() == [
        f"1 images of stage_2_detailed_class_info.csv are missing, skipped: {images}/{GONE}.dcm",
        f"1 files in {images}/ have no row in stage_2_detailed_class_info.csv; not used",
        "patient ids: the DICOM PatientID tag, which in this challenge is the image's own "
        "patientId (one id per image): a person imaged twice has two ids, so images of one "
        "person may land in different splits; 1 images without the tag use the file's patientId",
        "no official split in this source: only stage_2_train_images/ is labelled; "
        "stage_2_test_images/ (1 files) has no public labels and is not used",
    ]


def test_patient_id_comes_from_the_dicom_tag(root: Path) -> None:
    # In the real download the tag repeats the file name; the tag is what the adapter reads.
    write_dicom(root / "stage_2_train_images" / f"{NORMAL}.dcm", patient_id="from-the-tag", view="PA")
    records = {Path(r.image).stem: r for r in RsnaAdapter().records(root)}
    assert records[NORMAL].patient_id == "from-the-tag"
    assert records[NORMAL].view == "PA"


def test_covidx_mapping_rebuilds_covid_nets_labels(root: Path) -> None:
    check_dataset_adapter(RsnaAdapter(RsnaAdapter.Options(mapping="covidx")), root)
    adapter = RsnaAdapter(RsnaAdapter.Options(mapping="covidx"))
    records = list(adapter.records(root))
    assert [(r.patient_id, r.label) for r in records] == [
        (NORMAL, "normal"),
        (OPACITY, "pneumonia"),
        (NO_TAG, "normal"),
    ]
    assert adapter.labels() == ("pneumonia", "normal")
    assert adapter.notes()[0] == (
        "skipped 1 images whose class is outside COVID-Net's create_COVIDx rule: "
        "No Lung Opacity / Not Normal (1)"
    )


def test_covidx_mapping_takes_target_where_the_files_disagree(root: Path) -> None:
    labels = root / "stage_2_train_labels.csv"
    labels.write_text(TRAIN_LABELS.replace(f"{NORMAL},,,,,0", f"{NORMAL},1.0,2.0,3.0,4.0,1"))
    source = RsnaAdapter()
    assert {r.patient_id: r.label for r in source.records(root)}[NORMAL] == "normal"
    assert any("1 images have Target and class that disagree" in n for n in source.notes())
    covidx = RsnaAdapter(RsnaAdapter.Options(mapping="covidx"))
    assert {r.patient_id: r.label for r in covidx.records(root)}[NORMAL] == "pneumonia"


def test_views_option(root: Path) -> None:
    adapter = RsnaAdapter(RsnaAdapter.Options(views=("pa",)))
    assert [r.patient_id for r in adapter.records(root)] == [OPACITY, NO_TAG]
    assert "skipped 2 images with views other than pa: AP (2)" in adapter.notes()


def test_unreadable_dicom_is_refused_not_fatal(root: Path) -> None:
    (root / "stage_2_train_images" / f"{NORMAL}.dcm").write_bytes(b"not a dicom file at all")
    records = {r.patient_id: r for r in RsnaAdapter().records(root)}
    assert records[NORMAL].refused is not None
    assert "not a readable DICOM file" in records[NORMAL].refused
    assert records[OPACITY].refused is None


def test_without_train_labels_the_class_file_is_enough(root: Path) -> None:
    (root / "stage_2_train_labels.csv").unlink()
    adapter = RsnaAdapter()
    assert len(list(adapter.records(root))) == 4
    assert "stage_2_train_labels.csv not found: box counts not recorded" in adapter.notes()
    with pytest.raises(DataError, match=r"stage_2_train_labels.csv: not found; mapping=covidx"):
        list(RsnaAdapter(RsnaAdapter.Options(mapping="covidx")).records(root))


def test_quirks_bom_crlf(root: Path) -> None:
    text = "\ufeff" + CLASS_INFO.replace("\n", "\r\n")
    (root / "stage_2_detailed_class_info.csv").write_text(text, encoding="utf-8", newline="")
    assert len(list(RsnaAdapter().records(root))) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patientId,label\nx,Normal\n", r":1: missing column\(s\) 'class' \(header has patientId, label\)"),
        (f"patientId,class\n{NORMAL},Healthy\n", r":2: unknown class 'Healthy'"),
        (
            f"patientId,class\n{NORMAL},Normal\n{NORMAL},Lung Opacity\n",
            r":3: .* has class 'Lung Opacity' here but 'Normal' on line 2",
        ),
        ("patientId,class\n,Normal\n", r":2: empty patientId"),
    ],
)
def test_bad_class_file_names_file_and_line(root: Path, text: str, message: str) -> None:
    (root / "stage_2_detailed_class_info.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        list(RsnaAdapter().records(root))


def test_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="rsna needs --root"):
        list(RsnaAdapter().records(None))
    with pytest.raises(DataError, match="does not exist"):
        list(RsnaAdapter().records(tmp_path / "nope"))
    with pytest.raises(DataError, match="stage_2_detailed_class_info.csv: not found"):
        list(RsnaAdapter().records(tmp_path))
    (tmp_path / "stage_2_detailed_class_info.csv").write_text(CLASS_INFO)
    with pytest.raises(DataError, match="stage_2_train_images: folder not found"):
        list(RsnaAdapter().records(tmp_path))


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError):
        RsnaAdapter.Options(mapping="binary")
    with pytest.raises(ValidationError):
        RsnaAdapter.Options(view=("PA",))
    for field in RsnaAdapter.Options.model_fields.values():
        assert field.description and not field.is_required()
    registered: list[type] = []
    rsna.register_datasets(registered.append)
    assert registered == [RsnaAdapter]
