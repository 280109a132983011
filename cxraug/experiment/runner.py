"""Runs the study arm by arm and seed by seed, keeping its state so an interrupted run resumes."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from cxraug import __version__
from cxraug.data.augment import AugmentStep, augment_dataset, balanced_counts
from cxraug.data.prepared import PreparedDataset
from cxraug.devices import pick_device
from cxraug.errors import CxrError, DataError, OptionsError
from cxraug.experiment import stats
from cxraug.interfaces import AugmentServices, DistContext
from cxraug.metrics.classification import evaluate_classifier, macro_auc
from cxraug.registry import Registry
from cxraug.settings import MAX_IMAGES, FeatureList, NameList
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
from cxraug.training.trackers import TrackedSettings
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
    "gan_seeds": 1,
}
FULL: dict[str, Any] = {
    "gan": "stylegan2",
    "classifier": "densenet121",
    "seeds": 5,
    "gan_seeds": 3,
    "epochs": 10,
    "n_boot": 1000,
}


class ExperimentSettings(TrackedSettings):
    """``cxraug experiment``: the study (recorded; a resume must ask for the same study)."""

    section: ClassVar[str] = "experiment"
    resumable: ClassVar[frozenset[str]] = frozenset(
        {"device", "inception_weights", "xrv_weights", "loggers", "logger_options"}
    )

    data: str | None = None
    gan: str | None = None  # architecture to train, or an existing GAN run
    classifier: str | None = None
    arms: NameList = list(ARMS)
    seeds: int | None = Field(None, ge=1, le=1000)
    #: Generators per GAN arm (each trained with its own seed, each with its own synthetic set).
    gan_seeds: int | None = Field(None, ge=1, le=100)
    synthetic: int | None = Field(None, ge=0, le=MAX_IMAGES)
    classic: int | None = Field(None, ge=0, le=MAX_IMAGES)
    epochs: int | None = Field(None, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1 << 16)
    gan_kimg: float | None = Field(None, gt=0, allow_inf_nan=False)
    gan_options: dict[str, Any] = {}
    classifier_options: dict[str, Any] = {}
    pretrained: bool = True
    n_boot: int | None = Field(None, ge=10, le=1_000_000)
    #: Runs use seed + k (k < 1000, see seeds and gan_seeds), which must stay a valid seed.
    seed: int = Field(0, ge=0, le=MAX_SEED - 1000)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    inception_weights: str | None = None
    #: Feature networks of the GAN's FID/KID (None: Inception); see ``cxraug evaluate --features``.
    features: FeatureList | None = Field(None, min_length=1)
    xrv_weights: str | None = None
    quick: bool = False
    #: Go on with a reused GAN run that saw the study's val/test images or cannot be verified.
    allow_gan_overlap: bool = False
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

    def has_progress(self) -> bool:
        """A trained generator or classifier run is worth keeping; a study refused at once is not."""
        state = self.state()
        return bool(state.get("gan_runs") or state.get("runs"))

    def state(self) -> dict[str, Any]:
        path = self.path / STATE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class ExperimentJob(Job[ExperimentSettings, ExperimentRun]):
    """The study for the run lifecycle: one resume policy, lock and status, like every run."""

    run_type: ClassVar[type[ExperimentRun]] = ExperimentRun

    def resolve(self, settings: ExperimentSettings) -> ExperimentSettings:
        from cxraug.evaluation.command import check_inception_weights, check_xrv

        if settings.out is not None and Path(settings.out).exists() and not Path(settings.out).is_dir():
            raise OptionsError(f"--out {settings.out}: a file, not a folder; choose a folder for the study")
        check_inception_weights(settings.inception_weights)
        check_xrv(settings.features, {}, settings.xrv_weights)
        preset = QUICK if settings.quick else FULL
        dataset = self.open(settings.data, real=True)
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
            "gan_seeds": settings.gan_seeds or preset["gan_seeds"],
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
            "logger_options": self.resolve_loggers(settings),
        }
        resolved = ExperimentSettings.model_validate({**settings.model_dump(), **update})
        self._check_stages(resolved, dataset)
        return resolved

    def _check_stages(self, settings: ExperimentSettings, dataset: PreparedDataset) -> None:
        """Resolve the first GAN and classifier stage now, so a bad --opt, or an image size the GAN
        cannot train, is refused before the study starts (and by --dry-run), not hours into it."""
        gan = str(settings.gan)
        if any("gan" in arm for arm in settings.arms) and not (
            Path(gan).is_dir() or (GanRun.home(self.ws) / gan).is_dir()
        ):
            gan_job = GanJob(self.ws, self.registry)
            gan_job._datasets = self._datasets  # the dataset is open already
            gan_job.resolve(gan_stage_settings(settings, dataset, 0))
        clf_job = ClassifierJob(self.ws, self.registry)
        clf_job._datasets = self._datasets
        clf_job.resolve(classifier_stage_settings(settings, dataset, 0))

    def data(self, settings: ExperimentSettings) -> DataRef:
        ds = self.open(settings.data)
        return DataRef.of(ds, ["train", "val", "test"], list(ds.classes))

    def record(self, settings: ExperimentSettings) -> tuple[str, ExperimentRecord]:
        return "experiment", ExperimentRecord(**base_record("experiment", "", settings, self.data(settings)))

    def create(self, settings: ExperimentSettings) -> ExperimentRun:
        _, record = self.record(settings)
        if settings.out:
            return ExperimentRun.create_at(Path(settings.out), record)
        return ExperimentRun.create_in(self.ws.reports_dir, f"experiment-{timestamp()}", record)

    def plan(self, settings: ExperimentSettings, run: ExperimentRun | None) -> dict[str, Any]:
        out = run.path if run else (settings.out or self.ws.reports_dir / "experiment-TIME")
        return {"out": str(out), "config": settings.model_dump(mode="json")}

    def train(
        self, run: ExperimentRun, settings: ExperimentSettings, dist: DistContext, device: torch.device
    ) -> dict[str, Any]:
        from cxraug.experiment.report import write_experiment_report

        exp = Experiment(self.ws, self.registry, run.path, settings)
        # the study's own stream: its options, then each arm's test results; every GAN and
        # classifier run of the study logs its own rows to the same loggers
        with self.trackers(run, settings, dist).open(run.path, run.name) as trackers:
            results = exp.run()
            trackers.log_scalars(1, arm_results(results))
        write_experiment_report(exp.state, run.path)
        return {}


def gan_stage_settings(cfg: ExperimentSettings, source: PreparedDataset, k: int) -> GanSettings:
    """What generator ``k`` of the study is asked to train with (its job fills in the rest)."""
    return GanSettings(
        arch=cfg.gan,
        data=source.name,
        batch_size=cfg.batch_size,  # the size is the dataset's (filled in by the job)
        kimg=cfg.gan_kimg,
        seed=cfg.seed + k,
        device=cfg.device,
        options=dict(cfg.gan_options),
        loggers=list(cfg.loggers),
        logger_options=dict(cfg.logger_options),
    )


def classifier_stage_settings(
    cfg: ExperimentSettings, dataset: PreparedDataset, seed: int
) -> ClassifierSettings:
    """What the classifier of seed index ``seed`` is asked to train with (its job fills in the rest)."""
    return ClassifierSettings(
        arch=cfg.classifier,
        data=dataset.name,
        classes=list(dataset.classes),
        epochs=int(cfg.epochs or 1),
        batch_size=cfg.batch_size,
        seed=cfg.seed + seed,
        device=cfg.device,
        pretrained=cfg.pretrained,
        options=dict(cfg.classifier_options),
        loggers=list(cfg.loggers),
        logger_options=dict(cfg.logger_options),
    )


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
        # one job per kind for the whole study: each opens a dataset once, not once per run
        self.gan_job = GanJob(workspace, registry)
        self.classifier_job = ClassifierJob(workspace, registry)

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    @property
    def name(self) -> str:
        return self.out_dir.name

    # ------------------------------------------------------------------ stages

    def generators(self, arm: str) -> list[int | None]:
        """The generator index of each cell of an arm: 0..K-1 for GAN arms, [None] for the others."""
        return list(range(len(self.state.get("gan_runs") or []))) if "gan" in arm else [None]

    def run(self) -> dict[str, Any]:
        cfg = self.config
        source = self.classifier_job.open(str(cfg.data))
        if any("gan" in arm for arm in cfg.arms):
            self.gan_stage(source)
        for arm in cfg.arms:
            for g in self.generators(arm):
                dataset = self.arm_dataset(arm, source, g)
                for s in range(int(cfg.seeds or 0)):
                    self.classifier_stage(arm, s, dataset, g)
        results = self.analyse(source)
        self.state.update(results=results, status="finished", finished=now_iso())
        self.save()
        return results

    def gan_stage(self, source: PreparedDataset) -> list[Path]:
        """Train (or resume) the K generators of the GAN arms, one seed each; or reuse a given run."""
        cfg = self.config
        gan = str(cfg.gan)
        if Path(gan).is_dir() or (GanRun.home(self.ws) / gan).is_dir():
            run = GanRun.resolve(self.ws, gan)
            problem = provenance_problem(run, source)
            if problem and not cfg.allow_gan_overlap:
                raise DataError(
                    f"--gan {gan}: {problem}. Its synthetic images could carry the study's held-out "
                    "X-rays into training; train the GAN in the study (--gan ARCH) or on the study's "
                    "own training split, or pass --allow-gan-overlap to go on (the report will say so)"
                )
            self.state.update(
                gan_runs=[str(run.path)],
                gan_run=str(run.path),
                gan_finished=[True],
                gan_reused=True,
                provenance_override=f"{problem} (--allow-gan-overlap)" if problem else None,
            )
            self.save()
            return [run.path]
        k_total = int(cfg.gan_seeds or 1)
        runs: list[str] = list(self.state.get("gan_runs") or [])
        finished: list[bool] = list(self.state.get("gan_finished") or [])
        job = self.gan_job
        for k in range(k_total):
            if k < len(finished) and finished[k]:
                continue
            if k >= len(runs):
                settings = job.resolve(gan_stage_settings(cfg, source, k))
                created = job.create(settings)
                created.mark(RunStatus.RUNNING, experiment=str(self.out_dir))
                runs.append(str(created.path))
                self.state.update(gan_runs=runs, gan_run=runs[0])
                self.save()
            run = GanRun(runs[k])
            console.print(
                f"[bold]experiment: training {gan} generator {k + 1} of {k_total}[/] ({run.path})",
                soft_wrap=True,
            )
            run_job(job, run.settings, run)
            finished = (finished + [False] * k_total)[:k_total]
            finished[k] = True
            self.state["gan_finished"] = finished
            self.save()
        return [Path(r) for r in runs]

    def arm_dataset(self, arm: str, source: PreparedDataset, g: int | None = None) -> PreparedDataset:
        cfg = self.config
        if arm == "base":
            return source
        tag = cell_tag(arm, g)
        name = self.state["datasets"].get(tag) or f"{self.name}-{tag}"
        if tag in self.state["datasets"] and self.ws.dataset_dir(name).is_dir():
            return self.classifier_job.open(name)
        train_counts = {lb: len(source.indices("train", [lb])) for lb in source.classes}
        steps = []
        gan_run = GanRun(self.state["gan_runs"][g]) if g is not None else None
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
        console.print(f"[bold]experiment: building the {tag} training set[/]")
        services = AugmentServices(
            workspace=self.ws,
            registry=self.registry,
            device=self.device,
            gan_run=gan_run.path if gan_run else None,
        )
        dataset = augment_dataset(
            self.ws, source, steps, name=name, seed=cfg.seed, force=True, services=services
        )
        self.state["datasets"][tag] = name
        self.save()
        return dataset

    def classifier_stage(self, arm: str, seed: int, dataset: PreparedDataset, g: int | None = None) -> None:
        cfg = self.config
        key = run_key(arm, g, seed)
        entry = self.state["runs"].get(key)
        if entry and entry.get("status") == "finished":
            return
        job = self.classifier_job
        settings = job.resolve(classifier_stage_settings(cfg, dataset, seed))
        if entry is None:
            created = job.create(settings)
            created.mark(RunStatus.RUNNING, experiment=str(self.out_dir))
            entry = {"run": str(created.path), "status": "running"}
            self.state["runs"][key] = entry
            self.save()
        run = ClassifierRun(entry["run"])
        console.print(f"[bold]experiment: {key}[/] ({cfg.classifier} -> {run.name})")
        outcome = run_job(job, settings, run)
        loaded = run.load(self.registry, self.device)
        source = job.open(str(cfg.data))
        idx = source.indices("test", loaded.labels)
        np.savez_compressed(
            self.out_dir / f"pred-{cell_tag(arm, g)}-{seed}.npz",
            y_score=loaded.predict_proba(np.asarray(source.images[idx])),
            y_true=source.targets(idx),
            ids=np.array([source.rows[i]["id"] for i in idx]),
        )
        best = outcome.result.get("best")
        entry.update(status="finished", best=best.model_dump() if best is not None else None)
        self.save()

    # ------------------------------------------------------------------ analysis

    def predictions(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """Test labels and the (G, S, N, C) probabilities of every classifier run of an arm."""
        y: np.ndarray | None = None
        cells = []
        for g in self.generators(arm):
            row = []
            for s in range(int(self.config.seeds or 0)):
                data = np.load(self.out_dir / f"pred-{cell_tag(arm, g)}-{s}.npz")
                if y is not None and not np.array_equal(y, data["y_true"]):
                    raise DataError(f"{self.out_dir}: runs of {arm!r} were scored on different test cases")
                y = data["y_true"]
                row.append(data["y_score"])
            cells.append(np.stack(row))
        assert y is not None
        return y, np.stack(cells)

    def analyse(self, source: PreparedDataset) -> dict[str, Any]:
        """The nested analysis: generators, classifier seeds and test cases all resampled."""
        cfg = self.config
        labels = list(source.classes)
        y, arms = None, {}
        for arm in cfg.arms:
            y, arms[arm] = self.predictions(arm)
        assert y is not None
        n_boot = int(cfg.n_boot or 1000)
        study = stats.compare_arms(y, arms, labels, n_boot=n_boot, seed=cfg.seed)
        per_arm = study["arms"]
        for arm, cells in arms.items():
            flat = cells.reshape(-1, *cells.shape[2:])
            per_arm[arm]["auc_macro"]["values"] = [float(macro_auc(y, sc)) for sc in flat]
            accuracy = [float((sc.argmax(1) == y).mean()) for sc in flat]  # descriptive, not tested
            per_arm[arm]["accuracy"] = {"mean": float(np.mean(accuracy)), "values": accuracy}
            mean_scores = flat.mean(0)
            per_arm[arm]["roc_curves"] = evaluate_classifier(y, mean_scores, labels, n_boot=0).roc_curves
        counts = {lb: int((y == i).sum()) for i, lb in enumerate(labels)}
        return {
            "labels": labels,
            "design": {
                "generators": int(max(c.shape[0] for c in arms.values())),
                "seeds": int(min(c.shape[1] for c in arms.values())),
                "test_cases": int(len(y)),
                "test_counts": counts,
                "n_boot": n_boot,
                "level": study["level"],
                "power": study["power"],
                "family_size": study["family_size"],
                "correction": "Holm",
                "gan_reused": bool(self.state.get("gan_reused")),
                "provenance_override": self.state.get("provenance_override"),
            },
            "endpoints": study["endpoints"],
            "arms": per_arm,
            "vs_base": study["vs_base"],
            "variance": stats.variance_components(
                y, arms, labels, n_boot=max(100, n_boot // 4), seed=cfg.seed
            ),
            "delong_per_run": stats.delong_per_run(y, arms, labels),
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
            features=list(self.config.features) if self.config.features else None,
            xrv_weights=Path(self.config.xrv_weights) if self.config.xrv_weights else None,
        )
        from cxraug.metrics.features import inception_extractor, xrv_extractor

        # fail fast (offline, no weights) before generating images for nothing; a network that
        # cannot be had is skipped with its reason, the others still measured
        wanted = list(req.features or ["inception"])
        skipped: dict[str, str] = {}
        for network, make in (
            ("inception", lambda: inception_extractor(req.inception_weights, req.device, "clean")),
            ("xrv", lambda: xrv_extractor(req.xrv_weights, req.device)),
        ):
            if network in wanted:
                try:
                    make()
                except CxrError as exc:
                    skipped[network] = str(exc)
                    console.print(f"[yellow]FID/KID on {network} features skipped: {exc}[/]", soft_wrap=True)
        usable = [f for f in wanted if f not in skipped]
        result: dict[str, Any] = {}
        if usable:
            try:
                doc = run_evaluation(replace(req, features=usable), self.registry, self.ws)
                # values of other feature networks than Inception are labelled NAME@NETWORK (fid@xrv)
                result = {
                    f"{key}@{entry.partition('@')[2]}" if "@" in entry else key: value
                    for entry, values in doc["values"].items()
                    for key, value in values.items()
                }
            except CxrError as exc:
                skipped = {f: str(exc) for f in wanted}
                console.print(f"[yellow]FID/KID skipped: {exc}[/]", soft_wrap=True)
        if skipped:
            if len(skipped) == len(wanted):
                result = {"skipped": "; ".join(skipped.values())}
            else:
                result["skipped_features"] = skipped
        self.state["gan_quality"] = result
        self.save()
        return result


def reanalyse(workspace: Workspace, registry: Registry, run: ExperimentRun) -> dict[str, Any]:
    """Recompute a finished study's analysis and report from its stored predictions (no training)."""
    from cxraug.experiment.report import write_experiment_report

    if run.status is not RunStatus.FINISHED:
        raise OptionsError(
            f"{run.path} has not finished; continue it with `cxraug experiment --resume --out DIR`"
        )
    with run.lock():
        exp = Experiment(workspace, registry, run.path, run.settings)
        source = PreparedDataset(workspace.dataset_dir(str(run.settings.data)))
        exp.state["results"] = exp.analyse(source)
        exp.save()
        write_experiment_report(exp.state, run.path)
    return exp.state["results"]


