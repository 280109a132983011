"""The classifier engine: train on a prepared dataset, select the best epoch on validation AUC."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from rich.progress import TextColumn
from torch import nn

from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError, OptionsError
from cxraug.interfaces import Classifier, DistContext, PluginOptions
from cxraug.registry import Registry
from cxraug.training.checkpoint import CHECKPOINT_FORMAT, atomic_save, rng_state, safe_load, set_rng_state
from cxraug.training.gan_trainer import pick_device
from cxraug.training.runs import MetricLog, read_options, write_json_atomic
from cxraug.ui import console, progress_bar

log = logging.getLogger(__name__)


@dataclass
class ClassifierTrainConfig:
    """Resolved options of a train-classifier run (recorded in options.json)."""

    arch: str
    data: str
    classes: list[str]
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    online_augment: bool = False
    class_weights: str = "none"  # none | balanced
    seed: int = 0
    device: str = "auto"
    pretrained: bool = True
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    augment_options: dict[str, Any] = field(default_factory=dict)


def prepare_batch(images_u8: torch.Tensor, input_size: int, device: torch.device) -> torch.Tensor:
    """(B, S, S) or (B, 1, S, S) uint8 -> (B, 1, input_size, input_size) float in [0, 1] on device."""
    x = images_u8.to(device, non_blocking=True)
    if x.ndim == 3:
        x = x[:, None]
    x = x.float().div_(255.0)
    if x.shape[-1] != input_size:
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def class_weight_tensor(targets: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    """'balanced' weights n / (C * count_c), as scikit-learn defines them; None for 'none'."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise OptionsError(f"--class-weights {mode!r}: choose none or balanced")
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [i for i, c in enumerate(counts) if c == 0]
        raise DataError(f"the training split has no images of class index {missing}; cannot balance")
    return torch.tensor(len(targets) / (n_classes * counts), dtype=torch.float32)


def macro_auc(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    """Macro one-vs-rest ROC-AUC; NaN when the split lacks a class (AUC undefined)."""
    from cxraug.metrics.classification import auc_per_label

    aucs = auc_per_label(y_true, probs)
    return float(aucs.mean()) if len(aucs) == n_classes and np.isfinite(aucs).all() else float("nan")


class ClassifierTrainer:
    """Trains one classifier run folder; resumable at epoch boundaries."""

    def __init__(
        self,
        cls: type[Classifier],
        options: PluginOptions,
        config: ClassifierTrainConfig,
        dataset: PreparedDataset,
        run_dir: Path,
        *,
        online: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dist: DistContext | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.cls, self.options, self.config, self.dataset, self.run_dir = (
            cls,
            options,
            config,
            dataset,
            run_dir,
        )
        self.online = online
        self.dist = dist or DistContext()
        self.device = device or pick_device(config.device)
        self.plugin = cls(options)
        self.input_size = self.plugin.input_size
        lookup = {c: i for i, c in enumerate(config.classes)}
        self.train_idx = dataset.indices("train", config.classes)
        self.val_idx = dataset.indices("val", config.classes)
        if len(self.train_idx) == 0:
            raise DataError(f"dataset {dataset.name!r} has no training images of {config.classes}")
        if len(self.val_idx) == 0:
            raise DataError(
                f"dataset {dataset.name!r} has no validation images; the best epoch is chosen on them"
            )
        self.train_y = np.array([lookup[dataset.rows[i]["label"]] for i in self.train_idx])
        self.val_y = np.array([lookup[dataset.rows[i]["label"]] for i in self.val_idx])

    def build_model(self) -> nn.Module:
        cfg = self.config
        weights = Path(cfg.weights) if cfg.weights else None
        model = self.plugin.build(len(cfg.classes), pretrained=cfg.pretrained, weights=weights)
        return model.to(self.device)

    def train(self) -> dict[str, Any]:
        cfg, main = self.config, self.dist.is_main
        torch.manual_seed(cfg.seed)
        model = self.build_model()
        lr = cfg.lr if cfg.lr is not None else self.cls.default_lr
        optimizer = torch.optim.Adam(self.plugin.param_groups(model, lr), lr=lr)
        if not any(p.requires_grad for g in optimizer.param_groups for p in g["params"]):
            raise OptionsError("no trainable parameters (is the whole network frozen?)")
        ckpt_dir = self.run_dir / "checkpoints"
        start_epoch, best = 0, {"epoch": -1, "val_auc_macro": -math.inf}
        resume = _latest(ckpt_dir)
        if resume is not None:
            state = safe_load(resume, map_location=self.device)
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise DataError(
                    f"checkpoint {resume}: does not match this run ({str(exc).splitlines()[0]})"
                ) from None
            start_epoch, best = int(state["epoch"]) + 1, dict(state["best"])
            if self.dist.world_size == 1:
                set_rng_state(state["rng"])
            if main:
                console.print(f"[cyan]resuming from {resume.name} (epoch {start_epoch})[/]")
        train_model = self.dist.wrap(model)
        weight = class_weight_tensor(self.train_y, len(cfg.classes), cfg.class_weights)
        loss_fn = nn.CrossEntropyLoss(weight=weight.to(self.device) if weight is not None else None)
        metric_log = MetricLog(self.run_dir, resume_step=start_epoch) if main else None
        world, rank = self.dist.world_size, self.dist.rank
        batch = max(world, cfg.batch_size - cfg.batch_size % world)
        per_rank = batch // world
        steps = max(1, len(self.train_idx) // batch) if len(self.train_idx) >= batch else 1
        images = self.dataset.images
        progress = progress_bar(TextColumn("{task.fields[info]}")) if main else None
        try:
            if progress:
                progress.start()
                task = progress.add_task(f"{cfg.arch}", total=(cfg.epochs - start_epoch) * steps, info="")
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                model.train()
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
                perm = torch.randperm(len(self.train_idx), generator=gen).numpy()
                total_loss, seen = 0.0, 0
                for j in range(steps):
                    sel = perm[j * batch + rank * per_rank : j * batch + (rank + 1) * per_rank]
                    if len(sel) == 0:
                        continue
                    rows = np.sort(self.train_idx[sel])
                    order = np.argsort(self.train_idx[sel])
                    x = torch.from_numpy(np.asarray(images[rows]))
                    y = torch.from_numpy(self.train_y[sel][order]).to(self.device)
                    x = prepare_batch(x, self.input_size, self.device)
                    if self.online is not None:
                        x = self.online(x)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(train_model(x), y)
                    loss.backward()
                    optimizer.step()
                    total_loss += float(loss.detach()) * len(sel)
                    seen += len(sel)
                    if progress:
                        progress.update(
                            task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss={loss.item():.4f}"
                        )
                if main:
                    probs, val_loss = self.evaluate(model, self.val_idx, self.val_y, loss_fn)
                    auc = macro_auc(self.val_y, probs, len(cfg.classes))
                    acc = float((probs.argmax(1) == self.val_y).mean())
                    row = {
                        "step": epoch + 1,
                        "epoch": epoch + 1,
                        "train_loss": round(total_loss / max(seen, 1), 6),
                        "val_loss": round(val_loss, 6),
                        "val_auc_macro": round(auc, 6),
                        "val_accuracy": round(acc, 6),
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                    metric_log.append(row)  # type: ignore[union-attr]
                    score = auc if not math.isnan(auc) else acc
                    if score > best["val_auc_macro"]:
                        best = {"epoch": epoch + 1, "val_auc_macro": score}
                        self._save_model(model, self.run_dir / "best.pt", epoch + 1, score)
                    self._checkpoint(model, optimizer, epoch, best)
        finally:
            if progress:
                progress.stop()
        if main and metric_log is not None:
            metric_log.flush_csv()
            curves(metric_log.rows, self.run_dir / "metrics.png", cfg.arch)
            write_json_atomic(self.run_dir / "status.json", {"finished": True, "best": best})
        return best

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, idx: np.ndarray, y: np.ndarray, loss_fn: nn.Module
    ) -> tuple[np.ndarray, float]:
        model.eval()
        probs, losses = [], 0.0
        for start in range(0, len(idx), 64):
            rows = idx[start : start + 64]
            x = prepare_batch(
                torch.from_numpy(np.asarray(self.dataset.images[rows])), self.input_size, self.device
            )
            logits = model(x)
            target = torch.from_numpy(y[start : start + 64]).to(self.device)
            losses += float(loss_fn(logits, target)) * len(rows)
            probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
        return np.concatenate(probs), losses / max(len(idx), 1)

    def _save_model(self, model: nn.Module, path: Path, epoch: int, score: float) -> None:
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": "classifier",
                "arch": self.config.arch,
                "options": self.options.model_dump(mode="json"),
                "labels": list(self.config.classes),
                "input_size": self.input_size,
                "epoch": epoch,
                "val_auc_macro": score,
                "model": model.state_dict(),
                "dataset": self.dataset.name,
            },
            path,
        )

    def _checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, best: dict) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": "classifier",
                "arch": self.config.arch,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best": best,
                "rng": rng_state(),
                "config": asdict(self.config),
            },
            ckpt_dir / f"ckpt-{epoch + 1:04d}.pt",
        )
        for old in sorted(ckpt_dir.glob("ckpt-*.pt"))[:-2]:
            old.unlink()


