"""The medmnist adapter reads official PneumoniaMNIST / ChestMNIST .npz files; never downloads."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import medmnist
from cxraug.plugins.datasets.medmnist import CHEST_FINDINGS, MedMnistAdapter
from cxraug.testing import check_dataset_adapter

#: Per split: (normal, pneumonia), from shared/data/README.md.
PNEUMONIAMNIST_COUNTS = {"train": (1214, 3494), "val": (135, 389), "test": (234, 390)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test may reach the network or the real ~/.medmnist: HOME is a fresh folder."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def adapter(**options: object) -> MedMnistAdapter:
    return MedMnistAdapter(MedMnistAdapter.Options(**options))


def counts(records: list[Record]) -> Counter[tuple[str | None, str]]:
    return Counter((r.split, r.label) for r in records)


def fake_npz(path: Path, labels: dict[str, np.ndarray], size: int = 4, **extra: object) -> Path:
    arrays: dict[str, object] = {}
    for split, rows in labels.items():
        n = len(rows)
        arrays[f"{split}_images"] = np.arange(n * size * size, dtype=np.uint8).reshape(n, size, size)
        arrays[f"{split}_labels"] = np.asarray(rows, dtype=np.uint8)
    arrays.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def chest_row(*findings: str) -> list[int]:
    return [int(name in findings) for name in CHEST_FINDINGS]


def pneumonia_npz(path: Path) -> Path:
    return fake_npz(path, {"train": [[0], [1], [1]], "val": [[0]], "test": [[1], [0]]})


def test_real_pneumoniamnist_file_by_path(shared_data: Path) -> None:
    npz = shared_data / "pneumoniamnist.npz"
    source = adapter()
    records = check_dataset_adapter(source, npz)
    got = counts(records)
    for split, (normal, pneumonia) in PNEUMONIAMNIST_COUNTS.items():
        assert got[(split, "normal")] == normal and got[(split, "pneumonia")] == pneumonia
    assert len(records) == 5856
    first = records[0]
    assert isinstance(first.image, np.ndarray)
    assert first.image.shape == (28, 28) and first.image.dtype == np.uint8
    assert first.original == "pneumoniamnist.npz:train[0]"
    assert all(r.patient_id is None and r.source == "medmnist" for r in records)
    notes = " ".join(source.notes())
    assert "no patient ids" in notes and "test 234 normal / 390 pneumonia" in notes


def test_root_may_be_the_folder_holding_the_file(shared_data: Path) -> None:
    assert len(list(adapter().records(shared_data))) == 5856


def test_chestmnist_keeps_normal_and_pneumonia_rows_and_counts_the_rest(tmp_path: Path) -> None:
    fake_npz(
        tmp_path / "chestmnist_64.npz",
        {
            "train": [chest_row(), chest_row("pneumonia"), chest_row("effusion"), chest_row()],
            "val": [chest_row("pneumonia", "effusion"), chest_row("mass", "nodule")],
            "test": [chest_row("hernia")],
        },
    )
    source = adapter(flag="chestmnist", size=64)
    records = list(source.records(tmp_path))
    assert [(r.original, r.label) for r in records] == [
        ("chestmnist_64.npz:train[0]", "normal"),
        ("chestmnist_64.npz:train[1]", "pneumonia"),
        ("chestmnist_64.npz:train[3]", "normal"),
        ("chestmnist_64.npz:val[0]", "pneumonia"),
    ]
    assert np.array_equal(records[2].image, np.arange(48, 64, dtype=np.uint8).reshape(4, 4))
    assert "skipped 3 ChestMNIST rows" in " ".join(source.notes())
    assert "train 1, val 1, test 1" in " ".join(source.notes())


def test_cached_file_is_used_without_root(_offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pneumonia_npz(_offline / ".medmnist" / "pneumoniamnist.npz")
    monkeypatch.setattr(medmnist, "download", lambda url, dest: pytest.fail("downloaded"))
    records = list(adapter().records(None))
    assert counts(records) == {
        ("train", "normal"): 1,
        ("train", "pneumonia"): 2,
        ("val", "normal"): 1,
        ("test", "pneumonia"): 1,
        ("test", "normal"): 1,
    }


def test_offline_download_says_where_to_get_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(medmnist, "download", offline)
    with pytest.raises(DataError) as caught:
        list(adapter().records(None))
    message = str(caught.value)
    assert "could not download pneumoniamnist.npz" in message
    assert "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1" in message
    assert "--root path/to/pneumoniamnist.npz" in message
    assert "Temporary failure in name resolution" in message


def test_medmnist_plus_sizes_have_their_own_file_names(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def offline(url: str, dest: Path) -> None:
        asked.append(url)
        raise OSError("no network")

    monkeypatch.setattr(medmnist, "download", offline)
    with pytest.raises(DataError, match="chestmnist_224.npz"):
        adapter(flag="chestmnist", size=224).records(None)
    assert asked == ["https://zenodo.org/records/10519652/files/chestmnist_224.npz?download=1"]


def test_no_download_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(medmnist, "download", lambda url, dest: pytest.fail("downloaded"))
    with pytest.raises(DataError, match="download=false"):
        adapter(download=False).records(None)


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self.fail_after = fail_after

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise OSError("connection reset")
        return super().read(min(n, 1000))


def test_download_renames_only_a_complete_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload = pneumonia_npz(tmp_path / "served.npz").read_bytes()
    dest = tmp_path / "cache" / "pneumoniamnist.npz"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(payload, 1000))
    with pytest.raises(OSError, match="connection reset"):
        medmnist.download("https://example.invalid/x.npz", dest)
    assert list(dest.parent.iterdir()) == []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(payload))
    monkeypatch.setitem(medmnist.PUBLISHED_MD5, dest.name, hashlib.md5(payload).hexdigest())
    medmnist.download("https://example.invalid/x.npz", dest)
    assert dest.read_bytes() == payload
    assert list(dest.parent.iterdir()) == [dest]


def test_download_with_another_checksum_is_deleted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A complete download that is not the published file (a proxy's error page, a changed record)
    is refused and removed, so the next run does not read it from the cache."""
    payload = pneumonia_npz(tmp_path / "served.npz").read_bytes()
    dest = tmp_path / "cache" / "pneumoniamnist.npz"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(payload))
    with pytest.raises(DataError, match="not the published 28209eda62fecd6e6a2d98b1501bb15f; it was deleted"):
        medmnist.download("https://example.invalid/pneumoniamnist.npz", dest)
    assert list(dest.parent.iterdir()) == []


