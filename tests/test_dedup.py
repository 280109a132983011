"""Near-duplicate detection on real X-rays: shifted, cropped, rotated and framed copies are found,
distinct X-rays are not merged, and the index finds what an exact search finds."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxraug.data.dedup import (
    DESCRIPTOR_LENGTH,
    NEAR_DUP_SCORE,
    SAME_PICTURE_SCORE,
    candidate_pairs,
    describe,
    near_duplicates,
    verify_pairs,
)
from cxraug.data.prepare import PrepareSettings, Source, prepare_dataset
from cxraug.imageio import decode_source, read_gray
from cxraug.plugins.datasets.imagefolder import ImageFolderAdapter
from cxraug.workspace import Workspace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIZE = 128
#: Real X-rays of several aspect ratios (padded differently by --resize pad).
FILES = ("001.jpeg", "037.jpg", "214.png", "484p.png", "766p.jpg", "884.png")


def _shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="module")
def xrays() -> list[np.ndarray]:
    """The real files as stored (full resolution, grey)."""
    return [read_gray(_shared() / "cxr-samples" / name) for name in FILES]


@pytest.fixture(scope="module")
def pneumoniamnist() -> np.ndarray:
    """200 distinct PneumoniaMNIST images (28 px), exact copies within the file left out."""
    arrays = np.load(_shared() / "pneumoniamnist.npz")
    images = arrays["test_images"]
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    return images[np.sort(first)[:200]]


def _square(gray: np.ndarray) -> np.ndarray:
    return decode_source(gray, SIZE, "pad")[0]


def _shift(gray: np.ndarray, frac: float) -> np.ndarray:
    d = round(frac * max(gray.shape))
    out = np.zeros_like(gray)
    out[d:, : gray.shape[1] - d] = gray[:-d, d:]
    return out


def _crop(gray: np.ndarray, frac: float) -> np.ndarray:
    h, w = gray.shape
    window = gray[round(h * frac) :, : w - round(w * frac)]  # off-centre: a zoom and a shift
    return np.asarray(Image.fromarray(window).resize((w, h), Image.Resampling.BILINEAR))


def _jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


COPIES = {
    "shift 4%": lambda g: _shift(g, 0.04),
    "crop 10% + rescale": lambda g: _crop(g, 0.10),
    "rotate 5 deg": lambda g: np.asarray(Image.fromarray(g).rotate(5, resample=Image.Resampling.BILINEAR)),
    "white frame": lambda g: np.pad(g, round(0.03 * max(g.shape)), constant_values=255),
    "gamma 0.7 + jpeg q40": lambda g: _jpeg(np.round(255 * (g / 255.0) ** 0.7).astype(np.uint8), 40),
}


@pytest.mark.parametrize("name", list(COPIES))
def test_transformed_copies_of_real_xrays_are_found(xrays: list[np.ndarray], name: str) -> None:
    originals = [_square(g) for g in xrays]
    copies = [_square(COPIES[name](g)) for g in xrays]
    images = originals + copies
    found = near_duplicates(np.stack([describe(x) for x in images]))
    pairs = {(m.i, m.j) for m in found}
    n = len(originals)
    assert {(k, n + k) for k in range(n)} <= pairs, f"{name}: copies not matched with their originals"
    assert all(m.i % n == m.j % n for m in found), "a copy matched another X-ray"


def test_copy_alignment_recovers_the_transform(xrays: list[np.ndarray]) -> None:
    gray = xrays[0]
    original, cropped = _square(gray), _square(_crop(gray, 0.10))
    (match,) = verify_pairs(np.array([[0, 1]]), np.stack([describe(original), describe(cropped)]))
    assert match.score >= SAME_PICTURE_SCORE
    assert match.scale == pytest.approx(1 / 0.9, abs=0.02)  # 90% of the picture, enlarged to fill it
    assert abs(match.rotation_deg) < 1


def test_distinct_real_xrays_are_not_merged(xrays: list[np.ndarray], pneumoniamnist: np.ndarray) -> None:
    real = [_square(g) for g in xrays]
    pairs = np.array(list(itertools.combinations(range(len(real)), 2)))
    scores = [m.score for m in verify_pairs(pairs, np.stack([describe(x) for x in real]))]
    assert max(scores) < NEAR_DUP_SCORE - 0.1, "distinct adult X-rays scored as near-duplicates"

    small = list(pneumoniamnist)  # blurry 28 px pediatric X-rays, all alike in outline
    desc = np.stack([describe(x) for x in small])
    assert near_duplicates(desc) == []


def test_descriptor_is_fixed_size_and_deterministic(xrays: list[np.ndarray]) -> None:
    for size in (16, 64, 256):
        img = decode_source(xrays[1], size, "pad")[0]
        d = describe(img)
        assert d.dtype == np.uint8 and d.shape == (DESCRIPTOR_LENGTH,)
        assert np.array_equal(d, describe(img.copy()))
    with pytest.raises(ValueError, match="square"):
        describe(np.zeros((10, 12), np.uint8))


def test_index_finds_what_the_exact_search_finds(xrays: list[np.ndarray], pneumoniamnist: np.ndarray) -> None:
    images = [decode_source(x, 64, "pad")[0] for x in pneumoniamnist]
    images += [decode_source(g, 64, "pad")[0] for g in xrays]
    images += [decode_source(COPIES["crop 10% + rescale"](g), 64, "pad")[0] for g in xrays]
    desc = np.stack([describe(x) for x in images])
    exact = {tuple(p) for p in candidate_pairs(desc, cells=1).tolist()}
    # Every cell probed: the inverted file holds the same views, so it must return the same pairs.
    assert {tuple(p) for p in candidate_pairs(desc, cells=6, probes=6).tolist()} == exact
    # A few of many cells probed: the pairs lost are among the farthest of each image's k nearest
    # (distinct images); every copy is still found.
    probed = {tuple(p) for p in candidate_pairs(desc, cells=40, probes=8).tolist()}
    assert len(exact & probed) >= 0.8 * len(exact)
    n, m = len(pneumoniamnist), len(xrays)
    assert {(n + k, n + m + k) for k in range(m)} <= probed
    # ``rows`` searches a subset in place (prepare passes one row per distinct file).
    subset = np.arange(0, len(desc), 2)
    assert np.array_equal(candidate_pairs(desc, rows=subset), candidate_pairs(desc[subset]))


def test_shifted_copy_in_another_split_folder_shares_the_split(shared_data: Path, tmp_path: Path) -> None:
    """The official test split keeps its copy; the training copy, shifted, would leak: dropped."""
    root = tmp_path / "tree"
    samples = sorted((shared_data / "cxr-samples").iterdir())
    for i, path in enumerate(samples[:8]):
        split = "train" if i < 5 else "test"
        (root / split / "covid").mkdir(parents=True, exist_ok=True)
        Image.fromarray(read_gray(path)).save(root / split / "covid" / f"{path.stem}.png")
    moved = read_gray(samples[6])  # in test/
    Image.fromarray(_shift(moved, 0.04)).save(root / "train" / "covid" / "shifted.png")
    settings = PrepareSettings(name="t", size=64)
    result = prepare_dataset(Workspace(tmp_path / "ws"), [Source(ImageFolderAdapter(), root)], settings)
    splits = {r["original"]: r["split"] for r in result.dataset.rows}
    test_name = f"test/covid/{samples[6].stem}.png"
    assert splits[test_name] == "test"
    assert "train/covid/shifted.png" not in splits
    reasons = {d["original"]: d["reason"] for d in result.report["dropped"]}
    assert "test" in reasons["train/covid/shifted.png"]
    (pair,) = result.report["near_duplicate_pairs"]
    assert {pair["a"], pair["b"]} == {test_name, "train/covid/shifted.png"}
    assert pair["correlation"] >= NEAR_DUP_SCORE and pair["same_picture"]


def test_cropped_copy_under_another_label_is_a_conflict(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    samples = sorted((shared_data / "cxr-samples").iterdir())
    for i, path in enumerate(samples[:8]):
        label = ("covid", "normal")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(read_gray(path)).save(root / label / f"{path.stem}.png")
    Image.fromarray(_crop(read_gray(samples[0]), 0.05)).save(root / "normal" / "figure.png")
    settings = PrepareSettings(name="t", size=64)
    result = prepare_dataset(Workspace(tmp_path / "ws"), [Source(ImageFolderAdapter(), root)], settings)
    (group,) = result.report["conflicts"]
    assert {m["original"] for m in group["members"]} == {f"covid/{samples[0].stem}.png", "normal/figure.png"}
    assert len(result.dataset.rows) == 7
