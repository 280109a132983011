"""MedMNIST: PneumoniaMNIST and ChestMNIST as the official ``.npz`` files, downloaded on request."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from cxraug import hookimpl
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.fileio import check_online
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import NORMAL, PNEUMONIA

logger = logging.getLogger(__name__)

#: The Zenodo record holding MedMNIST v2/v3 and the MedMNIST+ larger sizes.
ZENODO_FILES = "https://zenodo.org/records/10519652/files"
SIZES: tuple[int, ...] = (28, 64, 128, 224)
SPLITS: tuple[str, ...] = ("train", "val", "test")
KEYS: tuple[str, ...] = tuple(f"{split}_{part}" for split in SPLITS for part in ("images", "labels"))

#: ChestMNIST label columns (NIH ChestX-ray14 findings), in file order.
CHEST_FINDINGS: tuple[str, ...] = (
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural",
    "hernia",
)
#: The published MD5 of every file this adapter reads, by file name: MedMNIST's own table
#: (``INFO[flag]["MD5"]`` / ``["MD5_64"]`` ... in medmnist/info.py, MedMNIST 3.0.2), which the
#: ``medmnist`` package checks its downloads against.
PUBLISHED_MD5: dict[str, str] = {
    "pneumoniamnist.npz": "28209eda62fecd6e6a2d98b1501bb15f",
    "pneumoniamnist_64.npz": "8f4eceb4ccffa70c672198ea285246c6",
    "pneumoniamnist_128.npz": "05b46931834c231683c68f40c47b2971",
    "pneumoniamnist_224.npz": "d6a3c71de1b945ea11211b03746c1fe1",
    "chestmnist.npz": "02c8a6516a18b556561a56cbdd36c4a8",
    "chestmnist_64.npz": "9de6cd0b934ebb5b7426cfba5efbae16",
    "chestmnist_128.npz": "db107e5590b27930b62dbaf558aebee3",
    "chestmnist_224.npz": "45bd33e6f06c3e8cdb481c74a89152aa",
}
LABEL_COLUMNS: dict[str, int] = {"pneumoniamnist": 1, "chestmnist": len(CHEST_FINDINGS)}


def file_name(flag: str, size: int) -> str:
    """The official file name: ``pneumoniamnist.npz`` at 28 px, ``pneumoniamnist_64.npz`` etc."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def download_url(name: str) -> str:
    return f"{ZENODO_FILES}/{name}?download=1"


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def checksum_note(path: Path, official: str) -> str:
    """Whether ``path`` is the published ``official`` file, for the report (a local copy that differs
    is still read: re-saved or reordered copies hold the same images, but the figures then come from
    a file nobody else can check against the release)."""
    expected = PUBLISHED_MD5.get(official)
    if expected is None:
        return f"{path.name}: no published checksum for {official}"
    actual = file_md5(path)
    if actual == expected:
        return f"{path.name}: md5 {actual}, the published {official}"
    logger.warning("%s: md5 %s is not the published %s (%s)", path, actual, official, expected)
    return (
        f"{path.name}: md5 {actual} is NOT the published {official} ({expected}); results cannot be "
        "compared with the official release's byte for byte (a re-saved or reordered copy?)"
    )


def cache_dir() -> Path:
    """Where the ``medmnist`` package keeps its files, so both share one download."""
    return Path.home() / ".medmnist"


