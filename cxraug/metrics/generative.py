"""Metrics of generated images on feature arrays: FID, KID, precision/recall/density/coverage, copies.

Every function takes (N, D) feature arrays (Inception features from ``cxraug.metrics.features``, or
flattened pixels from :func:`pixel_features`) and returns plain numbers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Rows of the left operand per block of a distance matrix (kept near 32 MB of float64).
_BLOCK_ELEMS = 1 << 22


def _check_feats(name: str, feats: np.ndarray, min_rows: int = 1) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) feature array, got shape {feats.shape}")
    if len(feats) < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {len(feats)}")
    return feats


def _check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


# --------------------------------------------------------------------------------------------- FID


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) as clean-fid computes them: mean over rows, covariance with rowvar=False."""
    feats = _check_feats("feats", feats, 2)
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


FRECHET_METHODS = ("eigh", "sqrtm")


def fid_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "eigh"
) -> float:
    """Frechet distance between two Gaussians.

    ``eigh`` (default) uses tr sqrtm(S1 S2) = tr sqrtm(S1^1/2 S2 S1^1/2), a symmetric PSD matrix, so
    two symmetric eigendecompositions give the exact trace about 5x faster than a general matrix
    square root; it equals clean-fid to ~1e-12 for full-rank covariances and to ~1e-4 when fewer
    images than feature dimensions make them singular (where clean-fid's sqrtm is itself
    approximate). ``sqrtm`` calls clean-fid's own ``frechet_distance``.
    """
    if method == "eigh":
        diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
        s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
        w, v = np.linalg.eigh((s1 + s1.T) / 2)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        inner = root @ s2 @ root
        lam = np.linalg.eigvalsh((inner + inner.T) / 2)
        trace_sqrt = float(np.sqrt(np.clip(lam, 0, None)).sum())
        return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)
    if method != "sqrtm":
        raise ValueError(f"method must be one of {FRECHET_METHODS}, got {method!r}")
    from cleanfid.fid import frechet_distance

    # clean-fid prints a note when it regularises a singular product; send it to the log instead.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        # clean-fid passes scipy's deprecated ``disp`` argument to sqrtm; not the user's concern.
        warnings.simplefilter("ignore", DeprecationWarning)
        value = frechet_distance(mu1, sigma1, mu2, sigma2)
    if buf.getvalue().strip():
        log.warning("clean-fid: %s", buf.getvalue().strip())
    return float(value)


def fid(feat_a: np.ndarray, feat_b: np.ndarray, method: str = "eigh") -> float:
    """Frechet Inception Distance (Heusel et al. 2017) between two feature sets (clean-fid's statistics)."""
    feat_a = _check_feats("feat_a", feat_a, 2)
    feat_b = _check_feats("feat_b", feat_b, 2)
    _check_same_dim(feat_a, feat_b)
    mu1, sigma1 = feature_stats(feat_a)
    mu2, sigma2 = feature_stats(feat_b)
    return fid_from_stats(mu1, sigma1, mu2, sigma2, method)


# --------------------------------------------------------------------------------------------- KID


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the kernel of Binkowski et al. 2018."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid_subset_values(
    feat_a: np.ndarray,
    feat_b: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Unbiased MMD^2 estimates on ``num_subsets`` random subsets of m = min(N_a, N_b, max) rows each."""
    feat_a = _check_feats("feat_a", feat_a, 2).astype(np.float64)
    feat_b = _check_feats("feat_b", feat_b, 2).astype(np.float64)
    _check_same_dim(feat_a, feat_b)
    if num_subsets < 1 or max_subset_size < 2:
        raise ValueError("num_subsets must be >= 1 and max_subset_size >= 2")
    m = min(len(feat_a), len(feat_b), max_subset_size)
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        x = feat_b[rng.choice(len(feat_b), m, replace=False)]
        y = feat_a[rng.choice(len(feat_a), m, replace=False)]
        kxx = _poly_kernel(x, x)
        kyy = _poly_kernel(y, y)
        kxy = _poly_kernel(x, y)
        # Within-set means leave out the diagonal (i == j), which makes the estimate unbiased.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[s] = within - 2 * kxy.sum() / (m * m)
    return values


def kid(
    feat_a: np.ndarray,
    feat_b: np.ndarray,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): (mean, std) of subset MMD^2 estimates.

    The same estimator as clean-fid's ``kernel_distance``, with a seeded generator instead of numpy's
    global one.
    """
    values = kid_subset_values(feat_a, feat_b, num_subsets, max_subset_size, seed)
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------- distances


