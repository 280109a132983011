"""The covidx adapter reads COVIDx label files exactly as COVID-Net and Kaggle ship them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import covidx
from cxraug.plugins.datasets.covidx import CovidxAdapter


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 100).save(path, format="PNG")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def summary(records: list[Record]) -> list[tuple]:
    return [(r.original, r.label, r.patient_id, r.split, r.extra) for r in records]


@pytest.fixture
def v5(tmp_path: Path) -> Path:
    """COVIDx5-style: train_/test_COVIDx5.txt, ids with spaces, CRLF, a missing image."""
    write(
        tmp_path / "train_COVIDx5.txt",
        "1 a.png COVID-19 cohen\n"
        "ARDS Severe 12 b.jpg normal rsna\n"
        "\n"
        "3 c.JPEG pneumonia\n"
        "4 gone.png normal rsna\n"
        "   \n",
    )
    write(tmp_path / "test_COVIDx5.txt", "5 d.png covid sirm\r\n6  e.png  Normal\tsirm\r\n\r\n")
    for name in ("train/a.png", "train/b.jpg", "train/c.JPEG", "test/d.png", "test/e.png"):
        image(tmp_path / name)
    write(tmp_path / "README.txt", "not a label file\n")
    return tmp_path


def test_reads_train_and_test_with_spaces_in_ids_and_crlf(v5: Path) -> None:
    adapter = CovidxAdapter()
    records = list(adapter.records(v5))
    assert summary(records) == [
        ("train/a.png", "covid", "1", "train", {"source": "cohen"}),
        ("train/b.jpg", "normal", "ARDS Severe 12", "train", {"source": "rsna"}),
        ("train/c.JPEG", "pneumonia", "3", "train", {}),
        ("test/d.png", "covid", "5", "test", {"source": "sirm"}),
        ("test/e.png", "normal", "6", "test", {"source": "sirm"}),
    ]
    assert all(r.source == "covidx" and r.view is None for r in records)
    assert records[0].image == v5 / "train" / "a.png"
    assert adapter.notes() == [
        "1 rows in train_COVIDx5.txt point to missing files in train/, skipped: gone.png"
    ]


def test_binary_positive_negative_with_val_split(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "p1 x.png positive bimcv\np2 y.png negative rsna\n")
    write(tmp_path / "val.txt", "p3 v.png negative rsna\n")
    write(tmp_path / "test.txt", "p4 t.png positive ricord\n")
    for name in ("train/x.png", "train/y.png", "val/v.png", "test/t.png"):
        image(tmp_path / name)
    records = list(CovidxAdapter().records(tmp_path))
    assert [(r.original, r.label, r.split) for r in records] == [
        ("train/x.png", "covid", "train"),
        ("train/y.png", "normal", "train"),
        ("val/v.png", "normal", "val"),
        ("test/t.png", "covid", "test"),
    ]


def test_missing_files_listed_at_most_ten(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "".join(f"{i} m{i:02d}.png normal\n" for i in range(12)))
    (tmp_path / "train").mkdir()
    adapter = CovidxAdapter()
    assert list(adapter.records(tmp_path)) == []
    (note,) = adapter.notes()
    assert note.startswith("12 rows in train.txt point to missing files")
    assert "m09.png" in note and "m10.png" not in note and note.endswith("and 2 more")


def test_ambiguous_label_files_name_candidates(tmp_path: Path) -> None:
    write(tmp_path / "train_COVIDx8B.txt", "1 a.png normal\n")
    write(tmp_path / "train_COVIDx9A.txt", "1 a.png normal\n")
    image(tmp_path / "train" / "a.png")
    with pytest.raises(DataError) as err:
        list(CovidxAdapter().records(tmp_path))
    message = str(err.value)
    assert "train_COVIDx8B.txt" in message and "train_COVIDx9A.txt" in message
    assert "--opt train_file=" in message
    chosen = CovidxAdapter(CovidxAdapter.Options(train_file="train_COVIDx9A.txt"))
    assert [r.original for r in chosen.records(tmp_path)] == ["train/a.png"]


def test_empty_string_skips_a_split(v5: Path) -> None:
    adapter = CovidxAdapter(CovidxAdapter.Options(test_file=""))
    assert {r.split for r in adapter.records(v5)} == {"train"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("2 b.png tuberculosis rsna", "unknown label 'tuberculosis'"),
        ("2 b.png", "0 fields after the file name"),
        ("2 b.png normal rsna extra", "3 fields after the file name"),
        ("2 3 normal", "no image file name"),
        ("b.png normal", "starts with the file name"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    label_file = write(tmp_path / "train.txt", f"1 a.png normal\r\n{line}\r\n")
    image(tmp_path / "train" / "a.png")
    image(tmp_path / "train" / "b.png")
    with pytest.raises(DataError) as err:
        list(CovidxAdapter().records(tmp_path))
    assert f"{label_file}:2: " in str(err.value)
    assert problem in str(err.value)


def test_missing_root_label_files_and_image_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(CovidxAdapter().records(tmp_path / "nope"))
    with pytest.raises(DataError, match="needs --root"):
        list(CovidxAdapter().records(None))
    with pytest.raises(DataError, match="no COVIDx label files"):
        list(CovidxAdapter().records(tmp_path))
    write(tmp_path / "test.txt", "1 a.png normal\n")
    with pytest.raises(DataError, match=r"test: image folder for test\.txt not found"):
        list(CovidxAdapter().records(tmp_path))
    with pytest.raises(DataError, match="train_file not found"):
        list(CovidxAdapter(CovidxAdapter.Options(train_file="other.txt")).records(tmp_path))


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError):
        CovidxAdapter.Options(train="x.txt")
    for field in CovidxAdapter.Options.model_fields.values():
        assert field.description and not field.is_required()
    registered: list[type] = []
    covidx.register_datasets(registered.append)
    assert registered == [CovidxAdapter]
    assert CovidxAdapter.name == "covidx" and "\n" not in CovidxAdapter.description


def test_rows_leaving_the_root_are_refused_with_file_and_line(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    image(outside / "secret.png")
    image(root / "train" / "ok.png")
    (root / "train" / "link.png").symlink_to(outside / "secret.png")
    labels = write(
        root / "train.txt",
        "P1 ok.png normal\n"
        "P900 ../../outside/secret.png pneumonia\n"
        "P901 /abs/x.png pneumonia\n"
        "P902 link.png covid\n",
    )
    records = list(CovidxAdapter().records(root))
    assert [(r.original, r.label, r.refused is None) for r in records] == [
        ("train/ok.png", "normal", True),
        ("train/../../outside/secret.png", "pneumonia", False),
        ("/abs/x.png", "pneumonia", False),
        ("train/link.png", "covid", False),
    ]
    assert records[1].refused == (
        f"{labels}:2: 'train/../../outside/secret.png' points outside the dataset folder {root}; refused"
    )
    assert str(records[2].refused).startswith(f"{labels}:3: '/abs/x.png' points outside")
    assert str(records[3].refused).startswith(f"{labels}:4: 'train/link.png' is a link to {outside}")


def test_label_file_outside_the_root_is_an_error(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    image(root / "train" / "a.png")
    write(outside / "train.txt", "P1 a.png normal\n")
    with pytest.raises(DataError, match=r"--opt train_file=../outside/train.txt: .* points outside"):
        list(CovidxAdapter(CovidxAdapter.Options(train_file="../outside/train.txt")).records(root))
    (root / "train.txt").symlink_to(outside / "train.txt")
    with pytest.raises(DataError, match=r"train label file: 'train.txt' is a link to .*outside"):
        list(CovidxAdapter().records(root))
