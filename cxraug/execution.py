"""The one scheduling loop every executor shares: start ready jobs, watch them, stop on a failure.

An executor that can start one job, poll it and cancel it hands a :class:`Launcher` to
:func:`run_graph`; the dependency order, the "running elsewhere" wait (JOB_BUSY_EXIT), the
stop-at-first-failure policy and the progress lines are then the same whatever runs the jobs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from cxraug.errors import CxrError, TrainingInterruptedError
from cxraug.fileio import atomic_write
from cxraug.interfaces import JOB_BUSY_EXIT, JOB_INTERRUPTED_EXIT, ExecJob, ExecPlan
from cxraug.runlock import RunInUseError, RunLock
from cxraug.ui import console

log = logging.getLogger(__name__)


class JobFailedError(CxrError):
    """A study job failed; the message names it, its error and its log."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class Launcher(Protocol):
    """How one executor starts, watches and stops a single job."""

    def start(self, job: ExecJob) -> Any:
        """Start the job; returns a handle for ``poll`` and ``cancel``."""
        ...

    def poll(self, handle: Any) -> int | None:
        """The job's exit code once it ended, else None."""
        ...

    def cancel(self, handle: Any) -> None:
        """Ask a running job to stop (it continues from its checkpoint when run again)."""
        ...


@dataclass
class _Running:
    job: ExecJob
    handle: Any
    started: float = field(default_factory=time.monotonic)


def check_graph(plan: ExecPlan) -> None:
    """Every dependency names a job listed before it (so the graph has no cycle)."""
    seen: set[str] = set()
    for job in plan.jobs:
        unknown = [d for d in job.deps if d not in seen]
        if unknown:
            raise CxrError(f"job {job.id} depends on {unknown[0]!r}, which is not an earlier job of the plan")
        if job.id in seen:
            raise CxrError(f"job id {job.id!r} appears twice in the plan")
        seen.add(job.id)


def run_graph(
    plan: ExecPlan,
    launcher: Launcher,
    *,
    executor: str,
    max_parallel: int | None = None,
    poll_s: float = 0.2,
) -> None:
    """Run every job of ``plan`` not done yet, at most ``max_parallel`` at once, each after its deps.

    A job that exits JOB_BUSY_EXIT runs under another executor: it is waited for (re-reading
    ``plan.done``), never started twice. The first failure cancels the running jobs and raises
    :class:`JobFailedError`; JOB_INTERRUPTED_EXIT (or Ctrl-C here) cancels them and raises
    KeyboardInterrupt. Both leave the state so that running the plan again continues.
    """
    check_graph(plan)
    done = {job.id for job in plan.jobs if plan.done(job.id)}
    todo = [job for job in plan.jobs if job.id not in done]
    total = len(todo)
    if not todo:
        return
    say(f"{executor}: {total} of {len(plan.jobs)} jobs to run")
    running: dict[str, _Running] = {}
    # busy: another process holds the job's lock; look again at these times (the holder may die
    # without finishing it, and then the job is ours to run)
    elsewhere: dict[str, tuple[ExecJob, float]] = {}
    told: set[str] = set()
    busy_backoff: dict[str, float] = {}
    finished = 0
    try:
        while todo or running or elsewhere:
            for job_id, (job, retry_at) in list(elsewhere.items()):
                if plan.done(job_id):
                    del elsewhere[job_id]
                    done.add(job_id)
                    finished += 1
                    say(f"{executor}: {job_id} finished elsewhere ({finished}/{total})")
                elif time.monotonic() >= retry_at:
                    del elsewhere[job_id]
                    todo.insert(0, job)
            for job in list(todo):
                if max_parallel is not None and len(running) >= max_parallel:
                    break
                if all(d in done for d in job.deps):
                    todo.remove(job)
                    if job.id not in told:
                        say(f"{executor}: starting {job.id} ({job.label or job.kind})")
                    started = time.monotonic()
                    running[job.id] = _Running(job, launcher.start(job), started)
            progressed = False
            for job_id, entry in list(running.items()):
                code = launcher.poll(entry.handle)
                if code is None:
                    continue
                progressed = True
                del running[job_id]
                seconds = time.monotonic() - entry.started
                if code == 0 and plan.done(job_id):
                    done.add(job_id)
                    finished += 1
                    say(f"{executor}: {job_id} done in {seconds:.1f} s ({finished}/{total})")
                elif code == JOB_BUSY_EXIT:
                    if job_id not in told:
                        say(f"{executor}: {job_id} is running under another process; waiting for it")
                        told.add(job_id)
                    backoff = min(BUSY_RETRY_MAX_S, 2 * busy_backoff.get(job_id, BUSY_RETRY_S / 2))
                    busy_backoff[job_id] = backoff
                    elsewhere[job_id] = (entry.job, time.monotonic() + backoff)
                elif code == JOB_INTERRUPTED_EXIT:
                    raise KeyboardInterrupt
                else:
                    raise _failed(plan, entry.job, code)
            if not progressed and (running or elsewhere):
                time.sleep(poll_s)
            elif not running and not elsewhere and todo and not progressed:
                blocked = todo[0]
                raise CxrError(f"job {blocked.id} waits for {', '.join(blocked.deps)}, which cannot run")
    except BaseException:
        for entry in running.values():
            try:
                launcher.cancel(entry.handle)
            except Exception as exc:  # stopping the others must not hide why we stop
                log.warning("could not cancel job %s: %s", entry.job.id, exc)
        raise