def _blocks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(row offset, Euclidean distances of a block of ``a`` rows to all ``b`` rows), in float64."""
    b64 = np.asarray(b, dtype=np.float64)
    b_sq = np.einsum("ij,ij->i", b64, b64)
    rows = max(1, _BLOCK_ELEMS // max(len(b64), b64.shape[1], 1))
    for start in range(0, len(a), rows):
        blk = np.asarray(a[start : start + rows], dtype=np.float64)
        sq = np.einsum("ij,ij->i", blk, blk)[:, None] + b_sq[None, :] - 2.0 * (blk @ b64.T)
        yield start, np.sqrt(np.maximum(sq, 0.0))


def kth_neighbour_distances(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row."""
    feats = _check_feats("feats", feats, k + 1)
    out = np.empty(len(feats))
    for start, d in _blocks(feats, feats):
        idx = np.arange(len(d))
        d[idx, start + idx] = 0.0  # the row itself comes first, so index k is the k-th other row
        out[start : start + len(d)] = np.partition(d, k, axis=1)[:, k]
    return out


def nearest_neighbours(
    a: np.ndarray, b: np.ndarray, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: (distance to, index of) its nearest row of ``b``.

    With ``exclude_self`` (``a`` is ``b``) a row is not its own neighbour. The returned distances are
    recomputed exactly for the chosen pairs, so an exact copy has distance 0.
    """
    a = _check_feats("a", a)
    b = _check_feats("b", b, 2 if exclude_self else 1)
    _check_same_dim(a, b)
    index = np.empty(len(a), dtype=np.int64)
    for start, d in _blocks(a, b):
        if exclude_self:
            idx = np.arange(len(d))
            d[idx, start + idx] = np.inf
        index[start : start + len(d)] = np.argmin(d, axis=1)
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)[index]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff)), index


# -------------------------------------------------------------------------------------------- PRDC


def prdc(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k-NN balls.

    A real (fake) sample's ball has the radius of its distance to its k-th nearest other real (fake)
    sample; "inside" means strictly closer than that radius.
    """
    real = _check_feats("real_feats", real_feats, k + 1)
    fake = _check_feats("fake_feats", fake_feats, k + 1)
    _check_same_dim(real, fake)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    real_r = kth_neighbour_distances(real, k)
    fake_r = kth_neighbour_distances(fake, k)
    fake_in_some_real = np.zeros(len(fake), dtype=bool)
    fake_ball_count = np.zeros(len(fake))
    real_in_some_fake = np.zeros(len(real), dtype=bool)
    real_covered = np.zeros(len(real), dtype=bool)
    for start, d in _blocks(real, fake):
        r = real_r[start : start + len(d), None]
        inside_real = d < r  # (real block, fake): fake j inside real i's ball
        fake_in_some_real |= inside_real.any(axis=0)
        fake_ball_count += inside_real.sum(axis=0)
        real_in_some_fake[start : start + len(d)] = (d < fake_r[None, :]).any(axis=1)
        real_covered[start : start + len(d)] = d.min(axis=1) < r[:, 0]
    return {
        "precision": float(fake_in_some_real.mean()),
        "recall": float(real_in_some_fake.mean()),
        "density": float(fake_ball_count.sum() / (k * len(fake))),
        "coverage": float(real_covered.mean()),
    }


# ----------------------------------------------------------------------------------- memorisation


def pixel_features(images: np.ndarray, size: int | None = 64) -> np.ndarray:
    """(N, size*size) float32 pixels in [0, 1], box-downsampled to ``size`` (None: keep the size)."""
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, S, S) uint8, got {images.dtype} {images.shape}")
    if size is not None and images.shape[1:] != (size, size):
        images = np.stack(
            [np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BOX)) for img in images]
        )
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


@dataclass
class MemorizationResult:
    """Nearest-training-image distances of generated images against real-to-real ones."""

    copied_fraction: float  # generated images with NN distance <= threshold
    threshold: float  # the ``percentile`` of real-to-real NN distances
    percentile: float
    reference: str  # "train" (train to other train) or "holdout" (held-out real to train)
    gen_nn_distance: np.ndarray  # per generated image
    gen_nn_index: np.ndarray  # index of its nearest training image
    ref_nn_distance: np.ndarray
    #: (generated index, training index, distance), closest first.
    closest: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def copied(self) -> np.ndarray:
        """Indices of generated images that look copied."""
        return np.flatnonzero(self.gen_nn_distance <= self.threshold)

    @property
    def null_fraction(self) -> float:
        """The score of real images the GAN never saw, scored the same way: the threshold taken from
        half of the reference images, the share of the other half at or below it. A generator that
        copies nothing scores about this (about ``percentile`` / 100), not 0."""
        ref = self.ref_nn_distance
        if len(ref) < 4:
            return self.percentile / 100.0
        return float(np.mean(ref[1::2] <= np.percentile(ref[0::2], self.percentile)))

    def excess_p(self) -> float:
        """One-sided exact binomial p of "no more look copied than ``percentile`` / 100 would"."""
        from scipy.stats import binom

        n = len(self.gen_nn_distance)
        if n == 0:
            return float("nan")
        k = int(round(self.copied_fraction * n))
        p0 = min(max(self.percentile / 100.0, 1.0 / (len(self.ref_nn_distance) + 1)), 1.0)
        return float(max(binom.sf(k - 1, n, p0), np.finfo(float).tiny))

    def values(self) -> dict[str, float]:
        gen_med = float(np.median(self.gen_nn_distance))
        ref_med = float(np.median(self.ref_nn_distance))
        return {
            "copied_fraction": self.copied_fraction,
            "threshold": self.threshold,
            "nn_distance_median": gen_med,
            "ref_nn_distance_median": ref_med,
            "nn_distance_ratio": gen_med / ref_med if ref_med > 0 else float("nan"),
            "null_fraction": self.null_fraction,
            "expected_null_fraction": self.percentile / 100.0,
            "excess_p": self.excess_p(),
        }


