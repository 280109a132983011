"""The contracts every plugin kind fulfils: dataset adapters, GANs, augmenters, classifiers, metrics.

A plugin class sets ``name`` (lower-case, unique within its kind), a one-line ``description`` and an
``Options`` pydantic model (extra keys forbidden). The core builds the options from defaults, the
``--config`` TOML file and ``--opt key=value`` flags, then instantiates the class with them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch
    from torch import nn

KINDS: tuple[str, ...] = ("dataset", "gan", "augmenter", "classifier", "metric")


class PluginOptions(BaseModel):
    """Base for every plugin's options: unknown keys are an error, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(PluginOptions):
    """For plugins that take no options."""


class Plugin:
    """What all plugin classes share; ``kind`` is set by each interface below."""

    kind: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = NoOptions

    def __init__(self, options: PluginOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()


# --------------------------------------------------------------------------------------- datasets

ImageSource = Path | np.ndarray


@dataclass(frozen=True)
class Record:
    """One image as a dataset adapter sees it, before decoding.

    ``image`` is the path of the file as downloaded (its extension may lie) or an in-memory array
    (uint8 or uint16, 2-D grayscale or HxWx3/4). ``split`` is the source's official split
    (``train``/``val``/``test``) or None when the source defines none.
    """

    image: ImageSource
    label: str
    source: str
    original: str
    patient_id: str | None = None
    view: str | None = None
    split: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class DatasetAdapter(Plugin, ABC):
    """Reads one public chest X-ray collection in the layout users download it in."""

    kind: ClassVar[str] = "dataset"
    #: False for adapters that need no ``--root`` (the embedded phantom demo, a downloadable file).
    needs_root: ClassVar[bool] = True
    #: True when the images are not real X-rays (the phantom demo); shown wherever data is listed.
    synthetic: ClassVar[bool] = False

    @abstractmethod
    def records(self, root: Path | None) -> Iterable[Record]:
        """Yield every image with its canonical label; raise DataError naming file/line on bad input."""

    def notes(self) -> list[str]:
        """Facts for the prepare report (e.g. 'no patient ids in this source'); call after records()."""
        return []


# --------------------------------------------------------------------------------------------- GANs


@dataclass
class DistContext:
    """How a GAN's training step talks to other processes; a no-op when training in one process."""

    rank: int = 0
    world_size: int = 1
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module
    all_reduce_grads: Callable[[nn.Module], None] = lambda module: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class GANSpec:
    """What the engine tells a GAN about the data it will see."""

    image_size: int
    labels: list[str]
    channels: int = 1
    device: str = "cpu"
    seed: int = 0
    dist: DistContext = field(default_factory=DistContext)
    #: Total number of epochs the run is asked to train (for schedules); 0 when unknown.
    epochs: int = 0
    batch_size: int = 32

    @property
    def num_classes(self) -> int:
        return len(self.labels)


class GAN(Plugin, ABC):
    """A GAN architecture: networks, optimizers and one training step; the engine owns the rest.

    ``conditional`` GANs model every label with one network. For the others the engine trains one
    instance per label (``--per-class``) or one on all labels pooled; their ``labels`` tensor is
    then all zeros and ``spec.labels`` has a single entry.
    """

    kind: ClassVar[str] = "gan"
    conditional: ClassVar[bool] = False
    #: Training length (thousands of real images shown, per model) when the user gives no
    #: --epochs/--kimg: sized to finish in a few minutes on a laptop CPU at the demo's 64 px.
    default_kimg: ClassVar[float] = 5.0

    def __init__(self, options: PluginOptions | None, spec: GANSpec) -> None:
        super().__init__(options)
        self.spec = spec

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every module whose weights a checkpoint must hold (e.g. G, D, G_ema)."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name, saved and restored with the checkpoint."""

    def schedulers(self) -> dict[str, Any]:
        """Learning-rate schedulers by name (anything with state_dict/load_state_dict)."""
        return {}

    @abstractmethod
    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; ``real`` is (B, C, S, S) in [-1, 1] on the device.

        Returns the losses (and other scalars) to log.
        """

    def end_epoch(self, epoch: int) -> None:
        """Called after each epoch (step per-epoch schedulers here)."""

    @abstractmethod
    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` latent vectors drawn on the CPU from ``generator`` (deterministic by seed)."""

    @abstractmethod
    def generate(self, z: torch.Tensor, labels: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """Images (N, C, S, S) in [-1, 1] for latents and label indices, without gradients."""

    def extra_state(self) -> dict[str, Any]:
        """State beyond networks/optimizers/schedulers (e.g. adaptive augmentation p)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""


# --------------------------------------------------------------------------------------- augmenters


@dataclass(frozen=True)
class AugmentedImage:
    """A new training image and where it came from."""

    image: np.ndarray  # (S, S) uint8
    label: str
    origin: str  # "classic", "synthetic", ...
    provenance: dict[str, str] = field(default_factory=dict)


@dataclass
class AugmentRequest:
    """What an augmenter is asked for: ``counts[label]`` new images from the real training set."""

    images: np.ndarray  # (N, S, S) uint8, the real training images (read-only, maybe memory-mapped)
    labels: list[str]  # label of each image
    counts: dict[str, int]  # new images wanted per label
    seed: int
    size: int
    #: Services from the core: ``workspace`` (cxraug.workspace.Workspace), ``registry``
    #: (cxraug.registry.Registry), ``device`` (str); absent keys mean "not available".
    context: dict[str, Any] = field(default_factory=dict)


class Augmenter(Plugin, ABC):
    """Makes new training images for a label (classic transforms, a GAN, ...)."""

    kind: ClassVar[str] = "augmenter"
    #: The manifest ``origin`` of the images it makes.
    origin: ClassVar[str] = "augmented"

    @abstractmethod
    def augment(self, request: AugmentRequest) -> Iterator[AugmentedImage]:
        """Yield exactly ``request.counts[label]`` images per label, deterministic by seed."""


# -------------------------------------------------------------------------------------- classifiers


class Classifier(Plugin, ABC):
    """An image classifier architecture that the training engine fits on a prepared dataset."""

    kind: ClassVar[str] = "classifier"
    #: Square input size the network expects (the engine resizes batches to it); an instance may
    #: set its own from an option.
    input_size: int = 224
    #: Learning rate when the user gives no --lr.
    default_lr: ClassVar[float] = 1e-3
    #: Whether ImageNet weights are used unless --no-pretrained (False for from-scratch models).
    pretrained_by_default: ClassVar[bool] = True

    @abstractmethod
    def build(self, num_classes: int, *, pretrained: bool, weights: Path | None) -> nn.Module:
        """The network: (B, 1, S, S) float in [0, 1] at ``input_size`` in, (B, num_classes) logits out.

        ``weights`` is a local file of the backbone's pretrained weights (used instead of a
        download); raise CxrError with the expected file name when they cannot be had.
        """

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (e.g. frozen backbone excluded); default: all trainable."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]


# ------------------------------------------------------------------------------------------ metrics


@dataclass
class MetricInputs:
    """What a metric may use; a metric lists the fields it needs in ``requires``.

    Images are (N, S, S) uint8 arrays; ``real`` is the evaluated real split, ``train`` the real
    training split (for memorisation), ``generated`` the synthetic images; ``*_labels`` give the
    label of each image. ``y_true``/``y_score`` are a classifier's test-split targets and class
    probabilities. ``context`` carries core services (``features``: a cached feature extractor,
    ``device``, ``options``) and ``out_dir`` is where a metric may write figures.
    """

    real: np.ndarray | None = None
    real_labels: list[str] | None = None
    train: np.ndarray | None = None
    generated: np.ndarray | None = None
    generated_labels: list[str] | None = None
    y_true: np.ndarray | None = None
    y_score: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricResult:
    """Named numbers, plus files a metric wrote (figures) and tables for the report."""

    values: dict[str, float]
    artifacts: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class Metric(Plugin, ABC):
    """A number (or several) describing generated images or a classifier."""

    kind: ClassVar[str] = "metric"
    #: Fields of MetricInputs this metric needs (e.g. {"real", "generated"} or {"y_true", "y_score"}).
    requires: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def compute(self, inputs: MetricInputs) -> MetricResult:
        """Compute from the inputs; missing required inputs are the core's to report, not the metric's."""


INTERFACES: dict[str, type[Plugin]] = {
    "dataset": DatasetAdapter,
    "gan": GAN,
    "augmenter": Augmenter,
    "classifier": Classifier,
    "metric": Metric,
}
