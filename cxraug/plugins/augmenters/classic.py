"""Classic geometric augmentation: random rotation, translation, scale and horizontal flip.

The transforms used as the baseline in the COVID-19 GAN-augmentation papers, e.g. Waheed et al.,
"CovidGAN: Data Augmentation Using Auxiliary Classifier GAN for Improved Covid-19 Detection",
IEEE Access 8, 2020 (rotation, flips, shifts). Built on ``torchvision.transforms.v2``; the same
transform serves offline augmentation (new images written to the dataset) and online augmentation
(a fresh random transform of every image in every training batch).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator
from torchvision.transforms import InterpolationMode, v2

from cxraug import hookimpl
from cxraug.errors import DataError
from cxraug.interfaces import AugmentedImage, Augmenter, AugmentRequest, PluginOptions


class ClassicOptions(PluginOptions):
    """Options of the ``classic`` augmenter."""

    rotation: float = Field(10.0, ge=0, le=180, description="Random rotation, degrees, uniform in ±this.")
    translate: float = Field(
        0.1, ge=0, le=1, description="Random shift, fraction of the image size, uniform in ±this per axis."
    )
    scale: tuple[float, float] = Field(
        (0.9, 1.1), description="Random zoom factor, uniform in [min, max]; (1, 1) disables it."
    )
    hflip: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Probability of a horizontal flip. Flipping puts the heart on the wrong side (an image no "
            "real patient without dextrocardia produces); several COVID-19 studies used it anyway. "
            "Set 0 to keep anatomy plausible."
        ),
    )
    fill: int = Field(0, ge=0, le=255, description="Gray value (0-255) of pixels moved in from outside.")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0 < lo <= hi <= 10:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 10, got ({lo}, {hi})")
        return value


def build_transform(options: ClassicOptions) -> v2.Compose:
    """The random transform of one (1, S, S) float image in [0, 1] (online and offline alike).

    Steps that cannot change an image are left out, so e.g. a flip-only transform is exact.
    """
    o = options
    steps: list[v2.Transform] = []
    if o.rotation > 0 or o.translate > 0 or tuple(o.scale) != (1.0, 1.0):
        steps.append(
            v2.RandomAffine(
                degrees=o.rotation,
                translate=(o.translate, o.translate) if o.translate > 0 else None,
                scale=tuple(o.scale) if tuple(o.scale) != (1.0, 1.0) else None,
                interpolation=InterpolationMode.BILINEAR,
                fill=o.fill / 255.0,
            )
        )
    if o.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=o.hflip))
    return v2.Compose(steps or [v2.Identity()])


class OnlineTransform:
    """Applies the transform to each image of a (B, 1, S, S) batch with its own random parameters.

    v2 transforms draw one set of parameters per call, so a batched call would move every image
    alike. Randomness comes from torch's global generator, which the training engine seeds.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 1 or not batch.is_floating_point():
            raise ValueError(
                f"classic online transform expects a (B, 1, S, S) float batch, got {batch.dtype} "
                f"{tuple(batch.shape)}"
            )
        if batch.shape[0] == 0:
            return batch
        return torch.stack([self.transform(x) for x in batch])


def _label_key(label: str) -> int:
    """A stable number for a label (Python's hash() changes between processes)."""
    return zlib.crc32(label.encode("utf-8"))


def image_seed(seed: int, label: str, index: int) -> int:
    """Torch seed of output ``index`` of a label: independent of batching and of other labels."""
    state = np.random.SeedSequence([seed % 2**63, _label_key(label), index]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


class ClassicAugmenter(Augmenter[ClassicOptions]):
    """Random rotation, shift, zoom and horizontal flip of real training images."""

    name: ClassVar[str] = "classic"
    description: ClassVar[str] = "Classic rotation/shift/zoom/flip augmentation (torchvision v2)"
    origin: ClassVar[str] = "classic"
    Options: ClassVar[type[ClassicOptions]] = ClassicOptions

    def __init__(self, options: ClassicOptions | None = None) -> None:
        super().__init__(options)
        self.transform = build_transform(self.options)

    def online_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The same transform for training batches, drawn afresh for every image (the interface's
        tensor contract)."""
        return OnlineTransform(self.transform)

    def augment(self, request: AugmentRequest) -> Iterator[AugmentedImage]:
        """``counts[label]`` transformed copies per label; sources go round robin over a seeded
        permutation of the label's images, so every one is used before any is used twice."""
        images = request.images
        if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
            raise ValueError(
                f"classic: request.images must be (N, S, S) uint8, got {images.dtype} {images.shape}"
            )
        if len(request.labels) != len(images):
            raise ValueError(f"classic: {len(request.labels)} labels for {len(images)} images")
        by_label: dict[str, list[int]] = {}
        for i, label in enumerate(request.labels):
            by_label.setdefault(label, []).append(i)
        for label, count in request.counts.items():
            if count > 0 and label not in by_label:
                raise DataError(
                    f"classic augmentation of {label!r}: the training set has no {label!r} images to "
                    f"transform (it has {', '.join(sorted(by_label)) or 'none'})"
                )
        for label, count in request.counts.items():
            if count <= 0:
                continue
            sources = by_label[label]
            order = np.random.default_rng([request.seed % 2**63, _label_key(label)]).permutation(len(sources))
            for k in range(count):
                source = sources[int(order[k % len(sources)])]
                out = self._transform_one(images[source], image_seed(request.seed, label, k))
                if out.shape != (request.size, request.size):
                    raise ValueError(f"classic: made a {out.shape} image for request.size {request.size}")
                yield AugmentedImage(
                    image=out,
                    label=label,
                    origin=self.origin,
                    provenance={"source_index": str(source), "seed": str(request.seed), "index": str(k)},
                )

    def _transform_one(self, image: np.ndarray, seed: int) -> np.ndarray:
        x = torch.tensor(np.asarray(image), dtype=torch.float32)[None] / 255.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            y = self.transform(x)
        return (y[0] * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


@hookimpl
def register_augmenters(register):
    register(ClassicAugmenter)
