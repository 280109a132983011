"""MIMIC-CXR-JPG: study-level CheXpert/NegBio labels, the official split and view metadata, JPEG tree."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
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
    Observations,
    UncertainTally,
    observation_columns,
    read_observations,
)
from cxraug.plugins.datasets._tables import check_root, counts, find_table, listing

#: The published file names (MIMIC-CXR-JPG 2.0.0; 2.1.0 keeps them), gzipped or unpacked.
PREFIX = "mimic-cxr-2.0.0-"
SPLITS: dict[str, str] = {"train": "train", "validate": "val", "test": "test"}
LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "study_id") + tuple(
    c.lower() for c in CHEXPERT_OBSERVATIONS if c.lower() not in NOT_A_FINDING
)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
METADATA_COLUMNS: tuple[str, ...] = ("dicom_id", "viewposition")
#: subject_id and study_id are integers; dicom_id is dash-separated hex. Checked before they
#: become folder and file names, so no table value can name a path of its own.
NUMBER = re.compile(r"[0-9]{1,12}")
DICOM_ID = re.compile(r"[0-9a-fA-F]{1,64}(?:-[0-9a-fA-F]{1,64}){0,15}")
WHAT_ROOT = "the mimic-cxr-jpg/<version> folder holding the mimic-cxr-2.0.0-*.csv.gz files and files/"


class MimicOptions(PluginOptions):
    """Options of the ``mimic`` dataset adapter."""

    labeler: Literal["chexpert", "negbio"] = Field(
        default="chexpert", description="label file: mimic-cxr-2.0.0-chexpert or -negbio"
    )
    uncertain: Literal["ignore", "zeros", "ones"] = Field(
        default="ignore",
        description="uncertain (-1) labels, as for chexpert: ignore leaves such images out, zeros "
        "reads them as absent, ones as present",
    )
    views: tuple[str, ...] = Field(
        default=("PA", "AP"),
        description="ViewPosition values to keep (case-insensitive); empty keeps every view",
    )
    labels_file: str | None = Field(default=None, description="label table relative to the root")
    split_file: str | None = Field(default=None, description="split table relative to the root")
    metadata_file: str | None = Field(default=None, description="metadata table relative to the root")


class MimicAdapter(DatasetAdapter[MimicOptions]):
    """MIMIC-CXR-JPG: 377,110 JPEGs of 227,827 studies of 65,379 patients, labels from reports.

    Reads the three tables of the release, gzipped or unpacked: the labels (study-level, keyed by
    ``subject_id`` + ``study_id``: ``mimic-cxr-2.0.0-chexpert.csv.gz`` from the CheXpert
    labeller, or ``-negbio.csv.gz``, ``labeler``), the official patient-wise split
    (``mimic-cxr-2.0.0-split.csv.gz``: ``dicom_id``, ``study_id``, ``subject_id``, ``split`` =
    train / validate / test) and the image metadata (``mimic-cxr-2.0.0-metadata.csv.gz``, whose
    ``ViewPosition`` selects the views: PA and AP by default). Each image of the split table is
    ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` (XX: the subject id's first two digits) and takes
    its study's labels. The observations are CheXpert's, read as by the ``chexpert`` adapter
    (same labels, same ``uncertain`` policy; ``Support Devices`` is never a label). Patient ids
    are ``subject_id``; ``validate`` is the val split.

    Citation: Johnson, A. E. W., Pollard, T. J., Greenbaum, N. R., et al. "MIMIC-CXR-JPG, a
    large publicly available database of labeled chest radiographs." arXiv:1901.07042 (2019);
    Johnson, A., Lungren, M., Peng, Y., et al. "MIMIC-CXR-JPG - chest radiographs with structured
    labels" (version 2.1.0), PhysioNet (2024). https://doi.org/10.13026/jsn5-t979

    Download (credentialed access): https://physionet.org/content/mimic-cxr-jpg/
    """

    name: ClassVar[str] = "mimic"
    description: ClassVar[str] = "MIMIC-CXR-JPG (chexpert/negbio labels, official split, view metadata)"
    #: Source: https://physionet.org/content/mimic-cxr-jpg/ ("Credentialed Access", data use agreement).
    license: ClassVar[str] = "PhysioNet Credentialed Health Data Use Agreement (credentialed access)"

    Options: ClassVar[type[MimicOptions]] = MimicOptions

    def __init__(self, options: MimicOptions | None = None) -> None:
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
        dataset = DatasetRoot(root)
        labels_path = _table(root, options.labels_file, options.labeler, "labels_file")
        split_path = _table(root, options.split_file, "split", "split_file")
        meta_path = _table(root, options.metadata_file, "metadata", "metadata_file")
        studies = _read_labels(labels_path)
        views_of = {
            row["dicom_id"]: row["viewposition"]
            for _, row in read_rows(meta_path, METADATA_COLUMNS, "MIMIC-CXR-JPG's metadata table")
        }
        self._notes.append(
            f"labels from {dataset.original(labels_path)} ({options.labeler} labeller, one row per "
            "study: every image of a study gets its labels)"
        )
        views = {v.strip().lower() for v in options.views}
        tally = UncertainTally(options.uncertain)
        other_view: Counter[str] = Counter()
        unlabelled = 0
        missing: list[str] = []
        multi = 0
        for lineno, row in read_rows(split_path, SPLIT_COLUMNS, "MIMIC-CXR-JPG's split table"):
            where = f"{split_path}:{lineno}"
            split = SPLITS.get(row["split"].lower())
            if split is None:
                raise DataError(
                    f"{where}: split {row['split']!r}; expected train, validate or test; fix the row"
                )
            dicom, study, subject = row["dicom_id"], row["study_id"], row["subject_id"]
            view = views_of.get(dicom, "")
            if views and view.lower() not in views:
                other_view[view or "(no metadata)"] += 1
                continue
            if not (NUMBER.fullmatch(subject) and NUMBER.fullmatch(study) and DICOM_ID.fullmatch(dicom)):
                # Not MIMIC ids: no file name is built from them.
                why = f"ids {subject!r} / {study!r} / {dicom!r} are not MIMIC ids"
                yield _refused(root, where, dicom, why, self.name)
                continue
            path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            escape = dataset.escapes(path)
            if escape is None and not path.is_file():
                missing.append(dataset.original(path))
                continue
            refused = f"{where}: {escape}" if escape else None
            findings: tuple[str, ...] = ()
            label_row = studies.get((subject, study))
            if label_row is None:
                unlabelled += 1
                continue
            if refused is None:
                if isinstance(label_row, str):
                    refused = label_row
                else:
                    found = tally.findings(label_row)
                    if found is None:
                        continue
                    findings = found
            multi += len(findings) > 1
            yield Record(
                image=path,
                label=findings[0] if findings else UNKNOWN,
                source=self.name,
                original=dataset.original(path),
                patient_id=subject,
                view=view or None,
                split=split,
                extra={"study_id": study},
                refused=refused,
                findings=findings,
            )
        if other_view:
            self._notes.append(
                f"left out {sum(other_view.values())} images with views other than "
                f"{', '.join(options.views)}: {counts(other_view)}"
            )
        self._notes.extend(tally.notes())
        if unlabelled:
            self._notes.append(f"left out {unlabelled} images whose study has no row in {labels_path.name}")
        if multi:
            self._notes.append(f"{multi} images carry several findings (see --multilabel)")
        if missing:
            self._notes.append(
                f"{len(missing)} images of {split_path.name} are not under files/, skipped: "
                f"{listing(missing)}"
            )
        self._notes.append(f"official split from {split_path.name}: train, validate (val), test")


def _table(root: Path, given: str | None, kind: str, option: str) -> Path:
    names = (given,) if given else (f"{PREFIX}{kind}.csv.gz", f"{PREFIX}{kind}.csv")
    path = find_table(root, names, option, f"MIMIC-CXR-JPG's {kind} table")
    assert path is not None
    return path


def _read_labels(path: Path) -> dict[tuple[str, str], Observations | str]:
    """(subject_id, study_id) -> the study's observations, or why its row cannot be read."""
    studies: dict[tuple[str, str], Observations | str] = {}
    columns: tuple[str, ...] = ()
    for lineno, row in read_rows(path, LABEL_COLUMNS, "a MIMIC-CXR-JPG label table (chexpert or negbio)"):
        columns = columns or observation_columns(row)
        try:
            studies[(row["subject_id"], row["study_id"])] = read_observations(row, columns)
        except ValueError as exc:
            studies[(row["subject_id"], row["study_id"])] = f"{path}:{lineno}: {exc}; fix the row"
    return studies


def _refused(root: Path, where: str, dicom: str, why: str, source: str) -> Record:
    return Record(
        image=root,
        label=UNKNOWN,
        source=source,
        original=dicom,
        refused=f"{where}: {why}; fix the row",
    )


@hookimpl
def register_datasets(register: Register) -> None:
    register(MimicAdapter)