def _latest(folder: Path) -> Path | None:
    found = sorted(folder.glob("ckpt-*.pt")) if folder.is_dir() else []
    return found[-1] if found else None


def curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train/val loss and validation AUC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    a.plot(epochs, [r["val_loss"] for r in rows], label="val loss")
    a.set_xlabel("epoch")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(epochs, [r["val_auc_macro"] for r in rows], label="val macro AUC", color="C2")
    b.plot(epochs, [r["val_accuracy"] for r in rows], label="val accuracy", color="C3")
    b.set_xlabel("epoch")
    b.legend()
    b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ loading for evaluation


@dataclass
class LoadedClassifier:
    model: nn.Module
    labels: list[str]
    input_size: int
    arch: str
    path: Path
    device: torch.device


def load_classifier(run: Path, registry: Registry, device: torch.device | str = "cpu") -> LoadedClassifier:
    """The best model of a classifier run (or a best.pt file), ready for predict_proba."""
    device = torch.device(device)
    path = Path(run)
    if path.is_dir():
        read_options(path)  # a clear error when it is not a run
        path = path / "best.pt"
        if not path.is_file():
            raise DataError(f"{run}: this classifier run has no best.pt yet (did training finish an epoch?)")
    state = safe_load(path, map_location=device)
    if state.get("kind") != "classifier":
        raise DataError(f"{path}: not a classifier checkpoint")
    cls = registry.get("classifier", state["arch"])
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


@torch.no_grad()
def predict_proba(loaded: LoadedClassifier, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C), columns in ``loaded.labels`` order, for (N, S, S) uint8 images."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"predict_proba expects (N, S, S) uint8 images, got {images.dtype} {images.shape}")
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare_batch(
            torch.from_numpy(np.asarray(images[start : start + batch_size])), loaded.input_size, loaded.device
        )
        out.append(torch.softmax(loaded.model(x).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(loaded.labels)), dtype=np.float32)
