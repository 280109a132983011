"""DICOM decoding: photometric interpretations, modality LUT, VOI policies, bit depths, refusals."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_files import dicom_dataset, write_dicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import apply_windowing, get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from cxraug.dicomio import (
    INSTALL_HINT,
    VOI_POLICIES,
    DicomError,
    is_dicom,
    is_raw_dicom,
    looks_like_dicom,
    read_dicom_gray,
    read_header,
)
from cxraug.fileio import file_sha256
from cxraug.imageio import ImageReadError, decode_source, read_gray

needs_pylibjpeg = pytest.mark.skipif(
    importlib.util.find_spec("pylibjpeg") is None, reason='needs the dicom extra: pip install "cxraug[dicom]"'
)


def bundled(name: str) -> Path:
    """One of pydicom's own test files (shipped in the package, never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def ramp12() -> np.ndarray:
    """A 16 x 16 ramp over 12-bit values 100 .. 4000, in 16 allocated bits."""
    return np.linspace(100, 4000, 256).round().astype(np.uint16).reshape(16, 16)


def expected_min_max(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64)
    return np.rint((v - v.min()) * 255.0 / (v.max() - v.min())).astype(np.uint8)


# --- photometric interpretation, full range ------------------------------------------------------


def test_monochrome2_without_voi_is_the_min_max_of_the_stored_values(tmp_path: Path) -> None:
    pixels = ramp12()
    path = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12)
    gray = read_gray(path)
    assert gray.dtype == np.uint8 and gray.shape == (16, 16)
    assert np.array_equal(gray, expected_min_max(pixels))


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path: Path) -> None:
    pixels = ramp12()
    mono2 = read_gray(write_dicom(tmp_path / "m2.dcm", pixels, bits_stored=12))
    mono1 = read_gray(write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1"))
    assert np.array_equal(mono1, 255 - mono2)
    # ... also after a window (inversion follows the VOI step, PS3.3 C.7.6.3.1.2)
    win = {"bits_stored": 12, "window": (2000, 1001)}
    w2 = read_gray(write_dicom(tmp_path / "w2.dcm", pixels, **win))
    w1 = read_gray(write_dicom(tmp_path / "w1.dcm", pixels, photometric="MONOCHROME1", **win))
    assert np.array_equal(w1, 255 - w2)
    assert w2[0, 0] == 0 and w2[-1, -1] == 255 and w1[0, 0] == 255


def test_8_bit_full_range_is_kept_as_is(tmp_path: Path) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(read_gray(write_dicom(tmp_path / "a.dcm", pixels)), pixels)


def test_16_bit_unsigned_and_12_bit_signed(tmp_path: Path) -> None:
    full16 = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    assert np.array_equal(read_gray(write_dicom(tmp_path / "u16.dcm", full16)), expected_min_max(full16))
    # Signed 12-bit in 16 allocated bits: stored as 12-bit two's complement (-1 -> 0x0FFF); a
    # reader that ignored the sign would put -2048 at the top of the range.
    signed = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    path = write_dicom(tmp_path / "s12.dcm", signed, bits_stored=12)
    assert np.array_equal(read_gray(path), expected_min_max(signed))
    assert read_gray(path).tolist() == [[0, 127], [128, 255]]


# --- modality LUT ------------------------------------------------------------------------------


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path: Path) -> None:
    # Modality values 2x - 1000: stored 400, 450, 500, 600 are -200, -100, 0, 200 (e.g. HU). A
    # window of centre 0, width 401 on them (LINEAR: 0 at <= -200.5, 255 above 199.5):
    stored = np.array([[400, 450], [500, 600]], dtype=np.int16)
    path = write_dicom(tmp_path / "ct.dcm", stored, rescale=(2.0, -1000.0), window=(0, 401))
    assert read_gray(path).tolist() == [[0, 64], [128, 255]]
    # On the stored values that window would have shown everything white.
    plain = write_dicom(tmp_path / "plain.dcm", stored, window=(0, 401))
    assert read_gray(plain).tolist() == [[255, 255], [255, 255]]


def test_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    ds = dicom_dataset(np.array([[0, 1], [2, 3]], dtype=np.uint16), bits_stored=12)
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])
    item.add_new(0x00283006, "US", [0, 100, 200, 4000])
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = [item]
    path = tmp_path / "mlut.dcm"
    _save(ds, path)
    assert read_gray(path).tolist() == expected_min_max(np.array([[0, 100], [200, 4000]])).tolist()


