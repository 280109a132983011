"""Classifier metrics on a test split: ROC-AUC with bootstrap intervals, DeLong's test, confusion.

``y_true`` is an (N,) array of class indices (or (N, C) one-hot), ``y_score`` an (N, C) array of class
probabilities; with two classes an (N,) ``y_score`` is the probability of class 1. AUCs are one-vs-rest
per label; predictions for sensitivity, specificity and the confusion matrix are the argmax.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ inputs


def as_indices(y_true: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """(N,) int class indices from indices or an (N, C) one-hot array."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        if n_classes is not None and y.shape[1] != n_classes:
            raise ValueError(f"y_true has {y.shape[1]} columns, expected {n_classes}")
        y = np.argmax(y, axis=1)
    if y.ndim != 1:
        raise ValueError(f"y_true must be (N,) indices or (N, C) one-hot, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true holds non-integer class indices")
        y = y.astype(np.int64)
    if n_classes is not None and len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_true indices must be in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def as_scores(y_score: np.ndarray) -> np.ndarray:
    """(N, C) float scores; an (N,) score is P(class 1) of a binary problem."""
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 1:
        s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"y_score must be (N, C) with C >= 2 or (N,) for binary, got shape {s.shape}")
    return s


# --------------------------------------------------------------------------------------------- AUC


