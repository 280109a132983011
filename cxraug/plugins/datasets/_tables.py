"""Reading the label tables the large collections ship: CSV, plain or gzipped, with their quirks.

NIH's ``Data_Entry_2017.csv`` ends its header (and on Kaggle its rows) with a comma, so a nameless
last column; MIMIC-CXR-JPG ships ``*.csv.gz``; files saved by spreadsheet programs start with a
byte-order mark. One reader handles all of them and names the file and line of anything it
cannot read.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
MAX_LISTED = 10


def open_text(path: Path) -> IO[str]:
    """``path`` as UTF-8 text (BOM dropped), gunzipped when its content is gzip, whatever its name."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_rows(path: Path, required: tuple[str, ...], what: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV table as dicts keyed by lower-cased column name, with the line each starts on.

    ``required`` (lower-case) must all be in the header, else DataError naming them and ``what``
    the file should be. Nameless columns (a trailing comma) are dropped; a row may leave them out
    or leave them empty, but a row with fewer named fields than the header, or a non-empty field
    past the last named column, is an error naming its line.
    """
    name = str(path)
    reader = None
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle, strict=True)  # a truncated download ends inside quotes
            header = next(reader, None)
            if header is None:
                raise DataError(f"{name}:1: empty file; expected the header row of {what}")
            columns = [c.strip().lower() for c in header]
            absent = [c for c in required if c not in columns]
            if absent:
                raise DataError(
                    f"{name}:1: missing column(s) {', '.join(repr(c) for c in absent)} (header has "
                    f"{', '.join(c.strip() for c in header if c.strip())}); is this {what}?"
                )
            named = max((i for i, c in enumerate(columns) if c), default=-1) + 1
            keys = [(i, c) for i, c in enumerate(columns[:named]) if c]
            end = reader.line_num
            for fields in reader:
                # Quoted fields may span lines: report the line the row starts on.
                lineno, end = end + 1, reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) < named or any(f.strip() for f in fields[named:]):
                    raise DataError(
                        f"{name}:{lineno}: {len(fields)} fields, the header names {named}; fix the row "
                        "(quote fields that contain commas) or delete it"
                    )
                yield lineno, {c: fields[i].strip() for i, c in keys}
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 1
        raise DataError(f"{name}:{line}: unreadable CSV ({exc}); fix the row") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc.reason}); re-save it as UTF-8") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: damaged or truncated gzip file ({exc}); download it again") from exc


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
