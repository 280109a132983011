"""The siim adapter reads the SIIM-FISABIO-RSNA COVID-19 download: study/series/image DICOM tree."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from dicom_writer import write_dicom
from pydantic import ValidationError

from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import siim
from cxraug.plugins.datasets.siim import SiimAdapter
from cxraug.testing import check_dataset_adapter

# Study, series and image ids of the download are 12 hex digits; the tree is
# train/<StudyInstanceUID>/<SeriesInstanceUID>/<image id>.dcm.
TYPICAL, NEGATIVE, INDETERMINATE, ATYPICAL = "00086460a852", "000c9c05fd14", "00292f8c37bd", "005057b3f880"
NO_FILES, NO_CLASS, TWO_CLASSES, NOT_LISTED = "0051d9b12e72", "00c74279c5b7", "00ccd633fb0e", "0142feaef82f"

STUDY_LEVEL = (
    "id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance\n"
    f"{TYPICAL}_study,0,1,0,0\n"
    f"{NEGATIVE}_study,1,0,0,0\n"
    f"{INDETERMINATE}_study,0,0,1,0\n"
    f"{ATYPICAL}_study,0,0,0,1\n"
    f"{NO_FILES}_study,0,1,0,0\n"
    f"{NO_CLASS}_study,0,0,0,0\n"
    f"{TWO_CLASSES}_study,0,1,0,1\n"
)
IMAGE_LEVEL = (
    "id,boxes,label,StudyInstanceUID\n"
    "000a312787f2_image,\"[{'x': 789.28836, 'y': 582.43035, 'width': 1026.65662, 'height': 1917.30292}, "
    "{'x': 2245.91208, 'y': 591.20528, 'width': 1094.66162, 'height': 1761.54944}]\","
    "opacity 1 789.28836 582.43035 1815.94498 2499.73327 "
    f"opacity 1 2245.91208 591.20528 3340.5737 2352.75472,{TYPICAL}\n"
    f"000c3a3f293f_image,,none 1 0 0 1 1,{NEGATIVE}\n"
)

#: (study, series, image id, PatientID tag, view, photometric)
IMAGES = [
    (TYPICAL, "9e8302230c91", "000a312787f2", "9f2ad0a3cb10", "AP", "MONOCHROME2"),
    (TYPICAL, "9e8302230c91", "0012ff7358bc", "9f2ad0a3cb10", "AP", "MONOCHROME2"),
    (NEGATIVE, "e555410bd2cd", "000c3a3f293f", "9f2ad0a3cb10", "PA", "MONOCHROME1"),
    (INDETERMINATE, "73120b4a13cb", "001398f4ff4f", "5a57bc2d5a83", "AP", "MONOCHROME1"),
    (INDETERMINATE, "ca867739fd1b", "001bd15d1891", "5a57bc2d5a83", "AP", "MONOCHROME2"),
    (ATYPICAL, "a46d8ebec0be", "0022227f5adf", None, "PA", "MONOCHROME2"),
    (NO_CLASS, "4e7a3b1fd3c0", "0023f02ae886", "0b7e1a3f9c2d", "AP", "MONOCHROME2"),
    (TWO_CLASSES, "8b21c9a4a8c2", "002a34c58c5b", "6c0f1e2d3b4a", "AP", "MONOCHROME2"),
    (NOT_LISTED, "ab4a2c1f5e0d", "003ad2e6b1c4", "7d1e2f3a4b5c", "AP", "MONOCHROME2"),
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A miniature of the unzipped Kaggle download, with a test/ study that has no labels.

    The folders carry the download's 12-hex-digit ids; the files' own UID tags are valid DICOM
    UIDs (the adapter reads the study from the folder, as the CSVs name it).
    """
    (tmp_path / "train_study_level.csv").write_text(STUDY_LEVEL, encoding="utf-8")
    (tmp_path / "train_image_level.csv").write_text(IMAGE_LEVEL, encoding="utf-8")
    (tmp_path / "sample_submission.csv").write_text("id,PredictionString\n")
    for i, (study, series, image, patient, view, photometric) in enumerate(IMAGES):
        write_dicom(
            tmp_path / "train" / study / series / f"{image}.dcm",
            patient_id=patient,
            view=view,
            photometric=photometric,
            seed=i,
        )
    write_dicom(tmp_path / "test" / "000c9c05fd15" / "e555410bd2ce" / "51759b5579bc.dcm", patient_id="t")
    return tmp_path


def summary(records: list[Record]) -> list[tuple]:
    return [(r.extra["study"], Path(r.image).stem, r.label, r.patient_id, r.view) for r in records]


