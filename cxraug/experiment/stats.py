"""Statistics for comparing augmentation arms: CIs over seeds, paired tests suited to AUC."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from cxraug.metrics.classification import delong_test, macro_auc


def mean_ci(
    values: list[float], level: float = 0.95, bounds: tuple[float, float] | None = None
) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over seeds (NaN bounds for a single seed).

    ``bounds`` clips the interval to a metric's range (AUC and accuracy lie in [0, 1]; with two
    seeds the t-interval is wide enough to leave it).
    """
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return mean, lo, hi


def paired_bootstrap_macro_auc(
    y: np.ndarray,
    arm: list[np.ndarray],
    base: list[np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Seed-averaged macro-AUC difference arm - base, resampling test cases (paired: same cases).

    Each bootstrap sample recomputes every seed's macro AUC of both arms on the same resampled
    cases and averages the differences over seeds, so the interval reflects the test set's
    sampling as well as the seeds. p is two-sided: twice the smaller tail around 0.
    """

    def diff(idx: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    macro_auc(y[idx], a[idx]) - macro_auc(y[idx], b[idx])
                    for a, b in zip(arm, base, strict=True)
                ]
            )
        )

    rng = np.random.default_rng(seed)
    n = len(y)
    observed = diff(np.arange(n))
    boots = np.array([diff(rng.integers(0, n, n)) for _ in range(n_boot)])
    boots = boots[~np.isnan(boots)]
    if len(boots) == 0:
        return {"diff": observed, "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan")}
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(float((boots <= 0).mean()), float((boots >= 0).mean())))
    return {"diff": observed, "ci_low": float(lo), "ci_high": float(hi), "p": p}


def delong_per_label(y: np.ndarray, arm: np.ndarray, base: np.ndarray, labels: list[str]) -> dict[str, dict]:
    """DeLong's test of one-vs-rest AUC per label, on seed-averaged probabilities."""
    out = {}
    for c, label in enumerate(labels):
        pos = (y == c).astype(int)
        if pos.sum() < 2 or len(pos) - pos.sum() < 2:
            continue  # DeLong's variance needs two cases on each side; the report says n/a
        auc_a, auc_b, z, p = delong_test(pos, arm[:, c], base[:, c])
        out[label] = {"auc_arm": auc_a, "auc_base": auc_b, "z": z, "p": p}
    return out