def test_published_checksums_are_medmnists_own() -> None:
    """Spot checks against MedMNIST 3.0.2 medmnist/info.py, and one entry per file the adapter reads."""
    assert medmnist.PUBLISHED_MD5["pneumoniamnist.npz"] == "28209eda62fecd6e6a2d98b1501bb15f"
    assert medmnist.PUBLISHED_MD5["chestmnist_224.npz"] == "45bd33e6f06c3e8cdb481c74a89152aa"
    names = {medmnist.file_name(f, s) for f in ("pneumoniamnist", "chestmnist") for s in medmnist.SIZES}
    assert set(medmnist.PUBLISHED_MD5) == names


def test_a_local_copy_that_is_not_the_release_is_read_and_said(shared_data: Path) -> None:
    """The shared PneumoniaMNIST holds the official images with the training rows reordered, so its
    md5 differs from the release's: it is still read, and the report says it is not the release."""
    source = adapter()
    assert len(list(source.records(shared_data / "pneumoniamnist.npz"))) == 5856
    note = source.notes()[-1]
    assert "md5 238a40f8f78b9a61dfdd21e86aac35f9 is NOT the published pneumoniamnist.npz" in note


def test_the_published_file_is_named_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = pneumonia_npz(tmp_path / "pneumoniamnist.npz")
    monkeypatch.setitem(medmnist.PUBLISHED_MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    source = adapter()
    list(source.records(path))
    assert source.notes()[-1].endswith("the published pneumoniamnist.npz")


def test_not_an_npz_is_a_data_error(tmp_path: Path) -> None:
    text = tmp_path / "pneumoniamnist.npz"
    text.write_text("<html>Too many requests</html>")
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz: not a readable \.npz"):
        adapter().records(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="not an .npz archive"):
        adapter().records(single)


def test_missing_key_is_named(tmp_path: Path) -> None:
    npz = tmp_path / "partial.npz"
    np.savez(npz, train_images=np.zeros((1, 4, 4), np.uint8), train_labels=np.zeros((1, 1)))
    with pytest.raises(DataError, match=r"partial\.npz: missing key 'val_images'"):
        adapter().records(npz)


def test_wrong_flag_is_explained(tmp_path: Path) -> None:
    npz = fake_npz(tmp_path / "c.npz", {s: [chest_row()] for s in ("train", "val", "test")})
    with pytest.raises(DataError, match="pass --opt flag=chestmnist"):
        adapter().records(npz)


def test_bad_label_value_is_named(tmp_path: Path) -> None:
    npz = fake_npz(tmp_path / "p.npz", {"train": [[0], [2]], "val": [[0]], "test": [[1]]})
    with pytest.raises(DataError, match=r"train_labels\[1\] is \[2\]"):
        adapter().records(npz)


def test_mismatched_rows_are_reported(tmp_path: Path) -> None:
    npz = fake_npz(
        tmp_path / "p.npz",
        {"train": [[0]], "val": [[0]], "test": [[1]]},
        test_labels=np.zeros((3, 1), np.uint8),
    )
    with pytest.raises(DataError, match="test_labels has 3 rows but test_images has 1"):
        adapter().records(npz)


def test_folder_without_the_file_lists_what_it_holds(tmp_path: Path) -> None:
    pneumonia_npz(tmp_path / "mine.npz")
    with pytest.raises(DataError, match="holds mine.npz; choose one with --opt file=NAME"):
        adapter().records(tmp_path)
    assert len(list(adapter(file="mine.npz").records(tmp_path))) == 6
    with pytest.raises(DataError, match="no such file or folder"):
        adapter().records(tmp_path / "nope")


@pytest.mark.parametrize(("options", "message"), [({"size": 32}, "size"), ({"flag": "x"}, "flag")])
def test_bad_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MedMnistAdapter.Options(**options)


def test_registered_by_its_hook() -> None:
    registered: list[type] = []
    medmnist.register_datasets(registered.append)
    assert registered == [MedMnistAdapter] and MedMnistAdapter.needs_root is False
    for name, field in MedMnistAdapter.Options.model_fields.items():
        assert field.description, f"option {name} has no description"


def test_file_option_may_not_leave_the_root_folder(tmp_path: Path) -> None:
    pneumonia_npz(tmp_path / "elsewhere" / "x.npz")
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match=r"file=../elsewhere/x.npz: .* points outside .*--root path/to"):
        adapter(file="../elsewhere/x.npz").records(tmp_path / "root")
    assert len(list(adapter().records(tmp_path / "elsewhere" / "x.npz"))) == 6
