"""Statistics of the study: a nested bootstrap over generators, classifier seeds and test cases."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from cxraug.metrics.classification import auc_per_label, delong_test, macro_of


def metric_names(labels: list[str]) -> list[str]:
    """The primary endpoint then the secondary ones.

    A binary task has one test per quantity: its per-label AUC is the macro AUC itself, and the
    first label's sensitivity and specificity are the second's specificity and sensitivity.
    """
    if len(labels) == 2:
        return ["auc_macro", f"sens/{labels[1]}", f"spec/{labels[1]}"]
    return ["auc_macro"] + [f"{kind}/{lb}" for lb in labels for kind in ("auc", "sens", "spec")]


def run_metrics(y: np.ndarray, scores: np.ndarray, labels: list[str]) -> np.ndarray:
    """Every endpoint of one classifier run on one set of test cases, in ``metric_names`` order."""
    n_classes = len(labels)
    pred = scores.argmax(1)
    aucs = auc_per_label(y, scores)  # once: the bootstrap calls this for every run and resample
    out = [macro_of(aucs)]
    binary = n_classes == 2
    for c in [1] if binary else range(n_classes):
        pos, hit = y == c, pred == c
        sens = float(hit[pos].mean()) if pos.any() else float("nan")
        spec = float((~hit[~pos]).mean()) if (~pos).any() else float("nan")
        out += [sens, spec] if binary else [float(aucs[c]), sens, spec]
    return np.asarray(out, dtype=np.float64)


def stratified_indices(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test cases drawn with replacement within each class: every class keeps its count."""
    parts = [rng.choice(np.flatnonzero(y == c), size=int((y == c).sum())) for c in np.unique(y)]
    return np.concatenate(parts)


def two_sided_p(boots: np.ndarray) -> float:
    """Bootstrap p of "no difference": twice the smaller tail around 0, as (b + 1) / (B + 1).

    The +1 counts the observed data as one of the resamples, so p is never 0; its smallest value
    is 2 / (B + 1).
    """
    b = min(int((boots <= 0).sum()), int((boots >= 0).sum()))
    return float(min(1.0, 2 * (b + 1) / (len(boots) + 1)))


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment over the whole family (controls the family-wise error rate)."""
    keys = sorted((k for k, p in pvalues.items() if not math.isnan(p)), key=lambda k: pvalues[k])
    m, running, out = len(keys), 0.0, {k: float("nan") for k in pvalues}
    for i, key in enumerate(keys):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        out[key] = running
    return out


def _cell_means(
    y: np.ndarray,
    cells: np.ndarray,
    labels: list[str],
    idx: np.ndarray,
    g_idx: np.ndarray,
    s_idx: np.ndarray,
) -> np.ndarray:
    """Mean endpoint vector over the resampled generators x seeds of one arm on cases ``idx``."""
    g_count = np.bincount(g_idx, minlength=cells.shape[0])
    s_count = np.bincount(s_idx, minlength=cells.shape[1])
    total: np.ndarray | float = 0.0
    weight = 0.0
    yy = y[idx]
    for g in np.flatnonzero(g_count):
        for s in np.flatnonzero(s_count):
            w = float(g_count[g] * s_count[s])
            total = total + w * run_metrics(yy, cells[g, s][idx], labels)
            weight += w
    return np.asarray(total) / weight


def nested_bootstrap(
    y: np.ndarray,
    arms: dict[str, np.ndarray],
    labels: list[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    levels: tuple[str, ...] = ("generators", "seeds", "cases"),
) -> np.ndarray:
    """(B, arms, endpoints) bootstrap means: generators, then classifier seeds, then test cases.

    ``arms[arm]`` is (G, S, N, C): the test-set probabilities of every classifier run, G generators
    (1 for arms without a GAN) by S classifier seeds. Generators are resampled jointly for every
    arm that has them (the GAN arms share their K generators), seeds jointly for every arm (seed s
    of each arm is paired), and test cases within each class, the same cases for every arm.
    ``levels`` names the levels resampled (the others are kept whole), for variance components.
    """
    rng = np.random.default_rng(seed)
    names = list(arms)
    n_gen = max(a.shape[0] for a in arms.values())
    n_seed = min(a.shape[1] for a in arms.values())
    whole_g, whole_s, whole_n = np.arange(n_gen), np.arange(n_seed), np.arange(len(y))
    out = np.empty((n_boot, len(names), len(metric_names(labels))))
    for b in range(n_boot):
        g_idx = rng.integers(0, n_gen, n_gen) if "generators" in levels else whole_g
        s_idx = rng.integers(0, n_seed, n_seed) if "seeds" in levels else whole_s
        idx = stratified_indices(y, rng) if "cases" in levels else whole_n
        for a, name in enumerate(names):
            cells = arms[name]
            gi = g_idx if cells.shape[0] == n_gen and n_gen > 1 else np.zeros(1, dtype=np.int64)
            out[b, a] = _cell_means(y, cells[:, :n_seed], labels, idx, gi, s_idx)
    return out


def compare_arms(
    y: np.ndarray,
    arms: dict[str, np.ndarray],
    labels: list[str],
    *,
    base: str = "base",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    power: float = 0.8,
) -> dict[str, Any]:
    """The study's analysis: per-arm estimates and, against ``base``, differences with nested
    bootstrap CIs, raw and Holm-adjusted p, minimum detectable differences and variance components.
    """
    names, endpoints = list(arms), metric_names(labels)
    whole = {k: np.arange(v.shape[0]) for k, v in arms.items()}
    observed = np.stack(
        [
            _cell_means(y, arms[k], labels, np.arange(len(y)), whole[k], np.arange(arms[k].shape[1]))
            for k in names
        ]
    )
    boots = nested_bootstrap(y, arms, labels, n_boot=n_boot, seed=seed)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    z = float(stats.norm.ppf(1 - (1 - level) / 2) + stats.norm.ppf(power))
    per_arm: dict[str, Any] = {}
    for a, name in enumerate(names):
        per_arm[name] = {
            ep: _interval(observed[a, e], boots[:, a, e], lo_q, hi_q) for e, ep in enumerate(endpoints)
        }
        per_arm[name]["generators"] = int(arms[name].shape[0])
        per_arm[name]["seeds"] = int(arms[name].shape[1])
    comparisons: dict[str, Any] = {}
    raw: dict[str, float] = {}
    if base in arms:
        b_i = names.index(base)
        for a, name in enumerate(names):
            if name == base:
                continue
            rows = {}
            for e, ep in enumerate(endpoints):
                diffs = boots[:, a, e] - boots[:, b_i, e]
                diffs = diffs[np.isfinite(diffs)]
                if len(diffs) == 0:
                    continue
                se = float(diffs.std(ddof=1)) if len(diffs) > 1 else float("nan")
                lo, hi = np.quantile(diffs, [lo_q, hi_q])
                rows[ep] = {
                    "diff": float(observed[a, e] - observed[b_i, e]),
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "se": se,
                    "p": two_sided_p(diffs),
                    "mdd": z * se,
                    "primary": ep == "auc_macro",
                }
                raw[f"{name}|{ep}"] = rows[ep]["p"]
            comparisons[name] = rows
    adjusted = holm(raw)
    for key, p_adj in adjusted.items():
        name, ep = key.split("|", 1)
        comparisons[name][ep]["p_holm"] = p_adj
    return {
        "endpoints": endpoints,
        "arms": per_arm,
        "vs_base": comparisons,
        "n_boot": n_boot,
        "level": level,
        "power": power,
        "family_size": len(raw),
    }


def variance_components(
    y: np.ndarray,
    arms: dict[str, np.ndarray],
    labels: list[str],
    *,
    base: str = "base",
    n_boot: int = 300,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Variance of each arm's primary difference vs base when only one level is resampled.

    Generators (the GAN's training seed), classifier seeds, or test cases alone: the three
    variances say where the uncertainty of a comparison comes from.
    """
    out: dict[str, dict[str, float]] = {}
    if base not in arms:
        return out
    names = list(arms)
    for level in ("generators", "seeds", "cases"):
        boots = nested_bootstrap(y, arms, labels, n_boot=n_boot, seed=seed + 1, levels=(level,))
        b_i = names.index(base)
        for a, name in enumerate(names):
            if name == base:
                continue
            diffs = boots[:, a, 0] - boots[:, b_i, 0]
            diffs = diffs[np.isfinite(diffs)]
            var = float(diffs.var(ddof=1)) if len(diffs) > 1 else float("nan")
            out.setdefault(name, {})[level] = var
    return out