def roc_auc(y_bin: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney statistic (ties count one half); nan if one class."""
    y_bin = np.asarray(y_bin).astype(bool)
    n_pos = int(y_bin.sum())
    n_neg = len(y_bin) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[y_bin].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_per_label(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC of each class column (nan where a class has no positives or no negatives)."""
    return np.array([roc_auc(y == c, scores[:, c]) for c in range(scores.shape[1])])


#: How cxraug's one macro ROC-AUC treats a label it cannot score (said in reports and run records).
MACRO_AUC_DEFINITION = (
    "macro ROC-AUC: the mean of the one-vs-rest AUCs of the labels that have both cases and "
    "non-cases in the split; a label without them is left out (and named), NaN when none is left"
)


def macro_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """The macro one-vs-rest ROC-AUC used everywhere: model selection, reports and studies."""
    return macro_of(auc_per_label(y, scores))


def macro_of(aucs: np.ndarray) -> float:
    """Macro AUC from per-label AUCs already computed (see ``MACRO_AUC_DEFINITION``)."""
    defined = np.isfinite(aucs)
    return float(aucs[defined].mean()) if defined.any() else float("nan")


def _bootstrap_indices(
    y: np.ndarray, rng: np.random.Generator, stratified: bool, present: np.ndarray
) -> np.ndarray | None:
    if stratified:
        return np.concatenate([rng.choice(np.flatnonzero(y == c), (y == c).sum()) for c in present])
    idx = rng.integers(0, len(y), len(y))
    # A resample missing a class leaves that class's AUC undefined: skip it.
    return idx if len(np.unique(y[idx])) == len(present) else None


def _ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_auc(
    y: np.ndarray,
    scores: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    stratified: bool = True,
) -> np.ndarray:
    """(n_used, C + 1) bootstrap AUCs per class, last column the macro mean over defined classes.

    Stratified resampling keeps each class's count; plain resampling skips resamples in which a class
    present in ``y`` is missing (at most ``10 * n_boot`` draws are tried).
    """
    rng = np.random.default_rng(seed)
    present = np.unique(y)
    n_classes = scores.shape[1]
    defined = np.isfinite(auc_per_label(y, scores))
    rows: list[np.ndarray] = []
    tries = 0
    while len(rows) < n_boot and tries < 10 * n_boot:
        tries += 1
        idx = _bootstrap_indices(y, rng, stratified, present)
        if idx is None:
            continue
        aucs = auc_per_label(y[idx], scores[idx])
        aucs[~defined] = np.nan
        macro = float(np.mean(aucs[defined])) if defined.any() else float("nan")
        rows.append(np.append(aucs, macro))
    if len(rows) < n_boot:
        log.warning("bootstrap: only %d of %d resamples had every class", len(rows), n_boot)
    return np.array(rows).reshape(len(rows), n_classes + 1)


# ---------------------------------------------------------------------------------------- report


@dataclass
class ClassificationReport:
    """Everything ``evaluate_classifier`` computes; dictionaries are keyed by label, in label order."""

    labels: list[str]
    auc: dict[str, float]
    auc_ci: dict[str, tuple[float, float]]
    auc_macro: float
    auc_macro_ci: tuple[float, float]
    sensitivity: dict[str, float]
    specificity: dict[str, float]
    support: dict[str, int]
    accuracy: float
    balanced_accuracy: float
    f1_macro: float
    #: Rows are true labels, columns predicted labels, both in ``labels`` order.
    confusion: list[list[int]]
    #: Per label: {"fpr": [...], "tpr": [...], "thresholds": [...]} (empty where AUC is undefined).
    roc_curves: dict[str, dict[str, list[float]]]
    ci_level: float = 0.95
    n_boot: int = 0
    n_boot_used: int = 0
    stratified: bool = True
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sens_spec(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest sensitivity TP/(TP+FN) and specificity TN/(TN+FP) per class (nan when undefined)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


def evaluate_classifier(
    y_true: np.ndarray,
    y_score: np.ndarray,
    labels: list[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    stratified: bool = True,
    ci: float = 0.95,
) -> ClassificationReport:
    """Per-label and macro ROC-AUC with bootstrap CIs, sens/spec, accuracy, F1 and the confusion matrix."""
    scores = as_scores(y_score)
    n_classes = scores.shape[1]
    labels = list(labels) if labels else [str(c) for c in range(n_classes)]
    if len(labels) != n_classes:
        raise ValueError(f"{len(labels)} labels for {n_classes} score columns")
    y = as_indices(y_true, n_classes)
    if len(y) != len(scores):
        raise ValueError(f"y_true has {len(y)} cases, y_score {len(scores)}")
    if len(y) == 0:
        raise ValueError("no test cases")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    notes: list[str] = []
    aucs = auc_per_label(y, scores)
    for undefined in np.flatnonzero(~np.isfinite(aucs)):
        label = labels[undefined]
        notes.append(f"AUC of {label!r} is undefined: the test split has no {label!r} cases")
    macro = macro_auc(y, scores)
    boots = bootstrap_auc(y, scores, n_boot=n_boot, seed=seed, stratified=stratified) if n_boot else None
    auc_ci: dict[str, tuple[float, float]] = {}
    for c, label in enumerate(labels):
        auc_ci[label] = _ci(boots[:, c], ci) if boots is not None else (float("nan"), float("nan"))
    macro_ci = _ci(boots[:, -1], ci) if boots is not None else (float("nan"), float("nan"))

    pred = np.argmax(scores, axis=1)
    cm = skm.confusion_matrix(y, pred, labels=list(range(n_classes)))
    sens, spec = sens_spec(cm)
    curves: dict[str, dict[str, list[float]]] = {}
    for c, label in enumerate(labels):
        if np.isfinite(aucs[c]):
            fpr, tpr, thr = skm.roc_curve(y == c, scores[:, c])
            curves[label] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}
        else:
            curves[label] = {"fpr": [], "tpr": [], "thresholds": []}
    return ClassificationReport(
        labels=labels,
        auc={label: float(aucs[c]) for c, label in enumerate(labels)},
        auc_ci=auc_ci,
        auc_macro=macro,
        auc_macro_ci=macro_ci,
        sensitivity={label: float(sens[c]) for c, label in enumerate(labels)},
        specificity={label: float(spec[c]) for c, label in enumerate(labels)},
        support={label: int((y == c).sum()) for c, label in enumerate(labels)},
        accuracy=float(skm.accuracy_score(y, pred)),
        balanced_accuracy=float(np.nanmean(sens)) if np.isfinite(sens).any() else float("nan"),
        f1_macro=float(
            skm.f1_score(y, pred, labels=list(range(n_classes)), average="macro", zero_division=0)
        ),
        confusion=cm.astype(int).tolist(),
        roc_curves=curves,
        ci_level=ci,
        n_boot=n_boot,
        n_boot_used=0 if boots is None else len(boots),
        stratified=stratified,
        notes=notes,
    )


# ------------------------------------------------------------------------------------------ DeLong


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (Sun & Xu 2014, Algorithm 1)."""
    return np.asarray(stats.rankdata(x, method="average"), dtype=np.float64)


def _delong_components(y_bin: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and structural components V10 (per positive) and V01 (per negative) for each score row.

    ``scores`` is (K, N); the fast algorithm of Sun & Xu (2014) gets them from midranks.
    """
    pos = scores[:, y_bin]
    neg = scores[:, ~y_bin]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    aucs = np.empty(k)
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        tx = _midranks(pos[r])
        ty = _midranks(neg[r])
        tz = _midranks(np.concatenate([pos[r], neg[r]]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10[r] = (tz[:m] - tx) / n  # share of negatives each positive outranks
        v01[r] = 1.0 - (tz[m:] - ty) / m  # share of positives that outrank each negative
    return aucs, v10, v01


def delong_covariance(y_true_bin: np.ndarray, *scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs, covariance matrix of the AUC estimates) of correlated ROC curves (DeLong et al. 1988)."""
    y = np.asarray(y_true_bin).astype(bool)
    s = np.vstack([np.asarray(x, dtype=np.float64) for x in scores])
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positive and 2 negative cases, got {m} and {n}")
    aucs, v10, v01 = _delong_components(y, s)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(
    y_true_bin: np.ndarray, score_a: np.ndarray, score_b: np.ndarray
) -> tuple[float, float, float, float]:
    """DeLong's test for two correlated ROC curves on the same cases: (auc_a, auc_b, z, p two-sided).

    When the difference has zero variance (e.g. identical scores) z is 0 and p is 1 if the AUCs are
    equal, else z is +-inf and p is 0.
    """
    aucs, cov = delong_covariance(y_true_bin, score_a, score_b)
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 1e-15:
        if abs(diff) < 1e-12:
            return float(aucs[0]), float(aucs[1]), 0.0, 1.0
        return float(aucs[0]), float(aucs[1]), float(np.copysign(np.inf, diff)), 0.0
    z = diff / np.sqrt(var)
    p = 2 * stats.norm.sf(abs(z))
    return float(aucs[0]), float(aucs[1]), float(z), float(p)


def paired_bootstrap_auc_diff(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float, float, float]:
    """AUC(a) - AUC(b) on binary ``y_true``, with a paired bootstrap CI and two-sided p-value.

    Cases are resampled with replacement (the same cases for both scores); resamples with a single class
    are skipped. p = 2 * min(share of differences <= 0, share >= 0), each with a +1 correction, capped
    at 1.
    """
    y = np.asarray(y_true).astype(bool)
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"lengths differ: y_true {len(y)}, score_a {len(a)}, score_b {len(b)}")
    diff = roc_auc(y, a) - roc_auc(y, b)
    if not np.isfinite(diff):
        raise ValueError("y_true must contain both classes")
    rng = np.random.default_rng(seed)
    diffs: list[float] = []
    tries = 0
    while len(diffs) < n_boot and tries < 10 * n_boot:
        tries += 1
        idx = rng.integers(0, len(y), len(y))
        yb = y[idx]
        if yb.all() or not yb.any():
            continue
        diffs.append(roc_auc(yb, a[idx]) - roc_auc(yb, b[idx]))
    d = np.asarray(diffs)
    lo, hi = _ci(d, ci)
    n = len(d)
    p = 2 * min((1 + np.sum(d <= 0)) / (n + 1), (1 + np.sum(d >= 0)) / (n + 1))
    return float(diff), lo, hi, float(min(1.0, p))


# ------------------------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def roc_plot(report: ClassificationReport, path: Path, *, title: str = "ROC curves (one-vs-rest)") -> Path:
    """One-vs-rest ROC curves of every label with their AUCs, to a PNG."""
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for label in report.labels:
        curve = report.roc_curves.get(label, {})
        if curve.get("fpr"):
            ax.plot(curve["fpr"], curve["tpr"], lw=1.5, label=f"{label} (AUC {report.auc[label]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"{title}\nmacro AUC {report.auc_macro:.3f}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def confusion_plot(
    confusion: list[list[int]] | np.ndarray, labels: list[str], path: Path, *, title: str = "Confusion matrix"
) -> Path:
    """Confusion matrix (rows true, columns predicted) with counts and row percentages, to a PNG."""
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rows > 0, cm / rows, 0.0)
    size = 1.2 + 0.9 * len(labels)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true label")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(
                j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", color=color, fontsize=8
            )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
