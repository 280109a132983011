"""COVIDx: the COVID-Net benchmark's label files plus ``train/``, ``val/`` and ``test/`` folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from cxraug import hookimpl
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import COVID, NORMAL, PNEUMONIA

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

#: Label tokens across COVIDx versions (v1-v9 three-class, CXR-3/4 binary), lower-cased.
LABELS: dict[str, str] = {
    "covid-19": COVID,
    "covid": COVID,
    "positive": COVID,
    "normal": NORMAL,
    "negative": NORMAL,
    "pneumonia": PNEUMONIA,
}

SPLITS: tuple[str, ...] = ("train", "val", "test")
MAX_LISTED = 10


class CovidxOptions(PluginOptions):
    """Options of the ``covidx`` dataset adapter."""

    train_file: str | None = Field(
        default=None,
        description="train label file, relative to the root (default: the one train*.txt; "
        "empty string: read no train file)",
    )
    val_file: str | None = Field(
        default=None,
        description="val label file, relative to the root (default: the one val*.txt if "
        "any; empty string: read no val file)",
    )
    test_file: str | None = Field(
        default=None,
        description="test label file, relative to the root (default: the one test*.txt; "
        "empty string: read no test file)",
    )


class CovidxAdapter(DatasetAdapter[CovidxOptions]):
    """COVIDx (COVID-Net) chest X-ray benchmark, as label files plus one image folder per split.

    Each label file line is ``patientid filename label [source]``; the official split is the label
    file a line comes from, and the images of split ``s`` live in ``ROOT/s/``.

    Citation: Wang, L., Lin, Z. Q., Wong, A. "COVID-Net: a tailored deep convolutional neural
    network design for detection of COVID-19 cases from chest X-ray images." Scientific Reports 10,
    19549 (2020). https://doi.org/10.1038/s41598-020-76550-z

    Download: https://github.com/lindawangg/COVID-Net (docs/COVIDx.md builds versions 1-9 from
    their sources); ready-made archives of COVIDx CXR-2/3/4 at
    https://www.kaggle.com/datasets/andyczhao/covidx-cxr2
    """

    name: ClassVar[str] = "covidx"
    description: ClassVar[str] = "COVIDx (COVID-Net) label files with train/val/test image folders"
    #: Source: lindawangg/COVID-Net docs/COVIDx.md lists the source collections.
    license: ClassVar[str] = (
        "mixed: each source collection keeps its own licence (see COVID-Net docs/COVIDx.md)"
    )

    Options: ClassVar[type[CovidxOptions]] = CovidxOptions

    def __init__(self, options: CovidxOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        self._notes = []
        root = _check_root(root)
        label_files = self._label_files(root)
        for split, label_file in label_files.items():
            yield from self._read(root, split, label_file)

    def _label_files(self, root: Path) -> dict[str, Path]:
        options = self.options
        chosen = {"train": options.train_file, "val": options.val_file, "test": options.test_file}
        found: dict[str, Path] = {}
        dataset = DatasetRoot(root)
        for split in SPLITS:
            given = chosen[split]
            if given == "":
                continue
            if given is not None:
                path = root / given
                escape = dataset.escapes(path)
                if escape:
                    raise DataError(f"--opt {split}_file={given}: {escape}; name a file inside it")
                if not path.is_file():
                    raise DataError(
                        f"{path}: {split}_file not found; pass --opt {split}_file=NAME with the "
                        f"name of a label file under {root}"
                    )
                found[split] = path
                continue
            candidates = sorted(p for p in root.iterdir() if p.is_file() and _matches(p.name, split))
            if len(candidates) > 1:
                names = ", ".join(p.name for p in candidates)
                raise DataError(
                    f"{root}: several {split} label files ({names}); pass "
                    f"--opt {split}_file=NAME to choose one"
                )
            if candidates:
                found[split] = candidates[0]
        for split, path in found.items():
            escape = dataset.escapes(path)  # a label file found by name may be a link out
            if escape:
                raise DataError(f"{split} label file: {escape}; copy the file into the dataset folder")
        if not found:
            raise DataError(
                f"{root}: no COVIDx label files (train*.txt, val*.txt, test*.txt); pass --root "
                "pointing at the folder holding them, or --opt train_file=NAME"
            )
        return found

    def _read(self, root: Path, split: str, label_file: Path) -> Iterator[Record]:
        name = label_file.name
        try:
            text = label_file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{label_file}: not UTF-8 text ({exc.reason} at byte {exc.start}); is this a "
                "COVIDx label file?"
            ) from exc
        image_dir = root / split
        if not image_dir.is_dir():
            raise DataError(
                f"{image_dir}: image folder for {name} not found; COVIDx keeps the images of "
                f"{name} in {split}/ next to it"
            )
        missing: list[str] = []
        dataset = DatasetRoot(root)
        # splitlines handles CRLF and lone CR as well as LF.
        for lineno, line in enumerate(text.splitlines(), start=1):
            tokens = line.split()
            if not tokens:
                continue
            patient_id, filename, label, source = _parse(tokens, f"{label_file}:{lineno}")
            path = image_dir / filename
            # Checked before is_file(): a name leaving the root is not even looked up.
            escape = dataset.escapes(path)
            if escape is None and not path.is_file():
                missing.append(filename)
                continue
            yield Record(
                image=path,
                label=label,
                source=self.name,
                original=dataset.original(path),
                patient_id=patient_id,
                view=None,
                split=split,
                extra={"source": source} if source else {},
                refused=f"{label_file}:{lineno}: {escape}" if escape else None,
            )
        if missing:
            listed = ", ".join(missing[:MAX_LISTED])
            more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            self._notes.append(
                f"{len(missing)} rows in {name} point to missing files in {split}/, skipped: {listed}{more}"
            )


def _matches(filename: str, split: str) -> bool:
    lower = filename.lower()
    return lower.startswith(split) and lower.endswith(".txt")


def _parse(tokens: list[str], where: str) -> tuple[str, str, str, str | None]:
    """Split one line into patient id, file name, canonical label and optional source."""
    index = next((i for i, t in enumerate(tokens) if t.lower().endswith(IMAGE_SUFFIXES)), None)
    expected = "expected 'patientid filename label [source]'"
    if index is None:
        raise DataError(
            f"{where}: no image file name (.png, .jpg, .jpeg) on this line, {expected}; fix or "
            "delete the line"
        )
    if index == 0:
        raise DataError(
            f"{where}: line starts with the file name {tokens[0]!r}, {expected}; fix or delete the line"
        )
    rest = tokens[index + 1 :]
    if len(rest) not in (1, 2):
        raise DataError(
            f"{where}: {len(rest)} fields after the file name {tokens[index]!r}, {expected}; fix "
            "or delete the line"
        )
    token = rest[0]
    label = LABELS.get(token.lower())
    if label is None:
        raise DataError(
            f"{where}: unknown label {token!r}; COVIDx labels are COVID-19, normal, pneumonia, "
            "positive, negative; fix or delete the line"
        )
    source = rest[1] if len(rest) == 2 else None
    return " ".join(tokens[:index]), tokens[index], label, source


def _check_root(root: Path | None) -> Path:
    if root is None:
        raise DataError("covidx needs --root: the folder holding the label files and train/ test/")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist; pass --root pointing at it")
    return root


@hookimpl
def register_datasets(register: Register) -> None:
    register(CovidxAdapter)
