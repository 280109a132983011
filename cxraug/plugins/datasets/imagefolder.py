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
from cxraug.dicomio import DicomError, is_dicom, is_raw_dicom, read_header
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
    is_label_name,
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
#: DICOM files by name; files with any other name (none, or a SOP Instance UID like
#: ``1.2.840.113619.2.55.1``) are DICOM when they carry the "DICM" magic.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
#: Folder names (lower-cased, runs of space/_/- made one space) and the label they hold. The names
#: are those real downloads use: the Kaggle COVID-19 Radiography Database (``COVID``, ``Normal``,
#: ``Lung_Opacity``, ``Viral Pneumonia``; v1 ``COVID-19``, ``NORMAL``), Kermany et al.'s chest_xray
#: (``NORMAL``, ``PNEUMONIA``; ``bacteria``/``virus`` in its file names), Ozturk et al.'s
#: DarkCovidNet 3-class set (``Covid-19``, ``No_findings``, ``Pneumonia``), Kaggle's "Chest X-ray
#: (Covid-19 & Pneumonia)" (``COVID19``, ``NORMAL``, ``PNEUMONIA``) and "Covid-19 Image Dataset"
#: (``Covid``, ``Normal``, ``Viral Pneumonia``), ChestX-ray14's ``No Finding``. Names that do not
#: say one label (``Non-COVID``, ``Other``, ``Abnormal``) are deliberately absent.
ALIASES: dict[str, str] = {
    "covid": COVID,
    "covid 19": COVID,
    "covid19": COVID,
    "covid 2019": COVID,
    "covid 19 pneumonia": COVID,
    "covid pneumonia": COVID,
    "sars cov 2": COVID,
    "normal": NORMAL,
    "healthy": NORMAL,
    "no finding": NORMAL,
    "no findings": NORMAL,
    "nofinding": NORMAL,
    "pneumonia": PNEUMONIA,
    "bacterial": PNEUMONIA_BACTERIAL,
    "bacteria": PNEUMONIA_BACTERIAL,
    "bacterial pneumonia": PNEUMONIA_BACTERIAL,
    "pneumonia bacterial": PNEUMONIA_BACTERIAL,
    "pneumonia bacteria": PNEUMONIA_BACTERIAL,
    "viral": PNEUMONIA_VIRAL,
    "virus": PNEUMONIA_VIRAL,
    "viral pneumonia": PNEUMONIA_VIRAL,
    "virus pneumonia": PNEUMONIA_VIRAL,
    "pneumonia viral": PNEUMONIA_VIRAL,
    "pneumonia virus": PNEUMONIA_VIRAL,
    "lung opacity": LUNG_OPACITY,
}
#: How many single-subfolder wrappers (Data/train/...) to look through.
MAX_WRAPPERS = 2
MAX_LISTED = 10
#: Folders inside a class folder that hold segmentation masks, not X-rays (the COVID-19
#: Radiography Database from v4 on has CLASS/images/ and CLASS/masks/); they are not walked.
MASK_FOLDERS = frozenset({"masks", "mask"})
NO_PATIENT_IDS = (
    "no patient ids in this source: splits are made by image, so one patient's images may land "
    "in different splits"
)


def alias(folder_name: str) -> str | None:
    """The canonical label a folder name stands for by the built-in alias table, or None.

    Case, spaces, ``_`` and ``-`` do not matter: ``No_findings``, ``no findings`` and ``NO-FINDINGS``
    are one name.
    """
    return ALIASES.get(re.sub(r"[\s_\-]+", " ", folder_name.strip().lower()).strip())


class ImageFolderOptions(PluginOptions):
    """Options of the ``imagefolder`` dataset adapter."""

    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="folder name -> label for folders the built-in aliases do not know "
        "(names match case-insensitively); a core label, or a new lower-case name such as "
        "tuberculosis, which the adapter then declares",
    )
    ignore: tuple[str, ...] = Field(default=(), description="folder names to skip (case-insensitive)")

    @field_validator("label_map")
    @classmethod
    def _canonical(cls, value: dict[str, str]) -> dict[str, str]:
        for folder, label in value.items():
            if label not in VOCABULARY and not is_label_name(label):
                raise ValueError(
                    f"folder {folder!r}: label {label!r} is neither a core label ({', '.join(VOCABULARY)}) "
                    "nor a lower-case snake_case name (a-z, 0-9, _) such as tuberculosis"
                )
        return value


