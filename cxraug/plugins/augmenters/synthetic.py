"""Synthetic augmentation: new training images from a trained GAN run, optionally quality-filtered.

Any GAN plugin works: conditional runs give every label from one network, per-class runs one
network per label. The optional filter keeps a generated image only when a reference classifier
(a finished ``cxraug train-classifier`` run) gives it its intended label with at least
``min_confidence``, the kind of selection used to drop off-class samples before augmenting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from cxraug import hookimpl
from cxraug.errors import CxrError, OptionsError
from cxraug.imageio import resize
from cxraug.interfaces import (
    AugmentedImage,
    Augmenter,
    AugmentRequest,
    AugmentServices,
    PluginOptions,
)
from cxraug.training.classifier_run import ClassifierRun, load_classifier
from cxraug.training.gan_run import GanRun
from cxraug.training.generate import LoadedGenerator, generators_from, latent_generator
from cxraug.training.plots import to_uint8
from cxraug.training.runs import Run

#: (N, S, S) uint8 images and their intended label -> (N,) probability of that label.
Scorer = Callable[[np.ndarray, str], np.ndarray]


class SyntheticOptions(PluginOptions):
    """Options of the ``synthetic`` augmenter."""

    run: str | None = Field(
        None,
        description="GAN run folder or name under runs/gan; empty: the run the command chose, else "
        "the latest GAN run.",
    )
    checkpoint: str | None = Field(
        None, description="A GAN checkpoint file to use instead of the run's latest snapshots."
    )
    truncation: float = Field(
        1.0, gt=0, le=2, description="Latent truncation (1 = none; < 1 trades variety for fidelity)."
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Images generated per forward pass.")
    filter_run: str | None = Field(
        None,
        description=(
            "Classifier run (folder, name or best.pt) used as a quality filter; empty: keep every image."
        ),
    )
    min_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="With filter_run: keep an image only if the classifier gives its label >= this.",
    )
    max_tries: float = Field(
        5.0,
        ge=1,
        le=1000,
        description="With filter_run: generate at most this many times the wanted count per label.",
    )


def _find_run(services: AugmentServices, kind: str, run: str | None) -> Path:
    """A run by path, by name or the latest, in the request's workspace when there is one."""
    run_type: type[Run[Any]] = GanRun if kind == "gan" else ClassifierRun
    if services.workspace is not None:
        return run_type.resolve(services.workspace, run).path
    if run is not None and Run.is_run(Path(run)):
        return Path(run)
    raise OptionsError(
        f"synthetic: no workspace to look up the {kind} run {run or '(latest)'} in; give a run folder"
    )


def _run_of_checkpoint(path: Path) -> Path | None:
    """The run folder holding a checkpoint (run/checkpoints/x.pt or run/UNIT/checkpoints/x.pt)."""
    for parent in list(path.resolve().parents)[:3]:
        if Run.is_run(parent):
            return parent
    return None


def _scorer(filter_run: str, services: AugmentServices, labels: list[str]) -> Scorer:
    """Load the reference classifier; fails early when it does not know one of ``labels``."""
    if services.registry is None:
        raise CxrError("synthetic: the quality filter needs the plugin registry in the request services")
    # a best.pt file is accepted as well as a run folder or name
    run = Path(filter_run) if Path(filter_run).is_file() else _find_run(services, "classifier", filter_run)
    loaded = load_classifier(run, services.registry, torch.device(services.device))
    unknown = [label for label in labels if label not in loaded.labels]
    if unknown:
        raise OptionsError(
            f"filter_run {run}: the classifier does not predict {', '.join(map(repr, unknown))}; "
            f"it predicts {', '.join(loaded.labels)}. Use a classifier trained on these labels."
        )

    def score(images: np.ndarray, label: str) -> np.ndarray:
        return loaded.predict_proba(images)[:, loaded.labels.index(label)]

    return score


def _generate(
    loaded: LoadedGenerator,
    label_index: int,
    indices: range,
    *,
    seed: int,
    truncation: float,
    size: int,
) -> np.ndarray:
    """Images ``indices`` of a label as (N, size, size) uint8, each from its own seeded latent."""
    z = torch.cat([loaded.gan.sample_latents(1, latent_generator(seed, label_index, i)) for i in indices])
    labels = torch.full((len(indices),), label_index, dtype=torch.long)
    device = torch.device(loaded.gan.spec.device)
    x = loaded.gan.generate(z.to(device), labels.to(device), truncation)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = resize(x.float(), size)
    return to_uint8(x)


