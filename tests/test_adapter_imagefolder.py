"""The imagefolder adapter reads class-per-folder trees, with or without split folders."""

from __future__ import annotations

from pathlib import Path

import pytest
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
        ("No Finding", "normal"),
        ("no_finding", "normal"),
        ("Virus", "pneumonia_viral"),
        ("pneumonia_bacterial", "pneumonia_bacterial"),
        ("lung opacity", "lung_opacity"),
        ("Tuberculosis", None),
    ],
)
def test_aliases(name: str, label: str | None) -> None:
    assert alias(name) == label


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError, match="unknown label 'tb'"):
        ImageFolderAdapter.Options(label_map={"TB": "tb"})
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
