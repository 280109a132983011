"""``cxraug augment`` as an engine: which augmenters make how many images from which dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from cxraug.data.augment import AugmentStep, augment_dataset, balanced_counts
from cxraug.data.prepared import PreparedDataset
from cxraug.data.resolve import open_dataset
from cxraug.devices import pick_device
from cxraug.errors import OptionsError
from cxraug.interfaces import AugmentServices
from cxraug.options import resolve_options
from cxraug.registry import Registry
from cxraug.settings import MAX_IMAGES, Settings, parse_counts
from cxraug.training.checkpoint import safe_load
from cxraug.training.classifier_run import ClassifierRun
from cxraug.training.gan_run import MAX_SEED, GanRun
from cxraug.workspace import Workspace, check_name


class AugmentSettings(Settings):
    """``cxraug augment``: flags and the ``[augment]`` table."""

    section: ClassVar[str] = "augment"
    flag_names: ClassVar[dict[str, str]] = {"filter_run": "--filter"}

    data: str | None = None
    synthetic: int = Field(0, ge=0, le=MAX_IMAGES)
    gan: str | None = None
    label: str | None = None
    per_class: str | None = None
    classic: int = Field(0, ge=0, le=MAX_IMAGES)
    classic_per_class: str | None = None
    truncation: float | None = Field(None, gt=0, le=2, allow_inf_nan=False)
    filter_run: str | None = None
    min_confidence: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    name: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    force: bool = False
    #: The augmenters for ``--classic`` and ``--synthetic`` (any installed ones may stand in).
    classic_augmenter: str = "classic"
    synthetic_augmenter: str = "synthetic"
    #: Options per augmenter (``[augmenter.NAME]`` tables and ``--opt NAME.KEY=VALUE``).
    augmenter_options: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _consistent(self) -> AugmentSettings:
        if self.label is not None and (self.per_class or self.classic_per_class):
            raise ValueError("give --label or --per-class/--classic-per-class, not both")
        stray = [
            k for k in self.augmenter_options if k not in (self.classic_augmenter, self.synthetic_augmenter)
        ]
        if stray:
            raise ValueError(
                f"--opt {stray[0]}...: prefix augmenter options with its name, e.g. "
                "--opt classic.rotation=15 or --opt synthetic.max_tries=10"
            )
        return self


@dataclass
class AugmentPlan:
    """What ``augment`` will write (``--dry-run`` prints it)."""

    source: PreparedDataset
    steps: list[AugmentStep]
    name: str
    gan_run: GanRun | None

    def as_dict(self, seed: int) -> dict[str, Any]:
        return {
            "source": self.source.name,
            "name": self.name,
            "gan_run": str(self.gan_run.path) if self.gan_run else None,
            "seed": seed,
            "steps": [
                {
                    "augmenter": s.augmenter.name,
                    "counts": s.counts,
                    "options": s.augmenter.options.model_dump(mode="json"),
                }
                for s in self.steps
            ],
        }


def plan_augment(workspace: Workspace, registry: Registry, s: AugmentSettings) -> AugmentPlan:
    """Resolve the source dataset, the GAN run and every step's counts per label."""
    want_synthetic, want_classic = bool(s.synthetic or s.per_class), bool(s.classic or s.classic_per_class)
    if not (want_synthetic or want_classic):
        raise OptionsError("nothing to add: give --synthetic N (and/or --classic N)")
    gan_run = GanRun.resolve(workspace, s.gan) if want_synthetic else None
    data = s.data if s.data is not None or gan_run is None else gan_run.settings.data
    source = open_dataset(workspace, registry, data, real=True)
    current = {lb: len(source.indices("train", [lb])) for lb in source.classes}
    steps = []
    if want_classic:
        cls = registry.augmenter(s.classic_augmenter)
        options = resolve_options(
            cls.Options, plugin=f"augmenter {cls.name}", config=s.augmenter_options.get(cls.name, {})
        )
        counts = _counts(s.classic_per_class, s.label, s.classic, current, source.classes)
        steps.append(AugmentStep(cls(options), counts))
        current = {lb: current[lb] + counts.get(lb, 0) for lb in current}
    if gan_run is not None:
        cls = registry.augmenter(s.synthetic_augmenter)
        raw = dict(s.augmenter_options.get(cls.name, {}))
        for key in ("truncation", "min_confidence", "filter_run"):
            if getattr(s, key) is not None:
                raw[key] = getattr(s, key)
        options = resolve_options(cls.Options, plugin=f"augmenter {cls.name}", config=raw)
        filter_run = getattr(options, "filter_run", None)
        if isinstance(filter_run, str) and filter_run:
            _check_filter_run(workspace, filter_run)
        labels = [lb for lb in source.classes if lb in gan_run.labels] or source.classes
        counts = _counts(s.per_class, s.label, s.synthetic, current, labels)
        steps.append(AugmentStep(cls(options), counts))
    tag = "".join(f"-{st.augmenter.name[:3]}{sum(st.counts.values())}" for st in steps)
    name = s.name or f"{source.name}-aug{tag}-s{s.seed}"
    check_name(name, "--name" if s.name else "dataset name")  # refused now, and by --dry-run
    return AugmentPlan(source, steps, name, gan_run)


def _check_filter_run(workspace: Workspace, ref: str) -> None:
    """``--filter`` names a classifier run or its best.pt; checked before any image is generated."""
    path = Path(ref)
    if path.is_file():
        state = safe_load(path)
        if state.get("kind") != "classifier":
            raise OptionsError(
                f"--filter {ref}: not a classifier checkpoint (give a classifier run or its best.pt)"
            )
        return
    run = ClassifierRun.resolve(workspace, ref)
    _ = run.record  # a damaged or foreign record is named now


def run_augment(
    workspace: Workspace, registry: Registry, s: AugmentSettings, plan: AugmentPlan
) -> PreparedDataset:
    """Write the new dataset (real rows unchanged, new training images added)."""
    services = AugmentServices(
        workspace=workspace,
        registry=registry,
        device=str(pick_device(s.device)),
        gan_run=plan.gan_run.path if plan.gan_run else None,
    )
    return augment_dataset(
        workspace, plan.source, plan.steps, name=plan.name, seed=s.seed, force=s.force, services=services
    )


def _counts(
    spec: str | None, label: str | None, n: int, current: dict[str, int], labels: list[str]
) -> dict[str, int]:
    if spec:
        counts = parse_counts(spec, "--per-class")
        bad = [lb for lb in counts if lb not in labels]
        if bad:
            raise OptionsError(
                f"--per-class: {', '.join(bad)} not available here (choose from {', '.join(labels)})"
            )
        return counts
    if label is not None:
        if label not in labels:
            raise OptionsError(f"--label {label!r}: choose one of {', '.join(labels)}")
        return {label: n}
    return balanced_counts(current, n, labels)
