"""Exact and near-duplicate detection, and the patient/duplicate groups that must share a split.

Near-duplicates (docs/deduplication.md; measured by ``benchmarks/bench_dedup.py``):

1. ``describe``, in the decoding workers: one fixed-length uint8 vector per image (1872 bytes),
   thirteen blurred 12x12 thumbnails of its central window (``VIEWS``): the image itself, shifted
   by 4% four ways, rotated by 4 degrees both ways, zoomed by 1.06, and zoomed by 1.12 at five
   places. The blur absorbs small shifts; the other views absorb larger shifts, rotations, and
   crops or borders that rescale the picture.
2. ``candidate_pairs``: the thumbnails are whitened by the dataset's own principal components
   (chest X-rays all look alike; whitening weighs what tells them apart). Each image's own view is
   looked up among every image's thirteen views in an inverted-file index (spherical k-means cells,
   the nearest ``PROBES`` probed); its ``CANDIDATES`` nearest other images become candidate pairs.
   Time grows as n^1.5, memory as n: no all-pairs comparison.
3. ``verify_pairs``: each pair is aligned by a similarity transform (scale, rotation, shift) plus
   gain and offset, fitted coarse to fine by Tukey-weighted Gauss-Newton on 16 and 32 px versions
   (padding bars, uniform frames and black fill masked out, so a label or a border does not pull
   the fit), then scored at 64 px: the 30th percentile over 8 px tiles of the correlation of the
   aligned difference-of-Gaussians band. Copies of one picture share that detail everywhere;
   distinct X-rays, however alike in outline, agree in part of the image at most.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np
from PIL import Image

#: Side of each view's thumbnail in the descriptor.
GRID = 12
#: The views of the central window the descriptor holds, as (zoom, x offset, y offset, rotation in
#: degrees), offsets in fractions of the image side. The first is the image itself; a copy shifted
#: by up to ~6%, cropped by up to ~12% anywhere, shrunk inside a border or rotated by up to ~7 degrees
#: matches one of the others.
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (1.0, 0.0, 0.0, 0.0),
    (1.06, 0.0, 0.0, 0.0),
    (1.12, 0.0, 0.0, 0.0),
    (1.12, -0.03, -0.03, 0.0),
    (1.12, 0.03, -0.03, 0.0),
    (1.12, -0.03, 0.03, 0.0),
    (1.12, 0.03, 0.03, 0.0),
    (1.0, 0.04, 0.0, 0.0),
    (1.0, -0.04, 0.0, 0.0),
    (1.0, 0.0, 0.04, 0.0),
    (1.0, 0.0, -0.04, 0.0),
    (1.0, 0.0, 0.0, 4.0),
    (1.0, 0.0, 0.0, -4.0),
)
#: Fraction of the image side the zoom-1 window covers: the outer 10% on each side, where borders,
#: burned-in labels and shifted-in black fill sit, is left out of the descriptor.
WINDOW = 0.8
#: Standard deviations per quantisation step of the stored thumbnails (values clip at +-4 sd).
_QUANT = 32.0
#: Principal components the candidate search keeps.
WHITEN_DIMS = 48
#: Nearest other images per image that are verified.
CANDIDATES = 4
#: Inverted-file cells each image's base view probes (of about 2 sqrt(n)).
PROBES = 8
#: Side the verification works at (images are reduced, or enlarged, to it).
VERIFY_SIZE = 64
#: Verification score from which two images are near-duplicates and share a split. Measured
#: (docs/deduplication.md): pairs of distinct PneumoniaMNIST images (the hardest: blurry, all
#: alike) reach 0.78-0.81 and distinct real adult X-rays 0.4; 99% of shifted, cropped, rotated,
#: re-encoded, re-exposed, noisy, framed and labelled copies score above 0.9.
NEAR_DUP_SCORE = 0.85
#: Score from which two images are copies of *one picture* when their labels disagree (a conflict
#: that drops data, so stricter than the split grouping above).
SAME_PICTURE_SCORE = 0.9
#: Difference-of-Gaussians band (sigmas in px at VERIFY_SIZE) the score compares: detail of about
#: 3-8 px at 64 px, finer than the outline all chest X-rays share, coarser than JPEG blocks.
BAND = (1.0, 2.0)
#: The band one step coarser, for pairs where an image carries pixel noise (``NOISY``).
NOISY_BAND = (1.2, 2.2)
#: Noise level (robust spread of the finest detail over the spread in ``BAND``) above which an
#: image counts as noisy. Clean X-rays measure 0.16-0.41 (real, full resolution) and 0.17-0.26
#: (PneumoniaMNIST upsampled); Gaussian noise of sd 10 on 256 px lifts the latter to 0.4-0.95.
NOISY = 0.3
#: Quantile of the tile correlations that is the score: 70% of the compared tiles must agree.
SCORE_QUANTILE = 0.3
# Layout of ``describe``'s vector: search views, verification thumbnail, its mask, its noise level.
_VIEWS_END = len(VIEWS) * GRID * GRID
_THUMB_END = _VIEWS_END + VERIFY_SIZE * VERIFY_SIZE
_MASK_END = _THUMB_END + VERIFY_SIZE * VERIFY_SIZE // 8
#: Length of ``describe``'s output (uint8): 1872 + 4096 + 512 + 1 bytes.
DESCRIPTOR_LENGTH = _MASK_END + 1


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@functools.lru_cache(maxsize=32)
def _blur_matrix(side: int, sigma: float) -> np.ndarray:
    """(side, side) matrix applying a 1-D Gaussian with edge replication: blur(x) = K x K^T."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    m = np.zeros((side, side), np.float32)
    for i in range(side):
        for o, w in enumerate(k):
            m[i, min(side - 1, max(0, i + o - r))] += w
    return m


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a square array with edge replication (NumPy only: runs in the workers)."""
    m = _blur_matrix(a.shape[0], sigma)
    return m @ a @ m.T


@functools.lru_cache(maxsize=8)
def _resample_matrix(n: int, side: int) -> np.ndarray:
    """(side, n) matrix resizing a length-n axis to ``side``: box average, or linear if enlarging."""
    m = np.zeros((side, n), np.float32)
    if n >= side:
        edges = np.arange(side + 1) * n / side
        for j in range(side):
            lo, hi = edges[j], edges[j + 1]
            for i in range(int(np.floor(lo)), min(n, int(np.ceil(hi)))):
                m[j, i] = min(hi, i + 1) - max(lo, i)
    else:
        x = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
        left = np.floor(x).astype(int)
        right = np.minimum(left + 1, n - 1)
        np.add.at(m, (np.arange(side), left), 1 - (x - left))
        np.add.at(m, (np.arange(side), right), x - left)
    return m / m.sum(1, keepdims=True)


def _reduce(a: np.ndarray, side: int) -> np.ndarray:
    """A square array averaged (or, if smaller, linearly enlarged) to ``side`` x ``side``, float32."""
    m = _resample_matrix(a.shape[0], side)
    return m @ a.astype(np.float32) @ m.T


def describe(img: np.ndarray) -> np.ndarray:
    """Everything near-duplicate detection needs of a square uint8 image: ``DESCRIPTOR_LENGTH`` uint8.

    The search views (``VIEWS``), then the verification thumbnail (``VERIFY_SIZE`` squared grey
    levels), its picture mask (bit-packed) and its noise level (one byte, 1/50 steps).
    """
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"describe expects a square 2-D image, got shape {img.shape}")
    out = np.empty(DESCRIPTOR_LENGTH, dtype=np.uint8)
    out[:_VIEWS_END] = _views_of(img)
    thumb = _thumb(img)
    out[_VIEWS_END:_THUMB_END] = np.clip(np.round(thumb.pixels), 0, 255).astype(np.uint8).ravel()
    out[_THUMB_END:_MASK_END] = np.packbits(thumb.mask.ravel() > 0)
    out[_MASK_END] = min(255, round(thumb.noise * 50))
    return out


def _views_of(img: np.ndarray) -> np.ndarray:
    work = 64
    # 1.5 px at 64 (6 px at 256): a shift of 4% moves the 12x12 cells by less than their width.
    blurred = Image.fromarray(_blur(_reduce(img, work), 1.5).astype(np.float32), "F")
    out = np.empty((len(VIEWS), GRID * GRID), dtype=np.uint8)
    for k, (zoom, dx, dy, angle) in enumerate(VIEWS):
        half = work * WINDOW / zoom / 2
        cx, cy = work * (0.5 + dx), work * (0.5 + dy)
        box = (cx - half, cy - half, cx + half, cy + half)
        source = blurred.rotate(angle, Image.Resampling.BILINEAR, center=(cx, cy)) if angle else blurred
        t = np.asarray(source.resize((GRID, GRID), Image.Resampling.BILINEAR, box=box), np.float64)
        t = t.ravel() - t.mean()
        std = t.std()
        t = t / std if std > 1e-6 else t * 0
        out[k] = np.clip(np.round(t * _QUANT) + 128, 0, 255).astype(np.uint8)
    return out.ravel()


class RowArray(Protocol):
    """What the search needs of its descriptors: an ndarray, or a lazy one read on indexing."""

    shape: tuple[int, ...]
    ndim: int
    dtype: np.dtype[Any]

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> np.ndarray: ...


Descriptors = Union[np.ndarray, RowArray]  # noqa: UP007 (a runtime alias)


def _check(descriptors: Descriptors) -> Any:
    # A lazy array (the decode cache's ExtrasView) is indexed as it is: rows are read when used.
    d = (
        descriptors
        if hasattr(descriptors, "shape") and hasattr(descriptors, "dtype")
        else np.asarray(descriptors)
    )
    if d.ndim != 2 or d.shape[1] != DESCRIPTOR_LENGTH or d.dtype != np.uint8:
        raise ValueError(f"descriptors must be uint8 (n, {DESCRIPTOR_LENGTH}), got {d.dtype} {d.shape}")
    return d


def _views(d: np.ndarray) -> np.ndarray:
    """Descriptor rows to their search views as float (rows, views, GRID * GRID)."""
    v = d[:, :_VIEWS_END].astype(np.float32)
    return ((v - 128) / _QUANT).reshape(len(d), len(VIEWS), GRID * GRID)


def _whitened(descriptors: Descriptors, rows: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(n, views, D) view vectors of ``rows``, whitened by the base views' principal components."""
    d = _check(descriptors)
    n, dims = len(rows), GRID * GRID
    # Mean and covariance of the base views, accumulated in chunks (memory stays flat in n).
    total, outer = np.zeros(dims), np.zeros((dims, dims))
    for start in range(0, n, chunk):
        base = _views(d[rows[start : start + chunk]])[:, 0].astype(np.float64)
        total += base.sum(0)
        outer += base.T @ base
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / max(1, n - 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:WHITEN_DIMS]
    # Regularised: with few images the trailing components are noise, not signal.
    scale = 1.0 / np.sqrt(np.clip(vals[order], 0, None) + 0.01 * max(vals.max(), 1e-12))
    proj = (vecs[:, order] * scale).astype(np.float32)
    out = np.empty((n, len(VIEWS), len(order)), np.float32)
    for start in range(0, n, chunk):
        w = (_views(d[rows[start : start + chunk]]) - mean.astype(np.float32)) @ proj
        out[start : start + chunk] = w / (np.linalg.norm(w, axis=-1, keepdims=True) + 1e-12)
    return out


