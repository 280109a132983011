"""Generative and classification metric engines against direct computations, and the metric plugins."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import linalg
from sklearn import metrics as skm

from cxraug.errors import CxrError
from cxraug.interfaces import Metric, MetricInputs, MetricServices
from cxraug.metrics import classification as cls
from cxraug.metrics import generative as gen
from cxraug.plugins.metrics import fid as fid_plugin
from cxraug.plugins.metrics import kid as kid_plugin
from cxraug.plugins.metrics import memorization as mem_plugin
from cxraug.plugins.metrics import prdc as prdc_plugin
from cxraug.plugins.metrics import roc as roc_plugin

# -------------------------------------------------------------------------------------------- FID


def test_fid_of_identical_sets_is_zero() -> None:
    feats = np.random.default_rng(0).normal(size=(200, 8))
    assert abs(gen.fid(feats, feats)) < 1e-6


def test_fid_matches_direct_gaussian_formula() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) * 0.7 + 0.5
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Symmetric form: tr sqrt(s1 s2) = tr sqrt(s1^1/2 s2 s1^1/2).
    r1 = linalg.sqrtm(s1).real
    direct = (
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real)
    )
    assert gen.fid(a, b) == pytest.approx(direct, rel=1e-6)
    mu, sigma = gen.feature_stats(a)
    assert np.allclose(mu, mu1) and np.allclose(sigma, s1)


# -------------------------------------------------------------------------------------------- KID


def _mmd2_unbiased_brute(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return (float(u @ v) / d + 1) ** 3

    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_matches_brute_force_unbiased_mmd() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(25, 5))
    b = rng.normal(size=(25, 5)) + 0.3
    # Subsets as large as the sets: every subset is the whole set, so every estimate is the same.
    mean, std = gen.kid(a, b, num_subsets=5, max_subset_size=1000, seed=3)
    assert mean == pytest.approx(_mmd2_unbiased_brute(a, b), rel=1e-9)
    assert std < 1e-9
    far, _ = gen.kid(a, a + 3.0, num_subsets=3)
    assert far > 0.5 > abs(mean)


def test_kid_subsets_are_seeded() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(60, 4)), rng.normal(size=(50, 4))
    one = gen.kid(a, b, num_subsets=10, max_subset_size=20, seed=7)
    assert one == gen.kid(a, b, num_subsets=10, max_subset_size=20, seed=7)
    assert one != gen.kid(a, b, num_subsets=10, max_subset_size=20, seed=8)
    assert one[1] > 0


# ------------------------------------------------------------------------------------------- PRDC


def _prdc_brute(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    def radius(x: np.ndarray, i: int) -> float:
        return sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    fr = [radius(fake, j) for j in range(len(fake))]
    d = [[np.linalg.norm(real[i] - fake[j]) for j in range(len(fake))] for i in range(len(real))]
    n, m = len(real), len(fake)
    precision = np.mean([any(d[i][j] < rr[i] for i in range(n)) for j in range(m)])
    recall = np.mean([any(d[i][j] < fr[j] for j in range(m)) for i in range(n)])
    density = sum(d[i][j] < rr[i] for i in range(n) for j in range(m)) / (k * m)
    coverage = np.mean([min(d[i]) < rr[i] for i in range(n)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_prdc_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    real = rng.normal(size=(30, 4))
    fake = rng.normal(size=(25, 4)) * 1.3 + 0.4
    ours = gen.prdc(real, fake, k=3)
    for name, value in _prdc_brute(real, fake, 3).items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_prdc_of_identical_sets() -> None:
    feats = np.random.default_rng(6).normal(size=(40, 6))
    res = gen.prdc(feats, feats.copy(), k=5)
    assert res["precision"] == res["recall"] == res["coverage"] == 1.0
    assert res["density"] > 0.5


def test_prdc_blocks_agree_with_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(50, 3)), rng.normal(size=(45, 3)) + 0.2
    whole = gen.prdc(real, fake, k=4)
    monkeypatch.setattr(gen, "_BLOCK_ELEMS", 7)  # forces one row per block
    assert gen.prdc(real, fake, k=4) == whole


# ----------------------------------------------------------------------------------- memorisation


def _images(rng: np.random.Generator, n: int, size: int = 16) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)


def test_memorization_flags_copies_not_fresh_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    train = _images(rng, 40)
    copies = train[[3, 17, 29]]
    fresh = _images(rng, 12)
    generated = np.concatenate([fresh[:5], copies, fresh[5:]])
    res = gen.memorization(gen.pixel_features(generated, None), gen.pixel_features(train, None), k_closest=4)
    assert res.reference == "train"
    assert res.copied_fraction == pytest.approx(3 / len(generated))
    assert res.copied.tolist() == [5, 6, 7]
    assert {(g, t) for g, t, _ in res.closest[:3]} == {(5, 3), (6, 17), (7, 29)}
    assert all(d == 0.0 for _, _, d in res.closest[:3]) and res.closest[3][2] > 0
    holdout = gen.memorization(
        gen.pixel_features(generated, 8),
        gen.pixel_features(train, 8),
        gen.pixel_features(_images(rng, 30), 8),
    )
    assert holdout.reference == "holdout" and holdout.copied.tolist() == [5, 6, 7]
    out = gen.save_pairs_grid(tmp_path / "pairs.png", generated, train, [(g, t) for g, t, _ in res.closest])
    with Image.open(out) as im:
        assert im.mode == "L" and im.width > 4 * 2 * 16 and im.height > 16
        grid = np.asarray(im)
    assert np.array_equal(grid[4:20, 4:20], generated[res.closest[0][0]])


def test_nearest_neighbours_excludes_self() -> None:
    x = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    d, i = gen.nearest_neighbours(x, x, exclude_self=True)
    assert i.tolist() == [1, 0, 1] and d.tolist() == [1.0, 1.0, 4.0]


# --------------------------------------------------------------------------------- classification


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _multiclass_case(n: int = 120, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.2
    return y, _softmax(logits)


def test_perfect_classifier_has_auc_one() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 2, 1])
    scores = np.eye(3)[y] * 0.9 + 0.05
    rep = cls.evaluate_classifier(y, scores, ["normal", "pneumonia", "covid"], n_boot=50)
    assert rep.auc_macro == 1.0 and set(rep.auc.values()) == {1.0}
    assert rep.accuracy == rep.balanced_accuracy == rep.f1_macro == 1.0
    assert rep.auc_macro_ci == (1.0, 1.0)


def test_auc_and_summary_numbers_agree_with_sklearn() -> None:
    y, scores = _multiclass_case()
    rep = cls.evaluate_classifier(y, scores, ["a", "b", "c"], n_boot=200, seed=1)
    for c, label in enumerate(rep.labels):
        assert rep.auc[label] == pytest.approx(skm.roc_auc_score(y == c, scores[:, c]), abs=1e-12)
    assert rep.auc_macro == pytest.approx(skm.roc_auc_score(y, scores, multi_class="ovr"), abs=1e-12)
    pred = scores.argmax(axis=1)
    assert rep.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert rep.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert rep.f1_macro == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert rep.confusion == skm.confusion_matrix(y, pred).tolist()
    lo, hi = rep.auc_macro_ci
    assert lo < rep.auc_macro < hi and hi - lo < 0.3
    for label in rep.labels:
        assert rep.auc_ci[label][0] <= rep.auc[label] <= rep.auc_ci[label][1]
    assert rep.n_boot_used == 200
    fpr, tpr = rep.roc_curves["a"]["fpr"], rep.roc_curves["a"]["tpr"]
    assert np.trapezoid(tpr, fpr) == pytest.approx(rep.auc["a"])


def test_roc_auc_with_ties_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60).astype(bool)
    s = rng.integers(0, 4, 60).astype(float)  # many ties
    assert cls.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_plain_bootstrap_is_seeded_and_skips_missing_classes() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 40)
    y[:2] = 3  # a rare class: many plain resamples miss it
    scores = _softmax(rng.normal(size=(40, 4)))
    a = cls.bootstrap_auc(y, scores, n_boot=100, seed=5, stratified=False)
    b = cls.bootstrap_auc(y, scores, n_boot=100, seed=5, stratified=False)
    assert np.array_equal(a, b) and a.shape == (100, 5) and np.isfinite(a).all()


def test_sensitivity_specificity_from_hand_made_confusion() -> None:
    # true 0: 8 cases, 6 right, 2 called 1; true 1: 4 cases, 1 called 0, 3 right.
    y = np.array([0] * 8 + [1] * 4)
    p1 = np.array([0.2] * 6 + [0.8] * 2 + [0.3] + [0.9] * 3)
    rep = cls.evaluate_classifier(y, p1, ["neg", "pos"], n_boot=0)
    assert rep.confusion == [[6, 2], [1, 3]]
    assert rep.sensitivity == {"neg": 6 / 8, "pos": 3 / 4}
    assert rep.specificity == {"neg": 3 / 4, "pos": 6 / 8}
    assert rep.auc["pos"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert rep.auc["neg"] == pytest.approx(rep.auc["pos"]) and rep.auc_macro == pytest.approx(rep.auc["pos"])
    assert np.isnan(rep.auc_macro_ci[0])
    ones = cls.sens_spec(np.array([[5, 0], [0, 0]]))
    assert ones[0][0] == 1 and np.isnan(ones[0][1])


def test_missing_class_gives_undefined_auc_and_note() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    scores = _softmax(np.random.default_rng(0).normal(size=(6, 3)))
    rep = cls.evaluate_classifier(y, scores, ["a", "b", "c"], n_boot=20)
    assert np.isnan(rep.auc["c"]) and np.isfinite(rep.auc_macro) and rep.notes


def _delong_slow(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    v10 = np.array([[np.mean([psi(s[i], s[j]) for j in neg]) for i in pos] for s in (a, b)])
    v01 = np.array([[np.mean([psi(s[i], s[j]) for i in pos]) for j in neg] for s in (a, b)])
    aucs = v10.mean(axis=1)
    s10 = np.cov(v10)  # 2 x 2, over positives
    s01 = np.cov(v01)
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return aucs[0], aucs[1], (aucs[0] - aucs[1]) / np.sqrt(var)


def test_delong_matches_slow_structural_components() -> None:
    rng = np.random.default_rng(9)
    y = np.array([1] * 9 + [0] * 12)
    a = y * 0.8 + rng.normal(size=len(y))
    b = np.round(y * 0.4 + rng.normal(size=len(y)), 1)  # rounded: ties
    auc_a, auc_b, z, p = cls.delong_test(y, a, b)
    slow_a, slow_b, slow_z = _delong_slow(y, a, b)
    assert (auc_a, auc_b) == (pytest.approx(slow_a), pytest.approx(slow_b))
    assert auc_b == pytest.approx(skm.roc_auc_score(y, b))
    assert z == pytest.approx(slow_z, rel=1e-9)
    assert 0 < p < 1


def test_delong_identical_scores() -> None:
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    s = np.linspace(0, 1, 8)
    assert cls.delong_test(y, s, s.copy())[2:] == (0.0, 1.0)


def test_paired_bootstrap_auc_difference() -> None:
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 150)
    good = y + rng.normal(scale=0.5, size=150)
    bad = rng.normal(size=150)
    diff, lo, hi, p = cls.paired_bootstrap_auc_diff(y, good, bad, n_boot=300, seed=1)
    assert diff == pytest.approx(cls.roc_auc(y, good) - cls.roc_auc(y, bad))
    assert 0 < lo < diff < hi and p < 0.01
    assert cls.paired_bootstrap_auc_diff(y, good, good, n_boot=50) == (0.0, 0.0, 0.0, 1.0)


def test_plots_write_pngs(tmp_path: Path) -> None:
    y, scores = _multiclass_case(n=30)
    rep = cls.evaluate_classifier(y, scores, ["a", "b", "c"], n_boot=0)
    for path in (
        cls.roc_plot(rep, tmp_path / "roc.png"),
        cls.confusion_plot(rep.confusion, rep.labels, tmp_path / "c.png"),
    ):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 100


# ---------------------------------------------------------------------------------------- plugins


def _pooled(
    images: np.ndarray, role: str = "generated", mode: str = "clean", batch_size: int | None = None
) -> np.ndarray:
    """A cheap stand-in for the core's features service: 4x4 mean-pooled pixels."""
    n, s, _ = images.shape
    return images.reshape(n, 4, s // 4, 4, s // 4).mean(axis=(2, 4)).reshape(n, 16) / 255.0


def _gan_inputs(tmp_path: Path) -> MetricInputs:
    rng = np.random.default_rng(11)
    real = rng.integers(0, 256, size=(24, 16, 16), dtype=np.uint8)
    train = rng.integers(0, 256, size=(30, 16, 16), dtype=np.uint8)
    generated = np.concatenate([train[:2], rng.integers(0, 256, size=(22, 16, 16), dtype=np.uint8)])
    labels = ["normal", "covid"] * 12
    return MetricInputs(
        real=real,
        real_labels=labels,
        train=train,
        generated=generated,
        generated_labels=labels,
        labels=["normal", "covid"],
        out_dir=tmp_path,
        services=MetricServices(features=_pooled),
    )


def test_fid_kid_prdc_plugins(tmp_path: Path) -> None:
    inputs = _gan_inputs(tmp_path)
    real, fake = _pooled(inputs.real), _pooled(inputs.generated)
    res = fid_plugin.FID().compute(inputs)
    assert res.values["fid"] == pytest.approx(gen.fid(real, fake))
    assert res.values["fid/covid"] == pytest.approx(gen.fid(real[1::2], fake[1::2]))
    assert set(res.values) == {"fid", "fid/normal", "fid/covid"}
    res = kid_plugin.KID(kid_plugin.KIDOptions(num_subsets=4)).compute(inputs)
    assert set(res.values) == {"kid", "kid_std", "kid/normal", "kid_std/normal", "kid/covid", "kid_std/covid"}
    res = prdc_plugin.PRDC(prdc_plugin.PRDCOptions(k=3)).compute(inputs)
    assert res.values["coverage"] == gen.prdc(real, fake, k=3)["coverage"]
    assert {"precision", "recall", "density", "coverage", "precision/covid"} <= set(res.values)


def test_memorization_plugin(tmp_path: Path) -> None:
    inputs = _gan_inputs(tmp_path)
    opts = mem_plugin.MemorizationOptions(space="pixel", pixel_size=16, k_closest=4)
    res = mem_plugin.Memorization(opts).compute(inputs)
    # The two copies are flagged; fresh images only by chance, about `percentile` percent of them.
    assert 2 / 24 <= res.values["copied_fraction"] < 0.25
    assert res.artifacts["pairs"] == tmp_path / "memorization_pairs.png" and res.artifacts["pairs"].is_file()
    rows = res.tables["closest_pairs"]
    assert [(r["generated_index"], r["train_index"]) for r in rows[:2]] in (
        [(0, 0), (1, 1)],
        [(1, 1), (0, 0)],
    )
    assert rows[0]["looks_copied"] and rows[1]["looks_copied"] and rows[0]["distance"] == 0.0
    res = mem_plugin.Memorization(mem_plugin.MemorizationOptions(reference="train")).compute(inputs)
    assert res.tables["summary"][0]["reference"] == "train" and res.values["copied_fraction"] >= 2 / 24
    # the held-out reference comes from services.holdout; the training images themselves are none
    inputs.services.holdout = inputs.train
    pixel_holdout = mem_plugin.MemorizationOptions(space="pixel", pixel_size=16, reference="holdout")
    with pytest.raises(CxrError, match="reference=holdout"):
        mem_plugin.Memorization(pixel_holdout).compute(inputs)


def test_roc_plugin(tmp_path: Path) -> None:
    y, scores = _multiclass_case(n=60)
    inputs = MetricInputs(y_true=y, y_score=scores, labels=["normal", "pneumonia", "covid"], out_dir=tmp_path)
    res = roc_plugin.ROC(roc_plugin.ROCOptions(n_boot=50)).compute(inputs)
    expected = {
        "auc_macro",
        "auc_macro_ci_low",
        "auc_macro_ci_high",
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
    }
    for label, kind in itertools.product(["normal", "pneumonia", "covid"], ["auc", "sens", "spec"]):
        expected.add(f"{kind}/{label}")
    assert set(res.values) == expected
    assert res.artifacts["roc"].is_file() and res.artifacts["confusion"].is_file()
    assert [r["true"] for r in res.tables["confusion"]] == ["normal", "pneumonia", "covid"]
    assert sum(r["support"] for r in res.tables["per_label"]) == 60


@pytest.mark.parametrize("module", [fid_plugin, kid_plugin, prdc_plugin, mem_plugin, roc_plugin])
def test_plugin_modules_register_their_metric(module: object) -> None:
    got: list[type] = []
    module.register_metrics(got.append)  # type: ignore[attr-defined]
    assert len(got) == 1 and issubclass(got[0], Metric)
    assert got[0].name == Path(module.__file__).stem  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        got[0].Options(no_such_option=1)
