"""Decoding real downloads whose extensions lie, odd modes, and bad files."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxraug.imageio import (
    ImageReadError,
    array_to_gray,
    decode_source,
    fit_square,
    perceptual_hash,
    read_gray,
    resize,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]

# file -> (real format, mode, size) as documented in shared/data/README.md
REAL = {
    "001.jpeg": ("JPEG", "RGB", (873, 751)),
    "040.png": ("PNG", "RGBA", (466, 399)),
    "054.jpeg": ("JPEG", "L", (1384, 1326)),
    "139.webp": ("WEBP", "RGB", (1024, 922)),
    "766p.jpg": ("WEBP", "RGB", (1934, 1876)),
    "770.png": ("JPEG", "RGB", (438, 415)),
    "871.jpg": ("PNG", "RGBA", (472, 382)),
    "884.png": ("WEBP", "RGB", (768, 648)),
}


def test_every_real_sample_decodes_by_content(shared_data: Path) -> None:
    files = sorted((shared_data / "cxr-samples").iterdir())
    assert len(files) == 16
    for path in files:
        gray = read_gray(path)
        assert gray.dtype == np.uint8 and gray.ndim == 2, path.name
        with Image.open(path) as img:
            assert gray.shape == (img.height, img.width), path.name
        assert gray.std() > 10, f"{path.name} decoded to a flat image"


def test_lying_extensions_match_their_real_format(shared_data: Path) -> None:
    for name, (fmt, mode, size) in REAL.items():
        with Image.open(shared_data / "cxr-samples" / name) as img:
            assert (img.format, img.mode, img.size) == (fmt, mode, size), name


def test_jpeg_draft_decoding_matches_full_decoding(shared_data: Path) -> None:
    path = shared_data / "cxr-samples" / "054.jpeg"
    fast = fit_square(read_gray(path, target=64), 64)
    full = fit_square(read_gray(path), 64)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


def test_rgba_with_partial_alpha_goes_black_where_transparent(tmp_path: Path) -> None:
    arr = np.full((10, 10, 4), 200, np.uint8)
    arr[..., 3] = 255
    arr[:, :5, 3] = 0
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    gray = read_gray(tmp_path / "a.png")
    assert gray[:, :5].max() == 0 and gray[:, 5:].min() == 200


def test_16bit_grayscale_is_scaled_to_full_range(tmp_path: Path) -> None:
    arr = np.linspace(1000, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    with Image.open(tmp_path / "x16.png") as img:
        assert img.mode.startswith("I")
    gray = read_gray(tmp_path / "x16.png")
    assert gray.min() == 0 and gray.max() == 255


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"hello, not an image", "not an image"), (None, "could not decode")],
)
def test_bad_files_raise_with_a_reason(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.png"
    if content is None:  # a truncated PNG
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason):
        read_gray(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_nan_or_inf_is_refused_not_blackened(tmp_path: Path, bad: float) -> None:
    arr = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    arr[4, 7] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(arr).save(path)
    with Image.open(path) as img:
        assert img.mode == "F"
    with pytest.raises(ImageReadError, match=r"1 of 256 pixel values are NaN or infinite"):
        read_gray(path)
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        array_to_gray(arr.astype(np.float64))
    assert not np.isfinite(arr).all(), "the caller's array is left as it was"


def test_finite_float_tiff_still_scales(tmp_path: Path) -> None:
    arr = np.linspace(-3, 5, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(arr).save(tmp_path / "float.tif")
    gray = read_gray(tmp_path / "float.tif")
    assert gray.min() == 0 and gray.max() == 255


def _png_of_zeros(path: Path, width: int, height: int, depth: int = 16, rows: int | None = None) -> Path:
    """A PNG of zeros, compressed 100 rows at a time (the pixels are never all in memory).

    ``rows`` writes only that many rows of pixel data: a header that claims more than the file holds.
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    packer = zlib.compressobj(9)
    block = b"\x00" * ((1 + width * depth // 8) * 100)  # each row: filter byte 0, then zeros
    body = b"".join(packer.compress(block) for _ in range((rows or height) // 100)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The attack's file: 381 KB on disk, 14000 x 14000 16-bit pixels (2.7 GB to decode before)."""
    return _png_of_zeros(tmp_path_factory.mktemp("huge") / "huge.png", 14000, 14000)


def test_huge_png_is_refused_from_its_header_before_decoding(
    huge_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert huge_png.stat().st_size < 400_000
    with Image.open(huge_png) as img:
        assert img.size == (14000, 14000) and img.mode.startswith("I;16")

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(ImageReadError, match=r"14000x14000 pixels \(196\.0 MP\) is more than the 50 MP"):
        read_gray(huge_png)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from Linux /proc")
def test_huge_png_decode_attempt_stays_small_in_memory(huge_png: Path) -> None:
    """In a fresh process: the refusal costs megabytes, not the 2.7 GB of decoding it."""
    # VmHWM (peak resident memory of this process image); getrusage's ru_maxrss would include
    # the pytest parent's peak, inherited through fork and exec.
    script = (
        "import sys\n"
        "from cxraug.imageio import ImageReadError, read_gray\n"
        "try:\n"
        "    read_gray(sys.argv[1], 64)\n"
        "except ImageReadError as exc:\n"
        "    print('refused', exc)\n"
        "status = open('/proc/self/status').read()\n"
        "print('peak_kb', status.split('VmHWM:')[1].split()[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(huge_png)],
        capture_output=True,
        text=True,
        check=True,
        cwd=huge_png.parent,  # not the repository: `python -c` puts the working folder first
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "refused 14000x14000" in out
    peak_mb = int(out.rsplit("peak_kb", 1)[1]) / 1024
    assert peak_mb < 300, f"refusing the huge PNG took {peak_mb:.0f} MB"


def test_pixel_limit_can_be_raised(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 120), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"120x100 pixels .* --max-pixels"):
        read_gray(path, max_pixels=11_999)
    assert read_gray(path, max_pixels=12_000).shape == (100, 120)


def test_pillow_decompression_bomb_is_a_reason(tmp_path: Path) -> None:
    """Headers past Pillow's own limit (here 10 G pixels) are refused by Pillow, and said so."""
    path = _png_of_zeros(tmp_path / "bomb.png", 100_000, 100_000, depth=8, rows=100)
    with pytest.raises(ImageReadError, match="too large to decode safely"):
        read_gray(path, max_pixels=400_000_000)


@pytest.mark.parametrize("kind", ["fifo", "dangling", "folder"])
def test_non_files_are_refused_without_opening(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.png"
    if kind == "fifo":
        import os

        os.mkfifo(path)  # opening it would block forever
    elif kind == "dangling":
        path.symlink_to(tmp_path / "nowhere.png")
    else:
        path.mkdir()
    with pytest.raises(ImageReadError, match="not a regular file|cannot read the file"):
        read_gray(path)


def test_fit_square_pad_and_crop() -> None:
    tall = np.full((40, 20), 255, np.uint8)
    padded = fit_square(tall, 20, "pad")
    assert padded.shape == (20, 20)
    assert padded[:, :4].max() == 0 and padded[:, 6:14].min() == 255  # black side bars
    cropped = fit_square(tall, 20, "crop")
    assert cropped.shape == (20, 20) and cropped.min() == 255


def test_perceptual_hash_is_stable_under_reencoding(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "cxr-samples" / "422.JPG"
    img, _, h1 = decode_source(src, 128, "pad")
    Image.open(src).convert("L").resize((600, 580)).save(tmp_path / "copy.png")
    _, _, h2 = decode_source(tmp_path / "copy.png", 128, "pad")
    assert bin(h1 ^ h2).count("1") <= 4
    other, _, h3 = decode_source(shared_data / "cxr-samples" / "054.jpeg", 128, "pad")
    assert perceptual_hash(img) == h1 and h3 != h1


@pytest.mark.parametrize("target", [(20, 31), (90, 41), 37])
def test_resize_numpy_and_torch_agree_exactly_for_uint8(target: int | tuple[int, int]) -> None:
    batch = np.random.default_rng(0).integers(0, 256, (3, 45, 53), dtype=np.uint8)
    from_numpy = resize(batch, target)
    from_torch = resize(torch.from_numpy(batch)[:, None], target)
    assert from_numpy.dtype == np.uint8 and from_torch.dtype == torch.uint8
    assert np.array_equal(from_torch[:, 0].numpy(), from_numpy)
    assert np.array_equal(resize(batch[1], target), from_numpy[1])  # a single 2-D image alike


def test_resize_to_a_non_square_target() -> None:
    gray = np.zeros((60, 90), np.uint8)
    gray[:, 45:] = 200
    out = resize(gray, (25, 70))
    assert out.shape == (25, 70) and out.dtype == np.uint8
    # Columns of a vertical edge stay identical; far from the edge the values survive exactly.
    assert (out == out[0]).all() and out[:, :30].max() == 0 and out[:, 40:].min() == 200


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resize_float_tensor_stays_float_on_its_device(device: str, dtype: torch.dtype) -> None:
    x = torch.linspace(-1.0, 1.0, 2 * 3 * 16 * 24, dtype=dtype, device=device).reshape(2, 3, 16, 24)
    out = resize(x, (10, 7))
    assert out.shape == (2, 3, 10, 7) and out.dtype == dtype and out.device == x.device
    expected = F.interpolate(x, size=(10, 7), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(out, expected)  # not rounded, not clamped
    assert not torch.equal(out, out.round())


def test_resize_matches_pil_bilinear_on_a_real_xray(shared_data: Path) -> None:
    # Same filter; PIL rounds to 8 bits between its horizontal and vertical passes, resize does not.
    gray = read_gray(shared_data / "cxr-samples" / "766p.jpg")
    for h, w in [(256, 256), (200, 131), (97, 300), (2000, 1950)]:
        pil = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR))
        diff = np.abs(resize(gray, (h, w)).astype(int) - pil.astype(int))
        assert diff.max() <= 1, (h, w)
        assert (diff > 0).mean() < 0.1, (h, w)


def test_resize_rejects_what_it_cannot_resize() -> None:
    with pytest.raises(ValueError, match="uint8 array"):
        resize(np.zeros((4, 4), np.float32), 2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        resize(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="positive"):
        resize(np.zeros((4, 4), np.uint8), (0, 3))
