"""FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017 (arXiv:1706.08500), computed the clean-fid way (Parmar et al., CVPR 2022).

Inception features come from the core's cached ``features`` service; values are ``fid`` over all
images and ``fid/LABEL`` per label when both sides are labelled.

With the option ``features=xrv`` (``--features xrv``) the features are TorchXRayVision's chest X-ray
DenseNet-121 instead of Inception's.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cxraug import hookimpl
from cxraug.interfaces import Metric, MetricInputs, MetricResult
from cxraug.metrics.features import DistanceOptions, features_of, features_service


class FIDOptions(DistanceOptions):
    """Options of the ``fid`` metric."""

    method: Literal["eigh", "sqrtm"] = Field(
        "eigh",
        description="Matrix square root: eigh (exact trace via symmetric eigendecompositions, fast) or "
        "sqrtm (clean-fid's own frechet_distance, slower)",
    )


class FID(Metric[FIDOptions]):
    """Frechet Inception Distance between real and generated images (lower is better)."""

    name: ClassVar[str] = "fid"
    description: ClassVar[str] = "Frechet Inception Distance (clean-fid), overall and per label"
    requires: ClassVar[frozenset[str]] = frozenset({"real", "generated"})
    Options: ClassVar[type[FIDOptions]] = FIDOptions

    def compute(self, inputs: MetricInputs) -> MetricResult:
        from cxraug.metrics.generative import fid, label_subsets

        o = self.options
        assert inputs.real is not None and inputs.generated is not None
        features = features_service(inputs.services)
        real = features_of(
            features, inputs.real, "real", mode=o.mode, batch_size=o.batch_size, features=o.features
        )
        gen = features_of(
            features, inputs.generated, "generated", mode=o.mode, batch_size=o.batch_size, features=o.features
        )
        values = {"fid": fid(real, gen, o.method)}
        rows = [{"label": "(all)", "n_real": len(real), "n_generated": len(gen), "fid": values["fid"]}]
        for label, r, g in label_subsets(inputs.real_labels, inputs.generated_labels, inputs.labels):
            if len(r) < 2 or len(g) < 2:
                continue
            values[f"fid/{label}"] = fid(real[r], gen[g], o.method)
            rows.append(
                {"label": label, "n_real": len(r), "n_generated": len(g), "fid": values[f"fid/{label}"]}
            )
        return MetricResult(values=values, tables={"fid": rows})


@hookimpl
def register_metrics(register):
    register(FID)