def _kmeans(x: np.ndarray, cells: int, iters: int = 8) -> np.ndarray:
    """Deterministic spherical k-means centroids (seeded sample start, a few Lloyd steps)."""
    rng = np.random.default_rng(0)
    sample = x[np.sort(rng.choice(len(x), min(len(x), 40 * cells), replace=False))]
    cent = sample[np.sort(rng.choice(len(sample), cells, replace=False))].copy()
    for _ in range(iters):
        assign = np.argmax(sample @ cent.T, axis=1)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, sample)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        cent = np.where(norms > 0, sums / np.maximum(norms, 1e-12), cent)
    return cent


def _merge(
    best_sim: np.ndarray, best_own: np.ndarray, q: np.ndarray, sims: np.ndarray, owners: np.ndarray
) -> None:
    """Fold candidate (owner, similarity) columns into the running top-k of the query rows ``q``."""
    k = best_sim.shape[1]
    sim = np.concatenate([best_sim[q], sims], axis=1)
    own = np.concatenate([best_own[q], owners], axis=1)
    # One entry per other image (its best view), then the k best.
    order = np.lexsort((-sim, own), axis=1)
    sim, own = np.take_along_axis(sim, order, 1), np.take_along_axis(own, order, 1)
    repeat = np.zeros_like(own, dtype=bool)
    repeat[:, 1:] = own[:, 1:] == own[:, :-1]
    sim[repeat | (own < 0)] = -np.inf
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    best_sim[q] = np.take_along_axis(sim, top, 1)
    best_own[q] = np.where(np.isfinite(best_sim[q]), np.take_along_axis(own, top, 1), -1)