def download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` under a temporary name, renamed only once complete."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from cxraug.ui import console

    check_online(url)
    expected = PUBLISHED_MD5.get(dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            columns = (
                TextColumn("[bold blue]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task(f"downloading {dest.name}", total=int(length or 0) or None)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    progress.update(task, advance=len(chunk))
        actual = file_md5(Path(partial))
        if expected is not None and actual != expected:
            raise DataError(
                f"{url}: the download's md5 is {actual}, not the published {expected}; it was "
                "deleted. Try again, or download it by hand and pass --root"
            )
        os.replace(partial, dest)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


class MedMnistOptions(PluginOptions):
    """Options of the ``medmnist`` dataset adapter."""

    flag: Literal["pneumoniamnist", "chestmnist"] = Field(
        default="pneumoniamnist",
        description="which MedMNIST dataset: pneumoniamnist|chestmnist",
    )
    size: Literal[28, 64, 128, 224] = Field(
        default=28,
        description="image size of the file to fetch: 28, 64, 128 or 224 (MedMNIST+)",
    )
    file: str | None = Field(
        default=None,
        description="the .npz to read, absolute or relative to --root / ~/.medmnist "
        "(default: FLAG.npz, or FLAG_SIZE.npz above 28 px)",
    )
    download: bool = Field(
        default=True,
        description="without --root, download the official file into ~/.medmnist if missing",
    )


class MedMnistAdapter(DatasetAdapter[MedMnistOptions]):
    """MedMNIST v2 PneumoniaMNIST or ChestMNIST, one ``.npz`` file with the official splits.

    PneumoniaMNIST holds pediatric chest X-rays (Kermany et al., Cell 2018) labelled normal or
    pneumonia; ChestMNIST holds NIH ChestX-ray14 images with 14 findings, of which rows with no
    finding become ``normal`` and rows with pneumonia become ``pneumonia`` (others are skipped).

    Citation: Yang, J., Shi, R., Wei, D. et al. "MedMNIST v2 - A large-scale lightweight benchmark
    for 2D and 3D biomedical image classification." Scientific Data 10, 41 (2023).
    https://doi.org/10.1038/s41597-022-01721-8 (data licence CC BY 4.0).

    Download: https://zenodo.org/records/10519652 (``pneumoniamnist.npz``, ``chestmnist.npz`` and
    the MedMNIST+ sizes ``{flag}_{64,128,224}.npz``); see https://medmnist.com
    """

    name: ClassVar[str] = "medmnist"
    description: ClassVar[str] = "MedMNIST PneumoniaMNIST / ChestMNIST .npz files (auto-download)"
    #: Source: MedMNIST v2, Sci Data 2023, doi:10.1038/s41597-022-01721-8.
    license: ClassVar[str] = "CC BY 4.0"
    needs_root: ClassVar[bool] = False

    Options: ClassVar[type[MedMnistOptions]] = MedMnistOptions

    def __init__(self, options: MedMnistOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        """Check the whole file first, so a bad file fails before any record is used."""
        options = self.options
        path = self._locate(root)
        arrays = _load(path)
        labels = {split: _labels(path, split, arrays[f"{split}_labels"], options.flag) for split in SPLITS}
        official = file_name(options.flag, options.size)
        self._notes = [*_describe(path, arrays, labels, options.flag), checksum_note(path, official)]
        return self._iterate(path.name, arrays, labels)

    def _iterate(
        self, name: str, arrays: dict[str, np.ndarray], labels: dict[str, list[str | None]]
    ) -> Iterator[Record]:
        for split in SPLITS:
            images = arrays[f"{split}_images"]
            for i, label in enumerate(labels[split]):
                if label is None:
                    continue
                yield Record(
                    image=images[i],
                    label=label,
                    source=self.name,
                    original=f"{name}:{split}[{i}]",
                    split=split,
                )

    def _locate(self, root: Path | None) -> Path:
        """The .npz to read: ``root`` itself, a file in the ``root`` folder, or the cache."""
        options = self.options
        default_name = file_name(options.flag, options.size)
        wanted = Path(options.file).expanduser() if options.file else Path(default_name)
        if root is not None:
            root = Path(root).expanduser()
            if root.is_file():
                if options.file:
                    logger.warning("medmnist: --root is a file, so file=%s is ignored", options.file)
                return root
            if not root.is_dir():
                raise DataError(
                    f"--root {root}: no such file or folder; pass the {default_name} file or the "
                    "folder holding it"
                )
            path = root / wanted
            escape = DatasetRoot(root).escapes(path)
            if escape:
                raise DataError(f"file={options.file}: {escape}; pass --root path/to/the/file.npz instead")
            if path.is_file():
                return path
            present = sorted(p.name for p in root.glob("*.npz"))
            hint = f" (it holds {', '.join(present)}; choose one with --opt file=NAME)" if present else ""
            raise DataError(
                f"{path}: not found{hint}; pass --root path/to/{default_name}, or leave out --root "
                f"to download it into {cache_dir()}"
            )
        if wanted.is_absolute():
            if not wanted.is_file():
                raise DataError(f"file={options.file}: no such file; give the path of a .npz")
            return wanted
        path = cache_dir() / wanted
        if path.is_file():
            return path
        if options.file:
            raise DataError(
                f"{path}: not found; file={options.file} is looked up in {cache_dir()}, pass "
                "--root path/to/the/file.npz to read it from elsewhere"
            )
        if not options.download:
            raise DataError(
                f"{path}: not found and download=false; pass --root path/to/{default_name}, "
                "or --opt download=true to fetch it from Zenodo"
            )
        url = download_url(default_name)
        logger.info("downloading %s to %s", url, path)
        try:
            download(url, path)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataError(
                f"could not download {default_name} from {url} ({reason}); download it by hand "
                f"and pass --root path/to/{default_name} (or put it in {cache_dir()})"
            ) from None
        return path


def _load(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of a MedMNIST .npz, checked for presence, shape and dtype."""
    expected = f"a MedMNIST .npz holds {', '.join(KEYS)}"
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable .npz file ({exc}); {expected}. Download it again if it is "
            "a broken download"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive; {expected}")
    with npz:
        missing = [key for key in KEYS if key not in npz.files]
        if missing:
            raise DataError(
                f"{path}: missing key {missing[0]!r} (the file has: "
                f"{', '.join(npz.files) or 'no arrays'}); {expected}"
            )
        arrays: dict[str, np.ndarray] = {}
        for key in KEYS:
            try:
                arrays[key] = npz[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{path}: key {key!r} cannot be read ({exc})") from None
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        key = f"{split}_images"
        if images.ndim not in (3, 4) or images.dtype not in (np.uint8, np.uint16):
            raise DataError(
                f"{path}: {key} is {images.dtype} of shape {images.shape}; expected uint8 images "
                "(N, H, W) as MedMNIST ships them"
            )
        if len(labels) != len(images):
            raise DataError(
                f"{path}: {split}_labels has {len(labels)} rows but {key} has {len(images)} "
                "images; the file is damaged, download it again"
            )
    return arrays


def _labels(path: Path, split: str, raw: np.ndarray, flag: str) -> list[str | None]:
    """Canonical label per row, None for rows to skip (ChestMNIST findings other than pneumonia)."""
    key = f"{split}_labels"
    rows = raw.reshape(len(raw), -1) if raw.ndim == 1 else raw
    columns = rows.shape[1] if rows.ndim == 2 else -1
    if columns != LABEL_COLUMNS[flag]:
        other = next((f for f, n in LABEL_COLUMNS.items() if n == columns), None)
        fix = f"pass --opt flag={other}" if other else "is this a PneumoniaMNIST/ChestMNIST file?"
        raise DataError(
            f"{path}: {key} has shape {raw.shape}; flag={flag} expects (N, {LABEL_COLUMNS[flag]}) "
            f"labels; {fix}"
        )
    bad = np.flatnonzero(((rows != 0) & (rows != 1)).any(axis=1))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{path}: {key}[{row}] is {rows[row].tolist()}; MedMNIST labels are 0 or 1, so the "
            "file is not a PneumoniaMNIST/ChestMNIST file"
        )
    if flag == "pneumoniamnist":
        names = np.where(rows[:, 0] == 1, PNEUMONIA, NORMAL)
        return names.tolist()
    pneumonia = rows[:, CHEST_FINDINGS.index("pneumonia")] == 1
    clear = np.logical_not(rows.any(axis=1))
    return [
        PNEUMONIA if p else NORMAL if c else None
        for p, c in zip(pneumonia.tolist(), clear.tolist(), strict=True)
    ]


def _describe(
    path: Path,
    arrays: dict[str, np.ndarray],
    labels: dict[str, list[str | None]],
    flag: str,
) -> list[str]:
    shape = arrays["train_images"].shape[1:]
    counts = []
    for split in SPLITS:
        kept = [label for label in labels[split] if label is not None]
        counts.append(f"{split} {kept.count(NORMAL)} normal / {kept.count(PNEUMONIA)} pneumonia")
    notes = [
        f"read {path} ({'x'.join(map(str, shape))} images): {'; '.join(counts)}",
        "no patient ids in MedMNIST: the official train/val/test split of the file is kept, "
        "but images of one patient cannot be grouped or checked for leakage",
    ]
    if flag == "chestmnist":
        skipped = {s: sum(label is None for label in labels[s]) for s in SPLITS}
        notes.append(
            f"skipped {sum(skipped.values())} ChestMNIST rows with findings other than pneumonia "
            f"and no pneumonia ({', '.join(f'{s} {n}' for s, n in skipped.items())}); rows with "
            "pneumonia are kept as pneumonia even when other findings are present"
        )
    return notes


@hookimpl
def register_datasets(register: Register) -> None:
    register(MedMnistAdapter)
