"""DICOM files: recognise them by content, read the header tags datasets need, decode to 8-bit gray.

``read_header`` reads without pixel data, so listing a 100k-file tree stays cheap. Tags are the
standard's (PS3.6): PatientID (0010,0020), ViewPosition (0018,5101), StudyInstanceUID (0020,000D),
SeriesInstanceUID (0020,000E), SOPInstanceUID (0008,0018), Modality (0008,0060), NumberOfFrames
(0028,0008).

``read_dicom_gray`` follows the standard's grayscale pipeline (PS3.4 N.2.1; PS3.3 C.11): stored
values -> Modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept) -> VOI (VOI LUT
Sequence, or Window Center/Width with its VOI LUT Function) -> 0-255 -> inverted for MONOCHROME1,
whose "minimum sample value is intended to be displayed as white after any VOI gray scale
transformations have been performed" (PS3.3 C.7.6.3.1.2), so bright means dense for both
photometric interpretations. The VOI step is chosen by a policy (``VOI_POLICIES``).
Presentation LUT Shape (2050,0020) is not applied: the General Image Module ties it to the
photometric interpretation (IDENTITY for MONOCHROME2, INVERSE for MONOCHROME1), so applying both
would invert MONOCHROME1 twice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

#: Offset of the "DICM" magic in a Part 10 file (after the 128-byte preamble).
_MAGIC_OFFSET = 128

#: How the VOI (values of interest) step picks the gray range shown as black to white:
#: ``auto`` uses the file's VOI LUT Sequence, else its Window Center/Width, else the min-max of
#: the image's modality values; ``window`` prefers the Window Center/Width over a VOI LUT Sequence
#: (pydicom's ``apply_voi_lut(prefer_lut=False)``), then the same fallbacks; ``full`` ignores the
#: file's VOI and always uses the min-max. With several windows or LUTs, the first is used (the
#: standard lists alternatives; pydicom's ``index=0``).
VOI_POLICIES: tuple[str, ...] = ("auto", "window", "full")
DEFAULT_VOI: Final = "auto"
#: The optional extra that brings pydicom's decoders for compressed transfer syntaxes.
INSTALL_HINT = 'pip install "cxraug[dicom]"'
#: Elements larger than this are read only when used: the size checks run before the pixel data
#: is loaded.
_DEFER_SIZE = "64 KB"
#: Value representations a dataset may begin with, for recognising files without a preamble.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
    b"UT UV".split()
)
#: ITU-R BT.601 luma weights, the ones Pillow's RGB -> L conversion uses.
_LUMA = (0.299, 0.587, 0.114)
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


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


def is_raw_dicom(path: Path) -> bool:
    """True for a DICOM dataset written without preamble and "DICM" (its first element's bytes).

    Such files (older ACR-NEMA style exports) start straight with an element of group 0008 (or
    0002), explicit VR (a VR after the tag) or implicit VR (a 4-byte length that fits the file).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = fh.seek(0, 2)
    except OSError:
        return False
    if len(head) < 8:
        return False
    if head[:2] in (b"\x08\x00", b"\x02\x00"):  # little endian group
        return head[4:6] in _VRS or int.from_bytes(head[4:8], "little") <= size - 8
    if head[:2] == b"\x00\x08":  # explicit VR big endian (the only big-endian syntax)
        return head[4:6] in _VRS
    return False


def looks_like_dicom(path: Path) -> bool:
    """A Part 10 file (``is_dicom``) or a dataset without preamble (``is_raw_dicom``)."""
    return is_dicom(path) or is_raw_dicom(path)


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
        # A dataset without preamble needs force=True; anything else not Part 10 is refused.
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not is_dicom(path) and is_raw_dicom(path))
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


