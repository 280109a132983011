"""A GAN run: its settings, its record, and what users do with a trained one (generate images)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from cxraug.errors import DataError
from cxraug.registry import Registry
from cxraug.settings import NameList
from cxraug.training.generate import LoadedGenerator, generators_from
from cxraug.training.runs import Run, RunRecord, latest_checkpoint
from cxraug.training.trackers import TrackedSettings

#: Largest seed accepted: seeds are mixed into torch and numpy generators with other numbers.
MAX_SEED = 2**32 - 1
SNAPSHOT_UNITS = ("kimg", "ep", "steps")


def parse_snapshot_every(text: str) -> tuple[float, str | None]:
    """``auto`` / ``5`` / ``2ep`` / ``0.5kimg`` / ``100steps`` -> (value, unit); unit None: the budget's."""
    t = text.strip().lower()
    if t == "auto":
        return 0.0, "auto"
    for unit in SNAPSHOT_UNITS:
        if t.endswith(unit):
            number, found = t[: -len(unit)], unit
            break
    else:
        number, found = t, None
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            "use auto, a number (in the budget's unit), or a value with a unit: 2ep, 0.5kimg, 100steps"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive number")
    if found == "steps" and value != int(value):
        raise ValueError("steps are counted in whole numbers, e.g. 100steps")
    return value, found


class GanSettings(TrackedSettings):
    """``cxraug train-gan``: flags, the ``[train-gan]`` config table, and what a run records."""

    section: ClassVar[str] = "train-gan"
    resumable: ClassVar[frozenset[str]] = frozenset(
        {"epochs", "kimg", "device", "nproc", "loggers", "logger_options"}
    )
    flag_names: ClassVar[dict[str, str]] = {"arch": "ARCH", "per_class": "--per-class/--pooled"}

    arch: str | None = None
    data: str | None = None
    classes: NameList = []
    size: int | None = Field(None, ge=8, le=4096)
    batch_size: int = Field(32, ge=1, le=1 << 16)
    epochs: float | None = Field(None, gt=0, allow_inf_nan=False)
    kimg: float | None = Field(None, gt=0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    snapshot_every: str = "auto"
    per_class: bool = True
    transfer: str | None = None
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    nproc: int = Field(1, ge=1, le=1024)
    options: dict[str, Any] = {}

    @field_validator("snapshot_every")
    @classmethod
    def _snapshot(cls, value: str) -> str:
        parse_snapshot_every(value)
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> GanSettings:
        if self.epochs is not None and self.kimg is not None:
            raise ValueError("give --epochs or --kimg, not both")
        return self


class GanRecord(RunRecord[GanSettings]):
    """``options.json`` of a GAN run."""

    #: The models trained: ["all"] (conditional, pooled or one label) or one per label. Required:
    #: a default would send a per-label run looking for a pooled model ("no checkpoint yet").
    units: list[str] = Field(min_length=1)
    conditional: bool
    experiment: str | None = None

    @model_validator(mode="after")
    def _units_are_labels(self) -> GanRecord:
        # each unit is a folder of the run: only "all" or the run's own labels, never a path
        if self.units != ["all"]:
            bad = [u for u in self.units if u not in self.config.classes]
            if bad:
                raise ValueError(
                    f"units {bad[0]!r} is not one of the run's classes ({', '.join(self.config.classes)}) "
                    "nor ['all']"
                )
        return self


class GanRun(Run[GanRecord]):
    """A ``runs/gan/NAME`` folder."""

    kind: ClassVar[str] = "gan"
    Record: ClassVar[type[RunRecord[Any]]] = GanRecord
    make_hint: ClassVar[str] = "cxraug train-gan ARCH"

    @property
    def settings(self) -> GanSettings:
        return self.record.config

    def unit_folder(self, unit: str) -> Path:
        return self.path if unit == "all" else self.path / unit

    @property
    def labels(self) -> list[str]:
        """Labels this run generates ([] for one model pooled over several labels)."""
        record = self.record
        classes = list(record.config.classes)
        if record.units == ["all"]:
            return classes if record.conditional or len(classes) == 1 else []
        return list(record.units)

    def checkpoints(self) -> dict[str, Path]:
        """Latest checkpoint per unit; a unit without one is an error naming it."""
        out = {}
        for unit in self.record.units:
            found = latest_checkpoint(self.unit_folder(unit) / "checkpoints")
            if found is None:
                raise DataError(f"run {self.path}: unit {unit!r} has no checkpoint yet; train it first")
            out[unit] = found
        return out

    def training_image_hashes(self) -> set[str]:
        """Content hashes of the images the run was trained on (for provenance checks)."""
        from cxraug.data.prepared import PreparedDataset

        ref = self.record.dataset
        if ref is None:
            return set()
        ds = PreparedDataset(Path(ref.path))
        labels = set(self.settings.classes)
        return {r["sha256"] for r in ds.rows if r["split"] == "train" and r["label"] in labels}

    def load_generators(
        self, registry: Registry, device: torch.device
    ) -> dict[str, tuple[LoadedGenerator, int]]:
        """Label -> (generator, label index within it), from every unit's latest checkpoint."""
        return generators_from([*self.checkpoints().values()], registry, device)

    def load_generator(
        self, registry: Registry, device: torch.device, label: str | None = None
    ) -> LoadedGenerator:
        """The generator of ``label`` (or the run's only one)."""
        gens = self.load_generators(registry, device)
        if label is None:
            loaded = {id(g): g for g, _ in gens.values()}
            if len(loaded) != 1:
                raise DataError(f"run {self.path} has one generator per label ({', '.join(gens)}); name one")
            return next(iter(loaded.values()))
        if label not in gens:
            raise DataError(
                f"run {self.path} generates {', '.join(gens) or 'no single label'}, not {label!r}"
            )
        return gens[label][0]