def _save(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    FileDataset(str(path), ds, file_meta=meta, preamble=b"\0" * 128).save_as(path, enforce_file_format=True)


# --- VOI: window centre / width ------------------------------------------------------------------


def test_linear_window_gives_the_clipped_ramp(tmp_path: Path) -> None:
    # LINEAR (PS3.3 C.11.2.1.2.1), c = 2000, w = 1001: 0 at x <= 1499.5, 255 at x > 2499.5,
    # ((x - 1999.5) / 1000 + 0.5) * 255 between.
    stored = np.array([[1000, 1500, 1750, 2000], [2250, 2499, 2500, 4000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=(2000, 1001))
    assert read_gray(path).tolist() == [[0, 0, 64, 128], [191, 255, 255, 255]]


@pytest.mark.parametrize(
    ("function", "window"),
    [(None, (2048, 1024)), ("LINEAR", (1000.5, 1)), ("LINEAR_EXACT", (2048, 700)), ("SIGMOID", (1500, 900))],
)
def test_window_matches_pydicom_apply_windowing(tmp_path: Path, function: str | None, window: tuple) -> None:
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    ds = dicom_dataset(stored, bits_stored=12, window=window, voi_function=function)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=window, voi_function=function)
    # pydicom's output range for unsigned 12-bit data is 0 .. 4095; ours is 0 .. 255.
    theirs = apply_windowing(stored.astype(np.float64), ds) * (255.0 / 4095.0)
    ours = read_gray(path).astype(np.float64)
    assert np.abs(ours - theirs).max() <= 0.5 + 1e-9


def test_several_windows_the_first_is_used(tmp_path: Path) -> None:
    stored = ramp12()
    first = read_gray(write_dicom(tmp_path / "one.dcm", stored, bits_stored=12, window=(2000, 1001)))
    both = read_gray(
        write_dicom(tmp_path / "two.dcm", stored, bits_stored=12, window=([2000, 600], [1001, 300]))
    )
    assert np.array_equal(both, first)


def test_unusable_window_falls_back_to_the_full_range(tmp_path: Path) -> None:
    stored = ramp12()
    for i, (window, function) in enumerate([((2000, 0), None), ((2000, 500), "CURVY")]):
        path = write_dicom(
            tmp_path / f"{i}.dcm", stored, bits_stored=12, window=window, voi_function=function
        )
        assert np.array_equal(read_gray(path), expected_min_max(stored)), (window, function)


# --- VOI: LUT sequence and the policies ----------------------------------------------------------

# Values 0, 1, 2, 3, 10 through a LUT of 4 entries starting at input 1: below the first value
# mapped -> first entry, past the table -> last entry (PS3.3 C.11.2.1.1). The entries are 12-bit
# under a 16-bit descriptor (as Agfa CRs write them), so the output range is 0 .. 4095.
LUT_INPUT = np.array([[0, 1, 2, 3, 10]], dtype=np.uint16)
LUT = ([4, 1, 16], [0, 1000, 3000, 4095])
LUT_OUTPUT = np.rint(np.array([[0, 0, 1000, 3000, 4095]]) * 255 / 4095).astype(np.uint8)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence(tmp_path: Path, vr: str) -> None:
    path = write_dicom(tmp_path / "lut.dcm", LUT_INPUT, bits_stored=12, voi_lut=LUT, lut_vr=vr)
    assert np.array_equal(read_gray(path), LUT_OUTPUT)
    inverted = write_dicom(
        tmp_path / "lut1.dcm", LUT_INPUT, bits_stored=12, voi_lut=LUT, lut_vr=vr, photometric="MONOCHROME1"
    )
    assert np.array_equal(read_gray(inverted), 255 - LUT_OUTPUT)


def test_voi_policies_choose_between_lut_window_and_full_range(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "both.dcm", LUT_INPUT, bits_stored=12, voi_lut=LUT, window=(2, 3))
    windowed = write_dicom(tmp_path / "window.dcm", LUT_INPUT, bits_stored=12, window=(2, 3))
    full = expected_min_max(LUT_INPUT)
    assert np.array_equal(read_gray(path, dicom_voi="auto"), LUT_OUTPUT)  # the LUT wins
    assert np.array_equal(read_gray(path, dicom_voi="window"), read_gray(windowed))  # the window wins
    assert not np.array_equal(read_gray(windowed), full)
    assert np.array_equal(read_gray(path, dicom_voi="full"), full)  # the file's VOI is ignored
    # Without a window, "window" still uses the LUT; without any VOI every policy is min-max.
    lut_only = write_dicom(tmp_path / "lut.dcm", LUT_INPUT, bits_stored=12, voi_lut=LUT)
    assert np.array_equal(read_gray(lut_only, dicom_voi="window"), LUT_OUTPUT)
    plain = write_dicom(tmp_path / "plain.dcm", LUT_INPUT, bits_stored=12)
    for policy in VOI_POLICIES:
        assert np.array_equal(read_gray(plain, dicom_voi=policy), full), policy
    with pytest.raises(ValueError, match="voi must be one of"):
        read_dicom_gray(plain, voi="lut")


# --- what is refused -----------------------------------------------------------------------------


def test_pixel_limit_is_checked_before_the_pixel_data_is_read(tmp_path: Path) -> None:
    ds = dicom_dataset(np.zeros((100, 100), dtype=np.uint16))
    ds.PixelData = b"\0" * 10  # truncated: decoding it would fail differently
    path = tmp_path / "big.dcm"
    _save(ds, path)
    with pytest.raises(ImageReadError, match=r"100x100 pixels .* --max-pixels"):
        read_gray(path, max_pixels=9_999)
    with pytest.raises(ImageReadError, match="less than expected"):
        read_gray(path, max_pixels=10_000)


def test_multi_frame_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cine.dcm", ramp12(), frames=3)
    message = "multi-frame DICOM (3 frames); cxraug reads single X-ray images"
    with pytest.raises(ImageReadError) as err:
        read_gray(path)
    assert str(err.value) == message
    with pytest.raises(ImageReadError, match=r"multi-frame DICOM \(15 frames\)"):
        read_gray(bundled("rtdose.dcm"))
    # A single frame that says so is fine.
    assert read_gray(write_dicom(tmp_path / "one.dcm", ramp12(), frames=1)).shape == (16, 16)


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("rtplan.dcm", "RT Plan Storage (modality RTPLAN)"),
        ("test-SR.dcm", "Comprehensive SR Storage (modality SR)"),
    ],
)
def test_non_image_dicom_is_refused(name: str, what: str) -> None:
    with pytest.raises(ImageReadError) as err:
        read_gray(bundled(name))
    assert str(err.value) == f"no pixel data: a DICOM {what}, not an image"


