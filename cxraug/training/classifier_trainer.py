"""The classifier engine: train on a prepared dataset, select the best epoch on validation AUC."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from rich.progress import TextColumn
from torch import nn

from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError, OptionsError
from cxraug.interfaces import Classifier, DistContext, PluginOptions
from cxraug.metrics.classification import auc_per_label, macro_auc
from cxraug.options import resolve_options
from cxraug.training.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    not_a_torch_file,
    rng_state,
    safe_load,
    set_rng_state,
)
from cxraug.training.classifier_run import (
    BestEpoch,
    ClassifierRecord,
    ClassifierRun,
    ClassifierSettings,
    prepare_batch,
)
from cxraug.training.lifecycle import Job
from cxraug.training.metriclog import MetricLog
from cxraug.training.runs import DataRef, base_record, latest_checkpoint
from cxraug.training.trackers import TrackerPlan, Trackers
from cxraug.ui import console, progress_bar

log = logging.getLogger(__name__)


def score_of(
    auc: float, accuracy: float, probs: np.ndarray, y: np.ndarray, classes: list[str], epoch: int = 0
) -> BestEpoch:
    """The validation score that picks the best epoch: macro AUC, or accuracy when it is undefined."""
    if math.isnan(auc):
        return BestEpoch(epoch=epoch, score=accuracy, metric="val_accuracy")
    scored = [c for c, a in zip(classes, auc_per_label(y, probs), strict=False) if np.isfinite(a)]
    return BestEpoch(epoch=epoch, score=auc, metric="val_auc_macro", labels_scored=scored)


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


class ClassifierTrainer:
    """Trains one classifier run folder; resumable at epoch boundaries."""

    def __init__(
        self,
        cls: type[Classifier],
        options: PluginOptions,
        config: ClassifierSettings,
        dataset: PreparedDataset,
        run_dir: Path,
        *,
        online: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dist: DistContext | None = None,
        device: torch.device | None = None,
        trackers: TrackerPlan | None = None,
    ) -> None:
        self.trackers = trackers or TrackerPlan()
        self.cls, self.options, self.config, self.dataset, self.run_dir = (
            cls,
            options,
            config,
            dataset,
            run_dir,
        )
        self.online = online
        self.dist = dist or DistContext()
        self.device = device or torch.device("cpu")
        self.arch = str(config.arch)
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
        model = self.plugin.build(len(cfg.classes), pretrained=bool(cfg.pretrained), weights=weights)
        return model.to(self.device)

    def train(self) -> BestEpoch:
        """Train (or continue) the run; its --logger plugins are closed with the outcome."""
        with self.trackers.deferred() as trackers:
            return self._train(trackers)

    def _train(self, trackers: Trackers) -> BestEpoch:
        cfg, main = self.config, self.dist.is_main
        torch.manual_seed(cfg.seed)
        model = self.build_model()
        lr = cfg.lr if cfg.lr is not None else self.cls.default_lr
        optimizer = torch.optim.Adam(self.plugin.param_groups(model, lr), lr=lr)
        if not any(p.requires_grad for g in optimizer.param_groups for p in g["params"]):
            raise OptionsError("no trainable parameters (is the whole network frozen?)")
        ckpt_dir = self.run_dir / "checkpoints"
        start_epoch, best = 0, BestEpoch(epoch=-1, score=-math.inf)
        resume = latest_checkpoint(ckpt_dir)
        if resume is not None:
            state = safe_load(resume, map_location=self.device)
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise DataError(
                    f"checkpoint {resume}: does not match this run ({str(exc).splitlines()[0]})"
                ) from None
            start_epoch, best = int(state["epoch"]) + 1, BestEpoch.model_validate(state["best"])
            if self.dist.world_size == 1:
                set_rng_state(state["rng"])
            if main:
                console.print(f"[cyan]resuming from {resume.name} (epoch {start_epoch})[/]")
        train_model = self.dist.wrap(model)
        weight = class_weight_tensor(self.train_y, len(cfg.classes), cfg.class_weights)
        loss_fn = nn.CrossEntropyLoss(weight=weight.to(self.device) if weight is not None else None)
        resumed = start_epoch if (self.run_dir / "log.jsonl").exists() else None
        if main:
            trackers.start(self.run_dir, self.run_dir.name, resumed)
        metric_log = MetricLog(self.run_dir, resume_step=resumed, trackers=trackers) if main else None
        world, rank = self.dist.world_size, self.dist.rank
        batch = max(world, cfg.batch_size - cfg.batch_size % world)
        per_rank = batch // world
        steps = max(1, len(self.train_idx) // batch) if len(self.train_idx) >= batch else 1
        images = self.dataset.images
        progress = progress_bar(TextColumn("{task.fields[info]}")) if main else None
        try:
            if progress:
                progress.start()
                task = progress.add_task(self.arch, total=(cfg.epochs - start_epoch) * steps, info="")
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
                    auc = macro_auc(self.val_y, probs)
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
                    if score_of(auc, acc, probs, self.val_y, cfg.classes).score > best.score:
                        best = score_of(auc, acc, probs, self.val_y, cfg.classes, epoch + 1)
                        self._save_model(model, self.run_dir / "best.pt", best)
                    self._checkpoint(model, optimizer, epoch, best)
        finally:
            if progress:
                progress.stop()
        if main and metric_log is not None:
            metric_log.flush_csv()
            curves(metric_log.rows, self.run_dir / "metrics.png", self.arch)
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

    def _save_model(self, model: nn.Module, path: Path, best: BestEpoch) -> None:
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": "classifier",
                "arch": self.arch,
                "options": self.options.model_dump(mode="json"),
                "labels": list(self.config.classes),
                "input_size": self.input_size,
                "epoch": best.epoch,
                "best": best.model_dump(),
                "model": model.state_dict(),
                "dataset": self.dataset.name,
            },
            path,
        )

    def _checkpoint(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, best: BestEpoch
    ) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "kind": "classifier",
                "arch": self.arch,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best": best.model_dump(),
                "rng": rng_state(),
                "config": self.config.model_dump(mode="json"),
            },
            ckpt_dir / f"ckpt-{epoch + 1:04d}.pt",
        )
        for old in sorted(ckpt_dir.glob("ckpt-*.pt"))[:-2]:
            old.unlink()


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


_METRIC_NAMES = {"val_auc_macro": "macro AUC", "val_accuracy": "accuracy"}


class ClassifierJob(Job[ClassifierSettings, ClassifierRun]):
    """``train-classifier`` for the run lifecycle."""

    run_type: ClassVar[type[ClassifierRun]] = ClassifierRun
    extends: ClassVar[frozenset[str]] = frozenset({"epochs"})

    def resolve(self, settings: ClassifierSettings) -> ClassifierSettings:
        cls: type[Classifier] = self.plugin(
            "classifier", settings.arch, "cxraug train-classifier densenet121"
        )
        raw = dict(settings.options)
        if settings.freeze_backbone is not None:
            if "freeze_backbone" not in cls.Options.model_fields:
                raise OptionsError(f"--freeze-backbone: {settings.arch} has no pretrained backbone to freeze")
            raw["freeze_backbone"] = settings.freeze_backbone
        options = resolve_options(cls.Options, plugin=f"classifier {settings.arch}", config=raw)
        dataset = self.open(settings.data)
        classes = dataset.select_classes(settings.classes)
        if len(classes) < 2:
            raise OptionsError("a classifier needs at least two classes")
        pretrained = cls.pretrained_by_default if settings.pretrained is None else settings.pretrained
        if settings.weights is not None:
            if not Path(settings.weights).is_file():
                raise OptionsError(f"--weights {settings.weights}: no such file")
            problem = not_a_torch_file(Path(settings.weights))
            if problem is not None:  # refused now, not when the network is built
                raise OptionsError(
                    f"--weights {settings.weights}: {problem}; give the backbone's weights as saved by "
                    "torch.save(model.state_dict(), PATH)"
                )
            pretrained = True
        if settings.online_augment:
            self._online(settings)  # an unknown augmenter or one without a per-batch form fails now
        update = {
            "data": dataset.name,
            "classes": classes,
            "pretrained": pretrained,
            "options": options.model_dump(mode="json"),
            "logger_options": self.resolve_loggers(settings),
        }
        return ClassifierSettings.model_validate({**settings.model_dump(), **update})

    def _online(self, settings: ClassifierSettings) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if not settings.online_augment:
            return None
        name = settings.online_augmenter
        cls = self.registry.augmenter(name)
        options = resolve_options(cls.Options, plugin=f"augmenter {name}", config=settings.augment_options)
        transform = cls(options).online_transform()
        if transform is None:
            raise OptionsError(f"--online-augment: augmenter {name!r} has no per-batch transform")
        return transform

    def dataset(self, settings: ClassifierSettings) -> PreparedDataset:
        return self.open(settings.data)

    def data(self, settings: ClassifierSettings) -> DataRef:
        return DataRef.of(self.dataset(settings), ["train", "val"], list(settings.classes))

    def record(self, settings: ClassifierSettings) -> tuple[str, ClassifierRecord]:
        record = ClassifierRecord(
            **base_record("classifier", str(settings.arch), settings, self.data(settings))
        )
        return f"{settings.arch}-{settings.data}", record

    def plan(self, settings: ClassifierSettings, run: ClassifierRun | None) -> dict[str, Any]:
        cls = self.registry.classifier(str(settings.arch))
        plugin = cls(
            resolve_options(cls.Options, plugin=f"classifier {settings.arch}", config=settings.options)
        )
        return {
            "config": settings.model_dump(mode="json"),
            "options": settings.options,
            "dataset": str(self.dataset(settings).path),
            "input_size": plugin.input_size,
            "lr": settings.lr if settings.lr is not None else cls.default_lr,
            "run": str(run.path) if run else None,
        }

    def train(
        self, run: ClassifierRun, settings: ClassifierSettings, dist: DistContext, device: torch.device
    ) -> dict[str, Any]:
        cls = self.registry.classifier(str(settings.arch))
        options = resolve_options(cls.Options, plugin=f"classifier {settings.arch}", config=settings.options)
        trainer = ClassifierTrainer(
            cls,
            options,
            settings,
            self.dataset(settings),
            run.path,
            online=self._online(settings),
            dist=dist,
            device=device,
            trackers=self.trackers(run, settings, dist),
        )
        return {"best": trainer.train()}

    def describe(self, run: ClassifierRun) -> list[str]:
        """What a finished run holds and what to do next (for the command's output)."""
        lines = [f"[green]done:[/] {run.path}"]
        best = run.best
        if best is not None:
            lines.append(
                f"best epoch {best.epoch}: validation {_METRIC_NAMES.get(best.metric, best.metric)} "
                f"{best.score:.4f} -> {run.best_path}"
            )
        lines.append(f"log: {run.path / 'log.csv'}  curves: {run.path / 'metrics.png'}")
        lines.append("evaluate on the test split: `cxraug evaluate --roc`")
        return lines
