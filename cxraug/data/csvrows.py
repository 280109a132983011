"""Rows of the label tables datasets ship, as downloaded: CSV, plain or gzipped, with their quirks.

Tolerates what real downloads carry: a UTF-8 byte-order mark (files saved by spreadsheet
programs), CRLF line ends, quoted fields with commas or line breaks, blank lines, gzip content
whatever the file's name (MIMIC-CXR-JPG's ``*.csv.gz``) and a trailing comma that makes a nameless
last column (NIH's ``Data_Entry_2017.csv``). Anything else wrong raises DataError naming the file
and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from cxraug.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


def open_text(path: Path) -> IO[str]:
    """``path`` as UTF-8 text (BOM dropped), gunzipped when its content is gzip, whatever its name."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_rows(
    path: Path, required: Sequence[str], what: str, *, lower_keys: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV table as dicts keyed by column name (lower-cased unless ``lower_keys`` is
    False; stripped either way), with the line each starts on.

    ``required`` (in the same case as the keys) must all be in the header, else DataError naming
    them and ``what`` the file should be. Nameless columns (a trailing comma) are dropped; a row
    may leave them out or leave them empty, but a row with fewer named fields than the header, or
    a non-empty field past the last named column, is an error naming its line.
    """
    name = str(path)
    reader = None
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle, strict=True)  # a truncated download ends inside quotes
            header = next(reader, None)
            if header is None:
                raise DataError(f"{name}:1: empty file; expected the header row of {what}")
            columns = [c.strip().lower() if lower_keys else c.strip() for c in header]
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
