"""Rows of a label table as downloaded (Kaggle and challenge CSVs), with the line each starts on.

Tolerates what real downloads carry: a UTF-8 byte-order mark, CRLF line ends, quoted fields with
commas or line breaks, blank lines and trailing empty fields. Anything else wrong raises DataError
naming the file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from cxraug.errors import DataError


def read_rows(path: Path, required: Sequence[str], what: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) pairs; rows are keyed by the header's column names, values stripped.

    ``required`` columns must be in the header (names compared after stripping spaces); ``what``
    names the file for the error message (e.g. "the RSNA stage_2_detailed_class_info.csv").
    """
    name = str(path)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"{name}: cannot be read ({exc.strerror}); check the file") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{name}:1: empty file; expected {what} with its header row")
            columns = [c.strip() for c in header]
            absent = [c for c in required if c not in columns]
            if absent:
                raise DataError(
                    f"{name}:1: missing column(s) {', '.join(absent)} (header has "
                    f"{', '.join(columns)}); is this {what}?"
                )
            end = reader.line_num
            for fields in reader:
                # A quoted field may span lines: report the line the row starts on.
                lineno, end = end + 1, reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                extra = fields[len(columns) :]
                if len(fields) < len(columns) or any(f.strip() for f in extra):
                    raise DataError(
                        f"{name}:{lineno}: {len(fields)} fields, the header has {len(columns)}; "
                        "fix the row (quote fields that contain commas) or delete it"
                    )
                yield lineno, {c: f.strip() for c, f in zip(columns, fields, strict=False)}
        except csv.Error as exc:
            raise DataError(f"{name}:{reader.line_num}: unreadable CSV ({exc}); fix the row") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}: not UTF-8 text ({exc.reason}); re-save it as UTF-8") from exc
