"""``--executor slurm``: each study job as its own Slurm job, submitted through submitit.

Resources are set per job kind (``gan_gpus``, ``classifier_mem_gb``, ...), from ``--opt executor.KEY=V``
or the ``[executor.slurm]`` table of ``--config``. submitit's files and the Slurm logs go to
``STUDY/jobs/slurm/``; when a job ends its Slurm stdout and stderr are appended to ``STUDY/jobs/ID.log``.
A job Slurm preempts or requeues (or that nears its time limit) is requeued and continues from its
own checkpoint. ``cluster = "local"`` runs the same jobs through submitit's local executor (no Slurm).
"""

from __future__ import annotations

import math
import pickle
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from cxraug import hookimpl
from cxraug.errors import CxrError, OptionsError
from cxraug.execution import jobs_dir, now_utc, run_graph
from cxraug.interfaces import JOB_INTERRUPTED_EXIT, JOB_KINDS, ExecJob, ExecPlan, Executor, PluginOptions
from cxraug.ui import console

if TYPE_CHECKING:
    import submitit

#: Slurm states of a job that may still run (squeue's %T names). A held requeue waits for the user.
ACTIVE_STATES = frozenset(
    {
        "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING",
        "STAGE_OUT", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD",
    }
)  # fmt: skip
#: Why a job that ended in one of these states failed, and what to change.
STATE_HINTS = {
    "OUT_OF_MEMORY": "out of memory: raise executor.{kind}_mem_gb",
    "TIMEOUT": "time limit reached: raise executor.{kind}_time_min",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "PREEMPTED": "preempted and not requeued",
    "DEADLINE": "its deadline passed",
}
#: Why a pending job may wait for ever (Slurm keeps it queued unless EnforcePartLimits says otherwise).
STUCK_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
    }
)
#: sbatch parameters the executor sets itself: logs must stay where the launcher reads them.
RESERVED_SBATCH = frozenset({"output", "error", "open-mode", "array", "wrap", "parsable"})
#: Seconds to wait for a finished job's result file (a shared filesystem may show it late).
RESULT_WAIT_S = 15.0
#: Seconds a job may be unknown to squeue and sacct, with no result, before it counts as lost.
LOST_AFTER_S = 120.0


class SlurmOptions(PluginOptions):
    #: "slurm": sbatch on this cluster; "local": submitit's local executor (a laptop, tests).
    cluster: Literal["slurm", "local"] = "slurm"
    partition: str | None = Field(None, description="sbatch --partition (default: the cluster's)")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    constraint: str | None = Field(None, description="sbatch --constraint (node features)")
    # Resources per job kind. GPUs default to 0 so the defaults run on any partition; on a GPU
    # cluster pass gan_gpus=1 and classifier_gpus=1 (data and analysis jobs need none).
    gan_gpus: int = Field(0, ge=0, le=64, description="GPUs of a generator-training job")
    gan_cpus: int = Field(4, ge=1, le=1024, description="CPUs of a generator-training job")
    gan_mem_gb: float = Field(16.0, gt=0, le=65536, description="memory (GB) of a generator-training job")
    gan_time_min: int = Field(1440, ge=1, le=525600, description="time limit (minutes) of a generator job")
    data_gpus: int = Field(0, ge=0, le=64, description="GPUs of a training-set job (synthetic images)")
    data_cpus: int = Field(2, ge=1, le=1024, description="CPUs of a training-set job")
    data_mem_gb: float = Field(8.0, gt=0, le=65536, description="memory (GB) of a training-set job")
    data_time_min: int = Field(120, ge=1, le=525600, description="time limit (minutes) of a training-set job")
    classifier_gpus: int = Field(0, ge=0, le=64, description="GPUs of a classifier job")
    classifier_cpus: int = Field(4, ge=1, le=1024, description="CPUs of a classifier job")
    classifier_mem_gb: float = Field(16.0, gt=0, le=65536, description="memory (GB) of a classifier job")
    classifier_time_min: int = Field(
        720, ge=1, le=525600, description="time limit (minutes) of a classifier job"
    )
    analysis_gpus: int = Field(0, ge=0, le=64, description="GPUs of the analysis job")
    analysis_cpus: int = Field(2, ge=1, le=1024, description="CPUs of the analysis job")
    analysis_mem_gb: float = Field(8.0, gt=0, le=65536, description="memory (GB) of the analysis job")
    analysis_time_min: int = Field(
        60, ge=1, le=525600, description="time limit (minutes) of the analysis job"
    )
    max_parallel: int | None = Field(
        None, ge=1, le=100000, description="jobs queued at once (none: no limit)"
    )
    requeue: bool = Field(
        True, description="requeue a preempted or timed-out job (it continues from its checkpoint)"
    )
    poll_s: float = Field(5.0, gt=0, le=600, description="seconds between looks at the queue")
    #: Extra sbatch parameters, e.g. {"mail-type": "END"}; true gives a bare flag (--exclusive).
    sbatch: dict[str, str | int | bool] = Field(default_factory=dict, description="extra sbatch parameters")

    @field_validator("sbatch")
    @classmethod
    def _sbatch_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            name = key.replace("_", "-")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
                raise ValueError(f"{key!r} is not an sbatch option name (e.g. mail-type)")
            if name in RESERVED_SBATCH:
                raise ValueError(f"--{name} is set by cxraug (job logs go to STUDY/jobs/slurm)")
            if value[key] is False:
                raise ValueError(
                    f"{key} = false: true gives the bare flag --{name}; to leave it out, remove the key"
                )
        return value

    def resources(self, kind: str) -> Resources:
        """The GPUs, CPUs, memory and time limit a job of this kind asks for."""
        if kind not in JOB_KINDS:
            raise CxrError(f"job kind {kind!r} is not one of {', '.join(JOB_KINDS)}")
        return Resources(
            gpus=getattr(self, f"{kind}_gpus"),
            cpus=getattr(self, f"{kind}_cpus"),
            mem_gb=getattr(self, f"{kind}_mem_gb"),
            time_min=getattr(self, f"{kind}_time_min"),
        )


