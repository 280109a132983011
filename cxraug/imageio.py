"""Decode any chest X-ray file the way it really is (not as its extension says) to 8-bit grayscale."""

from __future__ import annotations

import hashlib
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxraug.dicomio import DEFAULT_VOI, DicomError, is_dicom, is_raw_dicom, read_dicom_gray
from cxraug.fileio import file_sha256

if TYPE_CHECKING:
    import torch

# Pillow's own bomb guard (it warns above this and refuses above twice this) stays as a backstop;
# read_gray's max_pixels, checked from the header before any pixel is decoded, is the real limit.
PIL_WARN_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = PIL_WARN_PIXELS
#: Largest image (width x height) read_gray decodes by default. Chest X-rays reach ~25 MP; a
#: 16-bit image at this limit peaks at ~600 MB while it is scaled to 8 bits. ``data prepare
#: --max-pixels`` raises it, up to ``MAX_PIXELS_CEILING``.
DEFAULT_MAX_PIXELS = 50_000_000
#: Pillow refuses anything above twice ``Image.MAX_IMAGE_PIXELS`` whatever we allow.
MAX_PIXELS_CEILING = 2 * PIL_WARN_PIXELS

RESIZE_MODES = ("pad", "crop")
#: The one filter images are resized with (prepare, GAN and classifier batches, synthetic images).
RESIZE_FILTER = "antialiased bilinear (triangle filter; PIL's BILINEAR, torch's bilinear with antialias=True)"


class ImageReadError(Exception):
    """A file that cannot be decoded as an image; the message is the reason for the report."""


def _to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Any Pillow mode to a 2-D uint8 array; high bit depths are min-max scaled."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.array(img, dtype=np.float64)
        return _scale_to_uint8(arr)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent areas of an X-ray are outside the body: show them as black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max scale a float64 array (its own, so modified in place) to uint8."""
    finite = np.isfinite(arr)
    if not finite.all():
        # NaN or inf would turn the whole image black (or noise) through the min-max scaling.
        bad = int(arr.size - np.count_nonzero(finite))
        raise ImageReadError(
            f"{bad} of {arr.size} pixel values are NaN or infinite (a floating-point image "
            "without a valid range); not an X-ray cxraug can scale"
        )
    del finite
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape[:2], dtype=np.uint8)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    # In place: a 50 MP 16-bit image is 400 MB as float64, and each temporary would be another.
    arr -= lo
    arr *= 255.0 / (hi - lo)
    np.round(arr, out=arr)
    return arr.astype(np.uint8)


def array_to_gray(arr: np.ndarray) -> np.ndarray:
    """An in-memory image (HxW, HxWx3/4; uint8, uint16 or float) as 2-D uint8."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        if arr.dtype != np.uint8:
            return _scale_to_uint8(arr.astype(np.float64))  # astype copies: the caller's stays
        img = Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA")
        return _to_uint8_gray(img)
    if arr.ndim != 2:
        raise ImageReadError(f"array of shape {arr.shape} is not a 2-D grayscale or RGB(A) image")
    if arr.dtype == np.uint8:
        return arr
    return _scale_to_uint8(arr.astype(np.float64))


def read_gray(
    path: Path, target: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, dicom_voi: str = DEFAULT_VOI
) -> np.ndarray:
    """Decode ``path`` by content (the extension may lie), apply EXIF rotation, return uint8 2-D.

    ``target`` lets JPEG decoding skip detail finer than needed for a ``target``-pixel result.
    An image of more than ``max_pixels`` pixels (after that JPEG reduction) is refused from its
    header, before its pixels are decoded: a small file can hold a huge image (a 381 KB 16-bit PNG
    of 14000x14000 zeros needs 2.7 GB to decode). DICOM files (the "DICM" magic, or a dataset
    without preamble that no image format claims) are decoded by ``cxraug.dicomio.read_dicom_gray``
    with the VOI policy ``dicom_voi``.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:  # e.g. a dangling link
        raise ImageReadError(f"cannot read the file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):  # reading a FIFO or a device could block or never end
        raise ImageReadError("not a regular file (a FIFO, device or socket)")
    if info.st_size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        # DICOM first: a Part 10 preamble may itself be a TIFF header (dual-format files), which
        # Pillow would read as the TIFF it pretends to be.
        if is_dicom(path):
            return read_dicom_gray(path, max_pixels, dicom_voi)
        try:
            image = _decode(path, target, max_pixels)
        except UnidentifiedImageError:
            if not is_raw_dicom(path):
                raise
            return read_dicom_gray(path, max_pixels, dicom_voi)
    except ImageReadError:
        raise
    except DicomError as exc:
        raise ImageReadError(str(exc)) from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image Pillow can read (unknown or corrupt format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(
            f"too large to decode safely ({exc}); cxraug decodes at most {MAX_PIXELS_CEILING} pixels"
        ) from None
    except MemoryError:
        raise ImageReadError("not enough memory to decode it") from None
    except Exception as exc:  # noqa: BLE001 - see below
        # Pillow's decoders meet corrupt files with OSError and ValueError mostly, but also
        # struct.error, IndexError, KeyError, TypeError, EOFError, ZeroDivisionError, ... (and
        # pydicom's reading of a truncated or inconsistent DICOM alike). Whatever they raise while
        # decoding a file, the file is unreadable.
        reason = " ".join(str(exc).split())  # one line for the report (pydicom's messages span several)
        raise ImageReadError(f"could not decode: {type(exc).__name__}: {reason}") from None
    with image:
        try:
            return _to_uint8_gray(image)
        except (ValueError, OSError) as exc:  # a mode Pillow decodes but cannot convert
            raise ImageReadError(f"cannot convert its {image.mode} pixels to grayscale: {exc}") from None


def _decode(path: Path, target: int | None, max_pixels: int) -> Image.Image:
    """Open, check the size from the header, decode and EXIF-rotate (Pillow's part only)."""
    with warnings.catch_warnings():
        # Pillow warns above Image.MAX_IMAGE_PIXELS: an error, unless max_pixels allows more.
        if max_pixels <= PIL_WARN_PIXELS:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        else:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(path)
        try:
            if target and opened.format == "JPEG":
                opened.draft(opened.mode if opened.mode in ("L", "RGB") else None, (target, target))
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"{width}x{height} pixels ({width * height / 1e6:.1f} MP) is more than the "
                    f"{max_pixels / 1e6:g} MP cxraug decodes; if it really is an X-ray, raise the "
                    "limit with `data prepare --max-pixels N`"
                )
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)  # in place: no second copy of a big image
        except BaseException:
            opened.close()
            raise
        return opened