def test_segmentation_bits_and_nan_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="1-bit pixel data"):
        read_gray(bundled("liver_1frame.dcm"))
    ds = dicom_dataset(np.zeros((2, 2), dtype=np.uint16))
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = np.array([[0.0, np.nan], [1.0, 2.0]], dtype="<f4").tobytes()
    path = tmp_path / "float.dcm"
    _save(ds, path)
    with pytest.raises(ImageReadError, match="1 of 4 pixel values are NaN or infinite"):
        read_gray(path)
    ds.FloatPixelData = np.array([[0.0, 1.0], [3.0, 2.0]], dtype="<f4").tobytes()
    _save(ds, path)
    assert read_gray(path).tolist() == [[0, 85], [255, 170]]


def test_missing_decoder_says_which_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.dcm"
    shutil.copy(bundled("MR_small_jp2klossless.dcm"), path)
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})  # as without pylibjpeg, gdcm or Pillow's openjpeg
    with pytest.raises(ImageReadError) as err:
        read_gray(path)
    assert str(err.value) == (
        "compressed as JPEG 2000 Image Compression (Lossless Only), which no installed decoder "
        f"reads; {INSTALL_HINT} (pylibjpeg and its libjpeg, openjpeg and rle plugins)"
    )
    assert 'pip install "cxraug[dicom]"' in str(err.value) and "\n" not in str(err.value)


# --- colour --------------------------------------------------------------------------------------


def test_rgb_dicom_becomes_luma(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    gray = read_gray(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    pillow = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))  # ITU-R 601, fixed point
    assert gray.shape == (8, 8) and np.abs(gray.astype(int) - pillow).max() <= 1
    # pydicom's RLE-compressed RGB test image, 8 and 16 bits per sample, the same picture.
    assert np.array_equal(read_gray(bundled("SC_rgb_rle.dcm")), read_gray(bundled("SC_rgb_rle_16bit.dcm")))


# --- recognising DICOM, whatever the name ----------------------------------------------------------


