"""Runs the study arm by arm and seed by seed, keeping its state so an interrupted run resumes."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from cxraug.execution import interrupts_once, jobs_dir, read_json, run_job_locked, update_json
from cxraug.experiment import stats
from cxraug.experiment.plan import cell_tag, gan_is_run, parse_tag, run_key, study_jobs
from cxraug.interfaces import JOB_KINDS, AugmentServices, DistContext, ExecJob, Executor
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
        {
            "device",
            "inception_weights",
            "xrv_weights",
            "loggers",
            "logger_options",
            "executor",
            "executor_options",
            "jobs",
        }
    )
    flag_names: ClassVar[dict[str, str]] = {
        **TrackedSettings.flag_names,
        "executor_options": "--opt executor.KEY=VALUE",
    }

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
    #: Where the study's jobs run (``--executor``): local, slurm, or an installed executor plugin;
    #: it may change on resume (a study started locally can finish on a cluster).
    executor: str = "local"
    #: The executor's options (``--jobs``, ``--opt executor.KEY=VALUE``, ``[executor.NAME]``).
    executor_options: dict[str, Any] = {}
    #: ``--jobs N``: the executor's ``jobs`` (local) or ``max_parallel`` option.
    jobs: int | None = Field(None, ge=1, le=100_000)

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
        return read_json(self.path / STATE)


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
            "executor_options": resolve_executor(self.registry, settings).options.model_dump(mode="json"),
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

    def adjust_resume(self, recorded: ExperimentSettings, wanted: dict[str, Any]) -> dict[str, Any]:
        """Executor options given on resume add to the recorded ones (same executor) or replace them."""
        if "executor_options" in wanted and wanted.get("executor", recorded.executor) == recorded.executor:
            wanted = {
                **wanted,
                "executor_options": {**recorded.executor_options, **wanted["executor_options"]},
            }
        return wanted

    def check(self, settings: ExperimentSettings) -> None:
        super().check(settings)
        resolve_executor(self.registry, settings)  # its package is installed here (also on resume)

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
        jobs = study_jobs(settings, self.ws)
        counts = {kind: sum(1 for j in jobs if j.kind == kind) for kind in JOB_KINDS}
        return {
            "out": str(out),
            "config": settings.model_dump(mode="json"),
            "executor": resolve_executor(self.registry, settings).describe(),
            "jobs": {"total": len(jobs), **counts},
        }

    def train(
        self, run: ExperimentRun, settings: ExperimentSettings, dist: DistContext, device: torch.device
    ) -> dict[str, Any]:
        from cxraug.experiment.report import write_experiment_report

        exp = Experiment(self.ws, self.registry, run.path, settings)
        exp.commit(lambda s: s.update(config=settings.model_dump(mode="json")))  # as resumed
        executor = resolve_executor(self.registry, settings)
        plan = StudyPlan(self.ws, run.path, settings, local=exp)
        console.print(
            f"[bold]experiment:[/] {len(plan.jobs)} jobs ({executor.describe()})",
            soft_wrap=True,
            highlight=False,
        )
        # the study's own stream: its options, then each arm's test results; every GAN and
        # classifier run of the study logs its own rows to the same loggers
        with self.trackers(run, settings, dist).open(run.path, run.name) as trackers:
            with interrupts_once():  # SIGTERM to the coordinator stops the study as Ctrl-C does
                executor.run(plan)
            exp.reload()
            trackers.log_scalars(1, arm_results(exp.state["results"]))
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
            self.state = read_json(self.state_path)
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
        """Write the whole state (single process only; jobs use :meth:`commit`)."""
        write_json_atomic(self.state_path, self.state)

    def reload(self) -> dict[str, Any]:
        """The state as the file holds it now (other processes' jobs write to it)."""
        self.state = read_json(self.state_path) or self.state
        self.state["config"] = self.config.model_dump(mode="json")
        return self.state

    def commit(self, mutate: Callable[[dict[str, Any]], None]) -> None:
        """Change the state file under its lock (jobs of other processes change it too)."""
        self.state = update_json(self.state_path, mutate)

    # ------------------------------------------------------------------ JobRecorder

    def job_record(self, job_id: str) -> dict[str, Any]:
        return dict(self.reload().get("jobs", {}).get(job_id, {}))

    def update_job_record(self, job_id: str, fields: dict[str, Any]) -> None:
        self.commit(lambda s: s.setdefault("jobs", {}).setdefault(job_id, {}).update(fields))

    @property
    def name(self) -> str:
        return self.out_dir.name

    # ------------------------------------------------------------------ stages

    def n_generators(self) -> int:
        """Generators of the GAN arms: one reused run, or ``--gan-seeds`` trained in the study."""
        return 1 if gan_is_run(self.ws, str(self.config.gan)) else int(self.config.gan_seeds or 1)

    def generators(self, arm: str) -> list[int | None]:
        """The generator index of each cell of an arm: 0..K-1 for GAN arms, [None] for the others."""
        return list(range(self.n_generators())) if "gan" in arm else [None]

    def source(self) -> PreparedDataset:
        return self.classifier_job.open(str(self.config.data))

    # ------------------------------------------------------------------ jobs

    def job_done(self, job_id: str) -> bool:
        """Whether a job's stage is recorded as finished (the stages' own state, not the executor's)."""
        state = self.reload()
        kind, _, rest = job_id.partition("-")
        if kind == "gan":
            finished = state.get("gan_finished") or []
            k = int(rest) if rest.isdigit() else len(finished)
            return k < len(finished) and bool(finished[k])
        if kind == "data":
            name = state.get("datasets", {}).get(rest)
            return bool(name) and self.ws.dataset_dir(name).is_dir()
        if kind == "clf":
            tag, _, seed = rest.rpartition("-")
            arm, g = parse_tag(tag)
            if not seed.isdigit():
                return False
            entry = state.get("runs", {}).get(run_key(arm, g, int(seed)))
            return bool(entry) and entry.get("status") == "finished"
        if job_id == "analysis":
            return state.get("status") == "finished" and "results" in state
        return False  # not a job of any study

    def check_ready(self, job_id: str) -> None:
        """Refuse a job the study does not have, or one whose dependencies are not done."""
        jobs = study_jobs(self.config, self.ws)
        job = next((j for j in jobs if j.id == job_id), None)
        if job is None:
            known = ", ".join(j.id for j in jobs)
            raise OptionsError(f"{self.out_dir}: the study has no job {job_id!r} (its jobs: {known})")
        waiting = [d for d in job.deps if not self.job_done(d)]
        if waiting:
            raise OptionsError(
                f"job {job_id} needs {', '.join(waiting)} done first; run the whole study with "
                f"`cxraug experiment --resume --out {self.out_dir}`"
            )

    def run_stage(self, job_id: str) -> None:
        """Do one job of the study (see :func:`study_jobs`) in this process, once its deps are done."""
        self.check_ready(job_id)
        kind, _, rest = job_id.partition("-")
        source = self.source()
        if kind == "gan":
            self.gan_stage(source, int(rest))
        elif kind == "data":
            arm, g = parse_tag(rest)
            self.arm_dataset(arm, source, g)
        elif kind == "clf":
            tag, _, seed = rest.rpartition("-")
            arm, g = parse_tag(tag)
            self.classifier_stage(arm, int(seed), self.arm_dataset(arm, source, g), g)
        elif job_id == "analysis":
            results = self.analyse(source)
            self.commit(lambda s: s.update(results=results, status="finished", finished=now_iso()))
            from cxraug.experiment.report import write_experiment_report

            write_experiment_report(self.state, self.out_dir)
        else:
            raise KeyError(job_id)

    def gan_stage(self, source: PreparedDataset, k: int = 0) -> Path:
        """Train (or resume) generator ``k`` of the GAN arms with its own seed; or check a reused run."""
        cfg = self.config
        gan = str(cfg.gan)
        if gan_is_run(self.ws, gan):
            run = GanRun.resolve(self.ws, gan)
            problem = provenance_problem(run, source)
            if problem and not cfg.allow_gan_overlap:
                raise DataError(
                    f"--gan {gan}: {problem}. Its synthetic images could carry the study's held-out "
                    "X-rays into training; train the GAN in the study (--gan ARCH) or on the study's "
                    "own training split, or pass --allow-gan-overlap to go on (the report will say so)"
                )
            self.commit(
                lambda s: s.update(
                    gan_runs=[str(run.path)],
                    gan_run=str(run.path),
                    gan_finished=[True],
                    gan_reused=True,
                    provenance_override=f"{problem} (--allow-gan-overlap)" if problem else None,
                )
            )
            return run.path
        k_total = int(cfg.gan_seeds or 1)

        def padded(values: list[Any] | None, fill: Any) -> list[Any]:
            return (list(values or []) + [fill] * k_total)[:k_total]

        job = self.gan_job
        path = padded(self.reload().get("gan_runs"), None)[k]
        if path is None:
            settings = job.resolve(gan_stage_settings(cfg, source, k))
            created = job.create(settings)
            created.mark(RunStatus.RUNNING, experiment=str(self.out_dir))
            path = str(created.path)

            def add_run(s: dict[str, Any]) -> None:
                s["gan_runs"] = padded(s.get("gan_runs"), None)
                s["gan_runs"][k] = path
                s["gan_run"] = s["gan_runs"][0]

            self.commit(add_run)
        run = GanRun(path)
        console.print(
            f"[bold]experiment: training {gan} generator {k + 1} of {k_total}[/] ({run.path})",
            soft_wrap=True,
        )
        run_job(job, run.settings, run)

        def finish(s: dict[str, Any]) -> None:
            s["gan_finished"] = padded(s.get("gan_finished"), False)
            s["gan_finished"][k] = True

        self.commit(finish)
        return run.path

    def arm_dataset(self, arm: str, source: PreparedDataset, g: int | None = None) -> PreparedDataset:
        cfg = self.config
        if arm == "base":
            return source
        tag = cell_tag(arm, g)
        datasets = self.reload().get("datasets", {})
        name = datasets.get(tag) or f"{self.name}-{tag}"
        if tag in datasets and self.ws.dataset_dir(name).is_dir():
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
        self.commit(lambda s: s.setdefault("datasets", {}).update({tag: name}))
        return dataset

    def classifier_stage(self, arm: str, seed: int, dataset: PreparedDataset, g: int | None = None) -> None:
        cfg = self.config
        key = run_key(arm, g, seed)
        entry = self.reload().get("runs", {}).get(key)
        if entry and entry.get("status") == "finished":
            return
        job = self.classifier_job
        settings = job.resolve(classifier_stage_settings(cfg, dataset, seed))
        if entry is None:
            created = job.create(settings)
            created.mark(RunStatus.RUNNING, experiment=str(self.out_dir))
            entry = {"run": str(created.path), "status": "running"}
            new = entry
            self.commit(lambda s: s.setdefault("runs", {}).update({key: new}))
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
        fields = {"status": "finished", "best": best.model_dump() if best is not None else None}
        self.commit(lambda s: s["runs"][key].update(fields))

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
        self.reload()
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
        self.commit(lambda s: s.update(gan_quality=result))
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


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def resolve_executor(registry: Registry, settings: ExperimentSettings) -> Executor[Any]:
    """The chosen executor with its validated options; a missing package or bad key is one line."""
    from pydantic import ValidationError

    cls = registry.executor(settings.executor)
    options = dict(settings.executor_options)
    fields = cls.Options.model_fields
    if settings.jobs is not None:
        key = "jobs" if "jobs" in fields else "max_parallel" if "max_parallel" in fields else None
        if key is None:
            raise OptionsError(
                f"--jobs: executor {cls.name!r} has no jobs or max_parallel option; leave it out"
            )
        options[key] = settings.jobs
    try:
        opts = cls.Options(**options)
    except ValidationError as exc:
        valid = ", ".join(sorted(fields))
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "?"
        raise OptionsError(
            f"executor {cls.name!r} option {key}: {first['msg']} (from --opt executor.{key} or the "
            f"[executor.{cls.name}] table of --config; {cls.name} takes: {valid})"
        ) from None
    cls.check_available(opts)
    return cls(opts)


class StudyPlan:
    """The study as an executor sees it (cxraug.interfaces.ExecPlan); state in experiment.json."""

    def __init__(
        self, ws: Workspace, folder: Path, settings: ExperimentSettings, *, local: Experiment | None = None
    ) -> None:
        self.ws, self.folder, self.settings = ws, Path(folder).resolve(), settings
        self.jobs: tuple[ExecJob, ...] = tuple(study_jobs(settings, ws))
        self._local = local

    def _exp(self) -> Experiment:
        if self._local is None:
            raise RuntimeError("StudyPlan without its Experiment")
        return self._local

    def done(self, job_id: str) -> bool:
        return self._exp().job_done(job_id)

    def command(self, job_id: str, executor: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cxraug.experiment.worker",
            str(self.folder),
            job_id,
            executor,
            "--workspace",
            str(self.ws.root.resolve()),
        ]

    def call(self, job_id: str, executor: str) -> StudyJobCall:
        return StudyJobCall(str(self.folder), job_id, executor, str(self.ws.root.resolve()), self._local)

    def log_path(self, job_id: str) -> Path:
        return jobs_dir(self.folder) / f"{job_id}.log"

    def failure(self, job_id: str) -> str | None:
        error = self._exp().job_record(job_id).get("error")
        return str(error) if error else None


@dataclass
class StudyJobCall:
    """Runs one job of a study in the calling process; returns its exit code (picklable)."""

    folder: str
    job_id: str
    executor: str
    workspace: str
    #: The coordinator's own Experiment, reused when the job runs in its process (not pickled).
    local: Experiment | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "local": None}

    def __call__(self) -> int:
        exp = self.local or open_study(Path(self.folder), Path(self.workspace))
        return run_job_locked(
            exp.out_dir,
            self.job_id,
            self.executor,
            done=lambda: exp.job_done(self.job_id),
            work=lambda: exp.run_stage(self.job_id),
            recorder=exp,
        )


def open_study(folder: Path, workspace: Path | None) -> Experiment:
    """A study folder's Experiment, in a process of its own (a worker); workspace None: the default."""
    from cxraug.plugins import build_registry, get_plugin_manager

    if not ExperimentRun.is_run(folder):
        raise OptionsError(f"{folder}: not an experiment folder (no options.json of `cxraug experiment`)")
    if workspace is not None and not Path(workspace).is_dir():
        raise OptionsError(f"--workspace {workspace}: no such folder; give the study's workspace")
    ws = Workspace.from_option(workspace)
    run = ExperimentRun(folder)
    recorded = run.record.dataset
    here = ws.dataset_dir(str(run.settings.data))
    if recorded is not None and Path(recorded.path).resolve() != here.resolve():
        raise OptionsError(
            f"{folder}: this study's data is {recorded.path}, not in workspace {ws.root}; pass "
            f"--workspace {Path(recorded.path).parent.parent}"
        )
    return Experiment(ws, build_registry(get_plugin_manager()), folder, run.settings)
