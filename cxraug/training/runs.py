"""Run folders as objects: a folder under the workspace with its resolved options and status.

Every kind of run (GAN, classifier, evaluation, experiment) is a :class:`Run` subclass that owns
one folder: ``options.json`` (a pydantic :class:`RunRecord`: the resolved settings, the data it
was trained on, its status), its logs and checkpoints. Nothing else reads ``options.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError
from cxraug.fileio import atomic_write, ensure_writable
from cxraug.runlock import RunLock
from cxraug.settings import Settings, describe_file_error
from cxraug.workspace import Workspace

log = logging.getLogger(__name__)

OPTIONS_FILE = "options.json"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class RunStatus(str, Enum):
    """Where a run stands; ``--resume auto`` continues ``running`` and ``interrupted`` ones."""

    RUNNING = "running"  # started, or killed before it could say otherwise
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C after a snapshot
    FAILED = "failed"  # stopped by an error; continued only when named explicitly
    FINISHED = "finished"


RESUMABLE = frozenset({RunStatus.RUNNING, RunStatus.INTERRUPTED})


class DataRef(BaseModel):
    """The prepared data a run used, with a fingerprint of the rows it used."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    size: int
    synthetic: bool = False
    fingerprint: str = ""
    rows: int = 0

    @classmethod
    def of(cls, dataset: PreparedDataset, splits: list[str], labels: list[str]) -> DataRef:
        """The rows of ``splits`` x ``labels`` of a prepared dataset."""
        fingerprint, rows = dataset.fingerprint(splits, labels)
        return cls(
            name=dataset.name,
            path=str(dataset.path),
            size=dataset.size,
            synthetic=dataset.synthetic,
            fingerprint=fingerprint,
            rows=rows,
        )


SettingsT = TypeVar("SettingsT", bound=Settings)


