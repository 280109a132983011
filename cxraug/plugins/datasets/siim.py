"""SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle 2021): a study/series/image DICOM tree + CSVs."""

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
from cxraug.labels import COVID

MAX_LISTED = 10
STUDY_FILE = "train_study_level.csv"
IMAGE_FILE = "train_image_level.csv"
TRAIN = "train"
TEST = "test"

#: The one-hot columns of train_study_level.csv and the labels they become, in the file's order.
STUDY_CLASSES: dict[str, str] = {
    "Negative for Pneumonia": "negative_for_pneumonia",
    "Typical Appearance": "typical_appearance",
    "Indeterminate Appearance": "indeterminate_appearance",
    "Atypical Appearance": "atypical_appearance",
}
#: mapping=covid_typical: only the category whose appearance is typical of COVID-19 pneumonia.
COVID_TYPICAL: dict[str, str] = {"typical_appearance": COVID}


class SiimOptions(PluginOptions):
    """Options of the ``siim`` dataset adapter."""

    mapping: Literal["source", "covid_typical"] = Field(
        default="source",
        description="source: the four study classes as labels; covid_typical: Typical Appearance "
        "-> covid, the other three left out (they are appearances, not diagnoses)",
    )
    views: tuple[str, ...] = Field(
        default=(), description="views (DICOM ViewPosition, e.g. PA,AP) to keep; empty keeps every view"
    )


