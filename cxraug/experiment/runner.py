"""Runs the study arm by arm and seed by seed, keeping its state so an interrupted run resumes."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxraug import __version__
from cxraug.data.augment import AugmentStep, augment_dataset, balanced_counts
from cxraug.data.prepared import PreparedDataset
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.experiment import stats
from cxraug.metrics.classification import evaluate_classifier
from cxraug.options import resolve_options
from cxraug.registry import Registry
from cxraug.training.classifier_trainer import (
    ClassifierTrainConfig,
    ClassifierTrainer,
    load_classifier,
    predict_proba,
)
from cxraug.training.gan_trainer import GANTrainConfig, GANTrainer, gan_units, pick_device
from cxraug.training.runs import finish_run, gan_labels, now_iso, start_run, write_json_atomic
from cxraug.ui import console
from cxraug.workspace import Workspace

ARMS = ("base", "classic", "gan", "classic+gan")
STATE = "experiment.json"


@dataclass
class ExperimentConfig:
    """The resolved study (recorded in experiment.json; a resume must ask for the same study)."""

    data: str
    gan: str  # architecture to train, or an existing GAN run
    classifier: str
    arms: list[str]
    seeds: int = 5
    synthetic: int = 0
    classic: int = 0
    epochs: int = 10
    batch_size: int = 32
    gan_kimg: float | None = None
    gan_options: dict[str, Any] = field(default_factory=dict)
    classifier_options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"
    inception_weights: str | None = None
    quick: bool = False


class Experiment:
    """One study folder: experiment.json (state and results), datasets per arm, runs, report."""

    def __init__(
        self, workspace: Workspace, registry: Registry, out_dir: Path, config: ExperimentConfig
    ) -> None:
        self.ws, self.registry, self.out_dir, self.config = workspace, registry, out_dir, config
        self.state_path = out_dir / STATE
        if self.state_path.is_file():
            self.state = json.loads(self.state_path.read_text())
            if self.state.get("config") != _plain(asdict(config)):
                saved = self.state.get("config") or {}
                changed = [k for k, v in _plain(asdict(config)).items() if saved.get(k) != v]
                raise OptionsError(
                    f"{out_dir} holds an experiment with other settings ({', '.join(changed)}); resume it "
                    "with the same options, or choose another --out"
                )
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.state = {
                "created": now_iso(),
                "cxraug_version": __version__,
                "config": _plain(asdict(config)),
                "gan_run": None,
                "datasets": {},
                "runs": {},
                "status": "running",
            }
            self.save()

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    @property
    def name(self) -> str:
        return self.out_dir.name

    # ------------------------------------------------------------------ stages

    def run(self) -> dict[str, Any]:
        cfg = self.config
        source = PreparedDataset(self.ws.dataset_dir(cfg.data))
        if any("gan" in arm for arm in cfg.arms):
            self.gan_stage(source)
        datasets = {arm: self.arm_dataset(arm, source) for arm in cfg.arms}
        for arm in cfg.arms:
            for s in range(cfg.seeds):
                self.classifier_stage(arm, s, datasets[arm])
        results = self.analyse(source)
        self.state.update(results=results, status="finished", finished=now_iso())
        self.save()
        return results

    def gan_stage(self, source: PreparedDataset) -> Path:
        cfg = self.config
        if self.state.get("gan_run") and self.state.get("gan_finished"):
            return Path(self.state["gan_run"])
        existing = self.ws.runs_dir / "gan" / cfg.gan
        if Path(cfg.gan).is_dir() or existing.is_dir():
            run = Path(cfg.gan) if Path(cfg.gan).is_dir() else existing
            self.state.update(gan_run=str(run), gan_finished=True)
            self.save()
            return run
        cls = self.registry.get("gan", cfg.gan)
        options = resolve_options(cls.Options, plugin=f"gan {cfg.gan}", opts=cfg.gan_options)
        config = GANTrainConfig(
            arch=cfg.gan,
            data=source.name,
            classes=list(source.classes),
            size=source.size,
            batch_size=cfg.batch_size,
            kimg=cfg.gan_kimg or cls.default_kimg,
            seed=cfg.seed,
            device=cfg.device,
            options=options.model_dump(mode="json"),
        )
        if self.state.get("gan_run"):
            run = Path(self.state["gan_run"])
        else:
            run = start_run(
                self.ws,
                "gan",
                cfg.gan,
                asdict(config),
                source,
                conditional=cls.conditional,
                units=gan_units(cls, config),
                experiment=str(self.out_dir),
            )
            self.state["gan_run"] = str(run)
            self.save()
        console.print(f"[bold]experiment: training the {cfg.gan} GAN[/] ({run})", soft_wrap=True)
        GANTrainer(cls, options, config, source, run, device=pick_device(cfg.device)).train()
        finish_run(run)
        self.state["gan_finished"] = True
        self.save()
        return run

    def arm_dataset(self, arm: str, source: PreparedDataset) -> PreparedDataset:
        cfg = self.config
        if arm == "base":
            return source
        name = self.state["datasets"].get(arm) or f"{self.name}-{arm.replace('+', '-')}"
        if arm in self.state["datasets"] and self.ws.dataset_dir(name).is_dir():
            return PreparedDataset(self.ws.dataset_dir(name))
        train_counts = {lb: len(source.indices("train", [lb])) for lb in source.classes}
        steps = []
        if "classic" in arm:
            cls = self.registry.get("augmenter", "classic")
            counts = balanced_counts(train_counts, cfg.classic, list(source.classes))
            steps.append(AugmentStep(cls(cls.Options()), counts))
            train_counts = {lb: train_counts[lb] + counts[lb] for lb in train_counts}
        if "gan" in arm:
            cls = self.registry.get("augmenter", "synthetic")
            run = Path(self.state["gan_run"])
            generated = gan_labels(run)
            labels = [lb for lb in source.classes if lb in generated]
            if not labels:
                raise DataError(
                    f"GAN run {run} generates none of the dataset's labels; the gan arm needs a "
                    "conditional or per-class GAN"
                )
            steps.append(
                AugmentStep(
                    cls(cls.Options(run=str(run))), balanced_counts(train_counts, cfg.synthetic, labels)
                )
            )
        console.print(f"[bold]experiment: building the {arm} training set[/]")
        dataset = augment_dataset(
            self.ws,
            source,
            steps,
            name=name,
            seed=cfg.seed,
            force=True,
            context={"workspace": self.ws, "registry": self.registry, "device": str(pick_device(cfg.device))},
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
        cls = self.registry.get("classifier", cfg.classifier)
        options = resolve_options(
            cls.Options, plugin=f"classifier {cfg.classifier}", opts=cfg.classifier_options
        )
        config = ClassifierTrainConfig(
            arch=cfg.classifier,
            data=dataset.name,
            classes=list(dataset.classes),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=cfg.seed + seed,
            device=cfg.device,
            pretrained=cfg.pretrained,
            options=options.model_dump(mode="json"),
        )
        if entry is None:
            run = start_run(
                self.ws, "classifier", cfg.classifier, asdict(config), dataset, experiment=str(self.out_dir)
            )
            entry = {"run": str(run), "status": "running"}
            self.state["runs"][key] = entry
            self.save()
        run = Path(entry["run"])
        console.print(f"[bold]experiment: {arm}, seed {seed}[/] ({cfg.classifier} -> {run.name})")
        best = ClassifierTrainer(cls, options, config, dataset, run, device=pick_device(cfg.device)).train()
        finish_run(run, best=best)
        loaded = load_classifier(run, self.registry, pick_device(cfg.device))
        source = PreparedDataset(self.ws.dataset_dir(cfg.data))
        idx = source.indices("test", loaded.labels)
        np.savez_compressed(
            self.out_dir / f"pred-{arm.replace('+', '-')}-{seed}.npz",
            y_score=predict_proba(loaded, np.asarray(source.images[idx])),
            y_true=source.targets(idx),
            ids=np.array([source.rows[i]["id"] for i in idx]),
        )
        entry.update(status="finished", best=best)
        self.save()

    # ------------------------------------------------------------------ analysis

    def predictions(self, arm: str) -> tuple[np.ndarray, list[np.ndarray]]:
        scores, y = [], None
        for s in range(self.config.seeds):
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
                        y, scores, base, n_boot=cfg.n_boot, seed=cfg.seed
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
            cls = self.registry.get("metric", name)
            metrics[name] = cls.Options()
        req = EvalRequest(
            metrics=metrics,
            dataset=source,
            out_dir=self.out_dir / "gan-quality",
            gan_run=Path(self.state["gan_run"]),
            seed=self.config.seed,
            device=str(pick_device(self.config.device)),
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


def _ci_dict(values: list[float]) -> dict[str, float]:
    mean, lo, hi = stats.mean_ci(values, bounds=(0.0, 1.0))
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "values": values}


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")