def _search_block(
    vecs: np.ndarray,
    q: np.ndarray,
    entries: np.ndarray,
    entry_owner: np.ndarray,
    best: tuple[np.ndarray, np.ndarray],
) -> None:
    """Queries ``q`` (base views) against ``entries``; the k * views best columns are merged."""
    k = best[0].shape[1]
    sims = vecs[q, 0] @ entries.T
    sims[entry_owner[None, :] == q[:, None]] = -np.inf  # an image is not its own candidate
    take = min(sims.shape[1], k * len(VIEWS))  # enough columns to hold k distinct other images
    cols = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < sims.shape[1] else None
    if cols is None:
        cols = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
    _merge(best[0], best[1], q, np.take_along_axis(sims, cols, 1), entry_owner[cols])


def candidate_pairs(
    descriptors: Descriptors,
    k: int = CANDIDATES,
    cells: int | None = None,
    probes: int = PROBES,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Pairs (i < j) to verify: each image with the ``k`` other images whose views are nearest its own.

    The search is an inverted-file index: spherical k-means ``cells`` (default 1, an exact search,
    under 4000 images; else about 2 sqrt(n)) hold every view; each image's base view is compared with
    the views in the ``probes`` cells nearest it. Memory holds the whitened views (n x 13 x 48
    float32) and an n x k table; time grows as n^1.5. With ``rows``, only those descriptor rows
    take part (read in chunks: a memory-mapped array stays on disk) and pairs index into ``rows``.
    """
    rows = np.arange(len(descriptors)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    vecs = _whitened(descriptors, rows)
    views = vecs.shape[1]
    k = min(k, n - 1)
    best = (np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64))
    if cells is None:
        cells = 1 if n < 4000 else int(round(2 * np.sqrt(n)))
    if cells <= 1:
        entries, owner = vecs.reshape(n * views, -1), np.repeat(np.arange(n), views)
        for start in range(0, n, 1024):
            _search_block(vecs, np.arange(start, min(n, start + 1024)), entries, owner, best)
    else:
        cent = _kmeans(vecs[:, 0], cells)
        # Each view goes into the cell of its nearest centroid; each base view probes its nearest cells.
        entry_cell = np.concatenate(
            [np.argmax(vecs[s : s + 8192].reshape(-1, vecs.shape[2]) @ cent.T, 1) for s in range(0, n, 8192)]
        )
        probes = min(probes, cells)
        query_cells = np.concatenate(
            [np.argsort(-(vecs[s : s + 8192, 0] @ cent.T), 1)[:, :probes] for s in range(0, n, 8192)]
        )
        by_cell = np.argsort(entry_cell, kind="stable")
        bounds = np.searchsorted(entry_cell[by_cell], np.arange(cells + 1))
        q_order = np.argsort(query_cells.ravel(), kind="stable")
        q_bounds = np.searchsorted(query_cells.ravel()[q_order], np.arange(cells + 1))
        for c in range(cells):
            members = by_cell[bounds[c] : bounds[c + 1]]
            queries = q_order[q_bounds[c] : q_bounds[c + 1]] // probes
            if len(members) and len(queries):
                entries = vecs.reshape(n * views, -1)[members]
                for start in range(0, len(queries), 4096):
                    _search_block(vecs, queries[start : start + 4096], entries, members // views, best)
    rows = np.repeat(np.arange(n), k)
    other = best[1].ravel()
    keep = other >= 0
    pairs = np.stack([np.minimum(rows[keep], other[keep]), np.maximum(rows[keep], other[keep])], 1)
    return np.unique(pairs, axis=0).astype(np.int64)


@dataclass(frozen=True)
class Match:
    """A verified pair and the similarity transform found between its images.

    A point at offset ``v`` from the centre of image ``i`` is at ``scale * R(rotation) v + shift``
    from the centre of image ``j``: ``scale`` 1.11 means ``j`` shows the picture enlarged by 1.11
    (a 10% crop of ``i`` resized back), 0.94 that it is shrunk (e.g. inside a frame).
    """

    i: int
    j: int
    score: float
    scale: float
    rotation_deg: float
    shift: tuple[float, float]  # fractions of the image side


@dataclass(frozen=True)
class _Thumb:
    """An image at ``VERIFY_SIZE`` (zero mean, unit variance), where its picture is, and its noise.

    The mask leaves out the black bars ``--resize pad`` adds around a non-square image, uniform
    frames, and black fill (exact 0: corners of a rotated copy, the strip a shift uncovered): their
    edges would pull the alignment (padding stays put when the picture inside is cropped; a frame
    or a fill has nothing to match) and make distinct images of one aspect ratio look alike.
    """

    pixels: np.ndarray  # grey levels (standardised once read back by ``_read_thumb``)
    mask: np.ndarray  # 1 where the picture is, 1.5 px or more from bars, frames and black fill
    noise: float  # see NOISY


#: Grey levels a row or column may span and still count as a uniform bar (padding, a frame).
_BAR_RANGE = 8


def _content_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns left once uniform bars at the edges (black padding, frames) are peeled off."""
    top, bottom, left, right = 0, img.shape[0], 0, img.shape[1]
    for _ in range(3):  # a frame's sides only look uniform once the padding above them is off
        inner = img[top:bottom, left:right].astype(np.int16)
        if inner.size == 0:
            return 0, img.shape[0], 0, img.shape[1]
        rows = np.nonzero(inner.max(1) - inner.min(1) > _BAR_RANGE)[0]
        cols = np.nonzero(inner.max(0) - inner.min(0) > _BAR_RANGE)[0]
        if not len(rows) or not len(cols):
            return 0, img.shape[0], 0, img.shape[1]
        new = (top + rows[0], top + rows[-1] + 1, left + cols[0], left + cols[-1] + 1)
        if new == (top, bottom, left, right):
            break
        top, bottom, left, right = new
    return top, bottom, left, right


def _thumb(img: np.ndarray) -> _Thumb:
    n = img.shape[0]
    # Always compared at VERIFY_SIZE: the band the score reads is then the same detail whatever
    # --size was (at 28 px, 1-2 px would be the coarse outline every chest X-ray shares).
    side = VERIFY_SIZE
    t = _reduce(img, side)
    top, bottom, left, right = (v / n for v in _content_box(img))
    centre = (np.arange(side) + 0.5) / side
    margin = 1.5 / side
    # A box edge on the image edge is no bar: nothing to keep away from.
    rows = (centre >= (top + margin if top > 0 else 0)) & (centre <= (bottom - margin if bottom < 1 else 1))
    cols = (centre >= (left + margin if left > 0 else 0)) & (centre <= (right - margin if right < 1 else 1))
    mask = rows[:, None] & cols[None, :]
    zero = img == 0
    if zero.any():
        # Black fill reaches the edge (a rotated copy's corners, the strip a shift uncovered);
        # dark picture clipped to 0 inside (lungs of a darkened copy) stays compared.
        from scipy import ndimage

        parts, count = ndimage.label(zero)
        reaches_edge = np.zeros(count + 1, bool)
        reaches_edge[np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]])] = True
        reaches_edge[0] = False
        fill = reaches_edge[parts]
        mask &= ~_grow(_reduce(fill.astype(np.float32), side) > 0.25)
    return _Thumb(t, mask.astype(np.float32), _noise_level(_standardised(t)))


