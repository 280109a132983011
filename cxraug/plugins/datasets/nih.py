"""NIH ChestX-ray14: ``Data_Entry_2017*.csv``, ``train_val_list.txt`` / ``test_list.txt``, PNG folders."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from cxraug import hookimpl
from cxraug.data.csvrows import read_rows
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.plugins.datasets._findings import NIH_LABELS, UNKNOWN, finding_label
from cxraug.plugins.datasets._tables import check_root, counts, find_table, listing

#: The label table: the 2020 re-release first (it corrects the 2017 file's patient ages), then
#: the original. Both have the columns read here; the 2020 one names ``Patient Sex`` where the
#: 2017 one has ``Patient Gender`` (neither is used).
LABEL_FILES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED: tuple[str, ...] = ("image index", "finding labels", "patient id", "view position")
TRAIN_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
WHAT_ROOT = "the folder holding Data_Entry_2017*.csv and images/ (or images_001/ ... images_012/)"


class NIHOptions(PluginOptions):
    """Options of the ``nih`` dataset adapter."""

    views: tuple[str, ...] = Field(
        default=("PA", "AP"),
        description="View Position values to keep (case-insensitive); empty keeps every view",
    )
    labels_file: str | None = Field(
        default=None,
        description="label table relative to the root (default: Data_Entry_2017_v2020.csv, "
        "else Data_Entry_2017.csv)",
    )


class NIHAdapter(DatasetAdapter[NIHOptions]):
    """NIH ChestX-ray14: 112,120 frontal PNGs of 30,805 patients with fourteen text-mined findings.

    Reads the label table (``Image Index``, ``Finding Labels``, ``Patient ID``, ``View
    Position``; a trailing comma in the header, as in the Kaggle copy, is fine) and finds each
    image in ``images/`` (the box.com tarballs unpack there) or ``images_001/images/`` ...
    ``images_012/images/`` (Kaggle). ``Finding Labels`` holds findings joined by ``|``: the
    record's label is the first, its findings all of them (``data prepare --multilabel`` picks
    one); ``No Finding`` is normal, ``Pneumonia`` the core pneumonia label, the other thirteen
    are declared labels (``effusion``, ``pleural_thickening``, ...). The official split is
    patient-wise: ``test_list.txt`` is the test split, ``train_val_list.txt`` the train split
    (cxraug carves the validation split from it, patient-level). Patient ids are ``Patient ID``.

    Citation: Wang, X., Peng, Y., Lu, L., Lu, Z., Bagheri, M., Summers, R. M. "ChestX-ray8:
    Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and
    Localization of Common Thorax Diseases." CVPR 2017, 2097-2106.
    https://doi.org/10.1109/CVPR.2017.369

    Download: https://nihcc.app.box.com/v/ChestXray-NIHCC (images_001.tar.gz ...
    images_012.tar.gz, Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt) or
    https://www.kaggle.com/datasets/nih-chest-xrays/data
    """

    name: ClassVar[str] = "nih"
    description: ClassVar[str] = "NIH ChestX-ray14 (Data_Entry_2017.csv, official train_val/test lists)"
    #: Source: Google Cloud "NIH Chest X-ray dataset" page, section "License and attribution".
    license: ClassVar[str] = (
        "no restrictions on use; attribution required (link to the NIH download site, cite Wang et "
        "al. CVPR 2017, acknowledge the NIH Clinical Center)"
    )

    Options: ClassVar[type[NIHOptions]] = NIHOptions

    def __init__(self, options: NIHOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def labels(self) -> tuple[str, ...]:
        return NIH_LABELS

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        self._notes = []
        root = check_root(root, self.name, WHAT_ROOT)
        dataset = DatasetRoot(root)
        names = (options.labels_file,) if options.labels_file else LABEL_FILES
        table = find_table(root, names, "labels_file", "the NIH label table")
        assert table is not None
        self._notes.append(f"labels from {dataset.original(table)}")
        images, duplicates = _index_images(root, dataset)
        if not images:
            raise DataError(
                f"{root}: no PNG images in images/ or images_*/images/; unpack the image archives "
                "there (box.com: images_001.tar.gz ... each unpacks into images/)"
            )
        if duplicates:
            self._notes.append(
                f"{len(duplicates)} image names occur in several image folders, the first used: "
                f"{listing(duplicates)}"
            )
        splits = self._official_split(root)
        views = {v.strip().lower() for v in options.views}
        other_view: Counter[str] = Counter()
        missing: list[str] = []
        unlisted: list[str] = []
        multi = 0
        for lineno, row in read_rows(table, REQUIRED, "NIH ChestX-ray14's Data_Entry_2017.csv"):
            where = f"{table}:{lineno}"
            name = row["image index"]
            if not name:
                raise DataError(f"{where}: empty Image Index; fill it in or delete the row")
            view = row["view position"]
            if views and view.lower() not in views:
                other_view[view or "(empty)"] += 1
                continue
            path = images.get(name)
            if path is None:
                missing.append(name)
                continue
            found = [f.strip() for f in row["finding labels"].split("|") if f.strip()]
            labels = [finding_label(f) for f in found]
            unknown = [f for f, lb in zip(found, labels, strict=True) if lb is None]
            escape = dataset.escapes(path)
            refused = f"{where}: {escape}" if escape else None
            if refused is None and (unknown or not found):
                what = f"unknown finding(s) {', '.join(map(repr, unknown))}" if unknown else "no finding"
                refused = f"{where}: {what} in Finding Labels; expected NIH's fourteen or No Finding"
            findings = tuple(dict.fromkeys(lb for lb in labels if lb is not None))
            multi += len(findings) > 1
            split: str | None = None
            if splits is not None:
                split = splits.get(name)
                if split is None:
                    unlisted.append(name)
            yield Record(
                image=path,
                label=findings[0] if findings else UNKNOWN,
                source=self.name,
                original=dataset.original(path),
                patient_id=row["patient id"] or None,
                view=view or None,
                split=split,
                extra={"finding_labels": row["finding labels"]},
                refused=refused,
                findings=findings,
            )
        if other_view:
            self._notes.append(
                f"left out {sum(other_view.values())} rows with views other than "
                f"{', '.join(options.views)}: {counts(other_view)}"
            )
        if missing:
            self._notes.append(
                f"{len(missing)} rows of {table.name} have no image under images/ or images_*/images/, "
                f"skipped: {listing(missing)}"
            )
        if multi:
            self._notes.append(f"{multi} images carry several findings (see --multilabel)")
        if unlisted:
            self._notes.append(
                f"{len(unlisted)} images are in neither {TRAIN_LIST} nor {TEST_LIST}; split by "
                f"ratios: {listing(unlisted)}"
            )

    def _official_split(self, root: Path) -> dict[str, str] | None:
        """Image name -> train/test from the two list files; None when neither is there."""
        train = find_table(root, (TRAIN_LIST,), None, TRAIN_LIST, required=False)
        test = find_table(root, (TEST_LIST,), None, TEST_LIST, required=False)
        if train is None and test is None:
            self._notes.append(
                f"no {TRAIN_LIST} / {TEST_LIST} in the root: no official split, split by patient-level ratios"
            )
            return None
        splits: dict[str, str] = {}
        both: list[str] = []
        for split, path in (("train", train), ("test", test)):
            if path is None:
                self._notes.append(f"{TRAIN_LIST if split == 'train' else TEST_LIST} not found")
                continue
            for name in _list_names(path):
                if splits.get(name, split) != split:
                    both.append(name)
                splits[name] = split  # test is read last: an image in both lists stays in test
        if both:
            self._notes.append(f"{len(both)} images are in both list files, kept in test: {listing(both)}")
        self._notes.append(
            f"official split: {TEST_LIST} is test, {TRAIN_LIST} is train (validation carved from it)"
        )
        return splits


def _list_names(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); is this NIH's {path.name}?") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _index_images(root: Path, dataset: DatasetRoot) -> tuple[dict[str, Path], list[str]]:
    """File name -> path for every PNG in the image folders of either layout, and repeated names.

    One directory listing per folder instead of a stat per table row: the table has 112,120 rows.
    Folders that are links out of the root are not listed.
    """
    folders = [root / "images"]
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.name.startswith("images_") and child.is_dir():
            folders += [child / "images", child]
    found: dict[str, Path] = {}
    repeated: list[str] = []
    for folder in folders:
        if not folder.is_dir() or dataset.escapes(folder):
            continue
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if not entry.name.lower().endswith(".png") or not entry.is_file():
                    continue
                if entry.name in found:
                    repeated.append(entry.name)
                    continue
                found[entry.name] = Path(entry.path)
    return found, repeated


@hookimpl
def register_datasets(register: Register) -> None:
    register(NIHAdapter)
