"""CheXpert (Stanford): ``train.csv`` / ``valid.csv`` with fourteen observations, JPEGs per patient/study."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import ClassVar, Literal

from pydantic import Field

from cxraug import hookimpl
from cxraug.data.csvrows import read_rows
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.plugins.datasets._findings import (
    CHEXPERT_LABELS,
    CHEXPERT_OBSERVATIONS,
    NOT_A_FINDING,
    UNKNOWN,
    UncertainTally,
    observation_columns,
    read_observations,
)
from cxraug.plugins.datasets._tables import check_root, listing

CSV_FILES: tuple[tuple[str, str], ...] = (("train", "train.csv"), ("valid", "valid.csv"))
REQUIRED: tuple[str, ...] = ("path", "frontal/lateral", "ap/pa") + tuple(
    c.lower() for c in CHEXPERT_OBSERVATIONS if c.lower() not in NOT_A_FINDING
)
#: Folders the Path column may start with when it is written relative to the dataset folder.
DATA_FOLDERS: frozenset[str] = frozenset({"train", "valid", "test"})
PATIENT = re.compile(r"(patient\d+)")
STUDY = re.compile(r"(study\d+)")
WHAT_ROOT = "the CheXpert-v1.0 (or CheXpert-v1.0-small) folder holding train.csv and valid.csv"


class CheXpertOptions(PluginOptions):
    """Options of the ``chexpert`` dataset adapter."""

    uncertain: Literal["ignore", "zeros", "ones"] = Field(
        default="ignore",
        description="uncertain (-1) observations (Irvin et al.): ignore leaves such images out, "
        "zeros reads them as absent, ones as present",
    )
    frontal_only: bool = Field(
        default=True, description="keep frontal views only (lateral views are another image kind)"
    )
    valid_split: Literal["val", "test"] = Field(
        default="val",
        description="split of valid.csv: val, or test as many published results use it (cxraug then "
        "carves val from train)",
    )


class CheXpertAdapter(DatasetAdapter[CheXpertOptions]):
    """CheXpert: 224,316 chest X-rays of 65,240 patients, fourteen observations from reports.

    Reads ``train.csv`` (labeller output) and ``valid.csv`` (200 studies labelled by three
    radiologists) with columns ``Path``, ``Frontal/Lateral``, ``AP/PA`` and the observations,
    valued 1.0 (present), 0.0 (absent), -1.0 (uncertain) or blank (not mentioned: absent).
    ``Path`` is written relative to the folder above the dataset folder
    (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``): its first component,
    the dataset folder's own name whatever it is called, is dropped; a Path that starts with
    ``train/`` or ``valid/`` is read as relative to the dataset folder. ``--root`` is the dataset
    folder or the folder holding it. The patient id is the ``patientNNNNN`` component.

    Labels: ``No Finding`` is normal, ``Pneumonia`` and ``Lung Opacity`` the core labels, the
    other observations are declared labels (``Pleural Effusion`` is ``effusion``, as for NIH);
    ``Support Devices`` is not a finding and never a label. An image with several present
    findings has them all as findings, the first in column order as its label
    (``--multilabel``). Uncertain observations follow ``uncertain`` (Irvin et al.'s U-Ignore,
    U-Zeros, U-Ones); the default ``ignore`` guesses no uncertain label and so leaves out images
    that have one.

    Views: Irvin et al. train on frontal and lateral images alike (their model sees "the
    available frontal and lateral radiographs" of a study); cxraug's classifiers and GANs model
    one image kind, so ``frontal_only`` (default) keeps frontal views, as torchxrayvision's
    CheXpert reader does with its view filter.

    Split: ``train.csv`` is train; ``valid.csv`` is val by default. The official test set (500
    studies) was withheld for the competition, so many published CheXpert results are reported on
    the valid set (e.g. Pham et al. 2021, arXiv:1911.06475, "from the validation set");
    ``valid_split=test`` uses it as the test set likewise, and cxraug then carves the validation
    split from train, patient-level.

    Citation: Irvin, J., Rajpurkar, P., Ko, M., et al. "CheXpert: A Large Chest Radiograph
    Dataset with Uncertainty Labels and Expert Comparison." AAAI 2019, 590-597.
    https://arxiv.org/abs/1901.07031

    Download: https://stanfordmlgroup.github.io/competitions/chexpert/ (Stanford AIMI:
    https://aimi.stanford.edu/chexpert-chest-x-rays); the downsampled CheXpert-v1.0-small also at
    https://www.kaggle.com/datasets/ashery/chexpert
    """

    name: ClassVar[str] = "chexpert"
    description: ClassVar[str] = "CheXpert (train.csv / valid.csv), uncertain labels by policy"
    #: Source: TFDS catalog "chexpert" and https://stanfordmlgroup.github.io/competitions/chexpert/.
    license: ClassVar[str] = "Stanford CheXpert Dataset Research Use Agreement (accepted before download)"

    Options: ClassVar[type[CheXpertOptions]] = CheXpertOptions

    def __init__(self, options: CheXpertOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def labels(self) -> tuple[str, ...]:
        return CHEXPERT_LABELS

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        self._notes = []
        root = check_root(root, self.name, WHAT_ROOT)
        base = _dataset_folder(root)
        dataset = DatasetRoot(root)
        tally = UncertainTally(options.uncertain)
        lateral = 0
        missing: list[str] = []
        no_patient: list[str] = []
        multi = 0
        read_any = False
        for kind, filename in CSV_FILES:
            table = base / filename
            escape = dataset.escapes(table)
            if escape:
                raise DataError(f"{filename}: {escape}; copy the file into the dataset folder")
            if not table.is_file():
                self._notes.append(f"{dataset.original(table)} not found: no {kind} images")
                continue
            read_any = True
            split = "train" if kind == "train" else options.valid_split
            columns: tuple[str, ...] = ()
            for lineno, row in read_rows(table, REQUIRED, f"CheXpert's {filename}"):
                where = f"{table}:{lineno}"
                columns = columns or observation_columns(row)
                value = row["path"]
                if not value:
                    raise DataError(f"{where}: empty Path; fill it in or delete the row")
                frontal = row["frontal/lateral"].lower() == "frontal"
                if options.frontal_only and not frontal:
                    lateral += 1
                    continue
                path = base / _relative(value)
                escape = dataset.escapes(path)
                if escape is None and not path.is_file():
                    missing.append(value)
                    continue
                refused = f"{where}: {escape}" if escape else None
                findings: tuple[str, ...] = ()
                if refused is None:
                    try:
                        found = tally.findings(read_observations(row, columns))
                    except ValueError as exc:
                        refused = f"{where}: {exc}; fix the row or delete it"
                    else:
                        if found is None:
                            continue
                        findings = found
                patient = PATIENT.search(value)
                if patient is None:
                    no_patient.append(value)
                study = STUDY.search(value)
                multi += len(findings) > 1
                yield Record(
                    image=path,
                    label=findings[0] if findings else UNKNOWN,
                    source=self.name,
                    original=dataset.original(path),
                    patient_id=patient.group(1) if patient else None,
                    view=(row["ap/pa"] or None) if frontal else (row["frontal/lateral"] or None),
                    split=split,
                    extra={"study": study.group(1)} if study else {},
                    refused=refused,
                    findings=findings,
                )
        if not read_any:
            raise DataError(f"{base}: neither train.csv nor valid.csv; pass --root: {WHAT_ROOT}")
        if lateral:
            self._notes.append(f"left out {lateral} lateral views (frontal_only=true)")
        self._notes.extend(tally.notes())
        if multi:
            self._notes.append(f"{multi} images carry several findings (see --multilabel)")
        if missing:
            self._notes.append(f"{len(missing)} rows point to missing files, skipped: {listing(missing)}")
        if no_patient:
            self._notes.append(f"{len(no_patient)} paths name no patientNNNNN folder: {listing(no_patient)}")
        self._notes.append(
            f"official split: train.csv is train, valid.csv is {options.valid_split}"
            + (" (validation carved from train)" if options.valid_split == "test" else "")
        )


def _dataset_folder(root: Path) -> Path:
    """``root`` when it holds the CSVs, else its one subfolder that does."""
    if any((root / name).is_file() for _, name in CSV_FILES):
        return root
    holders = sorted(
        child
        for child in root.iterdir()
        if child.is_dir() and any((child / name).is_file() for _, name in CSV_FILES)
    )
    if len(holders) == 1:
        return holders[0]
    if holders:
        names = ", ".join(h.name for h in holders)
        raise DataError(f"{root}: several CheXpert folders ({names}); pass --root pointing at one of them")
    raise DataError(f"{root}: no train.csv or valid.csv here or one folder down; pass --root: {WHAT_ROOT}")


def _relative(value: str) -> PurePosixPath:
    """The Path column relative to the dataset folder (its own name dropped when it leads)."""
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or path.parts[0] in DATA_FOLDERS:
        return path  # an absolute or climbing name is joined as written, then refused as escaping
    return PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else path


@hookimpl
def register_datasets(register: Register) -> None:
    register(CheXpertAdapter)