def _grow(m: np.ndarray) -> np.ndarray:
    """A boolean mask grown by one pixel (8-neighbourhood)."""
    p = np.pad(m, 1)
    out = np.zeros_like(m)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= p[dy : dy + m.shape[0], dx : dx + m.shape[1]]
    return out


def _noise_level(t: np.ndarray) -> float:
    """Robust spread (MAD) of the finest detail relative to the spread in ``BAND``."""
    fine = t - _blur(t, 0.7)
    band = _blur(t, BAND[0]) - _blur(t, BAND[1])
    spread = float(band.std())
    mad = 1.4826 * float(np.median(np.abs(fine - np.median(fine))))
    return mad / spread if spread > 1e-6 else 0.0


def _standardised(t: np.ndarray) -> np.ndarray:
    t = t - t.mean()
    std = t.std()
    return t / std if std > 1e-6 else t


def _read_thumb(row: np.ndarray) -> _Thumb:
    side = VERIFY_SIZE
    pixels = _standardised(row[_VIEWS_END:_THUMB_END].astype(np.float32).reshape(side, side))
    mask = np.unpackbits(row[_THUMB_END:_MASK_END])[: side * side].reshape(side, side)
    return _Thumb(pixels, mask.astype(np.float32), float(row[_MASK_END]) / 50)