class SyntheticAugmenter(Augmenter[SyntheticOptions]):
    """Images generated by a trained GAN run for each label, optionally kept only when a reference
    classifier is confident they show their label."""

    name: ClassVar[str] = "synthetic"
    description: ClassVar[str] = "Images from a trained GAN run, with an optional classifier quality filter"
    origin: ClassVar[str] = "synthetic"
    uses_gan_run: ClassVar[bool] = True
    Options: ClassVar[type[SyntheticOptions]] = SyntheticOptions

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        super().__init__(options)
        #: Candidates the quality filter rejected, per label (filled by augment()).
        self.rejected: dict[str, int] = {}

    def augment(self, request: AugmentRequest) -> Iterator[AugmentedImage]:
        """``counts[label]`` generated images per label; image i of a label depends only on the
        seed, the checkpoint and i (and, when filtered, on which earlier candidates passed).

        The GAN run is ``options.run`` when set, else the checkpoint's run (``options.checkpoint``),
        else ``request.services.gan_run``, else the workspace's latest GAN run.
        """
        o = self.options
        services = request.services
        if services.registry is None:
            raise CxrError("synthetic: the request services have no plugin registry to rebuild the GAN with")
        device = torch.device(services.device)
        checkpoint = Path(o.checkpoint) if o.checkpoint else None
        if checkpoint is not None and not checkpoint.is_file():
            raise OptionsError(f"checkpoint {checkpoint}: no such file")
        run_dir: Path | None
        if checkpoint is not None and o.run is None:
            run_dir = _run_of_checkpoint(checkpoint)
        elif o.run is None and services.gan_run is not None:
            run_dir = services.gan_run
        else:
            run_dir = _find_run(services, "gan", o.run)
        if checkpoint is not None:
            generators = generators_from([checkpoint], services.registry, device)
        else:
            assert run_dir is not None
            generators = GanRun(run_dir).load_generators(services.registry, device)

        wanted = [label for label, n in request.counts.items() if n > 0]
        missing = [label for label in wanted if label not in generators]
        if missing:
            source = checkpoint if checkpoint is not None else run_dir
            hint = (
                " (a pooled run models all labels as one; train per class or a conditional GAN)"
                if list(generators) == ["all"]
                else ""
            )
            raise OptionsError(
                f"synthetic: the GAN {source} does not generate {', '.join(map(repr, missing))}; "
                f"it generates {', '.join(generators)}{hint}"
            )
        scorer = _scorer(o.filter_run, services, wanted) if o.filter_run else None

        self.rejected = {}
        for label in wanted:
            loaded, label_index = generators[label]
            provenance = {
                "gan_run": str(run_dir) if run_dir is not None else "",
                "checkpoint": str(loaded.checkpoint),
                "checkpoint_sha256": loaded.sha256,
                "seed": str(request.seed),
                "truncation": str(o.truncation),
            }
            for index, image, confidence in self._label_images(
                loaded, label_index, label, request.counts[label], request, scorer
            ):
                extra = {"index": str(index)}
                if confidence is not None:
                    extra["confidence"] = f"{confidence:.6f}"
                yield AugmentedImage(image, label, self.origin, {**provenance, **extra})

    def _label_images(
        self,
        loaded: LoadedGenerator,
        label_index: int,
        label: str,
        count: int,
        request: AugmentRequest,
        scorer: Scorer | None,
    ) -> Iterator[tuple[int, np.ndarray, float | None]]:
        """(candidate index, image, confidence) for the first ``count`` candidates that pass."""
        o = self.options
        limit = count if scorer is None else max(count, math.ceil(o.max_tries * count))
        kept = rejected = 0
        start = 0
        self.rejected[label] = 0
        while kept < count and start < limit:
            # Unfiltered, a batch never runs past the count, so nothing is generated in vain.
            stop = min(start + o.batch_size, limit if scorer is not None else start + count - kept)
            images = _generate(
                loaded,
                label_index,
                range(start, stop),
                seed=request.seed,
                truncation=o.truncation,
                size=request.size,
            )
            confidences = None
            if scorer is not None:
                confidences = np.asarray(scorer(images, label), dtype=np.float64)
                if confidences.shape != (len(images),):
                    raise ValueError(f"scorer returned {confidences.shape} for {len(images)} images")
            for offset, image in enumerate(images):
                if kept == count:
                    break
                confidence = None if confidences is None else float(confidences[offset])
                if confidence is not None and not confidence >= o.min_confidence:
                    rejected += 1
                    self.rejected[label] = rejected
                    continue
                kept += 1
                yield start + offset, image, confidence
            start = stop
        if kept < count:
            tried = kept + rejected
            raise CxrError(
                f"synthetic quality filter: only {kept} of {tried} generated {label!r} images "
                f"({kept / max(tried, 1):.1%}) reached confidence {o.min_confidence} under the classifier "
                f"{o.filter_run}; {count} were wanted within max_tries={o.max_tries} x {count} candidates. "
                "Lower min_confidence, raise max_tries, or train the GAN longer."
            )


@hookimpl
def register_augmenters(register):
    register(SyntheticAugmenter)
