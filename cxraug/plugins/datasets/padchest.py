"""PadChest (BIMCV): one CSV of label lists, 16-bit PNGs in numbered folders."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from cxraug import hookimpl
from cxraug.data.csvrows import read_rows
from cxraug.data.paths import DatasetRoot
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.plugins.datasets._findings import PADCHEST_LABELS, UNKNOWN, finding_key, finding_label
from cxraug.plugins.datasets._tables import check_root, counts, find_table, listing

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
REQUIRED: tuple[str, ...] = ("imageid", "imagedir", "studyid", "patientid", "projection", "labels")
#: Quality labels, not findings: an image carrying one is left out. PadChest-GR
#: (arXiv:2411.05085), built from PadChest, likewise leaves out studies "originally labelled as
#: sub-optimal".
QUALITY_LABELS: frozenset[str] = frozenset({"exclude", "suboptimal study"})
#: One quoted item of the Python-list-like Labels field: 'pleural effusion' or "..."
ITEM = r"""\s*(?:'[^'\\]*'|"[^"\\]*")\s*"""
LABEL_LIST = re.compile(rf"\[(?:{ITEM}(?:,{ITEM})*,?)?\s*\]")
QUOTED = re.compile(r"""'([^'\\]*)'|"([^"\\]*)\"""")
IMAGE_DIR = re.compile(r"[0-9]{1,4}")
WHAT_ROOT = f"the PadChest folder holding {CSV_NAME}(.gz) and the numbered image folders 0/ ... 54/"


def parse_labels(text: str) -> list[str] | None:
    """The entries of a Labels field such as ``['pneumonia', 'infiltrates']``; None if malformed.

    A strict parser, not ``eval``: only a bracketed, comma-separated list of quoted strings.
    """
    text = text.strip()
    if not LABEL_LIST.fullmatch(text):
        return None
    return [(single or double).strip() for single, double in QUOTED.findall(text)]


class PadChestOptions(PluginOptions):
    """Options of the ``padchest`` dataset adapter."""

    views: tuple[str, ...] = Field(
        default=("PA", "AP", "AP_horizontal"),
        description="Projection values to keep (case-insensitive); empty keeps every projection",
    )
    csv_file: str | None = Field(
        default=None, description=f"label table relative to the root (default: {CSV_NAME}, or .gz)"
    )