def read_dicom_gray(path: Path, max_pixels: int | None = None, voi: str = DEFAULT_VOI) -> np.ndarray:
    """Decode a single-frame DICOM image to a 2-D uint8 array, bright = dense (see the module doc).

    ``max_pixels`` is checked from Rows x Columns before the pixel data is read. Raises DicomError
    with a one-line reason (without the path: the caller names the file) for what cxraug cannot
    use: no pixel data (a report, an RT plan), several frames, 1-bit data, a colour model it does
    not convert, a compressed transfer syntax no installed decoder reads, NaN values.
    """
    if voi not in VOI_POLICIES:
        raise ValueError(f"voi must be one of {VOI_POLICIES}, got {voi!r}")
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    with warnings.catch_warnings():
        # pydicom warns about quirks it reads past (VR mismatches, odd lengths); the image is fine.
        warnings.simplefilter("ignore", UserWarning)
        try:
            force = not is_dicom(path) and is_raw_dicom(path)
            ds = pydicom.dcmread(path, force=force, defer_size=_DEFER_SIZE)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise DicomError(_one_line(f"not a readable DICOM file ({exc})")) from None
        _check_image(ds, max_pixels)
        pixels = _decode_pixels(ds)
        return _to_display(pixels, ds, voi)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_image(ds: Any, max_pixels: int | None) -> None:
    """Refuse what is not one gray or colour picture, from the header alone."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        what = getattr(sop, "name", None) or str(sop or "") or "object"
        modality = _text(ds, "Modality")
        kind = f"a DICOM {what}" + (f" (modality {modality})" if modality else "")
        raise DicomError(f"no pixel data: {kind}, not an image")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames); cxraug reads single X-ray images")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise DicomError("pixel data without Rows and Columns; not a readable image")
    if max_pixels is not None and rows * cols > max_pixels:
        raise DicomError(
            f"{cols}x{rows} pixels ({rows * cols / 1e6:.1f} MP) is more than the "
            f"{max_pixels / 1e6:g} MP cxraug decodes; if it really is an X-ray, raise the "
            "limit with `data prepare --max-pixels N`"
        )
    if ds.get("BitsAllocated") == 1:
        raise DicomError("1-bit pixel data (a segmentation or overlay), not an X-ray")
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", *_COLOR):
        raise DicomError(
            f"photometric interpretation {photometric or '(missing)'!r} is not one cxraug converts "
            "to gray (MONOCHROME1/2, RGB, YBR, PALETTE COLOR)"
        )


def _decode_pixels(ds: Any) -> np.ndarray:
    """The stored values as pydicom decodes them (YBR converted to RGB)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        # A dataset without file meta (no preamble): its own encoding says how it is stored; such
        # files cannot hold compressed (encapsulated) pixel data.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    syntax = meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DicomError(f"transfer syntax {syntax.name} ({syntax}) is not one pydicom decodes") from None
        if not decoder.is_available:
            raise DicomError(
                f"compressed as {syntax.name}, which no installed decoder reads; {INSTALL_HINT} "
                "(pylibjpeg and its libjpeg, openjpeg and rle plugins)"
            )
    try:
        return np.asarray(ds.pixel_array)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means this file is unreadable
        hint = (
            f"; {INSTALL_HINT} may add a decoder that reads it"
            if syntax.is_encapsulated and not _has_pylibjpeg()
            else ""
        )
        raise DicomError(
            _one_line(f"could not decode {syntax.name} pixel data: {type(exc).__name__}: {exc}{hint}")
        ) from None


def _has_pylibjpeg() -> bool:
    import importlib.util

    return importlib.util.find_spec("pylibjpeg") is not None


def _to_display(pixels: np.ndarray, ds: Any, voi: str) -> np.ndarray:
    """Stored values -> uint8 display values, bright = dense."""
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric == "PALETTE COLOR" or photometric in _COLOR:
        return _color_to_gray(pixels, ds, photometric)
    if pixels.ndim != 2:
        raise DicomError(f"a {photometric} image of shape {pixels.shape}; expected rows x columns")
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, ds))
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(values.size - np.count_nonzero(finite))
            raise DicomError(
                f"{bad} of {values.size} pixel values are NaN or infinite after the modality LUT"
            )
    lut = _voi_lut(ds) if voi != "full" else None
    window = _window(ds) if voi != "full" else None
    if voi == "window" and window is not None:
        lut = None
    if lut is not None:
        shown = _apply_voi_lut(values, ds, lut)
    elif window is not None:
        shown = _apply_window(values.astype(np.float64), *window)
    else:
        shown = _min_max(values.astype(np.float64))
    np.rint(shown, out=shown)
    gray = shown.astype(np.uint8)
    if photometric == "MONOCHROME1":
        np.subtract(255, gray, out=gray)
    return gray


