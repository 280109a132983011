"""KID: Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (arXiv:1801.01401).

The unbiased MMD^2 with the cubic polynomial kernel on Inception features, averaged over random
subsets as in clean-fid's ``kernel_distance``; values ``kid``, ``kid_std`` and per label
``kid/LABEL``, ``kid_std/LABEL``.

With the option ``features=xrv`` (``--features xrv``) the features are TorchXRayVision's chest X-ray
DenseNet-121 instead of Inception's.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from cxraug import hookimpl
from cxraug.interfaces import Metric, MetricInputs, MetricResult
from cxraug.metrics.features import DistanceOptions, features_of, features_service


class KIDOptions(DistanceOptions):
    """Options of the ``kid`` metric."""

    num_subsets: int = Field(100, ge=1, le=100_000, description="Random subsets averaged over.")
    max_subset_size: int = Field(1000, ge=2, le=1_000_000, description="Images per subset at most.")
    seed: int = Field(0, ge=0, description="Seed of the subset draws.")


class KID(Metric[KIDOptions]):
    """Kernel Inception Distance between real and generated images (lower is better)."""

    name: ClassVar[str] = "kid"
    description: ClassVar[str] = "Kernel Inception Distance (Binkowski et al. 2018), overall and per label"
    requires: ClassVar[frozenset[str]] = frozenset({"real", "generated"})
    Options: ClassVar[type[KIDOptions]] = KIDOptions

    def compute(self, inputs: MetricInputs) -> MetricResult:
        from cxraug.metrics.generative import kid, label_subsets

        o = self.options
        assert inputs.real is not None and inputs.generated is not None
        features = features_service(inputs.services)
        real = features_of(
            features, inputs.real, "real", mode=o.mode, batch_size=o.batch_size, features=o.features
        )
        gen = features_of(
            features, inputs.generated, "generated", mode=o.mode, batch_size=o.batch_size, features=o.features
        )
        args = (o.num_subsets, o.max_subset_size, o.seed)
        mean, std = kid(real, gen, *args)
        values = {"kid": mean, "kid_std": std}
        rows = [{"label": "(all)", "n_real": len(real), "n_generated": len(gen), "kid": mean, "kid_std": std}]
        for label, r, g in label_subsets(inputs.real_labels, inputs.generated_labels, inputs.labels):
            if len(r) < 2 or len(g) < 2:
                continue
            mean, std = kid(real[r], gen[g], *args)
            values[f"kid/{label}"], values[f"kid_std/{label}"] = mean, std
            rows.append(
                {"label": label, "n_real": len(r), "n_generated": len(g), "kid": mean, "kid_std": std}
            )
        return MetricResult(values=values, tables={"kid": rows})


@hookimpl
def register_metrics(register):
    register(KID)
