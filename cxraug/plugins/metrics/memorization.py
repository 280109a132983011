"""Memorisation check: do generated images look copied from the training images?

Each generated image's distance to its nearest training image (in Inception or TorchXRayVision
feature space, or in pixel space) is compared with how close real images come to the training set:
held-out real images (the evaluated real split) to training images, or each training image to its
nearest other one. The
share of generated images closer than the chosen percentile of those real distances "look copied"
(cf. the nearest-neighbour analyses of Webster et al., "Detecting Overfitting of Deep Generative
Networks via Latent Recovery", CVPR 2019, and Carlini et al., "Extracting Training Data from Diffusion
Models", USENIX Security 2023).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cxraug import hookimpl
from cxraug.interfaces import Metric, MetricInputs, MetricResult
from cxraug.metrics.features import FeatureOptions, features_of, features_service

PAIRS_FILE = "memorization_pairs.png"


class MemorizationOptions(FeatureOptions):
    """Options of the ``memorization`` metric."""

    space: Literal["inception", "xrv", "pixel"] = Field(
        "inception",
        description="Compare Inception features, TorchXRayVision DenseNet features (xrv) or "
        "(downsampled) pixels.",
    )
    pixel_size: int = Field(
        64, ge=4, le=1024, description="Side images are box-downsampled to in pixel space."
    )
    percentile: float = Field(
        1.0,
        ge=0,
        le=100,
        description="Percentile of real nearest-neighbour distances below which a "
        "generated image looks copied.",
    )
    reference: Literal["auto", "holdout", "train"] = Field(
        "auto",
        description="Real distances to compare with: holdout (evaluated real split to train), train "
        "(train to nearest other train), auto (holdout when a real split is given).",
    )
    k_closest: int = Field(16, ge=0, le=1000, description="Closest (generated, training) pairs to show.")


class Memorization(Metric[MemorizationOptions]):
    """Share of generated images closer to a training image than real images come (lower is better)."""

    name: ClassVar[str] = "memorization"
    description: ClassVar[str] = (
        "Nearest-training-image distances: share of generated images that look copied"
    )
    requires: ClassVar[frozenset[str]] = frozenset({"train", "generated"})
    Options: ClassVar[type[MemorizationOptions]] = MemorizationOptions

    def compute(self, inputs: MetricInputs) -> MetricResult:
        from cxraug.errors import CxrError
        from cxraug.metrics.generative import memorization, pixel_features, save_pairs_grid

        o = self.options
        assert inputs.train is not None and inputs.generated is not None
        # The held-out reference: real images the GAN never saw (the core passes the evaluated
        # split as services.holdout); the real images of FID may be the training split itself.
        holdout_images = inputs.services.holdout
        candidate = holdout_images if holdout_images is not None else inputs.real
        if candidate is not None and inputs.train is not None and candidate is inputs.train:
            candidate = None
        holdout = candidate if o.reference in ("auto", "holdout") else None
        if o.reference == "holdout" and holdout is None:
            raise CxrError("memorization: reference=holdout needs the real split, which was not given")
        if o.space == "pixel":
            gen = pixel_features(inputs.generated, o.pixel_size)
            train = pixel_features(inputs.train, o.pixel_size)
            ref = pixel_features(holdout, o.pixel_size) if holdout is not None else None
        else:
            features = features_service(inputs.services)
            mode, bs, net = o.mode, o.batch_size, o.space
            gen = features_of(features, inputs.generated, "generated", mode=mode, batch_size=bs, features=net)
            train = features_of(features, inputs.train, "train", mode=mode, batch_size=bs, features=net)
            ref = (
                features_of(features, holdout, "real", mode=mode, batch_size=bs, features=net)
                if holdout is not None
                else None
            )
        result = memorization(gen, train, ref, percentile=o.percentile, k_closest=o.k_closest)
        values = result.values()
        labels = inputs.generated_labels
        rows = [
            {
                "rank": n + 1,
                "generated_index": g,
                "train_index": t,
                "distance": d,
                "generated_label": labels[g] if labels else "",
                "looks_copied": d <= result.threshold,
            }
            for n, (g, t, d) in enumerate(result.closest)
        ]
        artifacts = {}
        if inputs.out_dir is not None and result.closest:
            pairs = [(g, t) for g, t, _ in result.closest]
            artifacts["pairs"] = save_pairs_grid(
                inputs.out_dir / PAIRS_FILE, inputs.generated, inputs.train, pairs
            )
        summary = [{"space": o.space, "reference": result.reference, "percentile": o.percentile, **values}]
        return MetricResult(
            values=values, artifacts=artifacts, tables={"closest_pairs": rows, "summary": summary}
        )


@hookimpl
def register_metrics(register):
    register(Memorization)
