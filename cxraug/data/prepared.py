"""A prepared dataset on disk: images.npy (memory-mapped uint8), manifest.csv and info.json."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cxraug.data.dedup import DESCRIPTOR_LENGTH, describe, near_duplicates
from cxraug.data.splits import SPLITS
from cxraug.errors import DataError
from cxraug.fileio import file_sha256, work_folder_name
from cxraug.settings import describe_file_error

FORMAT_VERSION = 1
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "split",
    "label",
    "patient_id",
    "source",
    "view",
    "original",
    "sha256",
    "phash",
    "origin",
    "provenance",
)


def swap_in(tmp_dir: Path, target: Path) -> None:
    """Move a completed dataset folder into place; an existing one is removed only afterwards.

    Call it holding the dataset's lock. A kill between the two renames leaves the previous version as
    ``.NAME.old-PID@HOST``, which the next writer puts back (Workspace.remove_stale_work_folders).
    """
    import shutil

    if target.exists():
        old = target.with_name(work_folder_name(target.name, "old"))
        target.rename(old)
        tmp_dir.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp_dir.rename(target)


def write_manifest(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in MANIFEST_COLUMNS})


def read_manifest(path: Path) -> list[dict[str, str]]:
    # utf-8-sig: a manifest saved from Excel ("CSV UTF-8") starts with a byte-order mark, which plain
    # utf-8 would glue onto the first column's name ("\ufeffid")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)}; re-run `cxraug data prepare`"
                )
            return list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: missing; re-run `cxraug data prepare`") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as CSV UTF-8 or re-run `cxraug data prepare`"
        ) from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}); re-run `cxraug data prepare`") from None


class _SourceInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    adapter: str
    root: str | None = None


class DatasetInfo(BaseModel):
    """The keys of ``info.json`` cxraug reads, checked; the file's other keys pass through."""

    model_config = ConfigDict(extra="allow")

    format_version: int
    size: int = Field(ge=1)
    classes: list[str] = Field(min_length=1)
    synthetic: bool = False
    created: str = ""
    counts: dict[str, dict[str, int]] = {}
    sources: list[_SourceInfo] = []


def read_info(path: Path) -> dict[str, Any]:
    """``info.json`` of a prepared dataset, as a dict whose known keys have the expected types."""
    redo = "re-run `cxraug data prepare`"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path.parent}: not a prepared dataset (no info.json); {redo}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); {redo}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: holds a {type(raw).__name__}, not a JSON object; {redo}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {raw.get('format_version')!r} is not "
            f"{FORMAT_VERSION}; re-run `cxraug data prepare` with this cxraug version"
        )
    try:
        info = DatasetInfo.model_validate(raw)
    except ValidationError as exc:
        raise DataError(f"{path}: {describe_file_error(exc)}; {redo} instead of editing it by hand") from None
    return {**raw, **info.model_dump(mode="json", exclude_unset=True)}


#: A perceptual hash as prepare writes it: 64 bits in 16 hex digits.
_PHASH = re.compile(r"^[0-9a-fA-F]{16}$")