def test_records_labels_patients_views_and_notes(root: Path) -> None:
    records = check_dataset_adapter(SiimAdapter(), root)
    adapter = SiimAdapter()
    assert list(adapter.records(root)) == records  # notes() describe this call
    assert summary(records) == [
        (TYPICAL, "000a312787f2", "typical_appearance", "9f2ad0a3cb10", "AP"),
        (TYPICAL, "0012ff7358bc", "typical_appearance", "9f2ad0a3cb10", "AP"),
        # Another study of the same patient: the same patient id, so the same split.
        (NEGATIVE, "000c3a3f293f", "negative_for_pneumonia", "9f2ad0a3cb10", "PA"),
        # Two series of one study: both images take the study's class.
        (INDETERMINATE, "001398f4ff4f", "indeterminate_appearance", "5a57bc2d5a83", "AP"),
        (INDETERMINATE, "001bd15d1891", "indeterminate_appearance", "5a57bc2d5a83", "AP"),
        # No PatientID tag: the study stands in for the patient.
        (ATYPICAL, "0022227f5adf", "atypical_appearance", f"study:{ATYPICAL}", "PA"),
        (TWO_CLASSES, "002a34c58c5b", "typical_appearance", "6c0f1e2d3b4a", "AP"),
    ]
    assert records[-1].findings == ("typical_appearance", "atypical_appearance")
    assert all(r.findings == () for r in records[:-1])
    assert all(r.split is None and r.refused is None for r in records)
    assert records[0].original == f"train/{TYPICAL}/9e8302230c91/000a312787f2.dcm"
    assert records[0].extra == {
        "study": TYPICAL,
        "series": "9e8302230c91",
        "study_class": "typical_appearance",
        "image_label": "opacity",
    }
    assert records[2].extra["image_label"] == "none"
    assert adapter.labels() == (
        "negative_for_pneumonia",
        "typical_appearance",
        "indeterminate_appearance",
        "atypical_appearance",
    )
    assert adapter.notes() == [
        f"skipped the images of 1 studies with no class set in train_study_level.csv: {NO_CLASS}",
        f"1 study folders in train/ have no row in train_study_level.csv, not used: {NOT_LISTED}",
        f"1 studies of train_study_level.csv have no .dcm file under train/, skipped: {NO_FILES}",
        "patient ids: the DICOM PatientID tag; every image of a study takes the study's class; "
        "1 images without the tag use their study's id",
        "no official split in this source: only train/ is labelled; test/ (1 studies) has no "
        "public labels and is not used",
    ]


def test_covid_typical_mapping(root: Path) -> None:
    check_dataset_adapter(SiimAdapter(SiimAdapter.Options(mapping="covid_typical")), root)
    adapter = SiimAdapter(SiimAdapter.Options(mapping="covid_typical"))
    records = list(adapter.records(root))
    assert [(Path(r.image).stem, r.label) for r in records] == [
        ("000a312787f2", "covid"),
        ("0012ff7358bc", "covid"),
        ("002a34c58c5b", "covid"),  # typical and atypical: typical is the one mapped
    ]
    assert adapter.labels() == ("covid",)
    assert adapter.notes()[0] == (
        "skipped 4 images whose study class mapping=covid_typical leaves out: "
        "indeterminate_appearance (2), negative_for_pneumonia (1), atypical_appearance (1)"
    )


def test_views_option(root: Path) -> None:
    adapter = SiimAdapter(SiimAdapter.Options(views=("PA",)))
    assert Counter(r.view for r in adapter.records(root)) == {"PA": 2}
    assert "skipped 5 images with views other than PA: AP (5)" in adapter.notes()


def test_unreadable_dicom_is_refused_not_fatal(root: Path) -> None:
    bad = root / "train" / ATYPICAL / "a46d8ebec0be" / "0022227f5adf.dcm"
    bad.write_bytes(b"\0" * 200)
    records = {Path(r.image).stem: r for r in SiimAdapter().records(root)}
    assert "not a readable DICOM file" in str(records["0022227f5adf"].refused)
    assert records["0022227f5adf"].patient_id == f"study:{ATYPICAL}"


def test_works_without_the_image_level_file(root: Path) -> None:
    (root / "train_image_level.csv").unlink()
    records = list(SiimAdapter().records(root))
    assert len(records) == 7 and all("image_label" not in r.extra for r in records)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,Negative for Pneumonia\nx_study,1\n", r":1: missing column\(s\) 'Typical Appearance'"),
        (
            "id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance\n"
            f"{TYPICAL},0,1,0,0\n",
            r":2: id '00086460a852' does not end in _study",
        ),
        (
            "id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance\n"
            f"{TYPICAL}_study,0,yes,0,0\n",
            r":2: Typical Appearance is 'yes'; expected 0 or 1",
        ),
        (
            "id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,Atypical Appearance\n"
            f"{TYPICAL}_study,0,1,0,0\n{TYPICAL}_study,1,0,0,0\n",
            r":3: study 00086460a852 is listed again \(first on line 2\)",
        ),
    ],
)
def test_bad_study_file_names_file_and_line(root: Path, text: str, message: str) -> None:
    (root / "train_study_level.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        list(SiimAdapter().records(root))


def test_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="siim needs --root"):
        list(SiimAdapter().records(None))
    with pytest.raises(DataError, match="train_study_level.csv: not found"):
        list(SiimAdapter().records(tmp_path))
    (tmp_path / "train_study_level.csv").write_text(STUDY_LEVEL)
    with pytest.raises(DataError, match="train: folder not found"):
        list(SiimAdapter().records(tmp_path))


def test_study_folder_linking_outside_the_root_is_refused(root: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    write_dicom(outside / "series" / "0099aa00bb11.dcm", patient_id="x")
    (root / "train" / NO_FILES).symlink_to(outside)
    records = {Path(r.image).stem: r for r in SiimAdapter().records(root)}
    assert "outside the dataset folder" in str(records["0099aa00bb11"].refused)


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError):
        SiimAdapter.Options(mapping="covid")
    for field in SiimAdapter.Options.model_fields.values():
        assert field.description and not field.is_required()
    registered: list[type] = []
    siim.register_datasets(registered.append)
    assert registered == [SiimAdapter]
