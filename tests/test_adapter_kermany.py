"""The kermany adapter reads chest_xray/{train,val,test}/{NORMAL,PNEUMONIA} as Kaggle ships it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import kermany
from cxraug.plugins.datasets.kermany import KermanyAdapter, parse_name


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 100).save(path, format="PNG")


def summary(records: list[Record]) -> list[tuple]:
    return [(r.original, r.label, r.patient_id, r.split) for r in records]


FILES = (
    "train/NORMAL/IM-0115-0001.jpeg",
    "train/NORMAL/NORMAL2-IM-1427-0001.jpeg",
    "train/PNEUMONIA/person1_bacteria_1.jpeg",
    "train/PNEUMONIA/person1_virus_6.jpeg",
    "train/PNEUMONIA/person2_3.jpeg",
    "val/NORMAL/NORMAL2-IM-1431-0001.jpeg",
    "test/PNEUMONIA/person100_bacteria_475.jpeg",
)
EXPECTED = [
    ("train/NORMAL/IM-0115-0001.jpeg", "normal", "IM-0115", "train"),
    ("train/NORMAL/NORMAL2-IM-1427-0001.jpeg", "normal", "NORMAL2-IM-1427", "train"),
    ("train/PNEUMONIA/person1_bacteria_1.jpeg", "pneumonia_bacterial", "person1", "train"),
    ("train/PNEUMONIA/person1_virus_6.jpeg", "pneumonia_viral", "person1", "train"),
    ("train/PNEUMONIA/person2_3.jpeg", "pneumonia", "person2", "train"),
    ("val/NORMAL/NORMAL2-IM-1431-0001.jpeg", "normal", "NORMAL2-IM-1431", "val"),
    ("test/PNEUMONIA/person100_bacteria_475.jpeg", "pneumonia_bacterial", "person100", "test"),
]


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    """The Kaggle archive: chest_xray/ with a nested duplicate chest_xray/ and __MACOSX/."""
    base = tmp_path / "chest_xray"
    for name in FILES:
        image(base / name)
        image(base / "chest_xray" / name)
        image(base / "__MACOSX" / "chest_xray" / name)
    (base / "train" / "NORMAL" / ".DS_Store").write_bytes(b"")
    return tmp_path


def test_reads_the_parent_of_chest_xray(kaggle: Path) -> None:
    adapter = KermanyAdapter()
    records = list(adapter.records(kaggle))
    assert summary(records) == [(f"chest_xray/{o}", *rest) for o, *rest in EXPECTED]
    assert all(r.source == "kermany" and r.view is None for r in records)
    assert records[0].image == kaggle / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"
    assert adapter.notes() == [
        "ignored chest_xray/chest_xray/, the Kaggle archive's duplicate copy",
        "1 pneumonia images name neither bacteria nor virus, labelled pneumonia: "
        "chest_xray/train/PNEUMONIA/person2_3.jpeg",
        "the official val split holds only 1 images",
    ]


def test_reads_chest_xray_itself(kaggle: Path) -> None:
    assert summary(list(KermanyAdapter().records(kaggle / "chest_xray"))) == EXPECTED


def test_only_the_nested_copy(tmp_path: Path) -> None:
    for name in FILES:
        image(tmp_path / "chest_xray" / "chest_xray" / name)
    records = list(KermanyAdapter().records(tmp_path))
    assert [r.original for r in records][0] == "chest_xray/chest_xray/train/NORMAL/IM-0115-0001.jpeg"
    assert len(records) == len(FILES)


def test_without_subtypes(kaggle: Path) -> None:
    adapter = KermanyAdapter(KermanyAdapter.Options(subtypes=False))
    labels = [r.label for r in adapter.records(kaggle / "chest_xray")]
    assert labels == ["normal"] * 2 + ["pneumonia"] * 3 + ["normal", "pneumonia"]
    assert not any("neither bacteria nor virus" in note for note in adapter.notes())


def test_mendeley_layout(tmp_path: Path) -> None:
    base = tmp_path / "ZhangLabData" / "CellData" / "chest_xray"
    image(base / "train" / "NORMAL" / "NORMAL-1003233-0001.jpeg")
    image(base / "train" / "PNEUMONIA" / "BACTERIA-1008087-0001.jpeg")
    image(base / "test" / "PNEUMONIA" / "VIRUS-1005223-0001.jpeg")
    image(tmp_path / "ZhangLabData" / "CellData" / "OCT" / "train" / "CNV" / "CNV-1-1.jpeg")
    assert [(r.label, r.patient_id, r.split) for r in KermanyAdapter().records(tmp_path)] == [
        ("normal", "1003233", "train"),
        ("pneumonia_bacterial", "1008087", "train"),
        ("pneumonia_viral", "1005223", "test"),
    ]


@pytest.mark.parametrize(
    ("stem", "pneumonia", "expected"),
    [
        ("person1_bacteria_1", True, ("person1", "bacteria")),
        ("person1000_Virus_1681", True, ("person1000", "virus")),
        ("person7_5", True, ("person7", None)),
        ("IM-0115-0001", False, ("IM-0115", None)),
        ("NORMAL2-IM-1427-0001", False, ("NORMAL2-IM-1427", None)),
        ("scan", False, (None, None)),
    ],
)
def test_parse_name(stem: str, pneumonia: bool, expected: tuple) -> None:
    assert parse_name(stem, pneumonia) == expected


def test_image_without_patient_id_is_noted(tmp_path: Path) -> None:
    image(tmp_path / "train" / "NORMAL" / "scan.png")
    adapter = KermanyAdapter()
    assert [r.patient_id for r in adapter.records(tmp_path)] == [None]
    assert adapter.notes() == ["1 images have no patient id in their name: train/NORMAL/scan.png"]


def test_no_dataset_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(KermanyAdapter().records(tmp_path / "nope"))
    image(tmp_path / "train" / "other" / "a.png")
    with pytest.raises(DataError) as err:
        list(KermanyAdapter().records(tmp_path))
    assert str(tmp_path) in str(err.value) and "--root" in str(err.value)


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError):
        KermanyAdapter.Options(subtype=False)
    for field in KermanyAdapter.Options.model_fields.values():
        assert field.description and not field.is_required()
    registered: list[type] = []
    kermany.register_datasets(registered.append)
    assert registered == [KermanyAdapter]


def test_links_out_of_the_root_are_refused_or_not_walked(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    image(outside / "secret.png")
    image(outside / "folder" / "person9_virus_1.jpeg")
    base = root / "chest_xray"
    image(base / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    (base / "train" / "NORMAL" / "IM-0002-0001.jpeg").symlink_to(outside / "secret.png")
    (base / "train" / "PNEUMONIA").symlink_to(outside / "folder", target_is_directory=True)
    adapter = KermanyAdapter()
    records = list(adapter.records(root))
    assert [(r.original, r.refused is None) for r in records] == [
        ("chest_xray/train/NORMAL/IM-0001-0001.jpeg", True),
        ("chest_xray/train/NORMAL/IM-0002-0001.jpeg", False),
    ]
    assert "is a link to" in str(records[1].refused)
    assert f"ignored folders that are links out of {root}: chest_xray/train/PNEUMONIA" in adapter.notes()