@dataclass(frozen=True)
class Resources:
    gpus: int
    cpus: int
    mem_gb: float
    time_min: int


class SlurmExecutor(Executor[SlurmOptions]):
    """Slurm, through submitit: one Slurm job per study job, resources per job kind, requeue on preemption."""

    name = "slurm"
    description = "Slurm through submitit: one Slurm job per study job, resources per job kind"
    requires = ("submitit",)
    install_hint = 'pip install "cxraug[slurm]"'

    @classmethod
    def check_available(cls, options: PluginOptions) -> None:
        super().check_available(options)
        if getattr(options, "cluster", "slurm") == "slurm" and shutil.which("sbatch") is None:
            raise OptionsError(
                "--executor slurm: sbatch not found on this machine; run cxraug on a Slurm login node, "
                "or add --opt executor.cluster=local to run the jobs here through submitit"
            )

    def describe(self) -> str:
        opts = self.options
        if opts.cluster == "local":
            return "submitit local"
        where = [f"partition {opts.partition}"] if opts.partition else ["default partition"]
        if opts.account:
            where.append(f"account {opts.account}")
        return f"slurm, {', '.join(where)}"

    def run(self, plan: ExecPlan) -> None:
        run_graph(
            plan,
            _SubmititLauncher(plan, self.options),
            executor=self.name,
            max_parallel=self.options.max_parallel,
            poll_s=self.options.poll_s,
        )


@dataclass
class _Submitted:
    job: ExecJob
    sub: submitit.Job[int]
    #: When squeue and sacct both stopped knowing the job (None while one of them knows it).
    unknown_since: float | None = None
    #: Pending reasons already reported (each once).
    reported: set[str] = field(default_factory=set)