class RunRecord(BaseModel, Generic[SettingsT]):
    """``options.json``: what a run was asked to do and where it stands.

    Unknown keys are refused like unknown settings: a hand-edited or foreign record is named, not
    half-understood.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    arch: str = ""
    started: str
    status: RunStatus = RunStatus.RUNNING
    cxraug_version: str = ""
    command: list[str] = []
    config: SettingsT
    dataset: DataRef | None = None
    finished: str | None = None
    failed: str | None = None
    error: str | None = None


RecordT = TypeVar("RecordT", bound=RunRecord[Any])
RunT = TypeVar("RunT", bound="Run[Any]")


class Run(Generic[RecordT]):
    """One run folder. Subclasses set ``kind``, ``Record`` and where their folders live."""

    kind: ClassVar[str]
    Record: ClassVar[type[RunRecord[Any]]]
    #: Command that makes runs of this kind (for "no runs yet" messages).
    make_hint: ClassVar[str] = ""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._record: RecordT | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ where runs live

    @classmethod
    def home(cls, workspace: Workspace) -> Path:
        return workspace.runs_dir / cls.kind

    @classmethod
    def create(cls: type[RunT], workspace: Workspace, label: str, record: RunRecord[Any]) -> RunT:
        """A new, uniquely named folder ``home/TIME-label`` holding ``record``."""
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls.create_in(cls.home(workspace), f"{stamp}-{label}", record)

    @classmethod
    def create_in(cls: type[RunT], base: Path, stem: str, record: RunRecord[Any]) -> RunT:
        """A new folder ``base/stem`` (``stem-1``, ... when taken, e.g. by a run started the same
        second by another process) holding ``record``."""
        ensure_writable(base, f"{cls.kind} runs folder")
        for k in range(1000):
            path = base / (stem + (f"-{k}" if k else ""))
            try:
                path.mkdir()  # atomic: of two processes racing for a name, one gets it
            except FileExistsError:
                continue
            try:
                return cls.create_at(path, record)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)  # an empty folder, e.g. when the disk is full
                raise
        raise RuntimeError(f"could not create a run folder under {base}")  # pragma: no cover

    @classmethod
    def create_at(cls: type[RunT], path: Path, record: RunRecord[Any]) -> RunT:
        """A run in ``path``: a new or empty folder, or one holding a run of this kind (replaced)."""
        if path.exists() and not path.is_dir():
            raise DataError(f"{path}: a file is in the way of the {cls.kind} run folder; choose another path")
        if cls.is_run(path):
            try:
                kind = json.loads((path / OPTIONS_FILE).read_text(encoding="utf-8")).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = "unreadable"
            if kind != cls.kind:
                raise DataError(f"{path} holds a {kind} run; choose another folder for this {cls.kind} run")
            with RunLock(path):  # replaced only when no process is working on it now
                pass
        elif path.is_dir() and any(path.iterdir()):
            raise DataError(f"{path} is not empty and holds no cxraug run; choose a new or empty folder")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        run._record = record
        run.save()
        return run

    @classmethod
    def is_run(cls, path: Path) -> bool:
        return (path / OPTIONS_FILE).is_file()

    @classmethod
    def all(cls: type[RunT], workspace: Workspace) -> list[RunT]:
        """Runs of this kind, oldest first by their recorded start; unreadable folders skipped."""
        base = cls.home(workspace)
        found: list[tuple[str, RunT]] = []
        for opt in sorted(base.glob(f"*/{OPTIONS_FILE}")) if base.is_dir() else []:
            try:
                raw = json.loads(opt.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(raw, dict) and raw.get("kind") == cls.kind:
                found.append((str(raw.get("started", "")), cls(opt.parent)))
        return [r for _, r in sorted(found, key=lambda t: t[0])]

    @classmethod
    def _damaged(cls, workspace: Workspace) -> list[tuple[Path, str]]:
        """``options.json`` files under this kind's home that are not a JSON record, by folder name."""
        base = cls.home(workspace)
        out = []
        for opt in sorted(base.glob(f"*/{OPTIONS_FILE}")) if base.is_dir() else []:
            try:
                raw = json.loads(opt.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                out.append((opt, f"not valid JSON ({str(exc).splitlines()[0] if str(exc) else exc!r})"))
                continue
            if not isinstance(raw, dict) or "kind" not in raw:
                out.append((opt, "not a run record (no 'kind')"))
        return out

    @classmethod
    def resolve(cls: type[RunT], workspace: Workspace, ref: str | Path | None) -> RunT:
        """A run by path, by name under its home, or the latest one."""
        if ref is None:
            runs = cls.all(workspace)
            damaged = cls._damaged(workspace)
            # a newer folder whose record cannot be read would otherwise be passed over silently
            # for an older run (or reported as "no runs")
            if damaged and (not runs or damaged[-1][0].parent.name > runs[-1].path.name):
                path, why = damaged[-1]
                raise DataError(
                    f"{path}: {why}, so the latest {cls.kind} run cannot be used; name a run "
                    "explicitly, or move that folder out of the way"
                )
            if not runs:
                raise DataError(f"no {cls.kind} runs in {cls.home(workspace)}; run `{cls.make_hint}` first")
            # The default is the newest run that finished: a run still training, killed half-way or
            # failed is used only when named, and then it is said to be unfinished.
            finished = [r for r in runs if r.status is RunStatus.FINISHED]
            if finished:
                if finished[-1] is not runs[-1]:
                    log.warning(
                        "using %s, the newest finished %s run (newer: %s, %s; name it to use it)",
                        finished[-1].path.name,
                        cls.kind,
                        runs[-1].path.name,
                        runs[-1].status.value,
                    )
                return finished[-1]
            log.warning("%s run %s is %s, not finished", cls.kind, runs[-1].path.name, runs[-1].status.value)
            return runs[-1]
        for candidate in (Path(ref), cls.home(workspace) / str(ref)):
            if cls.is_run(candidate):
                return cls(candidate)
        if Path(ref).is_dir():
            raise DataError(f"{ref}: a folder, but not a cxraug run (it has no {OPTIONS_FILE})")
        known = ", ".join(p.name for p in cls.all(workspace)[-5:]) or "none"
        raise DataError(
            f"{cls.kind} run {str(ref)!r} not found (as a path or under {cls.home(workspace)}); "
            f"recent: {known}"
        )

    @classmethod
    def latest_resumable(cls: type[RunT], workspace: Workspace, arch: str | None = None) -> RunT | None:
        """The newest run that ``--resume auto`` continues: running or interrupted, never failed."""
        runs = []
        for run in cls.all(workspace):
            try:
                record = run.record
            except DataError:
                continue  # a damaged record is not continued silently; naming it resumes it
            if record.status in RESUMABLE and (arch is None or record.arch == arch):
                runs.append(run)
        return runs[-1] if runs else None

    # ------------------------------------------------------------------ the record

    @property
    def options_path(self) -> Path:
        return self.path / OPTIONS_FILE

    @property
    def record(self) -> RecordT:
        if self._record is None:
            self._record = self._load()
        return self._record

    def _load(self) -> RecordT:
        path = self.options_path
        if not path.is_file():
            raise DataError(f"{self.path}: not a cxraug run (no {OPTIONS_FILE})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); the run's record is damaged") from None
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != self.kind:
            raise DataError(f"{self.path}: a {kind or 'unknown'} run, not a {self.kind} run")
        try:
            return self.Record.model_validate(data)  # type: ignore[return-value]
        except ValidationError as exc:
            raise DataError(
                f"{path}: {describe_file_error(exc)}; the run was made by another cxraug version or "
                "edited by hand"
            ) from None

    def save(self) -> None:
        write_json_atomic(self.options_path, self.record.model_dump(mode="json"))

    def reload(self) -> RecordT:
        self._record = None
        return self.record

    @property
    def settings(self) -> Any:
        return self.record.config

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> RunStatus:
        return self.record.status

    def mark(self, status: RunStatus, **fields: Any) -> None:
        """Record a new status (and any fields the kind adds, e.g. the best epoch)."""
        record = self.reload()
        record.status = status
        if status is RunStatus.FINISHED:
            record.finished, record.error = now_iso(), None
        elif status is RunStatus.FAILED:
            record.failed = now_iso()
        for key, value in fields.items():
            setattr(record, key, value)
        self.save()

    def lock(self) -> RunLock:
        """One process per run: an OS lock that dies with its process."""
        return RunLock(self.path)

    # ------------------------------------------------------------------ what the lifecycle asks

    def has_progress(self) -> bool:
        """True once the run holds something worth keeping after a failure (a checkpoint)."""
        return any(self.path.rglob("ckpt-*.pt"))


class ReportRun(Run[RecordT]):
    """A run kept under ``reports/`` (evaluations, experiments) rather than ``runs/KIND/``."""

    #: The file whose presence means the run produced something worth keeping after a failure.
    product: ClassVar[str] = ""

    @classmethod
    def home(cls, workspace: Workspace) -> Path:
        return workspace.reports_dir

    def has_progress(self) -> bool:
        return bool(self.product) and (self.path / self.product).is_file()


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint file in ``folder``."""
    if not folder.is_dir():
        return None
    found = sorted(folder.glob("ckpt-*.pt"))
    return found[-1] if found else None


def base_record(
    kind: str, arch: str, config: Settings, dataset: DataRef | None, **extra: Any
) -> dict[str, Any]:
    """The fields every new record starts with."""
    from cxraug import __version__

    return {
        "kind": kind,
        "arch": arch,
        "started": now_iso(),
        "status": RunStatus.RUNNING,
        "cxraug_version": __version__,
        "command": ["cxraug", *sys.argv[1:]],
        "config": config,
        "dataset": dataset,
        **extra,
    }