def _voi_lut(ds: Any) -> tuple[int, int] | None:
    """(first value mapped, entries) of the first usable VOI LUT Sequence item, else None."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or item.get("LUTData") is None or len(descriptor) != 3:
        return None
    entries, first, bits = (int(v) for v in descriptor)
    if not (bits == 8 or 10 <= bits <= 16):  # PS3.3 C.11.2.1.1 via pydicom's apply_voi
        return None
    return first, entries or 2**16


def _apply_voi_lut(values: np.ndarray, ds: Any, lut: tuple[int, int]) -> np.ndarray:
    """The first VOI LUT applied, scaled 0-1 by its output range (as float64 0-255).

    Input values below the first value mapped take the first entry and those past the table the
    last (PS3.3 C.11.2.1.1); pydicom's ``apply_voi`` reads the table (US or OW, either byte order).
    The output range is 0 .. the table's largest entry rather than 0 .. 2**bits-1: some devices
    (Agfa CRs) store 12-bit entries under a 16-bit descriptor, and Horos, Cornerstone, dcm4che and
    dicom-rs all scale by the entries actually present.
    """
    from pydicom.pixels import apply_voi

    first, entries = lut
    # Clipped here so the integer index pydicom builds (uint8/uint16) cannot wrap around.
    index = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
    table = np.asarray(apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0), dtype=np.float64)
    top = float(table.max())
    out = np.asarray(apply_voi(index, ds, 0), dtype=np.float64)
    if top <= 0:
        return np.zeros(out.shape, dtype=np.float64)
    out *= 255.0 / top
    return out


def _first_number(value: Any) -> float | None:
    """A DS value's first number (Window Center/Width may list alternatives: VM 1-n)."""
    from pydicom.multival import MultiValue

    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _window(ds: Any) -> tuple[float, float, str] | None:
    """(centre, width, function) of the first usable window, else None.

    LINEAR needs a width of at least 1 (PS3.3 C.11.2.1.2.1), LINEAR_EXACT and SIGMOID a positive
    one (C.11.2.1.3); another VOI LUT Function has no meaning cxraug knows, so the window is unused.
    """
    centre, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if centre is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function == "LINEAR" and width >= 1 or function in ("LINEAR_EXACT", "SIGMOID") and width > 0:
        return centre, width, function
    return None


def _apply_window(x: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """The window (PS3.3 C.11.2.1.2 / C.11.2.1.3) with output range 0-255, in place on ``x``.

    The same values as pydicom's ``apply_windowing`` rescaled from its (y_min, y_max) to 0-255:
    LINEAR maps x <= c - 0.5 - (w-1)/2 to 0, x > c - 0.5 + (w-1)/2 to 255 and is linear between;
    LINEAR_EXACT uses c and w as given; SIGMOID is 255 / (1 + exp(-4 (x - c) / w)).
    """
    if function == "SIGMOID":
        with np.errstate(over="ignore"):
            x -= centre
            x *= -4.0 / width
            np.exp(x, out=x)
            x += 1.0
            np.divide(255.0, x, out=x)
        return x
    if function == "LINEAR":
        centre, width = centre - 0.5, width - 1.0
    if width == 0:  # LINEAR with w = 1: a step at c - 0.5
        return np.where(x > centre, 255.0, 0.0)
    x -= centre
    x *= 1.0 / width
    x += 0.5
    np.clip(x, 0.0, 1.0, out=x)
    x *= 255.0
    return x


def _min_max(x: np.ndarray) -> np.ndarray:
    """The image's own value range to 0-255, in place (a constant image is black)."""
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        x[...] = 0.0
        return x
    x -= lo
    x *= 255.0 / (hi - lo)
    return x


def _color_to_gray(pixels: np.ndarray, ds: Any, photometric: str) -> np.ndarray:
    """RGB (pydicom has converted YBR) or palette colour to luma, scaled by the nominal range.

    Colour DICOMs of chest X-rays are screenshots or secondary captures whose colour carries no
    density beyond its brightness, so they are kept as gray like colour PNGs are; the VOI policy
    is for grayscale data and does not apply.
    """
    bits = int(ds.get("BitsStored") or 8)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = np.asarray(apply_color_lut(pixels, ds))
        bits = 8 if pixels.dtype == np.uint8 else 16
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DicomError(f"a {photometric} image of shape {pixels.shape}; expected rows x columns x 3")
    luma = pixels[..., 0] * _LUMA[0] + pixels[..., 1] * _LUMA[1] + pixels[..., 2] * _LUMA[2]
    luma *= 255.0 / (2**bits - 1)
    np.clip(luma, 0.0, 255.0, out=luma)
    np.rint(luma, out=luma)
    return luma.astype(np.uint8)
