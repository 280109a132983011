"""PRDC: Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020
(arXiv:2002.09797).

Precision and density measure fidelity, recall and coverage diversity, from k-nearest-neighbour balls
around Inception features; values ``precision``, ``recall``, ``density``, ``coverage`` and the same per
label as ``precision/LABEL`` etc. when both sides have more than k images of it.

With the option ``features=xrv`` (``--features xrv``) the features are TorchXRayVision's chest X-ray
DenseNet-121 instead of Inception's.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cxraug import hookimpl
from cxraug.interfaces import Metric, MetricInputs, MetricResult
from cxraug.metrics.features import DistanceOptions, features_of, features_service


class PRDCOptions(DistanceOptions):
    """Options of the ``prdc`` metric."""

    k: int = Field(5, ge=1, le=1000, description="Neighbour whose distance sets each ball's radius.")


class PRDC(Metric[PRDCOptions]):
    """Precision, recall, density and coverage of generated images (higher is better)."""

    name: ClassVar[str] = "prdc"
    description: ClassVar[str] = (
        "Precision/recall/density/coverage (Naeem et al. 2020), overall and per label"
    )
    requires: ClassVar[frozenset[str]] = frozenset({"real", "generated"})
    Options: ClassVar[type[PRDCOptions]] = PRDCOptions

    def compute(self, inputs: MetricInputs) -> MetricResult:
        from cxraug.metrics.generative import label_subsets, prdc

        o = self.options
        assert inputs.real is not None and inputs.generated is not None
        features = features_service(inputs.services)
        real = features_of(
            features, inputs.real, "real", mode=o.mode, batch_size=o.batch_size, features=o.features
        )
        gen = features_of(
            features, inputs.generated, "generated", mode=o.mode, batch_size=o.batch_size, features=o.features
        )
        values = prdc(real, gen, k=o.k)
        rows = [{"label": "(all)", "n_real": len(real), "n_generated": len(gen), **values}]
        for label, r, g in label_subsets(inputs.real_labels, inputs.generated_labels, inputs.labels):
            if len(r) <= o.k or len(g) <= o.k:
                continue
            per = prdc(real[r], gen[g], k=o.k)
            values.update({f"{key}/{label}": v for key, v in per.items()})
            rows.append({"label": label, "n_real": len(r), "n_generated": len(g), **per})
        return MetricResult(values=values, tables={"prdc": rows})


@hookimpl
def register_metrics(register):
    register(PRDC)
