"""Simulated studies with a known answer, to check that the study's intervals cover what they claim.

A binormal model: a classifier run's score of a case is ``shared_c + y_c * mu + e``, with
``shared_c`` ~ N(0, 1) common to every run (the same test cases), ``e`` ~ N(0, run_noise^2) its own
noise and ``mu`` its separation. ``mu`` varies by classifier seed (``tau_seed``) and, in the GAN
arm, by generator (``tau_gen``) around ``mu0`` (base) or ``mu0 + delta`` (GAN arm). The population
AUC of a run is Phi(mu / sqrt(2 (1 + run_noise^2))); the true effect is the expected GAN-arm AUC
minus the expected base AUC, over generators and seeds, computed by numerical integration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from cxraug.experiment.stats import compare_arms

LABELS = ["normal", "abnormal"]


@dataclass(frozen=True)
class Design:
    generators: int = 3
    seeds: int = 5
    cases: int = 200
    mu0: float = 1.2
    delta: float = 0.0
    tau_gen: float = 0.15
    tau_seed: float = 0.1
    run_noise: float = 0.5


def _probs(z: np.ndarray) -> np.ndarray:
    p1 = 1.0 / (1.0 + np.exp(-z))
    return np.stack([1.0 - p1, p1], 1)


def draw(design: Design, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One simulated study: test labels and the (G, S, N, 2) probabilities of both arms."""
    d = design
    y = np.repeat([0, 1], d.cases // 2)
    shared = rng.normal(0.0, 1.0, len(y))

    def run(mu: float) -> np.ndarray:
        return _probs(shared + y * mu + rng.normal(0.0, d.run_noise, len(y)))

    base = np.stack([[run(d.mu0 + rng.normal(0.0, d.tau_seed)) for _ in range(d.seeds)]])
    gens = d.mu0 + d.delta + rng.normal(0.0, d.tau_gen, d.generators)
    gan = np.stack([[run(g + rng.normal(0.0, d.tau_seed)) for _ in range(d.seeds)] for g in gens])
    return y, {"base": base, "gan": gan}


def true_effect(design: Design) -> float:
    """Expected AUC difference (GAN arm - base) in the population, by Gauss-Hermite integration."""
    d = design
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()
    scale = np.sqrt(2.0 * (1.0 + d.run_noise**2))

    def expected_auc(mean: float, sd: float) -> float:
        return float((weights * sps.norm.cdf((mean + sd * nodes) / scale)).sum())

    gan_sd = float(np.hypot(d.tau_gen, d.tau_seed))
    return expected_auc(d.mu0 + d.delta, gan_sd) - expected_auc(d.mu0, d.tau_seed)


def coverage(design: Design, replicates: int, *, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """How often the primary 95% interval covers the true effect, and how often p < 0.05."""
    rng = np.random.default_rng(seed)
    truth = true_effect(design)
    covered = rejected = 0
    for r in range(replicates):
        y, arms = draw(design, rng)
        row = compare_arms(y, arms, LABELS, n_boot=n_boot, seed=seed + r)["vs_base"]["gan"]["auc_macro"]
        covered += int(row["ci_low"] <= truth <= row["ci_high"])
        rejected += int(row["p"] < 0.05)
    return {"truth": truth, "coverage": covered / replicates, "rejection_rate": rejected / replicates}
