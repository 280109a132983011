"""`data prepare` at 100,000 images: throughput per worker count, memory at 10k vs 100k, resume.

Targets (issue #12): peak RSS of the prepare process at 100k over that at 10k <= 1.2; near-linear
speed-up from 1 to 2 workers on a 2-core machine; an interrupted prepare resumes without decoding
again what it already wrote.

    python benchmarks/bench_prepare_scale.py [--n 100000] [--small 10000] [--workers 1,2] [--keep DIR]

The files are real-derived: each is a 2x2 mosaic of four real PneumoniaMNIST images (56x56 px, so
every file is a distinct picture), 90% written as PNG and 10% as DICOM (pydicom, MONOCHROME2, with
a PatientID), in an imagefolder tree (normal/ and pneumonia/ by the first tile's label). Each prepare
runs as its own process (`cxraug data prepare imagefolder ...`); its peak RSS is the kernel's
VmHWM of that process (file-backed pages included), and the workers' peak is the largest child's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pneumoniamnist.npz"

# Runs the CLI in this process and writes its peak memory where CXRAUG_BENCH_RSS says.
WRAPPER = """
import json, os, resource, sys
from cxraug.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
finally:
    hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ['CXRAUG_BENCH_RSS'], 'w') as fh:
        json.dump({'main_kb': hwm, 'worker_kb': kids, 'code': code}, fh)
sys.exit(code)
"""


def load_tiles() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA) as z:
        images = np.concatenate([z["train_images"], z["val_images"], z["test_images"]])
        labels = np.concatenate([z["train_labels"], z["val_labels"], z["test_labels"]])[:, 0]
    return images, labels


def write_dicom(path: Path, pixels: np.ndarray, patient: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_tree(root: Path, n: int, seed: int = 0) -> None:
    """``n`` distinct mosaic files under root/{normal,pneumonia}; resumes a half-written tree."""
    tiles, labels = load_tiles()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(tiles), size=(n, 4))
    for sub in ("normal", "pneumonia"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for k in range(n):
        a, b, c, d = (tiles[i] for i in picks[k])
        mosaic = np.block([[a, b], [c, d]])
        folder = root / ("pneumonia" if labels[picks[k, 0]] else "normal")
        if k % 10 == 9:
            path = folder / f"img{k:06d}.dcm"
            if not path.exists():
                write_dicom(path, mosaic, f"P{k:06d}")
        else:
            path = folder / f"img{k:06d}.png"
            if not path.exists():
                Image.fromarray(mosaic, "L").save(path)
        if (k + 1) % 20000 == 0:
            print(f"  wrote {k + 1}/{n} files ({time.perf_counter() - t0:.0f} s)", flush=True)


def link_subset(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` files of ``src`` as hard links under ``dst`` (same pictures, no copies)."""
    for sub in ("normal", "pneumonia"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("normal", "pneumonia"):
        for f in (src / sub).iterdir():
            if int(f.stem[3:]) < n and not (dst / sub / f.name).exists():
                os.link(f, dst / sub / f.name)


def prepare(root: Path, ws: Path, name: str, workers: int) -> dict:
    rss_file = ws / f"{name}.rss.json"
    env = {**os.environ, "CXRAUG_BENCH_RSS": str(rss_file), "CXRAUG_DISABLE_PLUGINS": "1"}
    cmd = [sys.executable, "-c", WRAPPER, "data", "prepare", "imagefolder", "--root", str(root)]
    cmd += ["--name", name, "--size", "32", "--workers", str(workers), "-w", str(ws), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    info = json.loads((ws / "data" / name / "info.json").read_text())
    images = sum(sum(c.values()) for c in info["counts"].values())
    return {"wall": wall, "images": images, **json.loads(rss_file.read_text())}


def resume_check(root: Path, ws: Path, n: int) -> str:
    """Kill a prepare (SIGKILL) part-way through decoding, run it again, count the decodes."""
    name = "bench-resume"
    cmd = [sys.executable, "-m", "cxraug", "data", "prepare", "imagefolder", "--root", str(root)]
    cmd += ["--name", name, "--size", "32", "--workers", "2", "-w", str(ws), "--force"]
    env = {**os.environ, "CXRAUG_DISABLE_PLUGINS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        found = list((ws / "data").glob(f".{name}.decoding/index.jsonl"))
        if found:
            journal = found[0]
            with open(journal, "rb") as fh:
                done = sum(1 for _ in fh)
            if done >= n // 2:
                break
        time.sleep(0.2)
    if proc.poll() is not None:
        return "resume: prepare finished before it could be killed (use a larger --small)"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(journal, "rb") as fh:  # type: ignore[arg-type]
        done_before = sum(1 for _ in fh)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    reused = [line for line in (out.stdout + out.stderr).splitlines() if "reused" in line]
    return f"resume: killed after {done_before}/{n} decoded; rerun exit {out.returncode}; " + (
        reused[0].strip() if reused else "no 'reused' line in the output"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--keep", type=Path, help="write the trees and workspace here (reused)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    base = args.keep or Path(tempfile.mkdtemp(prefix="cxraug-scale-"))
    big, small, ws = base / f"tree{args.n}", base / f"tree{args.small}", base / "ws"
    print(f"writing {args.n} files under {big} ...", flush=True)
    make_tree(big, args.n)
    link_subset(big, small, args.small)
    print(f"cpus: {os.cpu_count()}")
    results: dict[tuple[int, int], dict] = {}
    for n, root in ((args.small, small), (args.n, big)):
        for w in counts:
            r = prepare(root, ws, f"bench-{n}-{w}", w)
            results[(n, w)] = r
            print(
                f"n={n:>6} workers={w}: {r['images']} images kept, {r['wall']:.1f} s, "
                f"{args.n if n == args.n else n} files at {n / r['wall']:.0f} files/s, "
                f"peak RSS main {r['main_kb'] / 1024:.0f} MiB, "
                f"largest worker {r['worker_kb'] / 1024:.0f} MiB",
                flush=True,
            )
    for w in counts:
        ratio = results[(args.n, w)]["main_kb"] / results[(args.small, w)]["main_kb"]
        print(f"RSS ratio {args.n}/{args.small} (workers={w}): {ratio:.2f} (target <= 1.2)")
    if 1 in counts and 2 in counts:
        speed = results[(args.n, 1)]["wall"] / results[(args.n, 2)]["wall"]
        print(f"speed-up 1 -> 2 workers at n={args.n}: {speed:.2f}x (target near 2x)")
    print(resume_check(small, ws, args.small))


if __name__ == "__main__":
    main()