def provenance_problem(run: GanRun, source: PreparedDataset) -> str | None:
    """Why a reused GAN run may have seen the study's held-out images (None: verified clean)."""
    ref = run.record.dataset
    if ref is None or not (Path(ref.path) / "info.json").is_file():
        return f"GAN run {run.path} cannot be verified: the dataset it was trained on is not there"
    trained_on = PreparedDataset(Path(ref.path), check=False)
    fingerprint, _ = trained_on.fingerprint(["train"], list(run.settings.classes))
    if ref.fingerprint and fingerprint != ref.fingerprint:
        return f"GAN run {run.path} cannot be verified: its dataset {ref.name!r} changed since it was trained"
    seen = run.training_image_hashes()
    held_out = {r["sha256"] for r in source.rows if r["split"] in ("val", "test")}
    overlap = len(seen & held_out)
    if overlap:
        return f"{overlap} of the images GAN run {run.path} was trained on are in the study's val/test splits"
    return None


def arm_results(results: dict[str, Any]) -> dict[str, float]:
    """``ARM/ENDPOINT`` -> the mean over the arm's runs (test macro AUC, per-label AUCs, accuracy)."""
    out: dict[str, float] = {}
    for arm, values in results.get("arms", {}).items():
        for endpoint, value in values.items():
            mean = value.get("mean") if isinstance(value, dict) else None
            if isinstance(mean, (int, float)) and not isinstance(mean, bool):
                out[f"{arm}/{endpoint}"] = float(mean)
    return out


def cell_tag(arm: str, g: int | None) -> str:
    """File and dataset tag of an arm's cell: ``classic-gan-g1`` (generator 1) or ``classic``."""
    return arm.replace("+", "-") + (f"-g{g}" if g is not None else "")


def run_key(arm: str, g: int | None, seed: int) -> str:
    """Key of a classifier run in experiment.json: ``gan/g0/3`` or ``base/3``."""
    return f"{arm}/g{g}/{seed}" if g is not None else f"{arm}/{seed}"


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")
