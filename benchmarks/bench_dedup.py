"""Near-duplicate detection on real chest X-rays: recall per transform, false merges, time.

Targets (issue #12): recall >= 0.95 for every transform, false merges <= 0.5% of distinct images.

    python benchmarks/bench_dedup.py [--pm 1000] [--pm-copies 100] [--size 256] [--seed 0]
        [--transforms NAME,...] [--scale N] [--figures DIR]

Takes about 15 minutes with --pm 2000 on two cores, plus about 25 with --scale 100000.

Data: the sixteen real COVID-19 files in ../shared/data/cxr-samples, decoded with cxraug's own
decoder (``read_gray``), and ``--pm`` distinct PneumoniaMNIST images (28 px, exact duplicates within
PneumoniaMNIST removed first) upsampled to ``--size`` by ``decode_source`` as ``data prepare`` does.

One round per transform: every original once, plus a transformed copy of all sixteen real X-rays
and of ``--pm-copies`` PneumoniaMNIST images. Transforms act on the image as stored (the real files at
their own resolution, strengths scaled to a ``--size`` frame; PneumoniaMNIST after upsampling), the
copy then goes through ``decode_source`` (square padding and resize) like any file. Each round runs
exactly what ``data prepare`` runs on the decoded images: ``describe`` per image (done in the
decoding workers there), then ``near_duplicates`` (``verified_candidates`` cut at the same
threshold, so the scores of the pairs below it can be shown too).

- recall: copies that end up in one duplicate group (union of verified pairs) with their original.
- same picture: copies whose pair with the original scores as the same picture (label conflicts).
- false merges: distinct originals that end up in a group with another original (directly, or
  through copies), divided by the number of distinct originals, per round; the worst round and the
  union over rounds are printed.
- time: describe, candidate search and verification, per 1000 images of the round.

Then every distinct PneumoniaMNIST image (5,827) at its own 28 px goes through the same search, as
a false-merge check on a whole real dataset (any pair merged there is a false merge, unless the
collection holds the same radiograph twice).

``--scale N`` then times the candidate search and its peak memory on N descriptors (originals and
re-cropped, re-exposed variants of PneumoniaMNIST, so N can exceed the 5,856 images) and the
verification on 3000 of the pairs it proposes. ``--figures DIR`` writes the score histogram and the
example copies shown in docs/deduplication.md.
"""

from __future__ import annotations

import argparse
import io
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxraug.data.dedup import (
    NEAR_DUP_SCORE,
    SAME_PICTURE_SCORE,
    Match,
    UnionFind,
    candidate_pairs,
    describe,
    verified_candidates,
    verify_pairs,
)
from cxraug.imageio import decode_source, read_gray

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

Transform = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def shift(px: float) -> Transform:
    def f(img: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
        h, w = img.shape
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = round(px * unit * math.cos(angle)), round(px * unit * math.sin(angle))
        out = np.zeros_like(img)
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
            max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
        ]
        return out

    return f


