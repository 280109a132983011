"""DICOM files: recognise them by content and read the header tags datasets need (ids, view).

Pixel decoding lives beside this (``read_dicom_gray``); the header is read without pixel data, so
listing a 100k-file tree stays cheap. Tags are the standard's (PS3.6): PatientID (0010,0020),
ViewPosition (0018,5101), StudyInstanceUID (0020,000D), SeriesInstanceUID (0020,000E),
SOPInstanceUID (0008,0018), Modality (0008,0060), NumberOfFrames (0028,0008).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Offset of the "DICM" magic in a Part 10 file (after the 128-byte preamble).
_MAGIC_OFFSET = 128


class DicomError(Exception):
    """A DICOM file that cannot be used; the message is the reason for the report."""


@dataclass(frozen=True)
class DicomHeader:
    """The header facts cxraug uses; strings are stripped, None when the tag is absent or empty."""

    patient_id: str | None
    view: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    modality: str | None
    photometric: str | None
    frames: int
    has_pixels: bool
    transfer_syntax: str | None


def is_dicom(path: Path) -> bool:
    """True for a DICOM Part 10 file ("DICM" after the preamble), whatever its extension."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _text(ds: object, keyword: str) -> str | None:
    value = getattr(ds, keyword, None)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_header(path: Path) -> DicomHeader:
    """The header of ``path`` (no pixel data read); DicomError naming the file when unreadable."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=None)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({exc})") from None
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    # stop_before_pixels leaves PixelData out; Rows/Columns say whether the object is an image.
    has_pixels = getattr(ds, "Rows", None) is not None and getattr(ds, "Columns", None) is not None
    return DicomHeader(
        patient_id=_text(ds, "PatientID"),
        view=_text(ds, "ViewPosition"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        modality=_text(ds, "Modality"),
        photometric=_text(ds, "PhotometricInterpretation"),
        frames=frames,
        has_pixels=has_pixels,
        transfer_syntax=str(syntax) if syntax else None,
    )
