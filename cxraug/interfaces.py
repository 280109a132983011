"""The contracts every plugin kind fulfils: dataset adapters, GANs, augmenters, classifiers, metrics,
loggers, executors.

A plugin class sets ``name`` (lower-case, unique within its kind), a one-line ``description`` and an
``Options`` pydantic model (extra keys forbidden). The core builds the options from defaults, the
``--config`` TOML file and ``--opt key=value`` flags, then instantiates the class with them.

Every interface is generic over its options model, so a plugin that declares
``class MyGAN(GAN[MyGANOptions])`` (with ``Options = MyGANOptions``) reads ``self.options.nz`` fully
typed; a plugin that subclasses the bare interface works as before, its options typed as Any.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, cast, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from cxraug.errors import DataError
from cxraug.labels import VOCABULARY
from cxraug.settings import refuse_bool_numbers

if TYPE_CHECKING:
    import torch
    from torch import nn

    # Type-only: both import this module, and interfaces stays the lowest layer at run time.
    from cxraug.registry import Registry
    from cxraug.snapshotio import ForeignSnapshot
    from cxraug.workspace import Workspace

KINDS: tuple[str, ...] = ("dataset", "gan", "augmenter", "classifier", "metric", "logger", "executor")


class PluginOptions(BaseModel):
    """Base for every plugin's options: unknown keys are an error, values are validated, and no
    number may be nan or inf (``ge=0`` alone lets ``r1_gamma=inf`` through, which trains NaNs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(refuse_bool_numbers))


class NoOptions(PluginOptions):
    """For plugins that take no options."""


#: The options model of a plugin class; ``GAN[DCGANOptions]`` binds it.
O = TypeVar("O", bound=PluginOptions)  # noqa: E741 - the conventional one-letter type parameter


class Plugin(Generic[O]):
    """What all plugin classes share; ``kind`` is set by each interface below.

    ``Options`` is the model the core instantiates (from defaults, config file and flags); a class
    that binds the type parameter and sets no ``Options`` gets the bound model as ``Options``, and
    one whose ``Options`` does not match the parameter is rejected when it is defined.
    """

    kind: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = NoOptions
    options: O

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        bound = _bound_options(cls)
        if bound is None:
            return
        if "Options" not in cls.__dict__ and not issubclass(cls.Options, bound):
            cls.Options = bound
        elif not (isinstance(cls.Options, type) and issubclass(cls.Options, bound)):
            raise TypeError(
                f"{cls.__qualname__} is declared with options {bound.__name__} but sets "
                f"Options = {getattr(cls.Options, '__name__', cls.Options)!r}; make Options that class "
                "(or a subclass of it)"
            )

    def __init__(self, options: O | None = None) -> None:
        if options is None:
            # Options is a ClassVar, which cannot mention O; __init_subclass__ keeps the two in step.
            options = cast(O, self.Options())
        elif not isinstance(options, self.Options):
            raise TypeError(
                f"{type(self).__name__} expects {self.Options.__name__} options, got {type(options).__name__}"
            )
        self.options = options


