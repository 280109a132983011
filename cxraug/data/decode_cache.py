"""Decoded pixels of one ``data prepare``, kept across an interruption so a rerun decodes only what is new.

The cache is ``data/.NAME.decoding/``: ``params.json`` (what decoding depends on), ``pixels.bin``
(one raw row per decoded image, appended as images finish: its ``size x size`` uint8 pixels, then
its ``extra`` bytes, the near-duplicate descriptor) and
``index.jsonl`` (one line per decoded image: its key, row, sha256 and pHash). Failures are not
kept: a file that failed (say, for want of a DICOM decoder since installed) is tried again. A row's
pixels are written before its index line, so a process killed at any point leaves an index that
only names complete rows; a torn last line is ignored. A file's key is its absolute path, size and
modification time, so an edited file is decoded again. The folder goes once the dataset is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: Seconds between index flushes: what a kill -9 can cost is this much decoding.
FLUSH_S = 0.5


def cache_folder(data_dir: Path, name: str) -> Path:
    return data_dir / f".{name}.decoding"


def leftover_caches(data_dir: Path) -> list[tuple[str, Path, int]]:
    """(dataset name, folder, bytes) of every decode cache an interrupted prepare left in ``data_dir``."""
    found = []
    if data_dir.is_dir():
        for folder in sorted(data_dir.glob(".*.decoding")):
            if folder.is_dir() and not folder.is_symlink():
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                found.append((folder.name[1 : -len(".decoding")], folder, size))
    return found


def source_key(image: Any) -> str | None:
    """What identifies an image source across runs; None when it cannot be told (a missing file)."""
    if isinstance(image, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        return f"array:{image.dtype.str}:{'x'.join(map(str, image.shape))}:{digest}"
    try:
        st = os.stat(image)
    except (OSError, TypeError, ValueError):
        return None
    return f"file:{os.path.abspath(os.fspath(image))}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class Entry:
    """One image's decoding outcome: its row in ``pixels.bin`` (-1 when it failed)."""

    row: int
    sha256: str
    phash: int
    error: str | None


class RowReader:
    """Rows of the cache's raw file, read with ``pread`` (no mapping stays resident)."""

    def __init__(self, path: Path, size: int, extra: int = 0) -> None:
        self.size = size
        self.extra = extra
        self.row_bytes = size * size + extra
        self._fd = os.open(path, os.O_RDONLY)

    def _read(self, row: int, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, row * self.row_bytes + offset)
        if len(data) != length:
            raise RuntimeError(f"decode cache row {row} is incomplete ({len(data)} bytes)")
        return data

    def __call__(self, row: int) -> np.ndarray:
        """The decoded image of ``row``."""
        data = self._read(row, 0, self.size * self.size)
        return np.frombuffer(data, dtype=np.uint8).reshape(self.size, self.size)

    def extras(self, rows: np.ndarray) -> np.ndarray:
        """The ``extra`` bytes (descriptors) of ``rows``, as a (len(rows), extra) uint8 array."""
        out = np.empty((len(rows), self.extra), dtype=np.uint8)
        for k, row in enumerate(rows):
            out[k] = np.frombuffer(self._read(int(row), self.size * self.size, self.extra), dtype=np.uint8)
        return out

    def extras_view(self, rows: np.ndarray) -> ExtrasView:
        """The ``extra`` bytes of ``rows`` as a lazy array: indexing reads only the rows asked for."""
        return ExtrasView(self, np.asarray(rows, dtype=np.int64))

    def close(self) -> None:
        os.close(self._fd)


class ExtrasView:
    """A (len(rows), extra) uint8 array read from the cache on indexing (duplicate search reads its
    descriptors in chunks, so they never all sit in memory at once)."""

    dtype = np.dtype(np.uint8)
    ndim: int = 2

    def __init__(self, reader: RowReader, rows: np.ndarray) -> None:
        self._reader, self._rows = reader, rows
        self.shape: tuple[int, ...] = (len(rows), reader.extra)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._reader.extras(self._rows[[int(index)]])[0]
        return self._reader.extras(self._rows[index])


