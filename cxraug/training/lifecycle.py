"""One lifecycle for every kind of run: settings -> dry-run -> (torchrun) -> start or resume -> train.

Commands and the experiment hand a :class:`Job` (what one kind of run does) and validated settings
to :func:`execute`. Everything else happens here, the same way for every kind: which run
``--resume`` continues, the resume policy (changed settings and changed data are refused, naming
what changed), relaunching under torchrun, the one-process-per-run lock, clean-up of a run that
failed before it held anything, and the recorded status (running, interrupted, failed, finished).
"""

from __future__ import annotations

import logging
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import ValidationError

from cxraug.data.prepared import PreparedDataset
from cxraug.data.resolve import open_dataset
from cxraug.devices import pick_device
from cxraug.errors import DataError, OptionsError, TrainingInterruptedError
from cxraug.fileio import remove_orphan_temps
from cxraug.interfaces import DistContext
from cxraug.registry import Registry
from cxraug.settings import Built, Settings, changed_settings, describe_error
from cxraug.training import distributed
from cxraug.training.runs import DataRef, Run, RunRecord, RunStatus
from cxraug.training.trackers import TrackedSettings, TrackerPlan, resolve_loggers
from cxraug.ui import console
from cxraug.workspace import Workspace

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Settings)
R = TypeVar("R", bound=Run[Any])


class Job(ABC, Generic[S, R]):
    """What the lifecycle needs from one kind of run."""

    run_type: ClassVar[type[Run[Any]]]
    #: Settings that, given again with a new value, continue a finished run (a longer budget).
    extends: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, workspace: Workspace, registry: Registry) -> None:
        self.ws, self.registry = workspace, registry
        self._datasets: dict[str, PreparedDataset] = {}

    def open(self, name: str | None, *, real: bool = False) -> PreparedDataset:
        """A prepared dataset, opened (manifest read, invariants checked) once per job."""
        if name is not None and name in self._datasets:
            return self._datasets[name]
        dataset = open_dataset(self.ws, self.registry, name, real=real)
        self._datasets[dataset.name] = dataset
        return dataset

    @abstractmethod
    def resolve(self, settings: S) -> S:
        """Settings of a new run with every derived value filled in (dataset, labels, options)."""

    @abstractmethod
    def record(self, settings: S) -> tuple[str, RunRecord[Any]]:
        """The folder label and the record of a new run."""

    @abstractmethod
    def data(self, settings: S) -> DataRef | None:
        """The data the run would use now, with its fingerprint (None: it uses no dataset)."""

    @abstractmethod
    def train(self, run: R, settings: S, dist: DistContext, device: torch.device) -> dict[str, Any]:
        """Do the work; returns fields recorded when the run finishes."""

    def check(self, settings: S) -> None:
        """What must hold here before a run starts or resumes: its ``--logger`` plugins can work."""
        if isinstance(settings, TrackedSettings) and settings.loggers:
            resolve_loggers(self.registry, list(settings.loggers), dict(settings.logger_options))

    def resolve_loggers(self, settings: TrackedSettings) -> dict[str, dict[str, Any]]:
        """The chosen loggers' options, validated, with their defaults (recorded with the run)."""
        return resolve_loggers(self.registry, list(settings.loggers), dict(settings.logger_options))

    def trackers(self, run: R, settings: S, dist: DistContext) -> TrackerPlan:
        """The loggers a run's rows go to (none in processes other than the main one)."""
        if not (dist.is_main and isinstance(settings, TrackedSettings) and settings.loggers):
            return TrackerPlan()
        record = run.record.model_dump(mode="json")
        return TrackerPlan.for_run(self.registry, settings, record, self.ws.root)

    def plan(self, settings: S, run: R | None) -> dict[str, Any]:
        """What ``--dry-run`` prints."""
        return {"settings": settings.model_dump(mode="json"), "run": str(run.path) if run else None}

    def arch(self, settings: S) -> str | None:
        return getattr(settings, "arch", None)

    def adjust_resume(self, recorded: S, wanted: dict[str, Any]) -> dict[str, Any]:
        """Resumable values as they apply to the recorded settings (e.g. one budget replaces another)."""
        return wanted

    def plugin(self, kind: str, name: str | None, example: str) -> Any:
        """The plugin class a run trains; no name is an error that lists the installed ones."""
        if name is None:
            installed = ", ".join(self.registry.names(kind))
            raise OptionsError(f"name one, e.g. `{example}` (installed: {installed})")
        return self.registry.get(kind, name)

    def describe(self, run: R) -> list[str]:
        """Lines for the command's output once the run finished."""
        return [f"[green]done:[/] {run.path}"]

    def create(self, settings: S) -> R:
        label, record = self.record(settings)
        return self.run_type.create(self.ws, label, record)  # type: ignore[return-value]