def memorization(
    gen: np.ndarray,
    train: np.ndarray,
    real_holdout: np.ndarray | None = None,
    *,
    percentile: float = 1.0,
    k_closest: int = 16,
) -> MemorizationResult:
    """Which generated samples sit closer to a training sample than real samples ever do.

    Each generated sample's distance to its nearest training sample is compared with the reference
    distribution of real nearest-neighbour distances: held-out real samples to training samples when
    ``real_holdout`` is given, else each training sample to its nearest *other* training sample. A
    generated sample "looks copied" when its distance is at most the ``percentile`` of that reference.
    """
    gen = _check_feats("gen", gen)
    train = _check_feats("train", train, 1 if real_holdout is not None else 2)
    _check_same_dim(gen, train)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    gen_d, gen_i = nearest_neighbours(gen, train)
    if real_holdout is not None:
        holdout = _check_feats("real_holdout", real_holdout)
        _check_same_dim(holdout, train)
        ref_d, _ = nearest_neighbours(holdout, train)
        reference = "holdout"
    else:
        ref_d, _ = nearest_neighbours(train, train, exclude_self=True)
        reference = "train"
    threshold = float(np.percentile(ref_d, percentile))
    order = np.argsort(gen_d, kind="stable")[: max(0, k_closest)]
    return MemorizationResult(
        copied_fraction=float(np.mean(gen_d <= threshold)),
        threshold=threshold,
        percentile=percentile,
        reference=reference,
        gen_nn_distance=gen_d,
        gen_nn_index=gen_i,
        ref_nn_distance=ref_d,
        closest=[(int(j), int(gen_i[j]), float(gen_d[j])) for j in order],
    )


def save_pairs_grid(
    path: Path,
    generated: np.ndarray,
    train: np.ndarray,
    pairs: Sequence[tuple[int, int] | tuple[int, int, float]],
    *,
    columns: int = 4,
    pad: int = 4,
) -> Path:
    """PNG of (generated | nearest training) image pairs side by side, ``columns`` pairs per row."""
    from PIL import Image

    if not pairs:
        raise ValueError("no pairs to draw")
    size = max(max(generated.shape[1:3]), max(train.shape[1:3]))
    columns = max(1, min(columns, len(pairs)))
    rows = (len(pairs) + columns - 1) // columns
    pair_w = 2 * size + pad // 2
    width = columns * pair_w + (columns + 1) * pad
    height = rows * size + (rows + 1) * pad
    canvas = Image.new("L", (width, height), color=255)

    def tile(img: np.ndarray) -> Image.Image:
        im = Image.fromarray(np.asarray(img, dtype=np.uint8))
        return (
            im.convert("L").resize((size, size), Image.Resampling.NEAREST)
            if im.size != (size, size)
            else im.convert("L")
        )

    for n, pair in enumerate(pairs):
        g, t = int(pair[0]), int(pair[1])
        r, c = divmod(n, columns)
        x = pad + c * (pair_w + pad)
        y = pad + r * (size + pad)
        canvas.paste(tile(generated[g]), (x, y))
        canvas.paste(tile(train[t]), (x + size + pad // 2, y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def label_subsets(
    real_labels: Sequence[str] | None,
    gen_labels: Sequence[str] | None,
    labels: Sequence[str] | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(label, real row indices, generated row indices) per label, when both sides are labelled.

    Labels come in ``labels`` order (else sorted); a label missing on either side is skipped.
    """
    if not real_labels or not gen_labels:
        return
    real = np.asarray(list(real_labels))
    gen = np.asarray(list(gen_labels))
    order = list(labels) if labels else sorted(set(real.tolist()) | set(gen.tolist()))
    for label in order:
        r = np.flatnonzero(real == label)
        g = np.flatnonzero(gen == label)
        if len(r) and len(g):
            yield label, r, g