def _interval(estimate: float, boots: np.ndarray, lo_q: float, hi_q: float) -> dict[str, float]:
    finite = boots[np.isfinite(boots)]
    if len(finite) == 0:
        return {"mean": float(estimate), "ci_low": float("nan"), "ci_high": float("nan")}
    lo, hi = np.quantile(finite, [lo_q, hi_q])
    return {"mean": float(estimate), "ci_low": float(lo), "ci_high": float(hi)}


def delong_per_run(
    y: np.ndarray, arms: dict[str, np.ndarray], labels: list[str], base: str = "base"
) -> list[dict[str, Any]]:
    """DeLong's test of each classifier run against the base run of the same seed, per label.

    Valid for that pair of runs only (both scored on the same test cases); it says nothing about
    other generators or seeds, so the study's conclusions come from the nested bootstrap instead.
    A binary task has one test per pair (both labels' AUCs are the same number).
    """
    if base not in arms:
        return []
    columns = [1] if len(labels) == 2 else list(range(len(labels)))
    rows = []
    for name, cells in arms.items():
        if name == base:
            continue
        for g in range(cells.shape[0]):
            for s in range(min(cells.shape[1], arms[base].shape[1])):
                for c in columns:
                    pos = (y == c).astype(int)
                    if pos.sum() < 2 or len(pos) - pos.sum() < 2:
                        continue
                    auc_a, auc_b, z, p = delong_test(pos, cells[g, s][:, c], arms[base][0, s][:, c])
                    rows.append(
                        {
                            "arm": name,
                            "generator": g,
                            "seed": s,
                            "label": labels[c],
                            "auc_arm": auc_a,
                            "auc_base": auc_b,
                            "z": z,
                            "p": max(p, np.finfo(float).tiny),
                        }
                    )
    return rows