#: A job held elsewhere is tried again after this long, then twice as long each time, up to the max.
BUSY_RETRY_S = 2.0
BUSY_RETRY_MAX_S = 60.0


def say(line: str) -> None:
    console.print(line, soft_wrap=True, highlight=False, markup=False)


def _failed(plan: ExecPlan, job: ExecJob, code: int) -> JobFailedError:
    reason = plan.failure(job.id)
    how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
    if code == 0:
        how = "it ended without recording its result"
    detail = f": {reason}" if reason else ""
    log_path = plan.log_path(job.id)
    logged = log_path.is_file() and log_path.stat().st_size > 0
    where = f"its log: {log_path}" if logged else "its output is above"
    return JobFailedError(
        f"study job {job.id} ({job.label or job.kind}) failed ({how}){detail}; "
        f"{where}. Running the study again (--resume) continues where it stopped",
        job.id,
    )


# ----------------------------------------------------------------- the job's side (any process)

#: Subfolder of a study that holds the job locks, the job logs and the executors' own files.
JOBS_DIR = "jobs"


def jobs_dir(folder: Path) -> Path:
    return Path(folder) / JOBS_DIR


@contextmanager
def locked_file(path: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold ``PATH.lock`` (an OS lock, safe on a shared filesystem) for a read-modify-write of PATH."""
    lock = RunLock(path.parent, lock_file=path.with_name(path.name + ".lock"))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lock.acquire()
            break
        except RunInUseError:
            if time.monotonic() > deadline:
                raise CxrError(
                    f"{path}: another process has held its lock for {timeout_s:.0f} s; "
                    "check for a hung cxraug process"
                ) from None
            time.sleep(0.02)
    try:
        yield
    finally:
        lock.release()


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def update_json(path: Path, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Re-read PATH under its lock, apply ``mutate`` and write it back atomically; returns the new data."""
    with locked_file(path):
        data = read_json(path)
        mutate(data)
        text = json.dumps(data, indent=2, sort_keys=False).encode("utf-8")
        atomic_write(path, lambda f: f.write(text))
    return data


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def placement() -> dict[str, Any]:
    """Where this process runs: host and pid, and the Slurm job when there is one."""
    where: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        where["slurm_job_id"] = env["SLURM_JOB_ID"]
        if env.get("SLURM_ARRAY_JOB_ID"):
            where["slurm_job_id"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
        for key, name in (("SLURMD_NODENAME", "node"), ("SLURM_JOB_PARTITION", "partition")):
            if env.get(key):
                where[name] = env[key]
        if env.get("SLURM_RESTART_COUNT"):
            where["slurm_restarts"] = int(env["SLURM_RESTART_COUNT"])
    return where


class JobRecorder(Protocol):
    """Where a job keeps its record (the study's state file)."""

    def job_record(self, job_id: str) -> dict[str, Any]:
        """The job's current record (empty when it never ran)."""
        ...

    def update_job_record(self, job_id: str, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into the job's record, under the state file's lock."""
        ...


@contextmanager
def interrupts_once() -> Iterator[None]:
    """SIGTERM (an executor cancelling, Slurm preempting) stops the job as Ctrl-C does; the first
    of either raises KeyboardInterrupt, later ones are ignored until the job has recorded how it
    ended (an executor's SIGTERM right after the terminal's SIGINT must not cut that short)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    except (ValueError, OSError):
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run_job_locked(
    folder: Path,
    job_id: str,
    executor: str,
    *,
    done: Callable[[], bool],
    work: Callable[[], None],
    recorder: JobRecorder,
) -> int:
    """Run one job under its own lock and record where and how long; returns the exit code.

    0: done now or before (a finished job is never rerun); JOB_BUSY_EXIT: another process holds
    the job; JOB_INTERRUPTED_EXIT: stopped by Ctrl-C or SIGTERM; 2: a user error; 1: a bug (the
    traceback goes to stderr, the job's log). Every failure is recorded for the executor to show.
    """
    lock = RunLock(Path(folder) / f"job {job_id}", lock_file=jobs_dir(folder) / f"{job_id}.lock")
    try:
        lock.acquire()
    except RunInUseError as exc:
        log.info("job %s: %s", job_id, exc)
        return JOB_BUSY_EXIT
    try:
        if done():
            return 0
        attempts = int(recorder.job_record(job_id).get("attempts", 0)) + 1
        started = time.monotonic()
        recorder.update_job_record(
            job_id,
            {
                "status": "running",
                "executor": executor,
                **placement(),
                "started": now_utc(),
                "attempts": attempts,
                "error": None,
            },
        )

        def ended(status: str, error: str | None = None) -> None:
            fields: dict[str, Any] = {"status": status, "ended": now_utc(), "error": error}
            fields["seconds"] = round(time.monotonic() - started, 3)
            recorder.update_job_record(job_id, fields)

        with interrupts_once():
            try:
                work()
            except (KeyboardInterrupt, TrainingInterruptedError):
                ended("interrupted")
                return JOB_INTERRUPTED_EXIT
            except CxrError as exc:
                ended("failed", str(exc))
                return 2
            except Exception as exc:
                traceback.print_exc()
                ended("failed", f"{type(exc).__name__}: {exc}")
                return 1
            ended("finished")
        return 0
    finally:
        lock.release()
