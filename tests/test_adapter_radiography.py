"""The radiography adapter reads every release of the Kaggle COVID-19 Radiography Database."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import radiography
from cxraug.plugins.datasets.radiography import NO_PATIENT_IDS, RadiographyAdapter


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 100).save(path, format="PNG")


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image")


def summary(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.original, r.label) for r in records]


def test_version_1_layout(tmp_path: Path) -> None:
    image(tmp_path / "COVID-19" / "COVID-19(1).png")
    image(tmp_path / "COVID-19" / "COVID-19(10).PNG")
    image(tmp_path / "NORMAL" / "NORMAL (1).png")
    image(tmp_path / "Viral Pneumonia" / "Viral Pneumonia (1).jpg")
    touch(tmp_path / "COVID-19.metadata.xlsx")
    touch(tmp_path / "NORMAL" / "NORMAL.metadata.xlsx")
    touch(tmp_path / "COVID-19" / ".DS_Store")
    adapter = RadiographyAdapter()
    records = list(adapter.records(tmp_path))
    assert summary(records) == [
        ("COVID-19/COVID-19(1).png", "covid"),
        ("COVID-19/COVID-19(10).PNG", "covid"),
        ("NORMAL/NORMAL (1).png", "normal"),
        ("Viral Pneumonia/Viral Pneumonia (1).jpg", "pneumonia_viral"),
    ]
    assert all(
        r.patient_id is None and r.split is None and r.view is None and r.source == "radiography"
        for r in records
    )
    assert records[0].image == tmp_path / "COVID-19" / "COVID-19(1).png"
    assert adapter.notes() == [NO_PATIENT_IDS]
    assert "no patient ids" in NO_PATIENT_IDS


def later_release(base: Path) -> None:
    for folder in ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"):
        image(base / folder / "images" / f"{folder}-1.png")
        image(base / folder / "masks" / f"{folder}-1.png")
        touch(base / f"{folder}.metadata.xlsx")
    image(base / "COVID" / "images" / "COVID-2.png")
    touch(base / "README.md.txt")


LATER = [
    ("COVID/images/COVID-1.png", "covid"),
    ("COVID/images/COVID-2.png", "covid"),
    ("Lung_Opacity/images/Lung_Opacity-1.png", "lung_opacity"),
    ("Normal/images/Normal-1.png", "normal"),
    ("Viral Pneumonia/images/Viral Pneumonia-1.png", "pneumonia_viral"),
]


def test_later_layout_ignores_masks(tmp_path: Path) -> None:
    later_release(tmp_path)
    assert summary(list(RadiographyAdapter().records(tmp_path))) == LATER


@pytest.mark.parametrize("wrappers", [["COVID-19_Radiography_Dataset"], ["archive", "data"]])
def test_wrapping_folders(tmp_path: Path, wrappers: list[str]) -> None:
    base = tmp_path.joinpath(*wrappers)
    later_release(base)
    (tmp_path / ".cache").mkdir()
    prefix = "/".join(wrappers)
    records = list(RadiographyAdapter().records(tmp_path))
    assert summary(records) == [(f"{prefix}/{name}", label) for name, label in LATER]


def test_unknown_folders_are_noted(tmp_path: Path) -> None:
    later_release(tmp_path)
    image(tmp_path / "extras" / "x.png")
    adapter = RadiographyAdapter()
    assert len(list(adapter.records(tmp_path))) == len(LATER)
    assert adapter.notes()[-1] == "ignored folders that are not classes: extras"


def test_no_dataset_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(RadiographyAdapter().records(tmp_path / "nope"))
    image(tmp_path / "one" / "a.png")
    image(tmp_path / "two" / "b.png")
    with pytest.raises(DataError) as err:
        list(RadiographyAdapter().records(tmp_path))
    assert str(tmp_path) in str(err.value) and "--root" in str(err.value)


def test_registration() -> None:
    registered: list[type] = []
    radiography.register_datasets(registered.append)
    assert registered == [RadiographyAdapter]
    assert RadiographyAdapter.Options().model_dump() == {}


def test_links_out_of_the_root_are_refused_or_not_walked(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    image(outside / "secret.png")
    image(outside / "folder" / "also-secret.png")
    image(root / "COVID" / "images" / "COVID-1.png")
    (root / "COVID" / "images" / "COVID-2.png").symlink_to(outside / "secret.png")
    (root / "Normal").symlink_to(outside / "folder", target_is_directory=True)
    adapter = RadiographyAdapter()
    records = list(adapter.records(root))
    assert [(r.original, r.refused is None) for r in records] == [
        ("COVID/images/COVID-1.png", True),
        ("COVID/images/COVID-2.png", False),
    ]
    assert "is a link to" in str(records[1].refused)
    assert f"ignored folders that are links out of {root}: Normal" in adapter.notes()