class PadChestAdapter(DatasetAdapter[PadChestOptions]):
    """PadChest: over 160,000 chest X-rays of 67,000 patients (Hospital San Juan, Alicante), report labels.

    Reads the label table (``ImageID``, ``ImageDir``, ``StudyID``, ``PatientID``,
    ``Projection``, ``Labels``, ``MethodLabel``, ...; plain or gzipped; a nameless index column
    is fine) and finds each image at ``ImageDir/ImageID`` (the numbered folders of the
    download), or at ``ImageID`` directly under the root (re-distributions with one flat folder).
    ``Labels`` is a Python-list-like string (``['pneumonia', 'infiltrates']``); it is parsed
    strictly and a malformed one is refused naming its file and line. Entries map through the
    shared finding table: ``normal`` is normal, ``pneumonia`` / ``atypical pneumonia`` the core
    pneumonia label, ``pleural effusion`` is ``effusion`` as for NIH and CheXpert, and so on for
    the cross-source findings plus common PadChest ones (``labels()``); entries that map to no
    declared label are not used (counted in the notes). An image with several mapped findings has
    them all as findings (``--multilabel``). Images labelled ``exclude`` or ``suboptimal study``
    are left out. The 2019 release predates COVID-19 and has no COVID label. Projections ``PA``,
    ``AP`` and ``AP_horizontal`` (supine) are kept by default. There is no official split;
    patient ids are ``PatientID``. Images are 16-bit PNGs, which ``data prepare`` reads as such.

    Citation: Bustos, A., Pertusa, A., Salinas, J.-M., de la Iglesia-Vayá, M. "PadChest: A large
    chest x-ray image dataset with multi-label annotated reports." Medical Image Analysis 66,
    101797 (2020). https://doi.org/10.1016/j.media.2020.101797

    Download: https://bimcv.cipf.es/bimcv-projects/padchest/
    """

    name: ClassVar[str] = "padchest"
    description: ClassVar[str] = "PadChest (BIMCV): label-list CSV, 16-bit PNGs in numbered folders"
    #: Not found on the dataset's published pages: the model card says "unknown — check the source".
    license: ClassVar[str] = ""

    Options: ClassVar[type[PadChestOptions]] = PadChestOptions

    def __init__(self, options: PadChestOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def labels(self) -> tuple[str, ...]:
        return PADCHEST_LABELS

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        self._notes = []
        root = check_root(root, self.name, WHAT_ROOT)
        dataset = DatasetRoot(root)
        names = (options.csv_file,) if options.csv_file else (f"{CSV_NAME}.gz", CSV_NAME)
        table = find_table(root, names, "csv_file", "the PadChest label table")
        assert table is not None
        views = {v.strip().lower() for v in options.views}
        other_view: Counter[str] = Counter()
        unused: Counter[str] = Counter()
        quality: Counter[str] = Counter()
        no_labels = no_mapped = multi = flat = 0
        missing: list[str] = []
        for lineno, row in read_rows(table, REQUIRED, "PadChest's label table"):
            where = f"{table}:{lineno}"
            projection = row["projection"]
            if views and projection.lower() not in views:
                other_view[projection or "(empty)"] += 1
                continue
            image_id, image_dir = row["imageid"], row["imagedir"]
            if not _plain_name(image_id) or not IMAGE_DIR.fullmatch(image_dir):
                yield Record(
                    image=root,
                    label=UNKNOWN,
                    source=self.name,
                    original=f"{image_dir}/{image_id}",
                    refused=f"{where}: ImageDir {image_dir!r} / ImageID {image_id!r} is not a folder "
                    "number and a file name; fix the row",
                )
                continue
            path = root / image_dir / image_id
            if not path.is_file() and (root / image_id).is_file():
                path = root / image_id
                flat += 1
            escape = dataset.escapes(path)
            if escape is None and not path.is_file():
                missing.append(f"{image_dir}/{image_id}")
                continue
            refused = f"{where}: {escape}" if escape else None
            findings: tuple[str, ...] = ()
            if refused is None:
                entries = _entries(row["labels"])
                if entries is None:
                    refused = (
                        f"{where}: Labels {row['labels'][:80]!r} is not a list of quoted names such as "
                        "['pneumonia', 'infiltrates']; fix the row"
                    )
                elif not entries:
                    no_labels += 1
                    continue
                elif any(finding_key(e) in QUALITY_LABELS for e in entries):
                    quality.update(finding_key(e) for e in entries if finding_key(e) in QUALITY_LABELS)
                    continue
                else:
                    mapped = [finding_label(e) for e in entries]
                    unused.update(finding_key(e) for e, lb in zip(entries, mapped, strict=True) if lb is None)
                    findings = tuple(dict.fromkeys(lb for lb in mapped if lb is not None))
                    if not findings:
                        no_mapped += 1
                        continue
            multi += len(findings) > 1
            extra = {"study_id": row["studyid"]}
            if row.get("methodlabel"):
                extra["method_label"] = row["methodlabel"]
            yield Record(
                image=path,
                label=findings[0] if findings else UNKNOWN,
                source=self.name,
                original=dataset.original(path),
                patient_id=row["patientid"] or None,
                view=projection or None,
                split=None,
                extra=extra,
                refused=refused,
                findings=findings,
            )
        self._notes.append(f"labels from {dataset.original(table)}")
        if other_view:
            self._notes.append(
                f"left out {sum(other_view.values())} images with projections other than "
                f"{', '.join(options.views)}: {counts(other_view)}"
            )
        if quality:
            self._notes.append(f"left out images labelled {counts(quality)}")
        if no_labels:
            self._notes.append(f"left out {no_labels} rows with an empty Labels list")
        if no_mapped:
            self._notes.append(f"left out {no_mapped} images none of whose labels is a declared label")
        if unused:
            self._notes.append(
                f"{sum(unused.values())} label entries map to no declared label and were not used: "
                f"{counts(unused)}"
            )
        if multi:
            self._notes.append(f"{multi} images carry several findings (see --multilabel)")
        if flat:
            self._notes.append(f"{flat} images found directly under the root instead of in ImageDir folders")
        if missing:
            self._notes.append(f"{len(missing)} rows point to missing images, skipped: {listing(missing)}")
        self._notes.append("no official split in this source")


def _entries(text: str) -> list[str] | None:
    """The Labels entries; an empty field (no report labels) is an empty list."""
    if not text.strip() or text.strip().lower() == "nan":
        return []
    parsed = parse_labels(text)
    return None if parsed is None else [e for e in parsed if e]


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


@hookimpl
def register_datasets(register: Register) -> None:
    register(PadChestAdapter)