class DecodeCache:
    """Append-only store of decoded rows for one dataset name (used under the dataset's lock)."""

    def __init__(self, folder: Path, size: int, params: dict[str, Any], extra: int = 0) -> None:
        self.folder = folder
        self.size = size
        self.extra = extra
        self.row_bytes = size * size + extra
        self.params = {"format": CACHE_FORMAT, "size": size, "extra": extra, **params}
        self.entries: dict[str, Entry] = {}
        self.rows = 0
        #: Images a rerun could reuse (in-memory arrays are not indexed: they decode in no time).
        self.reusable = 0
        self._pixels_fd = -1
        self._index: Any = None
        self._flushed = time.monotonic()

    @classmethod
    def open(cls, folder: Path, size: int, params: dict[str, Any], extra: int = 0) -> DecodeCache:
        """The cache in ``folder``: what an interrupted run with the same params left, or a new one."""
        cache = cls(folder, size, params, extra)
        if folder.is_dir():
            if cache._load():
                log.debug("%s holds %d decoded images", folder, len(cache.entries))
            else:
                log.info("%s was left by a prepare with other settings; decoding afresh", folder)
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "params.json").exists():
            (folder / "params.json").write_text(json.dumps(cache.params, sort_keys=True), encoding="utf-8")
        cache._pixels_fd = os.open(folder / "pixels.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        cache._index = open(folder / "index.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        return cache

    def _load(self) -> bool:
        try:
            params = json.loads((self.folder / "params.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if params != json.loads(json.dumps(self.params, sort_keys=True)):
            return False
        try:
            n_rows = (self.folder / "pixels.bin").stat().st_size // self.row_bytes
        except OSError:
            n_rows = 0
        try:
            with open(self.folder / "index.jsonl", encoding="utf-8") as fh:
                for line in fh:
                    try:
                        key, row, sha, phash, error = json.loads(line)
                    except (ValueError, TypeError):
                        break  # torn last line of a killed run
                    if row >= n_rows:
                        break
                    if error is None and row >= 0:
                        self.entries[key] = Entry(row, sha, phash, None)
        except OSError:
            return False
        self.reusable = len(self.entries)
        # Rows past the last indexed one are a killed run's unfinished writes: cut them off.
        self.rows = 1 + max((e.row for e in self.entries.values()), default=-1)
        with open(self.folder / "pixels.bin", "ab") as fh:
            fh.truncate(self.rows * self.row_bytes)
        # Index lines past a torn one are rewritten without it.
        with open(self.folder / "index.jsonl", "w", encoding="utf-8") as fh:
            for key, e in self.entries.items():
                fh.write(json.dumps([key, e.row, e.sha256, e.phash, e.error]) + "\n")
        return True

    def get(self, key: str | None) -> Entry | None:
        return self.entries.get(key) if key is not None else None

    def add(
        self,
        key: str | None,
        img: np.ndarray | None,
        sha256: str,
        phash: int,
        error: str | None,
        extra: np.ndarray | None = None,
    ) -> Entry:
        """Store one outcome (the pixels and extra bytes first, then the index line naming them)."""
        row = -1
        if img is not None:
            data = np.ascontiguousarray(img, dtype=np.uint8).tobytes()
            if self.extra:
                data += np.ascontiguousarray(extra, dtype=np.uint8).tobytes()
            if len(data) != self.row_bytes:
                raise ValueError(f"decoded row has {len(data)} bytes, expected {self.row_bytes}")
            view = memoryview(data)
            while view:
                view = view[os.write(self._pixels_fd, view) :]
            row = self.rows
            self.rows += 1
        if key is not None and error is None:  # on disk only: memory does not grow with them
            self._index.write(json.dumps([key, row, sha256, phash, error]) + "\n")
            self.reusable += 1
            if time.monotonic() - self._flushed > FLUSH_S:
                self.flush()
        return Entry(row, sha256, phash, error)

    def flush(self) -> None:
        if self._index is not None:
            self._index.flush()
        self._flushed = time.monotonic()

    def reader(self) -> RowReader:
        self.flush()
        return RowReader(self.folder / "pixels.bin", self.size, self.extra)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._pixels_fd >= 0:
            os.close(self._pixels_fd)
            self._pixels_fd = -1

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