@overload
def resize(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray: ...


@overload
def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor: ...


def resize(x: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> np.ndarray | torch.Tensor:
    """Resize images to ``size`` (an int for a square, or (h, w)) with ``RESIZE_FILTER``.

    Takes a (H, W) or (N, H, W) uint8 numpy array, or an (N, C, H, W) tensor, uint8 or floating
    point, on any device; returns the same kind, dtype and device. uint8 results are rounded (half
    to even) and clamped to 0-255; floats are neither. One implementation serves all of them:
    ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` in float32 (float64
    stays float64), so arrays and CPU tensors give identical pixels. PIL's BILINEAR computes the
    same filter in fixed point and rounds between its two passes: at most one grey level apart.
    An input already of ``size`` is returned as it is.

    Deliberately not used by the perceptual hashes (32x32 BOX thumbnails in ``perceptual_hash``
    and ``cxraug.data.dedup``) or the FID/metric feature resizes (clean-fid's exact
    preprocessing): those filters are part of their algorithms.
    """
    import torch
    import torch.nn.functional as F

    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be positive, got {size!r}")
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim not in (2, 3):
            raise ValueError(f"resize: expected a (H, W) or (N, H, W) uint8 array, got {x.dtype} {x.shape}")
        if x.shape[-2:] == (h, w):
            return x
        # torch wants a writable buffer (decoded images are read-only views), though it writes nothing.
        batch = torch.from_numpy(np.require(x, requirements=("C", "W"))).reshape(-1, 1, *x.shape[-2:])
        return resize(batch, (h, w)).numpy().reshape(*x.shape[:-2], h, w)
    if x.ndim != 4 or not (x.dtype == torch.uint8 or x.dtype.is_floating_point):
        raise ValueError(
            f"resize: expected an (N, C, H, W) uint8 or float tensor, got {x.dtype} {tuple(x.shape)}"
        )
    if tuple(x.shape[-2:]) == (h, w):
        return x
    work = x.double() if x.dtype == torch.float64 else x.float()
    out = F.interpolate(work, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    if x.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(x.dtype)


def fit_square(gray: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """``resize`` keeping the aspect ratio, then pad with black ("pad") or centre-crop ("crop")."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = gray.shape
    scale = size / max(h, w) if mode == "pad" else size / min(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    arr = resize(gray, (new_h, new_w))
    out = np.zeros((size, size), dtype=np.uint8)
    if mode == "pad":
        top, left = (size - new_h) // 2, (size - new_w) // 2
        out[top : top + new_h, left : left + new_w] = arr
    else:
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out[:] = arr[top : top + size, left : left + size]
    return out


_DCT_CACHE: dict[int, np.ndarray] = {}


def _dct_matrix(n: int) -> np.ndarray:
    if n not in _DCT_CACHE:
        k = np.arange(n)[:, None]
        i = np.arange(n)[None, :]
        _DCT_CACHE[n] = np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    return _DCT_CACHE[n]


def perceptual_hash(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash: low 8x8 frequencies of a 32x32 thumbnail vs their median."""
    thumb = np.asarray(Image.fromarray(gray, "L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    d = _dct_matrix(32)
    low = (d @ thumb @ d.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def array_sha256(arr: np.ndarray) -> str:
    digest = hashlib.sha256(str((arr.shape, arr.dtype.str)).encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def decode_source(
    source: Path | np.ndarray,
    size: int,
    mode: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    dicom_voi: str = DEFAULT_VOI,
) -> tuple[np.ndarray, str, int]:
    """(size x size uint8 image, content sha256, perceptual hash) for a file or array."""
    if isinstance(source, np.ndarray):
        gray, digest = array_to_gray(source), array_sha256(source)
    else:
        gray = read_gray(source, target=size, max_pixels=max_pixels, dicom_voi=dicom_voi)
        digest = file_sha256(source)
    square = fit_square(gray, size, mode)
    return square, digest, perceptual_hash(square)
