"""Runs the study arm by arm and seed by seed, keeping its state so an interrupted run resumes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from cxraug import __version__
from cxraug.data.augment import AugmentStep, augment_dataset, balanced_counts
from cxraug.data.prepared import PreparedDataset
from cxraug.data.resolve import open_dataset
from cxraug.devices import pick_device
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.experiment import stats
from cxraug.interfaces import AugmentServices, DistContext
from cxraug.metrics.classification import evaluate_classifier
from cxraug.registry import Registry
from cxraug.settings import NameList, Settings
from cxraug.training.classifier_run import ClassifierRun, ClassifierSettings
from cxraug.training.classifier_trainer import ClassifierJob
from cxraug.training.gan_run import MAX_SEED, GanRun, GanSettings
from cxraug.training.gan_trainer import GanJob
from cxraug.training.lifecycle import Job, run_job
from cxraug.training.runs import (
    DataRef,
    ReportRun,
    RunRecord,
    RunStatus,
    base_record,
    now_iso,
    write_json_atomic,
)
from cxraug.ui import console
from cxraug.workspace import Workspace

ARMS = ("base", "classic", "gan", "classic+gan")
STATE = "experiment.json"

#: --quick: the README's first "see it work" command, minutes on a laptop CPU on the demo data.
QUICK: dict[str, Any] = {
    "gan": "acgan",
    "classifier": "cnn",
    "seeds": 2,
    "epochs": 4,
    "batch_size": 32,
    "gan_kimg": 1.5,
    "gan_options": {"latent_dim": 64, "ngf": 32, "ndf": 32},
    "classifier_options": {"input_size": 64, "width": 16},
    "n_boot": 200,
}
FULL: dict[str, Any] = {
    "gan": "stylegan2",
    "classifier": "densenet121",
    "seeds": 5,
    "epochs": 10,
    "n_boot": 1000,
}


class ExperimentSettings(Settings):
    """``cxraug experiment``: the study (recorded; a resume must ask for the same study)."""

    section: ClassVar[str] = "experiment"
    resumable: ClassVar[frozenset[str]] = frozenset({"device", "inception_weights"})

    data: str | None = None
    gan: str | None = None  # architecture to train, or an existing GAN run
    classifier: str | None = None
    arms: NameList = list(ARMS)
    seeds: int | None = Field(None, ge=1, le=1000)
    synthetic: int | None = Field(None, ge=0)
    classic: int | None = Field(None, ge=0)
    epochs: int | None = Field(None, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1 << 16)
    gan_kimg: float | None = Field(None, gt=0, allow_inf_nan=False)
    gan_options: dict[str, Any] = {}
    classifier_options: dict[str, Any] = {}
    pretrained: bool = True
    n_boot: int | None = Field(None, ge=10, le=1_000_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    inception_weights: str | None = None
    quick: bool = False
    #: Augmenters the classic and GAN arms use (any installed ones with the same capabilities).
    classic_augmenter: str = "classic"
    synthetic_augmenter: str = "synthetic"
    out: str | None = None

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ARMS]
        if bad or not value:
            raise ValueError(f"choose from {', '.join(ARMS)}")
        return value


class ExperimentRecord(RunRecord[ExperimentSettings]):
    """``options.json`` of an experiment folder (its stages and results are in experiment.json)."""


class ExperimentRun(ReportRun[ExperimentRecord]):
    """A ``reports/experiment-TIME`` folder (or ``--out``)."""

    kind: ClassVar[str] = "experiment"
    Record: ClassVar[type[RunRecord[Any]]] = ExperimentRecord
    make_hint: ClassVar[str] = "cxraug experiment"
    product: ClassVar[str] = STATE

    @property
    def settings(self) -> ExperimentSettings:
        return self.record.config

    def state(self) -> dict[str, Any]:
        path = self.path / STATE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class ExperimentJob(Job[ExperimentSettings, ExperimentRun]):
    """The study for the run lifecycle: one resume policy, lock and status, like every run."""

    run_type: ClassVar[type[ExperimentRun]] = ExperimentRun

    def resolve(self, settings: ExperimentSettings) -> ExperimentSettings:
        preset = QUICK if settings.quick else FULL
        dataset = open_dataset(self.ws, self.registry, settings.data, real=True)
        source = dataset.info.get("augmented_from")
        if source:
            raise OptionsError(
                f"--data {dataset.name!r} was made by `augment` from {source.get('name')!r}: its training "
                "split already holds augmented images, so it cannot be the base arm. Use the real dataset"
            )
        gan = settings.gan or preset["gan"]
        clf = settings.classifier or preset["classifier"]
        clf_cls = self.registry.classifier(clf)
        if not (Path(gan).is_dir() or (GanRun.home(self.ws) / gan).is_dir()):
            self.registry.gan(gan)  # an unknown architecture fails before anything runs
        n_train = len(dataset.indices("train"))
        update = {
            "data": dataset.name,
            "gan": gan,
            "classifier": clf,
            "seeds": settings.seeds or preset["seeds"],
            "epochs": settings.epochs or preset["epochs"],
            "synthetic": n_train if settings.synthetic is None else settings.synthetic,
            "classic": n_train if settings.classic is None else settings.classic,
            "batch_size": preset.get("batch_size", settings.batch_size),
            "gan_kimg": settings.gan_kimg or preset.get("gan_kimg"),
            "gan_options": {
                **(preset.get("gan_options", {}) if gan == preset["gan"] else {}),
                **settings.gan_options,
            },
            "classifier_options": {
                **(preset.get("classifier_options", {}) if clf == preset["classifier"] else {}),
                **settings.classifier_options,
            },
            "pretrained": settings.pretrained and clf_cls.pretrained_by_default,
            "n_boot": settings.n_boot or preset["n_boot"],
        }
        return ExperimentSettings.model_validate({**settings.model_dump(), **update})

    def data(self, settings: ExperimentSettings) -> DataRef:
        ds = open_dataset(self.ws, self.registry, settings.data)
        return DataRef.of(ds, ["train", "val", "test"], list(ds.classes))

    def record(self, settings: ExperimentSettings) -> tuple[str, ExperimentRecord]:
        return "experiment", ExperimentRecord(**base_record("experiment", "", settings, self.data(settings)))

    def create(self, settings: ExperimentSettings) -> ExperimentRun:
        _, record = self.record(settings)
        if settings.out:
            return ExperimentRun.create_at(Path(settings.out), record)
        path = self.ws.reports_dir / f"experiment-{timestamp()}"
        return ExperimentRun.create_at(path, record)

    def plan(self, settings: ExperimentSettings, run: ExperimentRun | None) -> dict[str, Any]:
        out = run.path if run else (settings.out or self.ws.reports_dir / "experiment-TIME")
        return {"out": str(out), "config": settings.model_dump(mode="json")}

    def train(
        self, run: ExperimentRun, settings: ExperimentSettings, dist: DistContext, device: torch.device
    ) -> dict[str, Any]:
        from cxraug.experiment.report import write_experiment_report

        exp = Experiment(self.ws, self.registry, run.path, settings)
        exp.run()
        write_experiment_report(exp.state, run.path)
        return {}


class Experiment:
    """One study folder: experiment.json (state and results), datasets per arm, runs, report."""

    def __init__(
        self, workspace: Workspace, registry: Registry, out_dir: Path, config: ExperimentSettings
    ) -> None:
        self.ws, self.registry, self.out_dir, self.config = workspace, registry, out_dir, config
        self.state_path = out_dir / STATE
        if self.state_path.is_file():
            self.state = json.loads(self.state_path.read_text())
            self.state["config"] = config.model_dump(mode="json")
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.state = {
                "created": now_iso(),
                "cxraug_version": __version__,
                "config": config.model_dump(mode="json"),
                "gan_run": None,
                "datasets": {},
                "runs": {},
                "status": "running",
            }
            self.save()
        self.device = str(pick_device(config.device))

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    @property
    def name(self) -> str:
        return self.out_dir.name

    # ------------------------------------------------------------------ stages

    def run(self) -> dict[str, Any]:
        cfg = self.config
        source = PreparedDataset(self.ws.dataset_dir(str(cfg.data)))
        if any("gan" in arm for arm in cfg.arms):
            self.gan_stage(source)
        datasets = {arm: self.arm_dataset(arm, source) for arm in cfg.arms}
        for arm in cfg.arms:
            for s in range(int(cfg.seeds or 0)):
                self.classifier_stage(arm, s, datasets[arm])
        results = self.analyse(source)
        self.state.update(results=results, status="finished", finished=now_iso())
        self.save()
        return results

    def gan_stage(self, source: PreparedDataset) -> Path:
        cfg = self.config
        if self.state.get("gan_run") and self.state.get("gan_finished"):
            return Path(self.state["gan_run"])
        gan = str(cfg.gan)
        if Path(gan).is_dir() or (GanRun.home(self.ws) / gan).is_dir():
            run = GanRun.resolve(self.ws, gan)
            self.state.update(gan_run=str(run.path), gan_finished=True)
            self.save()
            return run.path
        job = GanJob(self.ws, self.registry)
        settings = job.resolve(
            GanSettings(
                arch=gan,
                data=source.name,
                size=source.size,
                batch_size=cfg.batch_size,
                kimg=cfg.gan_kimg,
                seed=cfg.seed,
                device=cfg.device,
                options=dict(cfg.gan_options),
            )
        )
        existing = GanRun(self.state["gan_run"]) if self.state.get("gan_run") else None
        if existing is None:
            existing = job.create(settings)
            existing.mark(RunStatus.RUNNING, experiment=str(self.out_dir))
            self.state["gan_run"] = str(existing.path)
            self.save()
        console.print(f"[bold]experiment: training the {gan} GAN[/] ({existing.path})", soft_wrap=True)
        run_job(job, existing.settings, existing)
        self.state["gan_finished"] = True
        self.save()
        return existing.path

    def arm_dataset(self, arm: str, source: PreparedDataset) -> PreparedDataset:
        cfg = self.config
        if arm == "base":
            return source
        name = self.state["datasets"].get(arm) or f"{self.name}-{arm.replace('+', '-')}"
        if arm in self.state["datasets"] and self.ws.dataset_dir(name).is_dir():
            return PreparedDataset(self.ws.dataset_dir(name))
        train_counts = {lb: len(source.indices("train", [lb])) for lb in source.classes}
        steps = []
        gan_run = GanRun(self.state["gan_run"]) if "gan" in arm else None
        if "classic" in arm:
            cls = self.registry.augmenter(cfg.classic_augmenter)
            counts = balanced_counts(train_counts, int(cfg.classic or 0), list(source.classes))
            steps.append(AugmentStep(cls(cls.Options()), counts))
            train_counts = {lb: train_counts[lb] + counts[lb] for lb in train_counts}
        if gan_run is not None:
            cls = self.registry.augmenter(cfg.synthetic_augmenter)
            if not cls.uses_gan_run:
                raise OptionsError(f"augmenter {cfg.synthetic_augmenter!r} does not take a GAN run")
            labels = [lb for lb in source.classes if lb in gan_run.labels]
            if not labels:
                raise DataError(
                    f"GAN run {gan_run.path} generates none of the dataset's labels; the gan arm needs a "
                    "conditional or per-class GAN"
                )
            counts = balanced_counts(train_counts, int(cfg.synthetic or 0), labels)
            steps.append(AugmentStep(cls(cls.Options()), counts))
        console.print(f"[bold]experiment: building the {arm} training set[/]")
        services = AugmentServices(
            workspace=self.ws,
            registry=self.registry,
            device=self.device,
            gan_run=gan_run.path if gan_run else None,
        )
        dataset = augment_dataset(
            self.ws, source, steps, name=name, seed=cfg.seed, force=True, services=services
        )
        self.state["datasets"][arm] = name
        self.save()
        return dataset

    def classifier_stage(self, arm: str, seed: int, dataset: PreparedDataset) -> None:
        cfg = self.config
        key = f"{arm}/{seed}"
        entry = self.state["runs"].get(key)
        if entry and entry.get("status") == "finished":
            return
        job = ClassifierJob(self.ws, self.registry)
        settings = job.resolve(
            ClassifierSettings(
                arch=cfg.classifier,
                data=dataset.name,
                classes=list(dataset.classes),
                epochs=int(cfg.epochs or 1),
                batch_size=cfg.batch_size,
                seed=cfg.seed + seed,
                device=cfg.device,
                pretrained=cfg.pretrained,
                options=dict(cfg.classifier_options),
            )
        )
        if entry is None:
            created = job.create(settings)
            created.mark(RunStatus.RUNNING, experiment=str(self.out_dir))
            entry = {"run": str(created.path), "status": "running"}
            self.state["runs"][key] = entry
            self.save()
        run = ClassifierRun(entry["run"])
        console.print(f"[bold]experiment: {arm}, seed {seed}[/] ({cfg.classifier} -> {run.name})")
        outcome = run_job(job, settings, run)
        loaded = run.load(self.registry, self.device)
        source = PreparedDataset(self.ws.dataset_dir(str(cfg.data)))
        idx = source.indices("test", loaded.labels)
        np.savez_compressed(
            self.out_dir / f"pred-{arm.replace('+', '-')}-{seed}.npz",
            y_score=loaded.predict_proba(np.asarray(source.images[idx])),
            y_true=source.targets(idx),
            ids=np.array([source.rows[i]["id"] for i in idx]),
        )
        best = outcome.result.get("best")
        entry.update(status="finished", best=best.model_dump() if best is not None else None)
        self.save()

    # ------------------------------------------------------------------ analysis

    def predictions(self, arm: str) -> tuple[np.ndarray, list[np.ndarray]]:
        scores, y = [], None
        for s in range(int(self.config.seeds or 0)):
            data = np.load(self.out_dir / f"pred-{arm.replace('+', '-')}-{s}.npz")
            y = data["y_true"]
            scores.append(data["y_score"])
        assert y is not None
        return y, scores

    def analyse(self, source: PreparedDataset) -> dict[str, Any]:
        cfg = self.config
        labels = list(source.classes)
        per_arm: dict[str, Any] = {}
        preds = {arm: self.predictions(arm) for arm in cfg.arms}
        for arm in cfg.arms:
            y, scores = preds[arm]
            reports = [evaluate_classifier(y, sc, labels, n_boot=0, seed=cfg.seed) for sc in scores]
            summary: dict[str, Any] = {"seeds": len(scores)}
            for key in ("auc_macro", "accuracy", "balanced_accuracy", "f1_macro"):
                summary[key] = _ci_dict([float(getattr(r, key)) for r in reports])
            for lb in labels:
                summary[f"auc/{lb}"] = _ci_dict([r.auc[lb] for r in reports])
                summary[f"sens/{lb}"] = _ci_dict([r.sensitivity[lb] for r in reports])
                summary[f"spec/{lb}"] = _ci_dict([r.specificity[lb] for r in reports])
            mean_scores = np.mean(scores, 0)
            summary["roc_curves"] = evaluate_classifier(y, mean_scores, labels, n_boot=0).roc_curves
            per_arm[arm] = summary
        comparisons = {}
        if "base" in cfg.arms:
            y, base = preds["base"]
            for arm in cfg.arms:
                if arm == "base":
                    continue
                _, scores = preds[arm]
                comparisons[arm] = {
                    "macro_auc_diff": stats.paired_bootstrap_macro_auc(
                        y, scores, base, n_boot=int(cfg.n_boot or 1000), seed=cfg.seed
                    ),
                    "delong": stats.delong_per_label(y, np.mean(scores, 0), np.mean(base, 0), labels),
                }
        return {
            "labels": labels,
            "arms": per_arm,
            "vs_base": comparisons,
            "gan_quality": self.gan_quality(source),
        }

    def gan_quality(self, source: PreparedDataset) -> dict[str, Any]:
        """FID and KID of the GAN against the real training images; skipped with a reason offline."""
        if not self.state.get("gan_run"):
            return {}
        if "gan_quality" in self.state:
            return self.state["gan_quality"]
        from cxraug.evaluation.engine import EvalRequest, run_evaluation

        metrics = {}
        for name in ("fid", "kid"):
            cls = self.registry.metric(name)
            metrics[name] = cls.Options()
        req = EvalRequest(
            metrics=metrics,
            dataset=source,
            out_dir=self.out_dir / "gan-quality",
            gan_run=Path(self.state["gan_run"]),
            seed=self.config.seed,
            device=self.device,
            inception_weights=Path(self.config.inception_weights) if self.config.inception_weights else None,
        )
        try:
            from cxraug.metrics.features import inception_extractor

            # fail fast (offline, no weights) before generating images for nothing
            inception_extractor(req.inception_weights, req.device, "clean")
            doc = run_evaluation(req, self.registry, self.ws)
            result = {**doc["values"]["fid"], **doc["values"]["kid"]}
        except CxrError as exc:
            result = {"skipped": str(exc)}
            console.print(f"[yellow]FID/KID skipped: {exc}[/]", soft_wrap=True)
        self.state["gan_quality"] = result
        self.save()
        return result


def _ci_dict(values: list[float]) -> dict[str, Any]:
    mean, lo, hi = stats.mean_ci(values, bounds=(0.0, 1.0))
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "values": values}


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")