class _SubmititLauncher:
    """Starts each study job as a submitit job and reads its end from Slurm and its result file."""

    def __init__(self, plan: ExecPlan, options: SlurmOptions) -> None:
        self.plan, self.options = plan, options
        self.folder = jobs_dir(plan.folder) / "slurm"
        self.local = options.cluster == "local"
        self.queue = _QueueStates(min_interval_s=min(options.poll_s, 5.0) / 2)

    def _executor(self, job: ExecJob, res: Resources) -> submitit.Executor:
        import submitit

        # max_num_timeout: how often submitit requeues a job that reaches its time limit.
        timeouts = 3 if self.options.requeue else 0
        if self.local:
            local = submitit.LocalExecutor(folder=self.folder, max_num_timeout=timeouts)
            local.update_parameters(timeout_min=res.time_min, gpus_per_node=res.gpus)
            return local
        opts = self.options
        slurm = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=timeouts)
        extra: dict[str, Any] = {"requeue": True} if opts.requeue else {"no-requeue": True}
        extra.update({k.replace("_", "-"): v for k, v in opts.sbatch.items()})
        params: dict[str, Any] = {
            "job_name": f"cxraug-{Path(self.plan.folder).name}-{job.id}",
            "time": res.time_min,
            "cpus_per_task": res.cpus,
            "mem": f"{math.ceil(res.mem_gb * 1024)}M",
            "additional_parameters": extra,
        }
        if res.gpus:
            params["gpus_per_node"] = res.gpus
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(opts, key):
                params[key] = getattr(opts, key)
        slurm.update_parameters(**params)
        return slurm

    def start(self, job: ExecJob) -> _Submitted:
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        from cxraug.plugins.executors._submitit_job import SubmititJobCall

        res = self.options.resources(job.kind)
        call = SubmititJobCall(self.plan.call(job.id, "slurm"), threads=res.cpus)
        try:
            sub = self._executor(job, res).submit(call)
        except (FailedJobError, FailedSubmissionError, OSError) as exc:  # sbatch refused it: say why
            reason = " ".join(str(exc).split())
            raise CxrError(
                f"study job {job.id}: submission refused: {reason}; check executor.partition, "
                f"executor.{job.kind}_* resources and executor.sbatch"
            ) from None
        where = "submitit local job" if self.local else "Slurm job"
        self._note(job, f"submitted as {where} {sub.job_id} ({_describe(res)})")
        return _Submitted(job, sub)

    def poll(self, handle: _Submitted) -> int | None:
        sub = handle.sub
        state: str | None
        if self.local:
            # submitit's local job is done when its controller process has exited.
            state = sub.state if sub.done() else None
        else:
            state = self._slurm_state(handle)
        if state is None or state in ACTIVE_STATES:
            return None
        return self._finish(handle, state)

    def cancel(self, handle: _Submitted) -> None:
        # scancel (Slurm) or SIGINT (local): the job records that it was interrupted.
        handle.sub.cancel(check=False)

    # ------------------------------------------------------------------ Slurm's view of a job

    def _slurm_state(self, handle: _Submitted) -> str | None:
        """The job's Slurm state; None while it cannot be told (slurmctld busy, job not yet listed)."""
        sub = handle.sub
        state = self.queue.state(sub.job_id)
        if state is None:
            return None
        reason = self.queue.reasons.get(sub.job_id, "")
        if state == "PENDING" and _stuck(reason) and reason not in handle.reported:
            handle.reported.add(reason)
            note = (
                f"Slurm job {sub.job_id} waits: {reason} (the partition cannot run what it asks for; "
                f"check executor.partition, executor.{handle.job.kind}_* and executor.sbatch, or scancel it)"
            )
            self._note(handle.job, note)
            console.print(f"slurm: {handle.job.id}: {note}", soft_wrap=True)
        if state == "":  # squeue no longer lists it: ask the accounting database, if there is one
            state = sub.watcher.get_state(sub.job_id, mode="force").split(" ")[0]
        if state and state != "UNKNOWN":
            handle.unknown_since = None
            return state
        if sub.paths.result_pickle.exists():
            return "UNKNOWN"
        now = time.monotonic()
        if handle.unknown_since is None:
            handle.unknown_since = now
        return "UNKNOWN" if now - handle.unknown_since > LOST_AFTER_S else None

    # ------------------------------------------------------------------ the end of a job

    def _finish(self, handle: _Submitted, state: str) -> int:
        job, sub = handle.job, handle.sub
        self.queue.forget(sub.job_id)
        outcome, value = self._result(sub, state)
        note = None
        if outcome == "success" and isinstance(value, int) and not isinstance(value, bool):
            code = value
            if code == JOB_INTERRUPTED_EXIT and state in STATE_HINTS:
                # Stopped by Slurm, not by a person: a failure to report, not an interruption.
                code, note = 1, _state_note(job, sub, state)
            elif code == JOB_INTERRUPTED_EXIT and state == "CANCELLED":
                note = f"Slurm job {sub.job_id} was cancelled (scancel); the study stops as if interrupted"
        elif outcome == "error":
            code = 1
            note = f"the job raised an error outside the study job:\n{value}"
        elif state == "CANCELLED":  # scancel before the job could record anything (still pending)
            code = JOB_INTERRUPTED_EXIT
            note = f"Slurm job {sub.job_id} was cancelled (scancel); the study stops as if interrupted"
        else:
            code = 1
            where = "submitit local" if self.local else "Slurm"
            note = _state_note(job, sub, state) if state in STATE_HINTS else None
            note = note or f"{where} job {sub.job_id} ended {state} without a result"
        self._append_logs(job, sub, state)
        if note:
            self._note(job, note)
            console.print(f"slurm: {job.id}: {note.splitlines()[0]}", soft_wrap=True)
        return code

    def _result(self, sub: submitit.Job[int], state: str) -> tuple[str, Any]:
        """("success", exit code) or ("error", traceback) from submitit's result file; ("none", None)."""
        from submitit.core.utils import pickle_load

        path = sub.paths.result_pickle
        if not self.local and state == "COMPLETED":
            deadline = time.monotonic() + RESULT_WAIT_S
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
        if not path.exists():
            return "none", None
        try:
            outcome, value = pickle_load(path)
        except (EOFError, pickle.UnpicklingError, ValueError, OSError) as exc:
            return "error", f"unreadable result file {path}: {exc}"
        return str(outcome), value

    def _append_logs(self, job: ExecJob, sub: submitit.Job[int], state: str) -> None:
        """The job's Slurm stdout and stderr, appended to the study's jobs/ID.log."""
        log_path = self.plan.log_path(job.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as out:
            for name, path in (("stdout", sub.paths.stdout), ("stderr", sub.paths.stderr)):
                out.write(f"----- {now_utc()} job {sub.job_id} ({state}) {name}: {path}\n")
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    text = "(no such file: the job never started or its node could not write it)\n"
                out.write(text if text.endswith("\n") or not text else text + "\n")

    def _note(self, job: ExecJob, line: str) -> None:
        log_path = self.plan.log_path(job.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as out:
            out.write(f"[{now_utc()}] slurm: {line}\n")


def _state_note(job: ExecJob, sub: submitit.Job[int], state: str) -> str:
    hint = STATE_HINTS[state].format(kind=job.kind)
    return f"Slurm job {sub.job_id} ended {state} ({hint})"


def _describe(res: Resources) -> str:
    gpus = f"{res.gpus} GPU{'s' if res.gpus != 1 else ''}, " if res.gpus else ""
    return f"{gpus}{res.cpus} CPU{'s' if res.cpus != 1 else ''}, {res.mem_gb:g} GB, {res.time_min} min"


class _QueueStates:
    """Slurm states of this run's jobs from squeue, one call for all of them per refresh.

    squeue, not sacct (submitit's watcher): slurmctld knows every live job and, for MinJobAge
    seconds, every finished one, also on clusters that keep no accounting database.
    """

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self.ids: set[str] = set()
        self.states: dict[str, str] | None = None
        self.reasons: dict[str, str] = {}
        self.last = float("-inf")

    def state(self, job_id: str) -> str | None:
        """squeue's state; "" when squeue does not list the job; None when squeue failed."""
        if job_id not in self.ids:
            self.ids.add(job_id)
            self.last = float("-inf")
        if time.monotonic() - self.last >= self.min_interval_s:
            listed = _squeue(sorted(self.ids))
            self.last = time.monotonic()
            self.states = None if listed is None else {j: state for j, (state, _) in listed.items()}
            self.reasons = {} if listed is None else {j: reason for j, (_, reason) in listed.items()}
        if self.states is None:
            return None
        return self.states.get(job_id, "")

    def forget(self, job_id: str) -> None:
        """The job has ended: stop asking about it."""
        self.ids.discard(job_id)


def _stuck(reason: str) -> bool:
    return reason in STUCK_REASONS or (reason.startswith("QOSMax") and "PerJob" in reason)


def _squeue(ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """{job id: (state, pending reason)} of the listed jobs squeue knows; None when squeue failed."""
    try:
        proc = subprocess.run(
            ["squeue", "--noheader", "--states=all", "--jobs", ",".join(ids), "--format=%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # Every id unknown (aged out of slurmctld) is an answer; anything else is a passing failure.
        return {} if "Invalid job id" in proc.stderr else None
    states: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id:
            states[job_id] = (state.strip(), reason.strip())
    return states


@hookimpl
def register_executors(register: Callable[[type[Any]], None]) -> None:
    register(SlurmExecutor)
