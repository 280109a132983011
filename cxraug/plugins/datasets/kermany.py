"""Kermany et al. pediatric chest X-rays: chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from cxraug import hookimpl
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import NORMAL, PNEUMONIA, PNEUMONIA_BACTERIAL, PNEUMONIA_VIRAL

IMAGE_SUFFIXES: tuple[str, ...] = (".jpeg", ".jpg", ".png")
SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASSES: tuple[str, ...] = ("normal", "pneumonia")
#: Depth of the dataset folder below --root (ZhangLabData/CellData/chest_xray is 3 deep).
MAX_DEPTH = 3
SMALL_VAL = 100
MAX_LISTED = 10

#: Kaggle/Mendeley v2 pneumonia names: person1_bacteria_1.jpeg, person1_virus_6.jpeg.
PERSON = re.compile(r"^(person\d+)(?:_(bacteria|virus))?_", re.IGNORECASE)
#: Mendeley v3 names: NORMAL-1003233-0001, BACTERIA-1008087-0001, VIRUS-1005223-0001.
NUMBERED = re.compile(r"^(normal|bacteria|virus)-(\d+)-\d+$", re.IGNORECASE)
#: Kaggle/Mendeley v2 normal names: IM-0115-0001, NORMAL2-IM-1427-0001 (last part: image index).
INDEXED = re.compile(r"^(.+)-\d+$")
SUBTYPES = {"bacteria": PNEUMONIA_BACTERIAL, "virus": PNEUMONIA_VIRAL}


def parse_name(stem: str, pneumonia: bool) -> tuple[str | None, str | None]:
    """Patient id and pneumonia kind ('bacteria', 'virus' or None) from a file name stem."""
    match = PERSON.match(stem)
    if match:
        kind = match.group(2)
        return match.group(1), kind.lower() if kind and pneumonia else None
    match = NUMBERED.match(stem)
    if match:
        # The prefix names the class, not the patient: keep the number alone so one patient's
        # normal and pneumonia images share an id.
        kind = match.group(1).lower()
        return match.group(2), kind if pneumonia and kind in SUBTYPES else None
    match = INDEXED.match(stem)
    if match:
        return match.group(1), None
    return None, None


class KermanyOptions(PluginOptions):
    """Options of the ``kermany`` dataset adapter."""

    subtypes: bool = Field(
        default=True,
        description="label pneumonia as pneumonia_bacterial / pneumonia_viral from the file "
        "name; false: plain pneumonia",
    )


class KermanyAdapter(DatasetAdapter[KermanyOptions]):
    """Chest X-Ray Images (Pneumonia), Kermany et al.: pediatric AP X-rays, normal or pneumonia.

    The official split is the folder (``train``, ``val``, ``test``). Pneumonia file names tell
    bacterial (``person1_bacteria_1.jpeg``) from viral (``person1_virus_6.jpeg``); the patient id
    is the name without the image index (``person1``, ``IM-0115``, ``NORMAL2-IM-1427``). The root
    may be ``chest_xray/`` or any folder up to three levels above it; the Kaggle archive's nested
    copy ``chest_xray/chest_xray/`` and ``__MACOSX/`` are ignored.

    Citation: Kermany, D. S., Goldbaum, M., Cai, W., et al. "Identifying Medical Diagnoses and
    Treatable Diseases by Image-Based Deep Learning." Cell 172(5), 1122-1131.e9 (2018).
    https://doi.org/10.1016/j.cell.2018.02.010

    Download: https://data.mendeley.com/datasets/rscbjbr9sj/2 (ZhangLabData, chest_xray) or
    https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia
    """

    name: ClassVar[str] = "kermany"
    description: ClassVar[str] = "Kermany et al. pediatric pneumonia X-rays (chest_xray/ folders)"
    #: Source: Mendeley Data rscbjbr9sj/2, as stated on the hf-vision/chest-xray-pneumonia dataset card.
    license: ClassVar[str] = "CC BY 4.0"

    Options: ClassVar[type[KermanyOptions]] = KermanyOptions

    def __init__(self, options: KermanyOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        self._notes = []
        if root is None:
            raise DataError("kermany needs --root: the unpacked chest_xray folder")
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset root does not exist; pass --root pointing at it")
        dataset = DatasetRoot(root)
        base = _find_base(root)
        nested = base / "chest_xray"
        if nested.is_dir() and _split_dirs(nested):
            self._notes.append(f"ignored {dataset.original(nested)}/, the Kaggle archive's duplicate copy")
        unsubtyped: list[str] = []
        no_patient: list[str] = []
        linked_out: list[str] = []
        val_count = 0
        for split, split_dir in _split_dirs(base):
            if dataset.escapes(split_dir):
                linked_out.append(dataset.original(split_dir))
                continue
            for class_dir in sorted(split_dir.iterdir(), key=lambda d: d.name):
                if not class_dir.is_dir() or class_dir.name.lower() not in CLASSES:
                    continue
                # A class folder linked from outside the root is not listed at all.
                if dataset.escapes(class_dir):
                    linked_out.append(dataset.original(class_dir))
                    continue
                pneumonia = class_dir.name.lower() == "pneumonia"
                for path in sorted(class_dir.iterdir(), key=lambda p: p.name):
                    if not path.name.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    refused = dataset.escapes(path)
                    if refused is None and not path.is_file():
                        continue
                    original = dataset.original(path)
                    patient_id, kind = parse_name(path.stem, pneumonia)
                    if not pneumonia:
                        label = NORMAL
                    elif not options.subtypes:
                        label = PNEUMONIA
                    elif kind is None:
                        label = PNEUMONIA
                        unsubtyped.append(original)
                    else:
                        label = SUBTYPES[kind]
                    if patient_id is None:
                        no_patient.append(original)
                    val_count += split == "val"
                    yield Record(
                        image=path,
                        label=label,
                        source=self.name,
                        original=original,
                        patient_id=patient_id,
                        view=None,
                        split=split,
                        refused=refused,
                    )
        if unsubtyped:
            self._notes.append(
                f"{len(unsubtyped)} pneumonia images name neither bacteria nor virus, labelled "
                f"pneumonia: {_listing(unsubtyped)}"
            )
        if no_patient:
            self._notes.append(
                f"{len(no_patient)} images have no patient id in their name: {_listing(no_patient)}"
            )
        if linked_out:
            self._notes.append(f"ignored folders that are links out of {root}: {_listing(linked_out)}")
        if 0 < val_count < SMALL_VAL:
            self._notes.append(f"the official val split holds only {val_count} images")


def _split_dirs(folder: Path) -> list[tuple[str, Path]]:
    """(split, folder) for each train/val/test folder holding NORMAL/ or PNEUMONIA/."""
    found = []
    for child in sorted(folder.iterdir(), key=lambda d: d.name):
        split = child.name.lower()
        if split in SPLITS and child.is_dir():
            if any(c.is_dir() and c.name.lower() in CLASSES for c in child.iterdir()):
                found.append((split, child))
    return sorted(found, key=lambda item: SPLITS.index(item[0]))


def _find_base(root: Path) -> Path:
    """The shallowest folder under ``root`` that holds the split folders."""
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        if _split_dirs(folder):
            return folder
        if depth < MAX_DEPTH:
            for child in sorted(folder.iterdir(), key=lambda d: d.name):
                if child.is_dir() and not child.name.startswith(".") and child.name != "__MACOSX":
                    queue.append((child, depth + 1))
    raise DataError(
        f"{root}: no chest_xray/{{train,val,test}}/{{NORMAL,PNEUMONIA}} folders within "
        f"{MAX_DEPTH} levels; pass --root pointing at the unpacked chest_xray folder"
    )


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


@hookimpl
def register_datasets(register: Register) -> None:
    register(KermanyAdapter)