class SiimAdapter(DatasetAdapter[SiimOptions]):
    """SIIM-FISABIO-RSNA COVID-19 Detection: chest X-rays (DICOM) with study-level labels.

    Reads the Kaggle download as unzipped: ``train/<StudyInstanceUID>/<SeriesInstanceUID>/
    <image id>.dcm``, ``train_study_level.csv`` (``id`` = ``<StudyInstanceUID>_study`` and the
    one-hot columns Negative for Pneumonia, Typical Appearance, Indeterminate Appearance,
    Atypical Appearance) and, if present, ``train_image_level.csv`` (``id`` = ``<image id>_image``,
    ``boxes``, ``label``, ``StudyInstanceUID``; its opacity/none label goes into the manifest's
    extra fields). Every image of a study takes the study's class, as the declared labels
    negative_for_pneumonia, typical_appearance, indeterminate_appearance, atypical_appearance
    (``--classes`` picks among them). The classes are the radiologists' appearance categories of
    the RSNA consensus for COVID-19 pneumonia reporting, not diagnoses: ``mapping=covid_typical``
    maps only Typical Appearance onto covid and leaves the rest out (to pool with another
    source's normals, e.g.); "Negative for Pneumonia" is not mapped to normal.

    Patient ids are the DICOM PatientID tag (several studies of one patient share it), the view
    its ViewPosition; an image without the tag takes its study's id, so a study never spans
    splits. Only ``train/`` is labelled (``test/`` has no public labels) and there is no
    official split.

    Citation: Lakhani, P., Mongan, J., Singhal, C., et al. "The 2021 SIIM-FISABIO-RSNA Machine
    Learning COVID-19 Challenge: Annotation and Standard Exam Classification of COVID-19 Chest
    Radiographs." Journal of Digital Imaging 36, 365-372 (2023).
    https://doi.org/10.1007/s10278-022-00706-8 (images from BIMCV-COVID19+ and MIDRC-RICORD)

    Download: https://www.kaggle.com/c/siim-covid19-detection (unzip it; --root is the folder
    holding train/ and the CSVs)
    """

    name: ClassVar[str] = "siim"
    description: ClassVar[str] = "SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle 2021), DICOM tree + study CSV"
    #: Not found on the dataset's published pages: the model card says "unknown — check the source".
    license: ClassVar[str] = ""

    Options: ClassVar[type[SiimOptions]] = SiimOptions

    def __init__(self, options: SiimOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def labels(self) -> tuple[str, ...]:
        if self.options.mapping == "covid_typical":
            return (COVID,)
        return tuple(STUDY_CLASSES.values())

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        self._notes = []
        root = _check_root(root)
        dataset = DatasetRoot(root)
        study_file = root / STUDY_FILE
        if not study_file.is_file():
            raise DataError(
                f"{study_file}: not found; --root must be the unzipped Kaggle siim-covid19-detection "
                f"download (it holds {STUDY_FILE} and {TRAIN}/)"
            )
        image_file = root / IMAGE_FILE
        for path in (study_file, image_file):
            escape = dataset.escapes(path) if path.is_file() else None
            if escape:
                raise DataError(f"{path.name}: {escape}; copy the file into the dataset folder")
        train = root / TRAIN
        if not train.is_dir():
            raise DataError(f"{train}: folder not found; --root must hold the unzipped {TRAIN}/ tree")
        studies = _read_studies(study_file)
        image_labels = _read_image_labels(image_file) if image_file.is_file() else {}

        views = {v.strip().upper() for v in options.views}
        no_class: list[str] = []
        unlabelled: set[str] = set()
        skipped: Counter[str] = Counter()
        other_view: Counter[str] = Counter()
        seen_studies: set[str] = set()
        unreadable = 0
        no_patient = 0
        for path in _dicom_tree(train):
            study, series = path.parent.parent.name, path.parent.name
            if study not in studies:
                unlabelled.add(study)
                continue
            seen_studies.add(study)
            classes, _ = studies[study]
            if not classes:
                no_class.append(study)
                continue
            labels = self._map(classes)
            if not labels:
                skipped[", ".join(classes)] += 1
                continue
            extra = {"study": study, "series": series, "study_class": "|".join(classes)}
            if path.stem in image_labels:
                extra["image_label"] = image_labels[path.stem]
            refused = dataset.escapes(path)
            patient_id, view = None, None
            if refused is None:
                try:
                    header = read_header(path)
                except DicomError as exc:
                    unreadable += 1
                    refused = str(exc)
                else:
                    patient_id, view = header.patient_id, header.view
            if refused is None and views and (view or "").upper() not in views:
                other_view[view or "(none)"] += 1
                continue
            if patient_id is None:
                # Keeps a study's images together when the tag is missing (or unread).
                if refused is None:
                    no_patient += 1
                patient_id = f"study:{study}"
            yield Record(
                image=path,
                label=labels[0],
                source=self.name,
                original=dataset.original(path),
                patient_id=patient_id,
                view=view,
                split=None,
                extra=extra,
                refused=refused,
                findings=labels if len(labels) > 1 else (),
            )
        self._add_notes(
            studies, seen_studies, unlabelled, no_class, skipped, other_view, unreadable, no_patient, root
        )

    def _map(self, classes: tuple[str, ...]) -> tuple[str, ...]:
        if self.options.mapping == "covid_typical":
            return tuple(COVID_TYPICAL[c] for c in classes if c in COVID_TYPICAL)
        return classes

    def _add_notes(
        self,
        studies: dict[str, tuple[tuple[str, ...], int]],
        seen: set[str],
        unlabelled: set[str],
        no_class: list[str],
        skipped: Counter[str],
        other_view: Counter[str],
        unreadable: int,
        no_patient: int,
        root: Path,
    ) -> None:
        notes = self._notes
        if skipped:
            notes.append(
                f"skipped {sum(skipped.values())} images whose study class mapping="
                f"{self.options.mapping} leaves out: {_counts(skipped)}"
            )
        if other_view:
            notes.append(
                f"skipped {sum(other_view.values())} images with views other than "
                f"{', '.join(self.options.views)}: {_counts(other_view)}"
            )
        if no_class:
            notes.append(
                f"skipped the images of {len(set(no_class))} studies with no class set in "
                f"{STUDY_FILE}: {_listed(sorted(set(no_class)))}"
            )
        if unlabelled:
            notes.append(
                f"{len(unlabelled)} study folders in {TRAIN}/ have no row in {STUDY_FILE}, not used: "
                f"{_listed(sorted(unlabelled))}"
            )
        without_images = sorted(set(studies) - seen)
        if without_images:
            notes.append(
                f"{len(without_images)} studies of {STUDY_FILE} have no .dcm file under {TRAIN}/, "
                f"skipped: {_listed(without_images)}"
            )
        if unreadable:
            notes.append(f"{unreadable} images have an unreadable DICOM header (listed under skipped)")
        notes.append(
            "patient ids: the DICOM PatientID tag; every image of a study takes the study's class"
            + (f"; {no_patient} images without the tag use their study's id" if no_patient else "")
        )
        test_dir = root / TEST
        test_studies = f" ({_count_dirs(test_dir)} studies)" if test_dir.is_dir() else ""
        notes.append(
            f"no official split in this source: only {TRAIN}/ is labelled; {TEST}/{test_studies} "
            "has no public labels and is not used"
        )


def _check_root(root: Path | None) -> Path:
    if root is None:
        raise DataError("siim needs --root: the unzipped Kaggle siim-covid19-detection download")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist; pass --root pointing at it")
    return root


def _read_studies(path: Path) -> dict[str, tuple[tuple[str, ...], int]]:
    """StudyInstanceUID -> (labels set to 1, in column order; line)."""
    studies: dict[str, tuple[tuple[str, ...], int]] = {}
    required = ("id", *STUDY_CLASSES)
    for lineno, row in read_rows(path, required, f"the SIIM {STUDY_FILE}", lower_keys=False):
        study_id = row["id"]
        if not study_id.endswith("_study"):
            raise DataError(f"{path}:{lineno}: id {study_id!r} does not end in _study; is this {STUDY_FILE}?")
        labels = []
        for column, label in STUDY_CLASSES.items():
            value = row[column]
            if value not in ("0", "1"):
                raise DataError(f"{path}:{lineno}: {column} is {value!r}; expected 0 or 1, fix the row")
            if value == "1":
                labels.append(label)
        study = study_id[: -len("_study")]
        if study in studies:
            raise DataError(
                f"{path}:{lineno}: study {study} is listed again (first on line {studies[study][1]}); "
                "delete one of the rows"
            )
        studies[study] = (tuple(labels), lineno)
    return studies


def _read_image_labels(path: Path) -> dict[str, str]:
    """image id -> "opacity" or "none" (the first word of each label entry, distinct, joined)."""
    out: dict[str, str] = {}
    for lineno, row in read_rows(path, ("id", "label"), f"the SIIM {IMAGE_FILE}", lower_keys=False):
        image_id = row["id"]
        if not image_id.endswith("_image"):
            raise DataError(f"{path}:{lineno}: id {image_id!r} does not end in _image; is this {IMAGE_FILE}?")
        # "opacity 1 789.28 582.43 1815.94 2143.71 opacity 1 ..." or "none 1 0 0 1 1".
        words = [w for w in row["label"].split() if w.isalpha()]
        out[image_id[: -len("_image")]] = "|".join(dict.fromkeys(words))
    return out


def _dicom_tree(train: Path) -> Iterator[Path]:
    """``train/STUDY/SERIES/IMAGE.dcm`` files, sorted (os.scandir: no stat per file)."""
    for study in _sorted_dirs(train):
        for series in _sorted_dirs(study):
            with os.scandir(series) as entries:
                names = sorted(e.name for e in entries if e.name.endswith(".dcm") and not e.is_dir())
            for name in names:
                yield series / name


def _sorted_dirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return [folder / name for name in sorted(e.name for e in entries if e.is_dir())]


def _count_dirs(folder: Path) -> int:
    return len(_sorted_dirs(folder))


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} ({n})" for key, n in counter.most_common())


@hookimpl
def register_datasets(register: Register) -> None:
    register(SiimAdapter)