def crop(frac: float) -> Transform:
    """Keep a (1 - frac) window at a random place and rescale it to the original size."""

    def f(img: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
        h, w = img.shape
        ch, cw = round(h * (1 - frac)), round(w * (1 - frac))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        window = Image.fromarray(img[y : y + ch, x : x + cw])
        return np.asarray(window.resize((w, h), Image.Resampling.BILINEAR))

    return f


def rotate(deg: float) -> Transform:
    def f(img: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
        angle = deg * float(rng.choice([-1, 1]))
        return np.asarray(Image.fromarray(img).rotate(angle, resample=Image.Resampling.BILINEAR))

    return f


def jpeg(quality: int) -> Transform:
    def f(img: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(buf))

    return f


def brightness(delta: float) -> Transform:
    return lambda img, rng, unit: _u8(img.astype(np.float64) + delta)


def contrast(factor: float) -> Transform:
    return lambda img, rng, unit: _u8((img - img.mean()) * factor + img.mean())


def gamma(g: float) -> Transform:
    return lambda img, rng, unit: _u8(255 * (img / 255.0) ** g)


def noise(sd: float) -> Transform:
    return lambda img, rng, unit: _u8(img + rng.normal(0, sd, img.shape))


def border(frac: float, value: int) -> Transform:
    """A frame around the picture (the copy is larger, so the picture shrinks when resized)."""

    def f(img: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
        h, w = img.shape
        b = max(1, round(frac * max(h, w)))
        out = np.full((h + 2 * b, w + 2 * b), value, np.uint8)
        out[b : b + h, b : b + w] = img
        return out

    return f


def text(words: str, frac: float) -> Transform:
    """White text burned into a random corner, ``frac`` of the image height tall."""

    def f(img: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
        h, w = img.shape
        pil = Image.fromarray(img)
        font = ImageFont.load_default(size=max(8, round(frac * h)))
        corner = int(rng.integers(4))
        x = round(0.04 * w) if corner % 2 == 0 else round(0.55 * w)
        y = round(0.04 * h) if corner < 2 else round(0.92 * h - frac * h)
        ImageDraw.Draw(pil).text((x, y), words, fill=255, font=font)
        return np.asarray(pil)

    return f


def chain(*steps: Transform) -> Transform:
    def f(img: np.ndarray, rng: np.random.Generator, unit: float) -> np.ndarray:
        for step in steps:
            img = step(img, rng, unit)
        return img

    return f


TRANSFORMS: dict[str, Transform] = {
    "shift 4 px": shift(4),
    "shift 10 px": shift(10),
    "crop 5% + rescale": crop(0.05),
    "crop 10% + rescale": crop(0.10),
    "rotate 3 deg": rotate(3),
    "rotate 5 deg": rotate(5),
    "jpeg q30": jpeg(30),
    "jpeg q50": jpeg(50),
    "jpeg q70": jpeg(70),
    "brightness +30": brightness(30),
    "brightness -30": brightness(-30),
    "contrast x0.7": contrast(0.7),
    "contrast x1.3": contrast(1.3),
    "gamma 0.7": gamma(0.7),
    "gamma 1.4": gamma(1.4),
    "noise sd 5": noise(5),
    "noise sd 10": noise(10),
    "border black 5%": border(0.05, 0),
    "border white 3%": border(0.03, 255),
    "text label": text("L  PORTABLE", 0.06),
    "text date": text("2020-03-14 AP", 0.05),
    "crop 5% + brightness + jpeg q60": chain(crop(0.05), brightness(15), jpeg(60)),
    "shift 6 px + rotate 2 deg + gamma 1.2": chain(shift(6), rotate(2), gamma(1.2)),
}


def load_originals(n_pm: int, size: int, seed: int) -> tuple[list[np.ndarray], list[str], list[float]]:
    """(images as stored, names, pixels per pixel of a ``size`` frame) of the distinct originals."""
    images, names, units = [], [], []
    for path in sorted((SHARED / "cxr-samples").iterdir()):
        gray = read_gray(path)
        images.append(gray)
        names.append(f"cxr/{path.name}")
        units.append(max(gray.shape) / size)
    arrays = np.load(SHARED / "pneumoniamnist.npz")
    pm = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")])
    _, first = np.unique(pm.reshape(len(pm), -1), axis=0, return_index=True)  # exact copies out
    rng = np.random.default_rng(seed)
    for i in sorted(rng.choice(np.sort(first), min(n_pm, len(first)), replace=False).tolist()):
        images.append(decode_source(pm[i], size, "pad")[0])
        names.append(f"pneumoniamnist/{i}")
        units.append(1.0)
    return images, names, units


def groups_of(n: int, matches: list[Match]) -> np.ndarray:
    uf = UnionFind(n)
    for m in matches:
        uf.union(m.i, m.j)
    return np.array([uf.find(i) for i in range(n)])


def run_round(images: list[np.ndarray], descriptors: list[np.ndarray], n_orig: int, owners: list[int]):
    """What prepare runs on one mixed set, then each copy's fate and the originals merged."""
    verified = verified_candidates(np.stack(descriptors))
    near = [m for m in verified if m.score >= NEAR_DUP_SCORE]  # = near_duplicates(...)
    root = groups_of(len(images), near)
    score = {(m.i, m.j): m.score for m in verified}
    copies = [(k, owners[k]) for k in range(n_orig, len(images))]
    members: dict[int, set[int]] = {}
    for k in range(len(images)):
        members.setdefault(int(root[k]), set()).add(owners[k])
    return {
        "found": {k: bool(root[k] == root[o]) for k, o in copies},
        "same": {k: score.get((o, k), 0.0) >= SAME_PICTURE_SCORE for k, o in copies},
        "copy_scores": [score.get((o, k), float("nan")) for k, o in copies],
        "distinct_scores": [m.score for m in verified if owners[m.i] != owners[m.j]],
        "merged": {o for o in range(n_orig) if len(members[int(root[o])]) > 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pm", type=int, default=1000, help="distinct PneumoniaMNIST originals")
    parser.add_argument("--pm-copies", type=int, default=100, help="PneumoniaMNIST copies per transform")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transforms", default="", help="comma-separated subset of the transform names")
    parser.add_argument("--scale", type=int, default=0, help="also time the candidate search on N images")
    parser.add_argument("--figures", type=Path, help="write the score histogram and copy examples here")
    args = parser.parse_args()

    originals, names, units = load_originals(args.pm, args.size, args.seed)
    n_orig = len(originals)
    decoded = [decode_source(img, args.size, "pad")[0] for img in originals]
    t0 = time.perf_counter()
    base_desc = [describe(img) for img in decoded]
    describe_s = (time.perf_counter() - t0) / n_orig
    print(
        f"{n_orig} distinct originals: 16 real X-rays (cxr-samples) + {n_orig - 16} PneumoniaMNIST "
        f"(28 px) upsampled to {args.size} px; thresholds: near-duplicate score >= {NEAR_DUP_SCORE}, "
        f"same picture >= {SAME_PICTURE_SCORE}"
    )
    chosen = [t.strip() for t in args.transforms.split(",") if t.strip()] or list(TRANSFORMS)
    rng = np.random.default_rng(args.seed + 1)
    print(f"{'transform':40s} {'recall':>15s} {'real':>7s} {'pm':>9s} {'same picture':>13s}  lowest score")
    all_merged: set[int] = set()
    worst_merged = 0
    total_images, total_search = 0, 0.0
    copy_scores: dict[str, list[float]] = {}
    distinct_scores: list[float] = []
    examples: list[tuple[str, np.ndarray]] = [("original", decoded[0])]
    for name in chosen:
        transform = TRANSFORMS[name]
        pm_idx = rng.choice(np.arange(16, n_orig), min(args.pm_copies, n_orig - 16), replace=False)
        sources = list(range(16)) + sorted(pm_idx.tolist())
        images, desc, owners = list(decoded), list(base_desc), list(range(n_orig))
        for o in sources:
            img = decode_source(transform(originals[o], rng, units[o]), args.size, "pad")[0]
            images.append(img)
            desc.append(describe(img))
            owners.append(o)
        examples.append((name, images[n_orig]))
        t1 = time.perf_counter()
        out = run_round(images, desc, n_orig, owners)
        total_search += time.perf_counter() - t1
        total_images += len(images)
        found, same = out["found"], out["same"]
        keys = list(found)
        real = [k for k in keys if owners[k] < 16]
        pm = [k for k in keys if owners[k] >= 16]

        def frac(ks: list[int], table: dict[int, bool]) -> str:
            return f"{sum(table[k] for k in ks)}/{len(ks)}"

        recall = sum(found.values()) / len(keys)
        lowest = np.nanmin(out["copy_scores"]) if not np.all(np.isnan(out["copy_scores"])) else float("nan")
        print(
            f"{name:40s} {recall:6.3f} ({frac(keys, found):>7s}) {frac(real, found):>7s} "
            f"{frac(pm, found):>9s} {frac(keys, same):>13s}  {lowest:.3f}"
        )
        copy_scores[name] = out["copy_scores"]
        distinct_scores += out["distinct_scores"]
        all_merged |= out["merged"]
        worst_merged = max(worst_merged, len(out["merged"]))
    d = np.array(distinct_scores)
    print(
        f"pairs of distinct images verified: {len(d)}; score median {np.median(d):.3f}, "
        f"99.9th percentile {np.percentile(d, 99.9):.3f}, max {d.max():.3f}"
    )
    print(
        f"false merges (distinct originals grouped with another original / distinct originals): "
        f"worst round {worst_merged}/{n_orig} = {worst_merged / n_orig:.2%}; "
        f"over all rounds {len(all_merged)}/{n_orig} = {len(all_merged) / n_orig:.2%}"
    )
    if all_merged:
        print("  merged:", ", ".join(names[o] for o in sorted(all_merged)[:20]))
    print(
        f"time per 1000 images: describe {describe_s * 1000:.2f} s (in the decoding workers), "
        f"candidate search + verification {total_search / total_images * 1000:.2f} s (main process)"
    )
    whole_pneumoniamnist()
    if args.figures:
        write_figures(args.figures, copy_scores, d, examples)
    if args.scale:
        scale_run(args.scale, args.size, args.seed)


def whole_pneumoniamnist() -> None:
    """Every distinct PneumoniaMNIST image at its own 28 px (``data prepare medmnist --size 28``)."""
    arrays = np.load(SHARED / "pneumoniamnist.npz")
    images = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")])
    labels = np.concatenate([arrays[f"{s}_labels"][:, 0] for s in ("train", "val", "test")])
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    images, labels = images[np.sort(first)], labels[np.sort(first)]
    t0 = time.perf_counter()
    verified = verified_candidates(np.stack([describe(x) for x in images]))
    seconds = time.perf_counter() - t0
    near = [m for m in verified if m.score >= NEAR_DUP_SCORE]
    same = [m for m in near if m.score >= SAME_PICTURE_SCORE and labels[m.i] != labels[m.j]]
    merged = {i for m in near for i in (m.i, m.j)}
    print(
        f"all {len(images)} distinct PneumoniaMNIST images at 28 px: {len(verified)} candidate pairs, "
        f"max score {max(m.score for m in verified):.3f}; {len(near)} near-duplicate pairs "
        f"({len(merged)} images merged = {len(merged) / len(images):.2%}), {len(same)} same-picture "
        f"pairs with different labels; {seconds:.0f} s"
    )


def write_figures(
    folder: Path, copy_scores: dict[str, list[float]], distinct: np.ndarray, examples: list
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bins = np.linspace(-0.2, 1.0, 61)
    copies = np.concatenate([np.asarray(v, float) for v in copy_scores.values()])
    ax.hist(distinct, bins=bins, alpha=0.6, label=f"pairs of distinct images ({len(distinct)})", log=True)
    ax.hist(
        copies[np.isfinite(copies)],
        bins=bins,
        alpha=0.6,
        label=f"copy and original ({len(copies)})",
        log=True,
    )
    ax.axvline(NEAR_DUP_SCORE, color="k", ls="--", lw=1, label=f"near-duplicate {NEAR_DUP_SCORE}")
    ax.axvline(SAME_PICTURE_SCORE, color="r", ls=":", lw=1, label=f"same picture {SAME_PICTURE_SCORE}")
    ax.set_xlabel("verification score (aligned band-pass tile correlation, 30th percentile)")
    ax.set_ylabel("pairs (log)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "dedup-scores.png", dpi=110)
    plt.close(fig)
    cols = 6
    rows = -(-len(examples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img) in zip(axes.ravel(), examples, strict=False):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "dedup-copies.png", dpi=110)
    plt.close(fig)
    with Image.open(folder / "dedup-copies.png") as im:  # grey pictures: a grey PNG is a third the size
        im.convert("L").save(folder / "dedup-copies.png", optimize=True)
    print(f"figures: {folder / 'dedup-scores.png'}, {folder / 'dedup-copies.png'}")


def scale_run(n: int, size: int, seed: int) -> None:
    """Candidate search time and memory on ``n`` images; verification timed on a sample of its pairs.

    The images are PneumoniaMNIST's, then re-cropped, rotated, re-exposed and shifted variants of
    them (so n can exceed its 5,856 images); each is made again from its index when needed, so only
    the descriptors are held.
    """
    arrays = np.load(SHARED / "pneumoniamnist.npz")
    pm = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")])
    variants = [crop(0.1), rotate(5), gamma(1.4), shift(10)]

    def image(k: int) -> np.ndarray:
        img = decode_source(pm[k % len(pm)], size, "pad")[0]
        if k >= len(pm):
            rng = np.random.default_rng([seed, k])
            img = variants[(k // len(pm) - 1) % len(variants)](img, rng, 1.0)
        return img

    t0 = time.perf_counter()
    desc = np.stack([describe(image(k)) for k in range(n)])
    t1 = time.perf_counter()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pairs = candidate_pairs(desc)
    t2 = time.perf_counter()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(seed)
    sample = pairs[np.sort(rng.choice(len(pairs), min(len(pairs), 3000), replace=False))]
    t3 = time.perf_counter()
    verify_pairs(sample, desc)
    per_pair = (time.perf_counter() - t3) / max(1, len(sample))
    print(
        f"scale: {n} images ({desc.nbytes / 1e6:.0f} MB of descriptors, made in {t1 - t0:.0f} s); candidate "
        f"search {t2 - t1:.1f} s, {len(pairs)} pairs ({len(pairs) / n:.2f} per image), peak RSS "
        f"{rss1 / 1024:.0f} MB (+{(rss1 - rss0) / 1024:.0f} MB in the search); verification "
        f"{per_pair * 1000:.2f} ms per pair (3000 pairs sampled), so about "
        f"{per_pair * len(pairs):.0f} s for all"
    )


if __name__ == "__main__":
    main()
