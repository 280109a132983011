"""Any class-per-folder tree (torchvision ImageFolder layout), with or without split folders."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from cxraug import hookimpl
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import (
    COVID,
    LUNG_OPACITY,
    NORMAL,
    PNEUMONIA,
    PNEUMONIA_BACTERIAL,
    PNEUMONIA_VIRAL,
    VOCABULARY,
)

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jfif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".pgm",
)
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
#: Folder names (lower-cased, runs of space/_/- made one space) and the label they hold.
ALIASES: dict[str, str] = {
    "covid": COVID,
    "covid 19": COVID,
    "covid19": COVID,
    "normal": NORMAL,
    "healthy": NORMAL,
    "no finding": NORMAL,
    "pneumonia": PNEUMONIA,
    "bacterial": PNEUMONIA_BACTERIAL,
    "bacteria": PNEUMONIA_BACTERIAL,
    "bacterial pneumonia": PNEUMONIA_BACTERIAL,
    "pneumonia bacterial": PNEUMONIA_BACTERIAL,
    "viral": PNEUMONIA_VIRAL,
    "virus": PNEUMONIA_VIRAL,
    "viral pneumonia": PNEUMONIA_VIRAL,
    "pneumonia viral": PNEUMONIA_VIRAL,
    "lung opacity": LUNG_OPACITY,
}
#: How many single-subfolder wrappers (Data/train/...) to look through.
MAX_WRAPPERS = 2
MAX_LISTED = 10
NO_PATIENT_IDS = (
    "no patient ids in this source: splits are made by image, so one patient's images may land "
    "in different splits"
)


def alias(folder_name: str) -> str | None:
    """The canonical label a folder name stands for by the built-in alias table, or None."""
    return ALIASES.get(re.sub(r"[\s_\-]+", " ", folder_name.strip().lower()).strip())


class ImageFolderOptions(PluginOptions):
    """Options of the ``imagefolder`` dataset adapter."""

    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="folder name -> label for folders the built-in aliases do not know "
        "(names match case-insensitively)",
    )
    ignore: tuple[str, ...] = Field(default=(), description="folder names to skip (case-insensitive)")

    @field_validator("label_map")
    @classmethod
    def _canonical(cls, value: dict[str, str]) -> dict[str, str]:
        for folder, label in value.items():
            if label not in VOCABULARY:
                raise ValueError(
                    f"folder {folder!r}: unknown label {label!r}; valid labels are {', '.join(VOCABULARY)}"
                )
        return value


class ImageFolderAdapter(DatasetAdapter[ImageFolderOptions]):
    """Your own images in class folders: ``ROOT/CLASS/...`` or ``ROOT/{train,val,test}/CLASS/...``.

    Folder names map to labels case-insensitively (``COVID-19``, ``Normal``, ``Viral Pneumonia``,
    ``Lung_Opacity``, ...); the option ``label_map`` names the label of any other folder and
    ``ignore`` skips folders. Split folders may be ``train``, ``val``/``valid``/``validation`` and
    ``test``. Images are found by extension at any depth inside a class folder. There are no
    patient ids.

    No citation: cite the source of your images.
    """

    name: ClassVar[str] = "imagefolder"
    description: ClassVar[str] = "Any class-per-folder image tree, optionally inside train/val/test"

    Options: ClassVar[type[ImageFolderOptions]] = ImageFolderOptions

    def __init__(self, options: ImageFolderOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []
        opts = self.options
        self._label_map = {k.strip().lower(): v for k, v in opts.label_map.items()}
        self._ignore = {name.strip().lower() for name in opts.ignore}

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        self._notes = []
        if root is None:
            raise DataError("imagefolder needs --root: the folder holding the class folders")
        root = Path(root)
        if not root.exists():
            raise DataError(f"{root}: dataset root does not exist; pass --root pointing at it")
        if not root.is_dir():
            raise DataError(f"--root {root}: not a folder; pass the folder that holds one folder per class")
        dataset = DatasetRoot(root)
        base = self._find_base(root)
        # A folder linked from outside the root is not walked at all (its files are not listed).
        linked_out = [d for d in _subdirs(base) if dataset.escapes(d)]
        children = [d for d in _subdirs(base) if d not in linked_out]
        splits = [d for d in children if d.name.lower() in SPLIT_FOLDERS and not self._ignored(d)]
        loose: list[str] = []
        skipped: Counter[str] = Counter()
        ignored: list[str] = []
        if splits:
            others = [d.name for d in children if d not in splits and not self._ignored(d)]
            ignored += [dataset.original(d) for d in children if self._ignored(d)]
            if others:
                raise DataError(
                    f"{base}: holds split folders ({', '.join(d.name for d in splits)}) and other "
                    f"folders ({', '.join(others)}); move the others into the split folders or "
                    "list them in the option ignore"
                )
            # Train before val before test, whatever the folder names sort as.
            order = list(SPLIT_FOLDERS.values())
            groups: list[tuple[str | None, Path]] = [
                (SPLIT_FOLDERS[d.name.lower()], d)
                for d in sorted(splits, key=lambda d: order.index(SPLIT_FOLDERS[d.name.lower()]))
            ]
        else:
            groups = [(None, base)]
        # Name every class folder's label before yielding, so a bad folder fails up front.
        classes: list[tuple[str | None, Path, str]] = []
        for split, folder in groups:
            loose += [dataset.original(p) for p in _files(folder) if _is_image(p)]
            for class_dir in _subdirs(folder):
                if class_dir in linked_out:
                    continue
                if dataset.escapes(class_dir):
                    linked_out.append(class_dir)
                elif self._ignored(class_dir):
                    ignored.append(dataset.original(class_dir))
                else:
                    classes.append((split, class_dir, self._label(class_dir)))
        if not classes:
            raise DataError(
                f"{base}: no class folders; expected ROOT/CLASS/images or "
                "ROOT/{train,val,test}/CLASS/images, and pass --root pointing at ROOT"
            )
        for split, class_dir, label in classes:
            for path in _walk(class_dir):
                if not _is_image(path):
                    skipped[path.suffix.lower() or "(no extension)"] += 1
                    continue
                yield Record(
                    image=path,
                    label=label,
                    source=self.name,
                    original=dataset.original(path),
                    patient_id=None,
                    view=None,
                    split=split,
                    refused=dataset.escapes(path),
                )
        self._notes.append(NO_PATIENT_IDS)
        if loose:
            self._notes.append(f"skipped {len(loose)} images outside any class folder: {_listing(loose)}")
        if skipped:
            counts = ", ".join(f"{ext} ({n})" for ext, n in skipped.most_common())
            self._notes.append(f"skipped {sum(skipped.values())} non-image files: {counts}")
        if ignored:
            self._notes.append(f"ignored folders (option ignore): {_listing(ignored)}")
        if linked_out:
            names = [dataset.original(d) for d in linked_out]
            self._notes.append(f"ignored folders that are links out of {root}: {_listing(names)}")

    def _ignored(self, folder: Path) -> bool:
        return folder.name.strip().lower() in self._ignore

    def _known(self, folder: Path) -> bool:
        name = folder.name.strip().lower()
        return (
            name in SPLIT_FOLDERS
            or name in self._label_map
            or name in self._ignore
            or alias(name) is not None
        )

    def _label(self, folder: Path) -> str:
        name = folder.name.strip().lower()
        label = self._label_map.get(name) or alias(name)
        if label is None:
            raise DataError(
                f"{folder}: folder name {folder.name!r} is not a known label; say which label it "
                f"holds with --opt 'label_map.{folder.name}=LABEL' (or label_map in the "
                f"[dataset.imagefolder] table of --config), or skip it with --opt "
                f"'ignore={folder.name}'; --map merges canonical labels, it does not rename "
                f"folders. Valid labels: {', '.join(VOCABULARY)}"
            )
        return label

    def _find_base(self, root: Path) -> Path:
        """The root, or the folder inside single-folder wrappers (``archive/Data/``)."""
        base = root
        for _ in range(MAX_WRAPPERS):
            subdirs = _subdirs(base)
            if len(subdirs) != 1 or self._known(subdirs[0]):
                break
            if any(_is_image(p) for p in _files(base)):
                break
            base = subdirs[0]
        return base


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not _hidden(d.name)), key=lambda d: d.name)


def _files(folder: Path) -> list[Path]:
    return sorted((f for f in folder.iterdir() if f.is_file() and not _hidden(f.name)), key=lambda f: f.name)


def _walk(folder: Path) -> Iterator[Path]:
    """Every visible file under ``folder``, in a stable order."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for filename in sorted(filenames):
            if not _hidden(filename):
                yield Path(dirpath) / filename


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


@hookimpl
def register_datasets(register: Register) -> None:
    register(ImageFolderAdapter)
