"""RSNA Pneumonia Detection Challenge (Kaggle 2018): DICOM images + stage_2 label CSVs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from cxraug import hookimpl
from cxraug.data.csvrows import read_rows
from cxraug.data.paths import DatasetRoot
from cxraug.dicomio import DicomError, read_header
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import LUNG_OPACITY, NORMAL, PNEUMONIA

MAX_LISTED = 10
CLASS_FILE = "stage_2_detailed_class_info.csv"
LABEL_FILE = "stage_2_train_labels.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"

#: The third class of stage_2_detailed_class_info.csv: opacities absent, yet not a normal study.
NOT_NORMAL = "not_normal"
#: ``class`` values of stage_2_detailed_class_info.csv, per mapping (absent: the image is skipped).
SOURCE_CLASSES: dict[str, str] = {
    "Lung Opacity": LUNG_OPACITY,
    "Normal": NORMAL,
    "No Lung Opacity / Not Normal": NOT_NORMAL,
}
#: mapping=covidx follows COVID-Net's create_COVIDx (lindawangg/COVID-Net, the RSNA cell): images
#: with ``Target == 1`` in stage_2_train_labels.csv -> pneumonia, ``class == 'Normal'`` -> normal,
#: "No Lung Opacity / Not Normal" left out.


class RsnaOptions(PluginOptions):
    """Options of the ``rsna`` dataset adapter."""

    mapping: Literal["source", "covidx"] = Field(
        default="source",
        description="source: lung_opacity / normal / not_normal (drop not_normal with --classes); "
        "covidx: COVID-Net's rule, Target 1 -> pneumonia, Normal -> normal, the rest left out",
    )
    views: tuple[str, ...] = Field(
        default=(), description="views (DICOM ViewPosition, e.g. PA,AP) to keep; empty keeps every view"
    )


class RsnaAdapter(DatasetAdapter[RsnaOptions]):
    """RSNA Pneumonia Detection Challenge: 26,684 labelled chest X-rays (DICOM) from NIH ChestX-ray14.

    Reads the Kaggle download as unzipped: ``stage_2_train_images/<patientId>.dcm``,
    ``stage_2_detailed_class_info.csv`` (``patientId,class``; one row per box, so an image may
    repeat) and ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``). ``class`` maps
    to lung_opacity ("Lung Opacity"), normal ("Normal") and the declared label not_normal ("No Lung
    Opacity / Not Normal": no opacity, yet abnormal); ``--classes lung_opacity,normal`` leaves
    not_normal out. ``mapping=covidx`` rebuilds COVIDx's labels instead: pneumonia for
    ``Target == 1`` in stage_2_train_labels.csv, normal for class "Normal", the rest left out.

    Patient ids are the DICOM PatientID tag (read without pixel data), the view its ViewPosition
    (PA or AP). In this challenge PatientID carries the image's own ``patientId``: Kaggle's data
    page says "Each patientId corresponds to a unique image" (torchxrayvision joins the DICOM
    headers on it too), so a person imaged twice has two ids and a patient-level split cannot be
    guaranteed; the notes say so. Only the train images are labelled (``stage_2_test_images`` has
    no public labels) and there is no official split.

    Citation: Shih, G., Wu, C. C., Halabi, S. S., et al. "Augmenting the National Institutes of
    Health Chest Radiograph Dataset with Expert Annotations of Possible Pneumonia." Radiology:
    Artificial Intelligence 1(1):e180041 (2019). https://doi.org/10.1148/ryai.2019180041

    Download: https://www.kaggle.com/c/rsna-pneumonia-detection-challenge (unzip it; --root is the
    folder holding stage_2_train_images/ and the CSVs)
    """

    name: ClassVar[str] = "rsna"
    description: ClassVar[str] = "RSNA Pneumonia Detection Challenge (Kaggle 2018), DICOM + class CSV"
    #: Source: https://www.rsna.org/education/ai-resources-and-training/ai-image-challenge/
    #: rsna-pneumonia-detection-challenge-2018 ("Download the datasets").
    license: ClassVar[str] = (
        "RSNA terms of use: academic research, education, commercial or non-commercial use, with attribution"
    )

    Options: ClassVar[type[RsnaOptions]] = RsnaOptions

    def __init__(self, options: RsnaOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def labels(self) -> tuple[str, ...]:
        if self.options.mapping == "covidx":
            return (PNEUMONIA, NORMAL)
        return (LUNG_OPACITY, NORMAL, NOT_NORMAL)

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        self._notes = []
        root = _check_root(root)
        dataset = DatasetRoot(root)
        class_file = _required_file(root, CLASS_FILE)
        label_file = root / LABEL_FILE
        label_file_found = label_file.is_file()
        if not label_file_found and options.mapping == "covidx":
            raise DataError(
                f"{label_file}: not found; mapping=covidx takes pneumonia from its Target column "
                f"(put the Kaggle file next to {CLASS_FILE})"
            )
        for path in (class_file, label_file) if label_file_found else (class_file,):
            escape = dataset.escapes(path)
            if escape:
                raise DataError(f"{path.name}: {escape}; copy the file into the dataset folder")
        images = root / TRAIN_IMAGES
        if not images.is_dir():
            raise DataError(
                f"{images}: folder not found; --root must hold the unzipped {TRAIN_IMAGES}/ of "
                "the Kaggle download"
            )

        classes = _read_classes(class_file)
        targets, boxes = _read_targets(label_file) if label_file_found else ({}, Counter())
        disagree = [
            pid
            for pid, cls in classes.items()
            if pid in targets and targets[pid] != (cls[0] == "Lung Opacity")
        ]
        views = {v.strip().upper() for v in options.views}
        skipped: Counter[str] = Counter()
        other_view: Counter[str] = Counter()
        missing: list[str] = []
        unreadable = 0
        no_patient = 0
        for patient_id, (cls, lineno) in classes.items():
            if options.mapping == "covidx":
                # COVID-Net took pneumonia from Target == 1, normal from class == 'Normal'.
                label = PNEUMONIA if targets.get(patient_id) else NORMAL if cls == "Normal" else None
            else:
                label = SOURCE_CLASSES.get(cls)
            if label is None:
                skipped[cls or "(empty)"] += 1
                continue
            path = images / f"{patient_id}.dcm"
            escape = dataset.escapes(path)
            where = f"{class_file}:{lineno}"
            if escape:
                yield self._record(path, label, dataset, patient_id, None, cls, boxes, f"{where}: {escape}")
                continue
            if not path.is_file():
                missing.append(f"{TRAIN_IMAGES}/{patient_id}.dcm")
                continue
            try:
                header = read_header(path)
            except DicomError as exc:
                unreadable += 1
                yield self._record(path, label, dataset, patient_id, None, cls, boxes, str(exc))
                continue
            view = header.view
            if views and (view or "").upper() not in views:
                other_view[view or "(none)"] += 1
                continue
            if header.patient_id is None:
                no_patient += 1
            yield self._record(path, label, dataset, header.patient_id or patient_id, view, cls, boxes, None)
        self._add_notes(
            classes, skipped, other_view, missing, unreadable, no_patient, disagree, label_file_found, root
        )

    def _record(
        self,
        path: Path,
        label: str,
        dataset: DatasetRoot,
        patient_id: str,
        view: str | None,
        cls: str,
        boxes: Counter[str],
        refused: str | None,
    ) -> Record:
        return Record(
            image=path,
            label=label,
            source=self.name,
            original=dataset.original(path),
            patient_id=patient_id,
            view=view,
            split=None,
            extra={"class": cls, "boxes": str(boxes.get(path.stem, 0))},
            refused=refused,
        )

    def _add_notes(
        self,
        classes: dict[str, tuple[str, int]],
        skipped: Counter[str],
        other_view: Counter[str],
        missing: list[str],
        unreadable: int,
        no_patient: int,
        disagree: list[str],
        label_file_found: bool,
        root: Path,
    ) -> None:
        notes = self._notes
        if skipped:
            rule = "COVID-Net's create_COVIDx rule" if self.options.mapping == "covidx" else "the mapping"
            notes.append(
                f"skipped {sum(skipped.values())} images whose class is outside {rule}: {_counts(skipped)}"
            )
        if other_view:
            notes.append(
                f"skipped {sum(other_view.values())} images with views other than "
                f"{', '.join(self.options.views)}: {_counts(other_view)}"
            )
        if missing:
            listed = ", ".join(missing[:MAX_LISTED])
            more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            notes.append(f"{len(missing)} images of {CLASS_FILE} are missing, skipped: {listed}{more}")
        if unreadable:
            notes.append(f"{unreadable} images have an unreadable DICOM header (listed under skipped)")
        unlabelled = _count_unlabelled(root / TRAIN_IMAGES, classes)
        if unlabelled:
            notes.append(f"{unlabelled} files in {TRAIN_IMAGES}/ have no row in {CLASS_FILE}; not used")
        if not label_file_found:
            notes.append(f"{LABEL_FILE} not found: box counts not recorded")
        if disagree:
            notes.append(
                f"{len(disagree)} images have Target and class that disagree between {LABEL_FILE} "
                f"and {CLASS_FILE} (e.g. {disagree[0]}); the class was used"
                if self.options.mapping == "source"
                else f"{len(disagree)} images have Target and class that disagree between {LABEL_FILE} "
                f"and {CLASS_FILE} (e.g. {disagree[0]}); Target was used, as COVID-Net did"
            )
        notes.append(
            "patient ids: the DICOM PatientID tag, which in this challenge is the image's own "
            "patientId (one id per image): a person imaged twice has two ids, so images of one "
            "person may land in different splits"
            + (f"; {no_patient} images without the tag use the file's patientId" if no_patient else "")
        )
        test_dir = root / TEST_IMAGES
        test_images = f" ({_count_dcm(test_dir)} files)" if test_dir.is_dir() else ""
        notes.append(
            f"no official split in this source: only {TRAIN_IMAGES}/ is labelled; {TEST_IMAGES}/"
            f"{test_images} has no public labels and is not used"
        )


def _check_root(root: Path | None) -> Path:
    if root is None:
        raise DataError("rsna needs --root: the unzipped Kaggle rsna-pneumonia-detection-challenge download")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist; pass --root pointing at it")
    return root


def _required_file(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise DataError(
            f"{path}: not found; --root must be the unzipped Kaggle rsna-pneumonia-detection-challenge "
            f"download (it holds {CLASS_FILE}, {LABEL_FILE} and {TRAIN_IMAGES}/)"
        )
    return path


def _read_classes(path: Path) -> dict[str, tuple[str, int]]:
    """patientId -> (class, first line), in file order; one class per image or DataError."""
    classes: dict[str, tuple[str, int]] = {}
    for lineno, row in read_rows(path, ("patientId", "class"), f"the RSNA {CLASS_FILE}", lower_keys=False):
        patient_id, cls = row["patientId"], row["class"]
        if not patient_id:
            raise DataError(f"{path}:{lineno}: empty patientId; fill it in or delete the row")
        if cls not in SOURCE_CLASSES:
            raise DataError(
                f"{path}:{lineno}: unknown class {cls!r}; the challenge's classes are "
                f"{', '.join(SOURCE_CLASSES)}"
            )
        seen = classes.get(patient_id)
        if seen is None:
            classes[patient_id] = (cls, lineno)
        elif seen[0] != cls:
            raise DataError(
                f"{path}:{lineno}: {patient_id} has class {cls!r} here but {seen[0]!r} on line "
                f"{seen[1]}; one image has one class, fix the file"
            )
    return classes


def _read_targets(path: Path) -> tuple[dict[str, bool], Counter[str]]:
    """patientId -> Target == 1, and the number of boxes per image."""
    targets: dict[str, bool] = {}
    boxes: Counter[str] = Counter()
    required = ("patientId", "x", "y", "width", "height", "Target")
    for lineno, row in read_rows(path, required, f"the RSNA {LABEL_FILE}", lower_keys=False):
        target = row["Target"]
        if target not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: Target {target!r}; expected 0 or 1, fix the row")
        patient_id = row["patientId"]
        targets[patient_id] = targets.get(patient_id, False) or target == "1"
        if row["x"]:
            boxes[patient_id] += 1
    return targets, boxes


def _count_unlabelled(folder: Path, classes: dict[str, tuple[str, int]]) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(".dcm") and e.name[:-4] not in classes)


def _count_dcm(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(".dcm"))


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} ({n})" for key, n in counter.most_common())


@hookimpl
def register_datasets(register: Register) -> None:
    register(RsnaAdapter)
