"""Real DICOM files for tests, written with pydicom (Part 10 with file meta, or a bare dataset)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)


def dicom_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[Any, Any] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[Sequence[int], Sequence[int]] | None = None,
    lut_vr: str = "US",
    rescale: tuple[float, float] | None = None,
    frames: int | None = None,
    patient_id: str | None = None,
    view: str | None = None,
    modality: str = "DX",
) -> Dataset:
    """A DX image dataset holding ``pixels`` (2-D gray, or HxWx3 RGB) and the tags asked for.

    ``bits_stored`` below the container's bits keeps only that many bits (two's complement for a
    signed dtype), as a 12-bit detector writes into 16 allocated bits. ``voi_lut`` is (LUT
    Descriptor, LUT Data) of one VOI LUT Sequence item, its data written as ``lut_vr`` (US or OW).
    """
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape[0], pixels.shape[1]
    if pixels.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    allocated = pixels.dtype.itemsize * 8
    stored = bits_stored or allocated
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    raw = pixels.astype(pixels.dtype.newbyteorder("<"))
    if stored < allocated:
        unsigned = raw.view(f"<u{pixels.dtype.itemsize}")
        raw = unsigned & ((1 << stored) - 1)
    if frames is not None:
        ds.NumberOfFrames = frames
        raw = np.concatenate([raw] * frames)
    ds.PixelData = raw.tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        descriptor, data = voi_lut
        item = Dataset()
        item.add_new(0x00283002, "US", list(descriptor))  # LUT Descriptor
        if lut_vr == "OW":
            item.add_new(0x00283006, "OW", np.asarray(data, dtype="<u2").tobytes())  # LUT Data
        else:
            item.add_new(0x00283006, "US", list(data))
        ds.VOILUTSequence = [item]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    return ds


def write_dicom(path: Path, pixels: np.ndarray, preamble: bool = True, **tags: Any) -> Path:
    """``dicom_dataset(pixels, **tags)`` saved at ``path``: Part 10 (preamble, "DICM", file meta,
    explicit VR little endian), or with ``preamble=False`` a bare implicit-VR dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = dicom_dataset(pixels, **tags)
    if not preamble:
        ds.save_as(path, implicit_vr=True, little_endian=True)
        return path
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = FileDataset(str(path), ds, file_meta=meta, preamble=b"\0" * 128)
    out.save_as(path, enforce_file_format=True)
    return path