def _bound_options(cls: type) -> type[PluginOptions] | None:
    """The options model a class binds in its bases (``GAN[DCGANOptions]``), if any."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Plugin):
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, PluginOptions):
                    return arg
    return None


# --------------------------------------------------------------------------------------- datasets

ImageSource = Path | np.ndarray


@dataclass(slots=True)  # one per image: 100k records must not cost a dict each
class Record:
    """One image as a dataset adapter sees it, before decoding.

    ``image`` is the path of the file as downloaded (its extension may lie) or an in-memory array
    (uint8 or uint16, 2-D grayscale or HxWx3/4). ``split`` is the source's official split
    (``train``/``val``/``test``) or None when the source defines none. ``refused`` says why a row
    is left out without reading its file (e.g. ``train.txt:12: '../x.png' points outside the
    dataset folder``); prepare lists it under skipped, and ``--strict`` makes it an error. A row
    refused because its label field is unreadable may carry any label (e.g. ``unknown``); it is
    listed under skipped whatever ``--classes`` asks for.
    ``findings`` holds every label of an image the source files under several findings, in the
    source's order (``label`` is then the first); prepare picks one by ``--multilabel``.
    """

    image: ImageSource
    label: str
    source: str
    original: str
    patient_id: str | None = None
    view: str | None = None
    split: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    refused: str | None = None
    findings: tuple[str, ...] = ()


class DatasetAdapter(Plugin[O], ABC):
    """Reads one public chest X-ray collection in the layout users download it in."""

    kind: ClassVar[str] = "dataset"
    #: False for adapters that need no ``--root`` (the embedded phantom demo, a downloadable file).
    needs_root: ClassVar[bool] = True
    #: True when the images are not real X-rays (the phantom demo); shown wherever data is listed.
    synthetic: ClassVar[bool] = False
    #: True for the adapter the core prepares, with default options and no root, when a command
    #: finds no prepared dataset (``Registry.demo_dataset``); such an adapter sets needs_root = False.
    demo: ClassVar[bool] = False
    #: The licence or terms of use of the source images, as the dataset's published page states them
    #: (shown in exported model cards); "" when not declared: cards then say to check the source.
    license: ClassVar[str] = ""

    @abstractmethod
    def records(self, root: Path | None) -> Iterable[Record]:
        """Yield every image with its canonical label; raise DataError naming file/line on bad input."""

    def notes(self) -> list[str]:
        """Facts for the prepare report (e.g. 'no patient ids in this source'); call after records()."""
        return []

    def labels(self) -> tuple[str, ...]:
        """Every label this adapter may yield, in its preferred order (default: the core vocabulary).

        An adapter whose source has findings outside the core vocabulary (NIH's fourteen) declares
        them here, as lower-case snake_case names, so ``--classes effusion,normal`` can name them.
        """
        return VOCABULARY


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


class GAN(Plugin[O], ABC):
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

    def __init__(self, options: O | None, spec: GANSpec) -> None:
        super().__init__(options)
        self.spec = spec

    @classmethod
    def check_spec(cls, options: O, spec: GANSpec) -> None:
        """Raise OptionsError for an image size, label count or option this GAN cannot train.

        The engine calls it before a run starts and for ``--dry-run``, so a bad size is refused at
        once instead of when training begins; the default accepts everything.
        """

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

    #: Formats of other projects' snapshot files (``cxraug.snapshotio``) this GAN can start from
    #: (``train-gan --transfer FILE``) and generate with (``generate --checkpoint FILE``).
    snapshot_formats: ClassVar[tuple[str, ...]] = ()

    def load_snapshot(self, snapshot: ForeignSnapshot) -> dict[str, Any]:
        """Load another project's snapshot into the networks; return a JSON-able report of which
        tensors were loaded, adapted or left at their initial values (GANs listing the format)."""
        raise DataError(f"snapshot {snapshot.path}: GAN {self.name!r} cannot start from a {snapshot.format}")

    @classmethod
    def from_snapshot(cls, snapshot: ForeignSnapshot, device: str) -> GAN[Any]:
        """A GAN built from the shapes of another project's snapshot, its weights loaded."""
        raise DataError(
            f"snapshot {snapshot.path}: GAN {cls.name!r} cannot be built from a {snapshot.format}"
        )


# --------------------------------------------------------------------------------------- augmenters


@dataclass(frozen=True)
class AugmentedImage:
    """A new training image and where it came from."""

    image: np.ndarray  # (S, S) uint8
    label: str
    origin: str  # "classic", "synthetic", ...
    provenance: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentServices:
    """What the core lends an augmenter; None means "not available here"."""

    #: The workspace runs are looked up in (by name, or the latest).
    workspace: Workspace | None = None
    #: The plugin registry, to rebuild the GAN or classifier a run was trained with.
    registry: Registry | None = None
    #: The torch device string to compute on ("cpu", "cuda", "cuda:1", "mps").
    device: str = "cpu"
    #: The GAN run folder the core chose for augmenters with ``uses_gan_run``; None: they choose.
    gan_run: Path | None = None


@dataclass
class AugmentRequest:
    """What an augmenter is asked for: ``counts[label]`` new images from the real training set."""

    images: np.ndarray  # (N, S, S) uint8, the real training images (read-only, maybe memory-mapped)
    labels: list[str]  # label of each image
    counts: dict[str, int]  # new images wanted per label
    seed: int
    size: int
    services: AugmentServices = field(default_factory=AugmentServices)


class Augmenter(Plugin[O], ABC):
    """Makes new training images for a label (classic transforms, a GAN, ...)."""

    kind: ClassVar[str] = "augmenter"
    #: The manifest ``origin`` of the images it makes.
    origin: ClassVar[str] = "augmented"
    #: True when it generates from a trained GAN run: the core then hands the run it chose as
    #: ``request.services.gan_run`` (an explicit run in the augmenter's own options still wins).
    uses_gan_run: ClassVar[bool] = False

    @abstractmethod
    def augment(self, request: AugmentRequest) -> Iterator[AugmentedImage]:
        """Yield exactly ``request.counts[label]`` images per label, deterministic by seed."""

    def online_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The per-batch form used during classifier training, or None when there is none (default).

        The callable takes a (B, 1, S, S) float tensor in [0, 1] and returns one of the same shape,
        dtype and device, values still in [0, 1], transforming each image independently (its own
        random draw, never one draw for the batch). Randomness comes from torch's global generator,
        which the training engine seeds.
        """
        return None


# -------------------------------------------------------------------------------------- classifiers


class Classifier(Plugin[O], ABC):
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


class FeatureFn(Protocol):
    """Image features: (N, S, S) uint8 images -> (N, D) float array, one row per image.

    ``role`` says which image set it is ("real", "train", "generated"; real sets may be cached on
    disk), ``mode`` the resizing ("clean", "legacy_tensorflow", "legacy_pytorch"),
    ``batch_size`` overrides the extractor's default and ``features`` names the network
    ("inception", or "xrv": TorchXRayVision's chest X-ray DenseNet-121).
    """

    def __call__(
        self,
        images: np.ndarray,
        role: str = "generated",
        mode: str = "clean",
        batch_size: int | None = None,
        features: str = "inception",
    ) -> np.ndarray: ...


@dataclass
class MetricServices:
    """What the core lends a metric; None means "not available here".

    Use ``cxraug.metrics.features.features_service(services)`` for features: it returns
    ``features`` or builds (and stores there) an Inception extractor from the other fields.
    """

    #: The shared, cached feature extractor (so several metrics featurise each image set once).
    features: FeatureFn | None = None
    #: Folder of the on-disk feature cache for a built extractor; None: no disk cache.
    feature_cache: Path | None = None
    #: Local Inception weights for a built extractor; None: $CXRAUG_INCEPTION_WEIGHTS or a download.
    inception_weights: Path | None = None
    #: Local TorchXRayVision DenseNet weights; None: $CXRAUG_XRV_WEIGHTS or torchxrayvision's download.
    xrv_weights: Path | None = None
    #: The torch device string to compute on.
    device: str = "cpu"
    #: (N, S, S) uint8 real images the GAN never saw (the evaluated split), for memorisation.
    holdout: np.ndarray | None = None


@dataclass
class MetricInputs:
    """What a metric may use; a metric lists the fields it needs in ``requires``.

    Images are (N, S, S) uint8 arrays; ``real`` is the evaluated real split, ``train`` the real
    training split (for memorisation), ``generated`` the synthetic images; ``*_labels`` give the
    label of each image. ``y_true``/``y_score`` are a classifier's test-split targets and class
    probabilities. ``services`` carries what the core lends (features, device, holdout images) and
    ``out_dir`` is where a metric may write figures.
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
    services: MetricServices = field(default_factory=MetricServices)


@dataclass
class MetricResult:
    """Named numbers, plus files a metric wrote (figures) and tables for the report."""

    values: dict[str, float]
    artifacts: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class Metric(Plugin[O], ABC):
    """A number (or several) describing generated images or a classifier."""

    kind: ClassVar[str] = "metric"
    #: Fields of MetricInputs this metric needs (e.g. {"real", "generated"} or {"y_true", "y_score"}).
    requires: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def compute(self, inputs: MetricInputs) -> MetricResult:
        """Compute from the inputs; missing required inputs are the core's to report, not the metric's."""


# ------------------------------------------------------------------------------------------ loggers


@dataclass(frozen=True)
class LoggerRun:
    """One stream of metric rows a logger records: a run, or one model of a per-label GAN run.

    ``folder`` is the run (or model) folder: a logger keeps its files and what it needs to continue
    there (TensorBoard events, the MLflow run id). ``resume_step`` is set when a run continues from
    a checkpoint: rows after that step were dropped from the run's log and are logged again.
    ``workspace`` is the workspace folder, for a store shared by its runs (None: there is none).
    """

    folder: Path
    name: str
    kind: str
    workspace: Path | None = None
    resume_step: int | None = None


#: How a run ended, as ``Logger.close`` is told.
LOGGER_STATUSES: tuple[str, ...] = ("finished", "failed", "interrupted")


class Logger(Plugin[O], ABC):
    """An experiment tracker (``--logger NAME``): receives what a run writes to its own folder.

    The core calls, in the main process only: ``start`` once per stream, then ``log_params`` with
    the run's recorded options (flattened to ``config.batch_size = 32`` style keys), then
    ``log_scalars`` for each metric row and ``log_image`` for each sample grid, and ``close`` at
    the end, whatever happened. A logger that raises is switched off for the rest of the run
    (with a warning); the run itself goes on.
    """

    kind: ClassVar[str] = "logger"
    #: Python modules the logger imports; ``check_available`` names the missing ones.
    requires: ClassVar[tuple[str, ...]] = ()
    #: What to run when one is missing.
    install_hint: ClassVar[str] = ""

    @classmethod
    def check_available(cls, options: PluginOptions) -> None:
        """Raise OptionsError, one line naming what to install, when the logger cannot work here.

        Called before a run starts or resumes; the default checks that ``requires`` can be imported.
        """
        import importlib.util

        from cxraug.errors import OptionsError

        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            hint = f": {cls.install_hint}" if cls.install_hint else ""
            raise OptionsError(f"--logger {cls.name} needs {', '.join(missing)}, not installed here{hint}")

    @abstractmethod
    def start(self, run: LoggerRun) -> None:
        """Open (or, after ``run.resume_step``, continue) the record of one stream."""

    @abstractmethod
    def log_params(self, params: dict[str, str | int | float | bool]) -> None:
        """The run's resolved options, flattened; called once after ``start`` (again on resume)."""

    @abstractmethod
    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """One metric row: losses, ADA p, lr, validation AUC, ... at ``step``."""

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        """An (H, W) or (H, W, 3) uint8 image (a sample grid) at ``step``; default: not recorded."""

    @abstractmethod
    def close(self, status: str) -> None:
        """Flush and close; ``status`` is one of LOGGER_STATUSES."""


# -------------------------------------------------------------------------------------- executors

#: The kinds of job a study is made of: train a generator, build an arm's training set, train and
#: score one classifier, analyse and report. Executors may give each kind its own resources.
JOB_KINDS: tuple[str, ...] = ("gan", "data", "classifier", "analysis")

#: Exit code of a job whose lock another executor holds (EX_TEMPFAIL): it is running elsewhere,
#: so wait for ``ExecPlan.done`` instead of running it again.
JOB_BUSY_EXIT = 75
#: Exit code of a job stopped by Ctrl-C or SIGTERM; rerunning it continues from its checkpoint.
JOB_INTERRUPTED_EXIT = 130


@dataclass(frozen=True)
class ExecJob:
    """One job of a study: ``id`` is unique and safe as a file name; ``deps`` must be done first."""

    id: str
    kind: str
    deps: tuple[str, ...] = ()
    #: What the job does, for progress lines ("train classifier base seed 2").
    label: str = ""


class ExecPlan(Protocol):
    """A study's jobs as an executor sees them; the study's state file is the source of truth.

    Each job takes a lock of its own in the study folder when it starts, so a job is never run
    twice at once, whoever launched it; a finished job is a no-op that exits 0; a job killed
    part-way continues from its own checkpoint when run again. Exit codes of ``command`` and of
    ``call``: 0 done, JOB_BUSY_EXIT (another executor runs it: wait until ``done``),
    JOB_INTERRUPTED_EXIT, 2 (a user error, ``failure`` says which), anything else a failure.
    """

    #: The study folder; executors keep their own files under ``folder / "jobs"``.
    folder: Path
    #: Every job, in an order where each comes after its dependencies.
    jobs: tuple[ExecJob, ...]

    def done(self, job_id: str) -> bool:
        """Whether the job has finished (read from the state file, so it sees other executors)."""
        ...

    def command(self, job_id: str, executor: str) -> list[str]:
        """The argv that runs the job in a fresh process (any machine that sees the study folder)."""
        ...

    def call(self, job_id: str, executor: str) -> Callable[[], int]:
        """A picklable callable that runs the job in the calling process and returns its exit code."""
        ...

    def log_path(self, job_id: str) -> Path:
        """Where the job's output goes (``folder/jobs/ID.log``); executors append to it."""
        ...

    def failure(self, job_id: str) -> str | None:
        """The error the job recorded when it last failed, or None."""
        ...


class Executor(Plugin[O], ABC):
    """Runs a study's jobs (``cxraug experiment --executor NAME``): locally, on Slurm, on Ray, ...

    ``run`` must start each job only once its dependencies are done, treat JOB_BUSY_EXIT as
    "running elsewhere" (wait for ``plan.done``), stop starting jobs after the first failure and
    raise a CxrError naming the job and its log, and return once every job is done.
    ``cxraug.execution.run_graph`` does all of that for an executor that can start, poll and
    cancel one job; ``cxraug.testing.check_executor_plugin`` checks an executor against it.
    """

    kind: ClassVar[str] = "executor"
    #: Python modules the executor imports; ``check_available`` names the missing ones.
    requires: ClassVar[tuple[str, ...]] = ()
    #: What to run when one is missing.
    install_hint: ClassVar[str] = ""

    @classmethod
    def check_available(cls, options: PluginOptions) -> None:
        """Raise OptionsError, one line naming what to install, when the executor cannot work here."""
        import importlib.util

        from cxraug.errors import OptionsError

        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            hint = f": {cls.install_hint}" if cls.install_hint else ""
            raise OptionsError(f"--executor {cls.name} needs {', '.join(missing)}, not installed here{hint}")

    def describe(self) -> str:
        """One line for the terminal and the report: where the jobs will run."""
        return self.name

    @abstractmethod
    def run(self, plan: ExecPlan) -> None:
        """Run every job of ``plan`` that is not done, each after its dependencies."""


INTERFACES: dict[str, type[Plugin]] = {
    "dataset": DatasetAdapter,
    "gan": GAN,
    "augmenter": Augmenter,
    "classifier": Classifier,
    "metric": Metric,
    "logger": Logger,
    "executor": Executor,
}