def verify_pairs(
    pairs: np.ndarray, descriptors: Descriptors, batch: int = 256, rows: np.ndarray | None = None
) -> list[Match]:
    """Align and score every pair from the images' ``describe`` vectors (pairs index ``rows``)."""
    import torch

    d = _check(descriptors)
    rows = np.arange(len(d)) if rows is None else np.asarray(rows, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out: list[Match] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        first = [_read_thumb(d[rows[i]]) for i in chunk[:, 0].tolist()]
        second = [_read_thumb(d[rows[j]]) for j in chunk[:, 1].tolist()]

        def stacked(field: str, side: list[_Thumb]) -> torch.Tensor:
            return torch.from_numpy(np.stack([getattr(t, field) for t in side]))

        noisy = torch.tensor([max(x.noise, y.noise) > NOISY for x, y in zip(first, second, strict=True)])
        with torch.no_grad():
            params, scores = _align_and_score(
                stacked("pixels", first),
                stacked("pixels", second),
                stacked("mask", first),
                stacked("mask", second),
                noisy,
            )
        for (i, j), p, score in zip(chunk.tolist(), params.tolist(), scores.tolist(), strict=True):
            aa, bb, tx, ty = p
            scale, angle = float(np.hypot(1 + aa, bb)), float(np.degrees(np.arctan2(bb, 1 + aa)))
            out.append(Match(i, j, float(score), scale, angle, (tx / VERIFY_SIZE, ty / VERIFY_SIZE)))
    out.sort(key=lambda m: (m.i, m.j))
    return out


def _torch_blur(x, sigma: float):
    import torch

    m = torch.from_numpy(_blur_matrix(x.shape[-1], sigma))
    return m @ x @ m.T


def _erode(mask, radius: int, edge: bool = False):
    """Shrink a 0/1 mask by ``radius`` px; with ``edge`` the image edge counts as outside too."""
    import torch.nn.functional as F

    if radius <= 0:
        return mask
    x = mask[:, None]
    if edge:
        x = F.pad(x, (radius, radius, radius, radius), value=0.0)
    out = -F.max_pool2d(-x, 2 * radius + 1, stride=1, padding=0 if edge else radius)
    return out[:, 0]


def _sample(img, params, side: int):
    """``img`` (P, [C,] s, s) sampled at x_B = [[1+a, -b], [b, 1+a]] (x - c) + c + t.

    Returns the values, the mask of grid points inside ``img`` and the centred grid coordinates.
    """
    import torch
    import torch.nn.functional as F

    c = (side - 1) / 2
    r = torch.arange(side, dtype=torch.float32) - c
    dy, dx = r[:, None].expand(side, side), r[None, :].expand(side, side)
    # Normalised grid coordinates (align_corners=True: -1 and 1 are the outer pixel centres).
    theta = torch.zeros(len(params), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 + params[:, 0]
    theta[:, 0, 1] = -params[:, 1]
    theta[:, 1, 0] = params[:, 1]
    theta[:, 0, 2] = params[:, 2] / c
    theta[:, 1, 2] = params[:, 3] / c
    grid = F.affine_grid(theta, [len(params), 1, side, side], align_corners=True)
    vals = F.grid_sample(img if img.dim() == 4 else img[:, None], grid, "bilinear", "border", True)
    vals = vals if img.dim() == 4 else vals[:, 0]
    inside = (grid.abs() <= 1 + 1 / (side - 1)).all(-1)  # within half a pixel of the edge centres
    return vals, inside, dx, dy


def _gradients(img):
    import torch.nn.functional as F

    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    gx = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) / 2
    gy = (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) / 2
    return gx, gy


def _gauss_newton(a, b, mask_a, mask_b, params, iters: int):
    """Robust Gauss-Newton steps on the similarity parameters; gain and offset solved alongside."""
    import torch

    n, side = len(a), a.shape[-1]
    gxb, gyb = _gradients(b)
    stack = torch.stack([b, gxb, gyb, mask_b], 1)
    weight = torch.ones_like(a)
    for _ in range(iters):
        sampled, inside, dx, dy = _sample(stack, params, side)
        bw, gx, gy = sampled[:, 0], sampled[:, 1], sampled[:, 2]
        use = inside & (sampled[:, 3] > 0.999) & (mask_a > 0)
        jac = torch.stack([gx * dx + gy * dy, gy * dx - gx * dy, gx, gy, bw, torch.ones_like(bw)], -1)
        jac = jac.view(n, side * side, 6)
        jw = jac * (use.float() * weight).view(n, side * side, 1)
        h = torch.bmm(jw.transpose(1, 2), jac).double()
        g = torch.bmm(jw.transpose(1, 2), a.reshape(n, side * side, 1))[..., 0].double()
        h = h + 1e-6 * torch.diag_embed(h.diagonal(dim1=1, dim2=2)) + 1e-9 * torch.eye(6, dtype=h.dtype)
        sol = torch.linalg.solve(h, g[..., None])[..., 0].float()
        gain = sol[:, 4:5]
        ok = gain.abs() > 1e-3
        step = torch.where(ok, sol[:, :4] / torch.where(ok, gain, torch.ones_like(gain)), 0.0)
        # No step beyond 20% scale, ~11 degrees or a third of the side: that is a divergence.
        limit = torch.tensor([0.2, 0.2, 0.3 * side, 0.3 * side])
        params = params + torch.maximum(torch.minimum(step, limit), -limit)
        # Tukey weights on the residual: a burned-in label or a border does not pull the fit.
        resid = a - (sol[:, 4, None, None] * bw + sol[:, 5, None, None])
        masked = torch.where(use, resid.abs(), float("nan"))
        scale = 1.4826 * masked.flatten(1).nanmedian(1).values.nan_to_num(1.0) + 1e-6
        u = resid.abs() / (4.685 * scale[:, None, None])
        weight = torch.where(u < 1, (1 - u * u) ** 2, 0.0)
    return params


def _align_and_score(a, b, mask_a, mask_b, noisy):
    """(P, 4) similarity parameters mapping ``b`` onto ``a`` and (P,) band-pass tile scores.

    ``noisy`` (P,) bool: pairs scored in ``NOISY_BAND`` rather than ``BAND``.
    """
    import torch
    import torch.nn.functional as F

    side = a.shape[-1]
    params = a.new_zeros(len(a), 4)
    # Fitted on the 16 and 32 px levels only: copies already align there to a fraction of a 64 px
    # pixel, and a 64 px refinement changed no measured score while costing the most.
    levels = [s for s in (side // 4, side // 2) if s >= 8] or [side]
    prev = levels[0]
    for s in levels:
        params[:, 2:] *= s / prev
        prev = s

        def level(x, s=s):
            return x if s == side else F.adaptive_avg_pool2d(x[:, None], s)[:, 0]

        # The content masks shrink by the blur's reach.
        ma, mb = _erode((level(mask_a) > 0.999).float(), 2), _erode((level(mask_b) > 0.999).float(), 2)
        params = _gauss_newton(
            _torch_blur(level(a), 1.0), _torch_blur(level(b), 1.0), ma, mb, params, 8 if s == levels[0] else 6
        )
    params[:, 2:] *= side / prev
    score = _band_score(a, b, mask_a, mask_b, params, BAND)
    if bool(noisy.any()):
        n = noisy.nonzero()[:, 0]
        score[n] = _band_score(a[n], b[n], mask_a[n], mask_b[n], params[n], NOISY_BAND)
    # A fit far outside what a copy undergoes (it diverged on two unrelated images) is no match.
    scale = torch.hypot(1 + params[:, 0], params[:, 1])
    angle = torch.atan2(params[:, 1], 1 + params[:, 0]).abs()
    shift = params[:, 2:].abs().amax(1) / side
    plausible = (scale > 0.7) & (scale < 1.43) & (angle < math.radians(20)) & (shift < 0.3)
    return params, torch.where(plausible, score, 0.0)


def _band_score(a, b, mask_a, mask_b, params, band: tuple[float, float]):
    """Low quantile over ~8 px tiles of the correlation of the aligned difference-of-Gaussians."""
    import torch

    side = a.shape[-1]
    warped, inside, _, _ = _sample(torch.stack([b, mask_b], 1), params, side)
    bw = warped[:, 0]
    band_a = _torch_blur(a, band[0]) - _torch_blur(a, band[1])
    band_b = _torch_blur(bw, band[0]) - _torch_blur(bw, band[1])
    # Pixels whose band-pass reaches outside ``b``, outside either content box or over the image
    # edge (where a border or shifted-in fill meets the picture) are not compared.
    valid = _erode(inside.float() * (warped[:, 1] > 0.999).float() * mask_a, min(4, side // 8), edge=True)
    tiles = max(2, side // 8)
    t = side // tiles

    def tile_sum(x):
        return x[:, : tiles * t, : tiles * t].reshape(len(x), tiles, t, tiles, t).sum((2, 4))

    n = tile_sum(valid)
    sx, sy = tile_sum(band_a * valid), tile_sum(band_b * valid)
    sxx, syy, sxy = (
        tile_sum(band_a**2 * valid),
        tile_sum(band_b**2 * valid),
        tile_sum(band_a * band_b * valid),
    )
    nn = n.clamp(min=1)
    vx, vy = sxx - sx * sx / nn, syy - sy * sy / nn
    cov = sxy - sx * sy / nn
    # A tile counts if mostly compared and textured in both images (black fill is not).
    ex, ey = vx / nn, vy / nn
    ref_x = ex.flatten(1).median(1).values[:, None, None]
    ref_y = ey.flatten(1).median(1).values[:, None, None]
    use = (n >= 0.5 * t * t) & (ex > 0.05 * ref_x) & (ey > 0.05 * ref_y) & (ex > 1e-8) & (ey > 1e-8)
    corr = cov / torch.sqrt(vx.clamp(min=1e-12) * vy.clamp(min=1e-12))
    corr = torch.where(use, corr, float("nan")).flatten(1)
    # Most tiles must agree (a low quantile); the rest may hold a label, a border or black fill.
    score = corr.nanquantile(SCORE_QUANTILE, dim=1)
    enough = use.flatten(1).sum(1) >= max(4, tiles * tiles // 4)
    return torch.where(enough & score.isfinite(), score, 0.0)


def verified_candidates(
    descriptors: Descriptors, *, k: int = CANDIDATES, rows: np.ndarray | None = None
) -> list[Match]:
    """Every candidate pair of the index, aligned and scored (``near_duplicates`` before its cut)."""
    return verify_pairs(candidate_pairs(descriptors, k, rows=rows), descriptors, rows=rows)


def near_duplicates(
    descriptors: Descriptors,
    *,
    min_score: float = NEAR_DUP_SCORE,
    k: int = CANDIDATES,
    rows: np.ndarray | None = None,
) -> list[Match]:
    """Verified near-duplicate pairs among the images whose ``describe`` vectors are the rows.

    With ``rows``, only those rows of ``descriptors`` are searched, and pairs index ``rows``.
    """
    return [m for m in verified_candidates(descriptors, k=k, rows=rows) if m.score >= min_score]


class UnionFind:
    """Groups of indices that must stay together."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return out


def leakage_groups(
    patients: Sequence[str | None],
    sha256: Sequence[str],
    near_pairs: Sequence[tuple[int, int, float]],
) -> UnionFind:
    """Union of rows sharing a patient, identical content, or near-duplicate pixels."""
    uf = UnionFind(len(sha256))
    first: dict[tuple[str, str], int] = {}
    for i, (pid, digest) in enumerate(zip(patients, sha256, strict=True)):
        for key in (("p", pid), ("h", digest)):
            if key[1] is None or key[1] == "":
                continue
            j = first.setdefault(key, i)  # type: ignore[arg-type]
            if j != i:
                uf.union(i, j)
    for i, j, _ in near_pairs:
        uf.union(i, j)
    return uf
