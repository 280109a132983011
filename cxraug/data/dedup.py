"""Exact and near-duplicate detection, and the patient/duplicate groups that must share a split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

#: Perceptual-hash Hamming distance under which two images are duplicate *candidates*.
CANDIDATE_BITS = 4
#: Correlation of 32x32 thumbnails above which a candidate pair is a near-duplicate. On real
#: chest X-rays, distinct images with close hashes still correlate at 0.6-0.91; re-encodings of
#: one image correlate above 0.97.
NEAR_DUP_CORRELATION = 0.95
#: Correlation above which two images count as the *same picture* when their labels disagree
#: (a conflict that drops data, so stricter than the split grouping above). Measured on the 16 real
#: X-rays at 256 px: JPEG quality 50 >= 0.9998, Gaussian noise sigma 8 >= 0.9996, +25 brightness
#: >= 0.996, gamma 0.7 >= 0.987; distinct phantom images of different classes reach 0.986.
SAME_PICTURE_CORRELATION = 0.99

_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def hash_candidates(hashes: np.ndarray, max_bits: int = CANDIDATE_BITS) -> list[tuple[int, int]]:
    """All pairs (i < j) whose 64-bit hashes differ in at most ``max_bits`` bits."""
    h = np.asarray(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int]] = []
    chunk = 2048
    for start in range(0, len(h), chunk):
        block = h[start : start + chunk]
        dist = _popcount64(block[:, None] ^ h[None, :])
        ii, jj = np.nonzero(dist <= max_bits)
        ii = ii + start
        keep = jj > ii
        pairs.extend(zip(ii[keep].tolist(), jj[keep].tolist(), strict=True))
    return pairs


def thumbnail(img: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance 32x32 thumbnail for near-duplicate verification."""
    t = np.asarray(Image.fromarray(img, "L").resize((32, 32), Image.Resampling.BOX), np.float64)
    t -= t.mean()
    std = t.std()
    return t / std if std > 0 else t


def near_duplicates(
    hashes: np.ndarray,
    image: Callable[[int], np.ndarray],
    *,
    max_bits: int = CANDIDATE_BITS,
    min_corr: float = NEAR_DUP_CORRELATION,
) -> list[tuple[int, int, float]]:
    """Pairs whose hashes are close AND whose thumbnails correlate above ``min_corr``."""
    found = []
    cache: dict[int, np.ndarray] = {}
    for i, j in hash_candidates(hashes, max_bits):
        ti = cache.setdefault(i, thumbnail(image(i)))
        tj = cache.setdefault(j, thumbnail(image(j)))
        corr = float((ti * tj).mean())
        if corr >= min_corr:
            found.append((i, j, corr))
    return found


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