class PreparedDataset:
    """Read side of a prepared dataset; refuses one whose splits leak patients or duplicates."""

    def __init__(self, path: Path, *, check: bool = True) -> None:
        self.path = Path(path)
        info_path = self.path / "info.json"
        if not info_path.is_file():
            raise DataError(
                f"{self.path}: not a prepared dataset (no info.json); "
                "create one with `cxraug data prepare` (see `cxraug data list`)"
            )
        self.info: dict[str, Any] = read_info(info_path)
        self.rows = read_manifest(self.path / "manifest.csv")
        try:
            self.images: np.ndarray = np.load(self.path / "images.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path / 'images.npy'}: unreadable ({exc})") from None
        size = int(self.info["size"])
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (size, size):
            raise DataError(
                f"{self.path / 'images.npy'}: expected uint8 (N, {size}, {size}), "
                f"found {self.images.dtype} {self.images.shape}"
            )
        if len(self.rows) != len(self.images):
            raise DataError(
                f"{self.path}: manifest.csv has {len(self.rows)} rows but images.npy holds "
                f"{len(self.images)} images; re-run `cxraug data prepare`"
            )
        self.classes: list[str] = list(self.info["classes"])
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        for n, row in enumerate(self.rows, start=2):
            if row["split"] not in SPLITS:
                raise DataError(f"{self.path / 'manifest.csv'}:{n}: unknown split {row['split']!r}")
            if row["label"] not in self._class_index:
                raise DataError(
                    f"{self.path / 'manifest.csv'}:{n}: label {row['label']!r} is not one of "
                    f"the dataset's classes {self.classes} (info.json)"
                )
            if not _PHASH.match(row["phash"] or ""):
                raise DataError(
                    f"{self.path / 'manifest.csv'}:{n}: phash {row['phash']!r} is not 16 hex digits; "
                    "re-run `cxraug data prepare` instead of editing the manifest by hand"
                )
        if check:
            self.check_invariants()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def size(self) -> int:
        return int(self.info["size"])

    @property
    def synthetic(self) -> bool:
        return bool(self.info.get("synthetic", False))

    def indices(self, split: str | None = None, labels: list[str] | None = None) -> np.ndarray:
        """Row indices of a split (all when None), optionally only some labels."""
        keep = set(labels) if labels else None
        return np.array(
            [
                i
                for i, r in enumerate(self.rows)
                if (split is None or r["split"] == split) and (keep is None or r["label"] in keep)
            ],
            dtype=np.int64,
        )

    def targets(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Class index (into ``classes``) of each row."""
        rows = self.rows if idx is None else [self.rows[i] for i in idx]
        return np.array([self._class_index[r["label"]] for r in rows], dtype=np.int64)

    def select_classes(self, wanted: list[str], flag: str = "--classes") -> list[str]:
        """``wanted`` in the dataset's class order (all classes when empty); unknown ones are an error."""
        unknown = [c for c in wanted if c not in self.classes]
        if unknown:
            raise DataError(
                f"{flag} {','.join(unknown)}: not in dataset {self.name!r} "
                f"(its classes: {', '.join(self.classes)})"
            )
        return [c for c in self.classes if c in wanted] or list(self.classes)

    def fingerprint(self, splits: list[str], labels: list[str]) -> tuple[str, int]:
        """sha256 over the manifest rows of ``splits`` x ``labels`` (id, split, label, content hash)
        and the image size, and the number of those rows: equal fingerprints, equal training data."""
        digest = hashlib.sha256(f"size={self.size};resize={self.info.get('resize')}\n".encode())
        n = 0
        for row in sorted(
            (r for r in self.rows if r["split"] in splits and r["label"] in labels), key=lambda r: r["id"]
        ):
            digest.update(f"{row['id']}\t{row['split']}\t{row['label']}\t{row['sha256']}\n".encode())
            n += 1
        return digest.hexdigest(), n

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and label."""
        out: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        for (split, label), n in sorted(Counter((r["split"], r["label"]) for r in self.rows).items()):
            out[split][label] = n
        return out

    def check_invariants(self) -> None:
        """Refuse the dataset if a patient or a (near-)duplicate image spans two splits."""
        where = self.path / "manifest.csv"
        for column, what in (("patient_id", "patient"), ("sha256", "image content")):
            seen: dict[str, tuple[str, int]] = {}
            for n, row in enumerate(self.rows, start=2):
                key = row[column]
                if not key:
                    continue
                if column == "patient_id":
                    key = f"{row['source']}:{key}"
                first = seen.setdefault(key, (row["split"], n))
                if first[0] != row["split"]:
                    raise DataError(
                        f"{where}:{n}: {what} {row[column]!r} is in split {row['split']} but also in "
                        f"{first[0]} (line {first[1]}); a leak between splits. Re-run "
                        "`cxraug data prepare` instead of editing the manifest by hand"
                    )
        if self.info.get("manifest_sha256") == file_sha256(where):
            return  # unchanged since prepare, which already separated near-duplicates
        # The same search as prepare's, descriptors recomputed from the stored images.
        descriptors = np.array([describe(np.asarray(img)) for img in self.images], np.uint8)
        descriptors = descriptors.reshape(len(self.images), DESCRIPTOR_LENGTH)
        for match in near_duplicates(descriptors):
            i, j = match.i, match.j
            a, b = self.rows[i], self.rows[j]
            if a["split"] != b["split"]:
                raise DataError(
                    f"{where}:{i + 2} and line {j + 2}: near-duplicate images (correlation "
                    f"{match.score:.3f}) in splits {a['split']} and {b['split']}; re-run "
                    "`cxraug data prepare` instead of editing the manifest by hand"
                )

    def torch_dataset(self, split: str, labels: list[str] | None = None, transform: Any = None):
        """A torch Dataset of (float image (1, S, S) in [0, 1], class index) for one split."""
        from cxraug.data.torchdata import ArrayDataset

        idx = self.indices(split, labels)
        return ArrayDataset(self.images, idx, self.targets(idx), transform=transform)
