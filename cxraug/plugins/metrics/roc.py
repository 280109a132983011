"""ROC analysis of a classifier on the test split: one-vs-rest AUC per label and macro, with
bootstrap 95% confidence intervals (Efron & Tibshirani 1993), sensitivity/specificity per label,
accuracy, balanced accuracy, macro F1 and the confusion matrix.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from cxraug import hookimpl
from cxraug.interfaces import Metric, MetricInputs, MetricResult, PluginOptions

ROC_FILE = "roc.png"
CONFUSION_FILE = "confusion.png"


class ROCOptions(PluginOptions):
    """Options of the ``roc`` metric."""

    n_boot: int = Field(1000, ge=0, le=100_000, description="Bootstrap resamples for the CIs (0: none).")
    ci: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    stratified: bool = Field(True, description="Resample within each true label (keeps class counts).")
    seed: int = Field(0, ge=0, description="Seed of the bootstrap.")


class ROC(Metric[ROCOptions]):
    """ROC-AUC (per label, macro) with bootstrap CIs, sensitivity/specificity, accuracy, F1."""

    name: ClassVar[str] = "roc"
    description: ClassVar[str] = "Classifier ROC-AUC with bootstrap CIs, sens/spec, accuracy, F1, confusion"
    requires: ClassVar[frozenset[str]] = frozenset({"y_true", "y_score"})
    Options: ClassVar[type[ROCOptions]] = ROCOptions

    def compute(self, inputs: MetricInputs) -> MetricResult:
        import math

        from cxraug.metrics.classification import confusion_plot, evaluate_classifier, roc_plot

        o = self.options
        assert inputs.y_true is not None and inputs.y_score is not None
        rep = evaluate_classifier(
            inputs.y_true,
            inputs.y_score,
            inputs.labels or None,
            n_boot=o.n_boot,
            seed=o.seed,
            stratified=o.stratified,
            ci=o.ci,
        )
        values: dict[str, float] = {
            "auc_macro": rep.auc_macro,
            "auc_macro_ci_low": rep.auc_macro_ci[0],
            "auc_macro_ci_high": rep.auc_macro_ci[1],
            "accuracy": rep.accuracy,
            "balanced_accuracy": rep.balanced_accuracy,
            "f1_macro": rep.f1_macro,
        }
        per_label: list[dict[str, Any]] = []
        for label in rep.labels:
            values[f"auc/{label}"] = rep.auc[label]
            values[f"sens/{label}"] = rep.sensitivity[label]
            values[f"spec/{label}"] = rep.specificity[label]
            per_label.append(
                {
                    "label": label,
                    "support": rep.support[label],
                    "auc": rep.auc[label],
                    "auc_ci_low": rep.auc_ci[label][0],
                    "auc_ci_high": rep.auc_ci[label][1],
                    "sensitivity": rep.sensitivity[label],
                    "specificity": rep.specificity[label],
                }
            )
        # Undefined numbers (a label absent from the test split, no bootstrap) are left out, not NaN.
        values = {k: v for k, v in values.items() if not math.isnan(v)}
        confusion = [
            {"true": label, **{pred: rep.confusion[i][j] for j, pred in enumerate(rep.labels)}}
            for i, label in enumerate(rep.labels)
        ]
        artifacts = {}
        if inputs.out_dir is not None:
            artifacts["roc"] = roc_plot(rep, inputs.out_dir / ROC_FILE)
            artifacts["confusion"] = confusion_plot(
                rep.confusion, rep.labels, inputs.out_dir / CONFUSION_FILE
            )
        notes = [{"note": n} for n in rep.notes]
        tables = {"per_label": per_label, "confusion": confusion}
        if notes:
            tables["notes"] = notes
        return MetricResult(values=values, artifacts=artifacts, tables=tables)


@hookimpl
def register_metrics(register):
    register(ROC)
