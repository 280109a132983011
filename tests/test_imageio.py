"""Decoding real downloads whose extensions lie, odd modes, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxraug.imageio import (
    ImageReadError,
    decode_source,
    fit_square,
    perceptual_hash,
    read_gray,
)

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