def test_dicom_is_found_by_content_not_by_extension(tmp_path: Path) -> None:
    pixels = ramp12()
    part10 = write_dicom(tmp_path / "scan.png", pixels, bits_stored=12, window=(2000, 1001))
    bare = write_dicom(tmp_path / "noext", pixels, bits_stored=12, window=(2000, 1001), preamble=False)
    assert is_dicom(part10) and not is_raw_dicom(part10)
    assert not is_dicom(bare) and is_raw_dicom(bare) and looks_like_dicom(bare)
    assert np.array_equal(read_gray(part10), read_gray(bare))
    # A PNG named .dcm is a PNG.
    png = tmp_path / "image.dcm"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(png, format="PNG")
    assert not looks_like_dicom(png) and read_gray(png).tolist() == [[7] * 4] * 4
    # Text that begins like a bare DICOM element but is not one is not an image.
    fake = tmp_path / "fake"
    fake.write_bytes(b"\x08\x00\x05\x00CS\x0a\x00" + b"\xff" * 3)
    with pytest.raises(ImageReadError):
        read_gray(fake)


def test_dual_tiff_dicom_is_read_as_dicom() -> None:
    # pydicom's MR_small.dcm has a TIFF header in its preamble ("II*\0"): it is read as DICOM,
    # with its window (centre 600, width 1600), and the lossless re-encodings give the same pixels.
    path = bundled("MR_small.dcm")
    assert path.read_bytes()[:4] == b"II*\x00"
    gray = read_gray(path)
    assert gray.shape == (64, 64) and gray.min() == 52 and gray.max() == 255
    for name in ("MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"):
        assert np.array_equal(read_gray(bundled(name)), gray), name


@needs_pylibjpeg
@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_compressed_lossless_decodes_to_the_same_pixels(name: str) -> None:
    assert np.array_equal(read_gray(bundled(name)), read_gray(bundled("MR_small.dcm")))


@needs_pylibjpeg
def test_compressed_bundled_files() -> None:
    # JPEG Extended 12-bit (Pillow cannot decode it; libjpeg can) and JPEG 2000 lossy.
    for name in ("JPGExtended.dcm", "JPEG2000.dcm"):
        gray = read_gray(bundled(name))
        assert gray.shape == (1024, 256) and gray.min() == 0 and gray.max() == 255, name


def test_ct_small_signed_with_rescale() -> None:
    import pydicom

    path = bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PixelRepresentation == 1 and "WindowCenter" not in ds
    modality = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(read_gray(path), expected_min_max(modality))


def test_decode_source_hashes_the_file_bytes(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", ramp12(), bits_stored=12)
    square, digest, _ = decode_source(path, 32, "pad")
    assert square.shape == (32, 32) and digest == file_sha256(path)
    full, _, _ = decode_source(path, 32, "pad", dicom_voi="full")
    assert full.shape == (32, 32)


def test_read_header_of_part10_and_bare_files(tmp_path: Path) -> None:
    tags = {"patient_id": " P-0042 ", "view": "PA"}
    for path in (
        write_dicom(tmp_path / "a.dcm", ramp12(), **tags),
        write_dicom(tmp_path / "b", ramp12(), preamble=False, **tags),
    ):
        header = read_header(path)
        assert (header.patient_id, header.view, header.modality, header.frames) == ("P-0042", "PA", "DX", 1)
        assert header.has_pixels and header.photometric == "MONOCHROME2"
    with pytest.raises(DicomError, match="not a readable DICOM file"):
        read_header(Path(__file__))


@pytest.mark.parametrize("syntax", ["RLE Lossless", "JPEG 2000 Lossless"])
def test_own_files_compressed_decode_to_the_uncompressed_pixels(tmp_path: Path, syntax: str) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    uid = RLELossless if syntax == "RLE Lossless" else JPEG2000Lossless
    if uid != RLELossless and importlib.util.find_spec("openjpeg") is None:
        pytest.skip('JPEG 2000 needs the dicom extra: pip install "cxraug[dicom]"')
    pixels = (np.arange(48 * 40).reshape(48, 40) * 7 % 4096).astype(np.uint16)
    plain = write_dicom(
        tmp_path / "plain.dcm", pixels, bits_stored=12, photometric="MONOCHROME1", window=(2000, 3000)
    )
    ds = pydicom.dcmread(plain)
    ds.compress(uid)  # pydicom's own RLE encoder; pylibjpeg-openjpeg for JPEG 2000
    packed = tmp_path / "packed.dcm"
    ds.save_as(packed)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == uid
    assert np.array_equal(read_gray(packed), read_gray(plain))