class ImageFolderAdapter(DatasetAdapter[ImageFolderOptions]):
    """Your own images in class folders: ``ROOT/CLASS/...`` or ``ROOT/{train,val,test}/CLASS/...``.

    Folder names map to labels ignoring case, spaces, ``_`` and ``-`` (``COVID-19``, ``Covid``,
    ``Normal``, ``No_findings``, ``Viral Pneumonia``, ``Lung_Opacity``, ... see ``ALIASES``); the
    option ``label_map`` names the label of any other folder and ``ignore`` skips folders; the
    report lists which folder became which label. Split folders may be ``train``,
    ``val``/``valid``/``validation`` and ``test``. Images are found at any depth inside a class
    folder: by extension, and DICOM files also without one (by their "DICM" magic). DICOM files
    give the patient id (PatientID) and view (ViewPosition) from their header, so splits keep a
    patient's images together; other images have no patient ids.

    No citation: cite the source of your images.
    """

    name: ClassVar[str] = "imagefolder"
    description: ClassVar[str] = "Any class-per-folder image tree, optionally inside train/val/test"
    #: The user's own tree: its terms are unknown here, so the model card says "unknown — check the source".
    license: ClassVar[str] = ""

    Options: ClassVar[type[ImageFolderOptions]] = ImageFolderOptions

    def __init__(self, options: ImageFolderOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []
        opts = self.options
        self._label_map = {k.strip().lower(): v for k, v in opts.label_map.items()}
        self._ignore = {name.strip().lower() for name in opts.ignore}

    def labels(self) -> tuple[str, ...]:
        """The core labels, and any new label ``label_map`` names (``Tuberculosis=tuberculosis``)."""
        extra = sorted({lb for lb in self.options.label_map.values() if lb not in VOCABULARY})
        return (*VOCABULARY, *extra)

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
            loose += [
                dataset.original(p) for p in _files(folder) if _kind(p, look_inside=not dataset.escapes(p))
            ]
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
        self._notes.append(_folder_labels(classes, self._label_map))
        images, with_patient, patients = 0, 0, set[str]()
        mask_folders: list[str] = []
        for split, class_dir, label in classes:
            for path in _walk(class_dir, mask_folders):
                refused = dataset.escapes(path)
                kind = _kind(path, look_inside=refused is None)
                if kind is None:
                    skipped[path.suffix.lower() or "(no extension)"] += 1
                    continue
                images += 1
                patient_id = view = None
                if kind == "dicom" and refused is None:
                    patient_id, view = _dicom_ids(path)
                    if patient_id is not None:
                        with_patient += 1
                        patients.add(patient_id)
                yield Record(
                    image=path,
                    label=label,
                    source=self.name,
                    original=dataset.original(path),
                    patient_id=patient_id,
                    view=view,
                    split=split,
                    refused=refused,
                )
        if with_patient:
            without = images - with_patient
            self._notes.append(
                f"patient ids from the DICOM PatientID tag: {with_patient} images of {len(patients)} patients"
                + (f"; the other {without} images have none and are split by image" if without else "")
            )
        else:
            self._notes.append(NO_PATIENT_IDS)
        if loose:
            self._notes.append(f"skipped {len(loose)} images outside any class folder: {_listing(loose)}")
        if mask_folders:
            names = [dataset.original(Path(m)) for m in mask_folders]
            self._notes.append(f"skipped mask folders (segmentation masks, not X-rays): {_listing(names)}")
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
                f"folders. Core labels: {', '.join(VOCABULARY)}; label_map may also name a new "
                "lower-case label (e.g. tuberculosis)"
            )
        return label

    def _find_base(self, root: Path) -> Path:
        """The root, or the folder inside single-folder wrappers (``archive/Data/``)."""
        base = root
        for _ in range(MAX_WRAPPERS):
            subdirs = _subdirs(base)
            if len(subdirs) != 1 or self._known(subdirs[0]):
                break
            if any(_kind(p, look_inside=False) for p in _files(base)):
                break
            base = subdirs[0]
        return base


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not _hidden(d.name)), key=lambda d: d.name)


def _files(folder: Path) -> list[Path]:
    return sorted((f for f in folder.iterdir() if f.is_file() and not _hidden(f.name)), key=lambda f: f.name)


def _walk(folder: Path, mask_folders: list[str]) -> Iterator[Path]:
    """Every visible file under ``folder``, in a stable order; mask folders are appended, not walked."""
    for dirpath, dirnames, filenames in os.walk(folder):
        masks = sorted(d for d in dirnames if d.lower() in MASK_FOLDERS)
        mask_folders += [os.path.join(dirpath, d) for d in masks]
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d) and d not in masks)
        for filename in sorted(filenames):
            if not _hidden(filename):
                yield Path(dirpath) / filename


def _kind(path: Path, look_inside: bool) -> str | None:
    """ "image", "dicom" or None (not an image) for a file, by name and, for DICOM, by magic.

    ``look_inside`` False (a link out of the root) decides by the name alone: nothing outside the
    root is opened.
    """
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    return "dicom" if look_inside and (is_dicom(path) or is_raw_dicom(path)) else None


def _dicom_ids(path: Path) -> tuple[str | None, str | None]:
    """(PatientID, ViewPosition) from the header; (None, None) when it cannot be read.

    An unreadable file is not an error here: decoding it fails and the report lists it.
    """
    try:
        header = read_header(path)
    except DicomError:
        return None, None
    return header.patient_id, header.view


def _folder_labels(classes: list[tuple[str | None, Path, str]], label_map: dict[str, str]) -> str:
    """The report line saying which class folder became which label (each name once)."""
    seen: dict[str, str] = {}
    for _, folder, label in classes:
        via = " (label_map)" if folder.name.strip().lower() in label_map else ""
        seen.setdefault(folder.name, f"{label}{via}")
    return "class folders and their labels: " + ", ".join(
        f"{name} -> {label}" for name, label in seen.items()
    )


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


@hookimpl
def register_datasets(register: Register) -> None:
    register(ImageFolderAdapter)