@dataclass
class Outcome(Generic[R]):
    """What :func:`execute` did: a run (trained, or the one a dry-run would use) and notes."""

    run: R | None = None
    settings: Settings | None = None
    plan: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0
    note: str = ""
    #: False in torchrun ranks other than 0 and in the process that launched torchrun.
    report: bool = True


def execute(
    job: Job[S, R],
    built: Built[S],
    *,
    resume: str | None = None,
    dry_run: bool = False,
    argv: list[str] | None = None,
) -> Outcome[R]:
    """The whole lifecycle of one run; ``argv`` (the command's arguments) allows a torchrun relaunch."""
    run = find_resume_target(job, built, resume) if resume is not None else None
    if run is not None:
        settings = resume_settings(job, run, built)
        if run.status is RunStatus.FINISHED and not _extends(job, run, settings):
            note = _finished_note(job, run, built.settings)
            plan = {**job.plan(settings, run), "note": note} if dry_run else None
            return Outcome(run, settings, plan=plan, note="" if dry_run else note)
    else:
        settings = job.resolve(built.settings)
    job.check(settings)
    if dry_run:
        return Outcome(run, settings, plan=job.plan(settings, run))
    nproc = int(getattr(settings, "nproc", 1))
    if nproc > 1 and not distributed.in_torchrun():
        if argv is None:
            raise OptionsError("--nproc > 1 is not available here; run the command itself with --nproc")
        run = run or job.create(settings)
        args = distributed.strip_flag(distributed.strip_flag(argv, "--nproc"), "--resume")
        console.print(f"launching {nproc} processes (torchrun) for {run.path}", soft_wrap=True)
        code = distributed.launch(nproc, [*args, "--resume", str(run.path)])
        return Outcome(run, settings, exit_code=code, report=False)  # rank 0 reported
    return run_job(job, settings, run)


def run_job(job: Job[S, R], settings: S, run: R | None = None) -> Outcome[R]:
    """Start (``run`` None) or continue a run in this process (or this torchrun rank)."""
    dist_ctx, device = distributed.init_distributed(pick_device(getattr(settings, "device", "auto")))
    fresh = run is None
    lock = None
    try:
        if dist_ctx.is_main:
            run = run or job.create(settings)
            lock = run.lock()
            lock.acquire()
            remove_orphan_temps(run.path)  # temp files of writes a kill cut short
            run.mark(RunStatus.RUNNING, config=settings)
            console.print(f"run folder: {run.path}", soft_wrap=True)
        path = distributed.broadcast_str(str(run.path) if run is not None else None)
        run = run or job.run_type(Path(path or ""))  # type: ignore[assignment]
        assert run is not None
        try:
            result = job.train(run, settings, dist_ctx, device)
        except (TrainingInterruptedError, KeyboardInterrupt):
            if dist_ctx.is_main:
                run.mark(RunStatus.INTERRUPTED)
            raise
        except Exception as exc:
            if dist_ctx.is_main:
                _fail(run, fresh, exc)
            raise
        distributed.barrier()
        if dist_ctx.is_main:
            run.mark(RunStatus.FINISHED, **result)
        return Outcome(run, settings, result=result, report=dist_ctx.is_main)
    finally:
        if lock is not None:
            lock.release()
        distributed.shutdown()


