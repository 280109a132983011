"""A classifier run: its settings, its record, and inference with its best model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from cxraug.errors import DataError
from cxraug.imageio import resize
from cxraug.registry import Registry
from cxraug.settings import NameList
from cxraug.training.checkpoint import safe_load
from cxraug.training.gan_run import MAX_SEED
from cxraug.training.runs import Run, RunRecord
from cxraug.training.trackers import TrackedSettings


class ClassifierSettings(TrackedSettings):
    """``cxraug train-classifier``: flags, the ``[train-classifier]`` table, what a run records."""

    section: ClassVar[str] = "train-classifier"
    resumable: ClassVar[frozenset[str]] = frozenset(
        {"epochs", "device", "nproc", "loggers", "logger_options"}
    )
    flag_names: ClassVar[dict[str, str]] = {
        "arch": "ARCH",
        "freeze_backbone": "--freeze-backbone/--fine-tune",
        "pretrained": "--pretrained/--no-pretrained",
    }

    arch: str | None = None
    data: str | None = None
    classes: NameList = []
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1 << 16)
    lr: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    online_augment: bool = False
    #: The augmenter whose per-batch transform ``--online-augment`` applies.
    online_augmenter: str = "classic"
    class_weights: Literal["none", "balanced"] = "none"
    freeze_backbone: bool | None = None
    pretrained: bool | None = None
    weights: str | None = None
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    nproc: int = Field(1, ge=1, le=1024)
    options: dict[str, Any] = {}
    augment_options: dict[str, Any] = {}


class BestEpoch(BaseModel):
    """The epoch kept as ``best.pt`` and the number that chose it."""

    epoch: int
    score: float
    #: "val_auc_macro" (cxraug.metrics.classification.macro_auc on the validation split), or
    #: "val_accuracy" when no label's AUC is defined there.
    metric: str = "val_auc_macro"
    labels_scored: list[str] = []


class ClassifierRecord(RunRecord[ClassifierSettings]):
    """``options.json`` of a classifier run."""

    best: BestEpoch | None = None
    experiment: str | None = None


def prepare_batch(images_u8: torch.Tensor, input_size: int, device: torch.device) -> torch.Tensor:
    """(B, S, S) or (B, 1, S, S) uint8 -> (B, 1, input_size, input_size) float in [0, 1] on device."""
    x = images_u8.to(device, non_blocking=True)
    if x.ndim == 3:
        x = x[:, None]
    x = x.float().div_(255.0)
    if x.shape[-1] != input_size:
        x = resize(x, (input_size, input_size))
    return x


@dataclass
class LoadedClassifier:
    """A trained network ready for inference, with the label order of its outputs."""

    model: nn.Module
    labels: list[str]
    input_size: int
    arch: str
    path: Path
    device: torch.device

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, C), columns in ``labels`` order, for (N, S, S) uint8 images."""
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"predict_proba expects (N, S, S) uint8 images, got {images.dtype} {images.shape}"
            )
        out = []
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.asarray(images[start : start + batch_size]))
            x = prepare_batch(batch, self.input_size, self.device)
            out.append(torch.softmax(self.model(x).float(), 1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)


def load_checkpoint_model(
    path: Path, registry: Registry, device: torch.device | str = "cpu"
) -> LoadedClassifier:
    """A classifier from a ``best.pt`` file (architecture, options and labels are stored in it)."""
    from pydantic import ValidationError

    device = torch.device(device)
    state = safe_load(path, map_location=device)
    if state.get("kind") != "classifier":
        raise DataError(f"{path}: not a classifier checkpoint")
    cls = registry.classifier(state["arch"])
    try:
        options = cls.Options(**state["options"])
    except ValidationError as exc:
        raise DataError(f"{path}: its options no longer validate ({exc.errors()[0]['msg']})") from None
    model = cls(options).build(len(state["labels"]), pretrained=False, weights=None)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise DataError(
            f"{path}: weights do not match the {state['arch']} network ({str(exc).splitlines()[0]})"
        ) from None
    model.to(device).eval()
    return LoadedClassifier(
        model, list(state["labels"]), int(state["input_size"]), state["arch"], path, device
    )


class ClassifierRun(Run[ClassifierRecord]):
    """A ``runs/classifier/NAME`` folder; ``best.pt`` is the epoch with the best validation score."""

    kind: ClassVar[str] = "classifier"
    Record: ClassVar[type[RunRecord[Any]]] = ClassifierRecord
    make_hint: ClassVar[str] = "cxraug train-classifier ARCH"

    @property
    def settings(self) -> ClassifierSettings:
        return self.record.config

    @property
    def best_path(self) -> Path:
        return self.path / "best.pt"

    @property
    def best(self) -> BestEpoch | None:
        return self.record.best

    @property
    def labels(self) -> list[str]:
        return list(self.settings.classes)

    def has_progress(self) -> bool:
        return (self.path / "checkpoints").is_dir() and any((self.path / "checkpoints").glob("ckpt-*.pt"))

    def load(self, registry: Registry, device: torch.device | str = "cpu") -> LoadedClassifier:
        """The best model, ready for :meth:`LoadedClassifier.predict_proba`."""
        _ = self.record  # a clear error when the folder is not a classifier run
        if not self.best_path.is_file():
            raise DataError(
                f"{self.path}: this classifier run has no best.pt yet (did training finish an epoch?)"
            )
        return load_checkpoint_model(self.best_path, registry, device)

    def predict_proba(
        self, images: np.ndarray, registry: Registry, device: torch.device | str = "cpu"
    ) -> np.ndarray:
        """Class probabilities of the best model, columns in :attr:`labels` order."""
        return self.load(registry, device).predict_proba(images)


def load_classifier(ref: Path, registry: Registry, device: torch.device | str = "cpu") -> LoadedClassifier:
    """A classifier from a run folder or a ``best.pt`` file."""
    path = Path(ref)
    if path.is_file():
        return load_checkpoint_model(path, registry, device)
    return ClassifierRun(path).load(registry, device)
