"""Hostile image trees for fuzzing ``cxraug data prepare`` (the test suite and the attack benchmark).

``make_hostile_tree(root, n, seed)`` writes an imagefolder-style tree (``ROOT/normal``,
``ROOT/covid``, ``ROOT/pneumonia``, some files one folder deeper) of about ``n`` files, the same
for the same seed, and returns what ``data prepare`` must make of each file.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

#: Real chest X-rays whose bytes are flipped and cut (read in place, never copied into the repo).
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-samples"
CLASSES = ("normal", "covid", "pneumonia")

#: Outcome kinds of ``make_hostile_tree``.
OK = "ok"  # decodes: a manifest row, or dropped with a reason (an exact copy of another file)
SKIP = "skip"  # must be listed as skipped with a reason (unreadable, refused, too large)
CONFLICT = "conflict"  # the same picture under two labels: dropped, and listed under conflicts
ANY = "any"  # may decode or not (random damage): a manifest row, dropped or skipped, never lost

Maker = Callable[[np.random.Generator, Path, int], list[tuple[Path, str]]]


def make_hostile_tree(root: Path, n: int, seed: int) -> dict[str, str]:
    """Write about ``n`` hostile files under ``root``; return {path relative to root: outcome kind}.

    Kinds: ``"ok"`` (a valid image, however odd: it is in the manifest's ``original`` column or,
    as an exact copy of another file, in the report's dropped list), ``"skip"`` (unreadable,
    NaN/inf, too large or a link out of the root: in the report's skipped list with a reason),
    ``"conflict"`` (one picture saved under two labels, as the same or different bytes: in the
    dropped list and the report's conflicts), ``"any"`` (randomly damaged real files, which may
    still decode: in the manifest, dropped or skipped). Paths are POSIX, as the manifest writes
    them. Links that leave the root point into ``ROOT-outside/``, created next to ``root`` and not
    listed: nothing in it may be read. Needs a POSIX file system (symlinks, FIFOs).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    outside = root.parent / f"{root.name}-outside"
    for folder in (root, outside):
        folder.mkdir(parents=True, exist_ok=True)
    for label in CLASSES:
        (root / label / "deeper").mkdir(parents=True, exist_ok=True)
    _image(rng, 24).save(outside / "secret.png")
    (outside / "folder").mkdir(exist_ok=True)
    _image(rng, 24).save(outside / "folder" / "also-secret.png")
    # A class folder that is a link out of the root: ignored whole, its files never listed.
    os.symlink(outside / "folder", root / "healthy", target_is_directory=True)  # a label alias

    makers = _makers(outside)
    expected: dict[str, str] = {}
    i = 0
    while len(expected) < n:
        maker = makers[i % len(makers)] if i < len(makers) else makers[int(rng.integers(len(makers)))]
        folder = root / CLASSES[int(rng.integers(len(CLASSES)))]
        if rng.random() < 0.2:
            folder = folder / "deeper"
        for path, kind in maker(rng, folder, i):
            expected[path.relative_to(root).as_posix()] = kind
        i += 1
    return expected


def _makers(outside: Path) -> list[Maker]:
    makers: list[Maker] = [
        _valid_modes,
        _lying_extension,
        _extreme_shapes,
        _zero_bytes,
        _text_as_png,
        _truncated,
        _non_finite_tiff,
        _huge_header,
        _conflicting_copies,
        _odd_names,
        _fifo,
        _symlink_inside,
        _broken_links,
        lambda rng, folder, i: _link_out(outside, rng, folder, i),
    ]
    if SAMPLES.is_dir() and any(SAMPLES.iterdir()):
        makers += [_flipped_real, _cut_real]
    return makers


def _image(rng: np.random.Generator, size: int = 32, mode: str = "L") -> Image.Image:
    """A smooth random picture, unlike any other the generator draws."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).convert(mode)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _valid_modes(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    """Every mode real downloads carry: palette, LA, CMYK, 16-bit, 32-bit int and float, bilevel."""
    img = _image(rng, int(rng.integers(8, 48)))
    variants: list[tuple[str, str, Image.Image, dict[str, object]]] = [
        ("png", "PNG", img.convert("P"), {}),
        ("png", "PNG", img.convert("LA"), {}),
        ("png", "PNG", img.convert("RGBA"), {}),
        ("png", "PNG", img.convert("1"), {}),
        ("png", "PNG", Image.fromarray(np.asarray(img, np.uint16) * 257), {}),
        ("png", "PNG", img.convert("P"), {"transparency": 0}),
        ("jpg", "JPEG", img.convert("CMYK"), {}),
        ("jpeg", "JPEG", img.convert("RGB"), {"quality": 90}),
        ("jfif", "JPEG", img, {}),
        ("tif", "TIFF", Image.fromarray(np.asarray(img, np.float32) / 7.0), {}),
        ("tiff", "TIFF", Image.fromarray(np.asarray(img, np.int32) * 1000 - 5), {}),
        ("tif", "TIFF", Image.fromarray(np.asarray(img, np.uint16) * 200), {}),
        ("tif", "TIFF", img.convert("CMYK"), {}),
        ("bmp", "BMP", img.convert("P"), {}),
        ("bmp", "BMP", img.convert("1"), {}),
        ("webp", "WEBP", img.convert("RGBA"), {"lossless": True}),
        ("webp", "WEBP", img.convert("RGB"), {"quality": 70}),
        ("pgm", "PPM", img, {}),
    ]
    ext, fmt, variant, kw = variants[i % len(variants)]
    return [(_write(folder / f"mode-{i}.{ext}", _encode(variant, fmt, **kw)), OK)]


def _lying_extension(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    img = _image(rng)
    pairs = [("png", "JPEG"), ("jpg", "PNG"), ("tif", "WEBP"), ("bmp", "PNG"), ("webp", "TIFF")]
    ext, fmt = pairs[i % len(pairs)]
    return [(_write(folder / f"lying-{i}.{ext}", _encode(img, fmt)), OK)]


def _extreme_shapes(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    shapes = [(1, 1), (1, 300), (300, 1), (2, 3000), (3000, 2)]
    w, h = shapes[i % len(shapes)]
    arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return [(_write(folder / f"shape-{i}-{w}x{h}.png", _encode(Image.fromarray(arr), "PNG")), OK)]


def _zero_bytes(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    ext = ("png", "jpg", "tif", "bmp", "webp")[i % 5]
    return [(_write(folder / f"empty-{i}.{ext}", b""), SKIP)]


def _text_as_png(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    texts = [b"this is not an image\n", b"<html><body>404 Not Found</body></html>\n", b"\x00" * 64]
    return [(_write(folder / f"text-{i}.png", texts[i % len(texts)]), SKIP)]


def _truncated(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    """Each format cut inside its pixel data (more than half of the file missing)."""
    img = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("tif", "TIFF"), ("bmp", "BMP"), ("webp", "WEBP")]
    ext, fmt = formats[i % len(formats)]
    data = _encode(img, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    cut = int(len(data) * rng.uniform(0.05, 0.5))
    return [(_write(folder / f"truncated-{i}.{ext}", data[:cut]), SKIP)]


def _non_finite_tiff(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    arr = np.asarray(_image(rng, 16), np.float32)
    kind = i % 4
    if kind == 0:
        arr[3, 5] = np.nan
    elif kind == 1:
        arr[:] = np.nan
    elif kind == 2:
        arr[0, 0] = np.inf
    else:
        arr[7, 1] = -np.inf
    return [(_write(folder / f"nonfinite-{i}.tif", _encode(Image.fromarray(arr), "TIFF")), SKIP)]


def _png_header(width: int, height: int, depth: int = 8, idat: bytes = b"") -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _huge_header(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    """Small files whose headers claim huge images (above cxraug's and Pillow's limits)."""
    kind = i % 5
    if kind == 0:  # above --max-pixels' default, below Pillow's bomb guard
        data = _png_header(9000, 9000, 16, zlib.compress(b"\x00" * 1000))
    elif kind == 1:  # above Pillow's DecompressionBombError limit
        data = _png_header(100_000, 100_000, 8, zlib.compress(b"\x00" * 1000))
    elif kind == 2:  # JPEG whose frame header claims 65500 x 65500
        data = bytearray(_encode(_image(rng, 16), "JPEG"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 65500, 65500)
        data = bytes(data)
    elif kind == 3:  # BMP claiming 40000 x 40000
        data = bytearray(_encode(_image(rng, 16), "BMP"))
        data[18:26] = struct.pack("<ii", 40000, 40000)
        data = bytes(data)
    else:  # TIFF whose width and length tags say 60000
        data = _tiff_with_size(_image(rng, 16), 60000, 60000)
    ext = ("png", "png", "jpg", "bmp", "tif")[kind]
    return [(_write(folder / f"huge-{i}.{ext}", data), SKIP)]


def _tiff_with_size(img: Image.Image, width: int, height: int) -> bytes:
    data = bytearray(_encode(img, "TIFF"))
    assert data[:2] == b"II", "Pillow writes little-endian TIFF"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, typ = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<HHII", data, at, tag, 4, 1, value)  # as a LONG
    return bytes(data)


def _conflicting_copies(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    """One picture under two labels: re-compressed, re-encoded or byte-identical."""
    img = _image(rng, 48)
    root = folder.parent.parent if folder.name == "deeper" else folder.parent
    a, b = root / "normal", root / "covid"
    kind = i % 3
    first = _encode(img, "PNG", compress_level=1)
    second = {0: _encode(img, "PNG", compress_level=9), 1: _encode(img, "BMP"), 2: first}[kind]
    ext = ("png", "bmp", "png")[kind]
    return [
        (_write(a / f"conflict-{i}-a.png", first), CONFLICT),
        (_write(b / f"conflict-{i}-b.{ext}", second), CONFLICT),
    ]


def _odd_names(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    names = ["with space.png", "ünïcödé-名前.png", "semi;colon,comma.png", 'quote"d.png', "new\nline.png"]
    name = f"{i}-{names[i % len(names)]}"
    return [(_write(folder / name, _encode(_image(rng), "PNG")), OK)]


def _fifo(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    path = folder / f"fifo-{i}.png"
    os.mkfifo(path)  # opening it to read would block forever
    return [(path, SKIP)]


def _symlink_inside(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    target = _write(folder / f"target-{i}.png", _encode(_image(rng), "PNG"))
    link = folder / f"link-{i}.png"
    os.symlink(target.name, link)
    return [(target, OK), (link, OK)]


def _broken_links(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    dangling, loop = folder / f"dangling-{i}.png", folder / f"loop-{i}.png"
    os.symlink(folder / f"nowhere-{i}.png", dangling)
    os.symlink(loop.name, loop)
    return [(dangling, SKIP), (loop, SKIP)]


def _link_out(outside: Path, rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    link = folder / f"escape-{i}.png"
    depth = len(folder.relative_to(outside.parent).parts)
    if i % 2:
        os.symlink(outside / "secret.png", link)  # absolute
    else:
        os.symlink(Path(*[".."] * depth) / outside.name / "secret.png", link)  # relative
    return [(link, SKIP)]


def _real_bytes(rng: np.random.Generator) -> tuple[str, bytearray]:
    files = sorted(p for p in SAMPLES.iterdir() if p.is_file())
    chosen = files[int(rng.integers(len(files)))]
    return chosen.suffix.lower(), bytearray(chosen.read_bytes())


def _flipped_real(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    ext, data = _real_bytes(rng)
    for at in rng.integers(0, len(data), int(rng.integers(1, 40))):
        data[at] ^= int(rng.integers(1, 256))
    return [(_write(folder / f"flipped-{i}{ext}", bytes(data)), ANY)]


def _cut_real(rng: np.random.Generator, folder: Path, i: int) -> list[tuple[Path, str]]:
    ext, data = _real_bytes(rng)
    return [(_write(folder / f"cut-{i}{ext}", bytes(data[: int(rng.integers(1, len(data)))])), ANY)]
