"""Reading the label tables the large collections ship: CSV, plain or gzipped, with their quirks.

NIH's ``Data_Entry_2017.csv`` ends its header (and on Kaggle its rows) with a comma, so a nameless
last column; MIMIC-CXR-JPG ships ``*.csv.gz``; files saved by spreadsheet programs start with a
byte-order mark. One reader handles all of them and names the file and line of anything it
cannot read.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError

MAX_LISTED = 10


def find_table(
    root: Path, names: tuple[str, ...], option: str | None, what: str, required: bool = True
) -> Path | None:
    """The first of ``names`` (relative to ``root``) that exists, checked to stay inside the root.

    ``option`` is the ``--opt`` key that names the file instead, if there is one. Returns None
    when none exists and ``required`` is false; raises DataError when it is true.
    """
    dataset = DatasetRoot(root)
    instead = f" (--opt {option}=NAME)" if option else ""
    for candidate in names:
        path = root / candidate
        escape = dataset.escapes(path)
        if escape:
            raise DataError(f"{what}: {escape}; put the file inside the dataset folder{instead}")
        if path.is_file():
            return path
    if not required:
        return None
    listed = " or ".join(names)
    raise DataError(
        f"{root}: {what} not found ({listed}); pass --root pointing at the downloaded dataset folder"
        + (f", or --opt {option}=NAME" if option else "")
    )


def counts(counter: Counter[str]) -> str:
    """``value (n), ...``, most common first, at most MAX_LISTED values."""
    common = counter.most_common()
    shown = ", ".join(f"{key} ({n})" for key, n in common[:MAX_LISTED])
    return shown + (f" and {len(common) - MAX_LISTED} more" if len(common) > MAX_LISTED else "")


def listing(items: list[str]) -> str:
    """At most MAX_LISTED items, then how many more."""
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def check_root(root: Path | None, adapter: str, what: str) -> Path:
    """``root`` as a Path when it is a folder; DataError saying what ``--root`` should be otherwise."""
    if root is None:
        raise DataError(f"{adapter} needs --root: {what}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist or is not a folder; pass --root: {what}")
    return root
