"""Real DICOM Part 10 files for adapter tests, written with pydicom (uncompressed, one frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: Computed Radiography Image Storage (PS3.4), the SOP class of the Kaggle chest X-ray files.
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def smooth_image(seed: int, rows: int = 24, cols: int = 20, bits: int = 12) -> np.ndarray:
    """A distinct smooth image (no near-duplicate of other seeds) with values below 2**bits."""
    rng = np.random.default_rng(seed)
    small = rng.random((4, 4))
    big = np.kron(small, np.ones((rows // 4 + 1, cols // 4 + 1)))[:rows, :cols]
    return (big * (2**bits - 1)).astype(np.uint16)


def write_dicom(
    path: Path,
    *,
    patient_id: str | None,
    view: str | None = "PA",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    pixels: np.ndarray | None = None,
    seed: int = 0,
    bits: int = 12,
) -> Path:
    """Write a CR image with the tags the adapters read; None leaves a tag out."""
    pixels = smooth_image(seed, bits=bits) if pixels is None else pixels
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CR"
    if patient_id is not None:
        ds.PatientID = patient_id
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)  # pydicom 2.x
    return path