def _fail(run: Run[Any], fresh: bool, exc: Exception) -> None:
    """A run that failed before it held anything is removed; otherwise it is marked failed."""
    if fresh and not run.has_progress():
        shutil.rmtree(run.path, ignore_errors=True)
        return
    try:
        run.mark(RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
    except OSError as error:  # e.g. the full disk that made the run fail; report the first error
        log.warning("could not record the failure in %s: %s", run.path, error)


def find_resume_target(job: Job[S, R], built: Built[S], resume: str) -> R | None:
    """``--resume auto``: the latest running or interrupted run (of the named arch); else a path."""
    run_type = job.run_type
    if resume != "auto":
        return run_type.resolve(job.ws, resume)  # type: ignore[return-value]
    arch = built.explicit.get("arch")
    found = run_type.latest_resumable(job.ws, arch)
    if found is None:  # the latest finished run: a larger budget trains it longer, else it says so
        finished = [r for r in run_type.all(job.ws) if arch is None or r.record.arch == arch]
        finished = [r for r in finished if r.status is RunStatus.FINISHED]
        found = finished[-1] if finished else None
    if found is None:
        console.print(
            f"[yellow]--resume auto: no {run_type.kind} run to continue here; starting a new one.[/]"
        )
    return found  # type: ignore[return-value]


def resume_settings(job: Job[S, R], run: R, built: Built[S]) -> S:
    """The recorded settings with the resumable changes applied; refuses other changes and new data."""
    recorded: S = run.settings
    model = type(recorded)
    if run.status is RunStatus.FAILED:
        console.print(
            f"[yellow]continuing {run.path}, which failed before: {run.record.error}[/]", soft_wrap=True
        )
    wanted = {k: v for k, v in built.explicit.items() if k in model.model_fields}
    changed = changed_settings(recorded, wanted, model)
    if changed:
        free = ", ".join(model.flag(k) for k in sorted(model.resumable)) or "nothing"
        raise OptionsError(
            f"--resume continues {run.path} with the settings it recorded, and these differ: "
            f"{'; '.join(changed)}. Drop them (on resume only {free} may change) or start a new run"
        )
    update = job.adjust_resume(recorded, {k: v for k, v in wanted.items() if k in model.resumable})
    if isinstance(recorded, TrackedSettings) and "loggers" in update and "logger_options" not in update:
        # --logger on resume chooses the loggers anew: the recorded options of the ones dropped go too
        # (else they read as a stray --logger-opt the user never typed)
        keep = set(update["loggers"])
        update["logger_options"] = {k: v for k, v in recorded.logger_options.items() if k in keep}
    try:
        settings = model.model_validate({**recorded.model_dump(), **update})
    except ValidationError as exc:
        raise OptionsError(describe_error(exc, model, update, {}, "config")) from None
    _check_budget(job, run, settings)
    check_data(job, run, settings)
    return settings


def check_data(job: Job[S, R], run: R, settings: S) -> None:
    """Refuse to continue a run on data other than the data it was trained on."""
    recorded = run.record.dataset
    if recorded is None or not recorded.fingerprint:
        return
    now = job.data(settings)
    if now is None or now.fingerprint == recorded.fingerprint:
        return
    raise DataError(
        f"{run.path} was trained on dataset {recorded.name!r} ({recorded.rows} images, fingerprint "
        f"{recorded.fingerprint[:12]}); {now.name!r} now holds {now.rows} images (fingerprint "
        f"{now.fingerprint[:12]}): it was re-prepared, edited, or is another dataset. Resume only on "
        "the data a run started with, or start a new run"
    )


def _extends(job: Job[S, R], run: R, settings: S) -> bool:
    """True when the settings ask a finished run for a longer budget than it recorded."""
    recorded = run.settings
    for key in job.extends:
        old, new = getattr(recorded, key), getattr(settings, key)
        if new is not None and (old is None or new > old):
            return True
    return False


def _finished_note(job: Job[S, R], run: R, settings: Settings) -> str:
    if not job.extends:
        return f"{run.path} already finished; leave out --resume (or choose another --out) to start a new one"
    budget = " or ".join(settings.flag(k) for k in sorted(job.extends))
    return (
        f"{run.path} already finished; pass a larger {budget} (a new total) to train it longer, or leave "
        "out --resume to start a new run"
    )


def _check_budget(job: Job[S, R], run: R, settings: S) -> None:
    """A budget given on resume is a new total: less than the run already trained is refused."""
    recorded = run.settings
    for key in job.extends:
        old, new = getattr(recorded, key), getattr(settings, key)
        if old is not None and new is not None and new < old:
            flag = settings.flag(key)
            raise OptionsError(
                f"{flag} {new:g}: {run.path} was already asked for {flag} {old:g}; on resume {flag} is a "
                "new total, so give a larger one (or start a new run)"
            )
