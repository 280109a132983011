"""``cxraug generate`` as an engine: images from a GAN run (or checkpoint) into class folders."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cxraug.devices import pick_device
from cxraug.errors import DataError, OptionsError
from cxraug.registry import Registry
from cxraug.settings import MAX_IMAGES, Settings, parse_counts
from cxraug.training.gan_run import MAX_SEED, GanRun
from cxraug.training.generate import generate_images, generators_from
from cxraug.workspace import Workspace


class GenerateSettings(Settings):
    """``cxraug generate``."""

    section = "generate"

    run: str | None = None
    checkpoint: str | None = None
    n: int = Field(100, ge=1, le=MAX_IMAGES)
    label: str | None = None
    per_class: str | None = None
    truncation: float = Field(1.0, gt=0, le=2, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    out: str | None = None
    batch_size: int = Field(64, ge=1, le=1 << 16)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @model_validator(mode="after")
    def _exclusive(self) -> GenerateSettings:
        if self.run is not None and self.checkpoint is not None:
            raise ValueError("give --run or --checkpoint, not both")
        if self.label is not None and self.per_class is not None:
            raise ValueError("give --label or --per-class, not both")
        return self


def _check_out(target: Path) -> None:
    """The output folder must be one cxraug can write into (or create), before any image is made;
    nothing is created here, so a command refused later leaves no empty folder behind."""
    if target.exists() and not target.is_dir():
        raise OptionsError(f"--out {target}: a file, not a folder; choose a folder for the images")
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OptionsError(f"--out {target}: {existing} is a file, not a folder; choose another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OptionsError(
            f"--out {target}: cannot write there ({exc.strerror or exc}); choose another folder"
        ) from None


@dataclass
class GenerateResult:
    out: Path
    written: int
    skipped: int


def generate(workspace: Workspace, registry: Registry, s: GenerateSettings) -> GenerateResult:
    """Write the asked images (those already in ``out`` with the same settings are kept)."""
    device = pick_device(s.device)
    if s.checkpoint is not None:
        checkpoint = Path(s.checkpoint)
        if not checkpoint.is_file():
            raise DataError(f"--checkpoint {checkpoint}: no such file")
        gens, name = generators_from([checkpoint], registry, device), checkpoint.stem
    else:
        run = GanRun.resolve(workspace, s.run)
        gens = run.load_generators(registry, device)
        # the checkpoints are part of the name: a run trained longer writes into a new folder
        shas = "".join(sorted({g.sha256 for g, _ in gens.values()}))
        name = f"{run.name}-{hashlib.sha256(shas.encode()).hexdigest()[:8]}"
    labels = list(gens)
    if s.per_class is not None:
        counts = parse_counts(s.per_class, "--per-class")
    elif s.label is not None:
        counts = {s.label: s.n}
    elif not labels:
        raise OptionsError("this GAN generates no labels")
    else:
        base, extra = divmod(s.n, len(labels))
        counts = {lb: base + (1 if i < extra else 0) for i, lb in enumerate(labels)}
    name += f"-s{s.seed}" + (f"-t{s.truncation:g}" if s.truncation != 1 else "")
    target = Path(s.out) if s.out else workspace.root / "generated" / name
    _check_out(target)
    written = generate_images(
        gens, counts, target, seed=s.seed, truncation=s.truncation, batch_size=s.batch_size
    )
    new = sum(written.values())
    return GenerateResult(target, new, sum(counts.values()) - new)
