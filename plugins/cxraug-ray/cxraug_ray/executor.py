"""``--executor ray``: each job of a study is one Ray task, on a local Ray or a Ray cluster.

The scheduling (dependencies, "running elsewhere", stop at the first failure) is cxraug's own
``run_graph``; this module only starts, polls and cancels Ray tasks. A task runs the job through
``plan.call`` in a Ray worker process, which locks and records the job in the study folder itself,
so the study folder must be visible at the same path on every node (a shared filesystem).
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxraug.errors import CxrError, OptionsError
from cxraug.execution import run_graph
from cxraug.interfaces import JOB_INTERRUPTED_EXIT, JOB_KINDS, ExecJob, ExecPlan, Executor, PluginOptions
from pydantic import Field, model_validator

log = logging.getLogger(__name__)

#: Seconds cancelled jobs get to record that they were interrupted before their workers are killed.
CANCEL_GRACE_S = 30.0

#: Seconds to wait for a TCP answer from a cluster's address before refusing it.
REACH_TIMEOUT_S = 5.0

#: Variables the common numeric libraries read for their thread count.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cpus(kind: str) -> Any:
    return Field(1.0, ge=0, le=1024, description=f"CPUs each {kind} job reserves (Ray num_cpus)")


def _gpus(kind: str) -> Any:
    return Field(
        0.0, ge=0, le=64, description=f"GPUs each {kind} job reserves (Ray num_gpus; 0.5 shares one)"
    )


class RayOptions(PluginOptions):
    address: str | None = Field(
        None,
        min_length=1,
        description="Ray to join: 'auto' (the one `ray start` runs here), 'ray://HOST:10001'; "
        "unset: start a local Ray for the study and stop it after",
    )
    gan_cpus: float = _cpus("gan")
    gan_gpus: float = _gpus("gan")
    data_cpus: float = _cpus("data")
    data_gpus: float = _gpus("data")
    classifier_cpus: float = _cpus("classifier")
    classifier_gpus: float = _gpus("classifier")
    analysis_cpus: float = _cpus("analysis")
    analysis_gpus: float = _gpus("analysis")
    max_parallel: int | None = Field(
        None, ge=1, le=100_000, description="Jobs submitted at once; unset: every ready job, Ray queues them"
    )
    num_cpus: int | None = Field(
        None, ge=1, le=100_000, description="CPUs of the local Ray (address unset); unset: Ray counts them"
    )
    check_resources: bool = Field(
        True,
        description="Refuse a job kind no node can hold; false for an autoscaling cluster that adds nodes",
    )
    poll_s: float = Field(0.2, gt=0, le=60, description="Seconds between looks at the running tasks")

    @model_validator(mode="after")
    def _num_cpus_only_locally(self) -> RayOptions:
        if self.num_cpus is not None and self.address is not None:
            raise ValueError(
                "num_cpus sizes the local Ray started when address is unset; a cluster's nodes declare "
                "their own CPUs (`ray start --num-cpus`)"
            )
        return self

    def resources(self, kind: str) -> tuple[float, float]:
        """(CPUs, GPUs) a job of ``kind`` reserves."""
        if kind not in JOB_KINDS:
            raise CxrError(
                f"--executor ray has no resources for job kind {kind!r} (it knows {', '.join(JOB_KINDS)}); "
                "upgrade cxraug-ray to the version that matches cxraug"
            )
        return float(getattr(self, f"{kind}_cpus")), float(getattr(self, f"{kind}_gpus"))


class RayExecutor(Executor[RayOptions]):
    """Ray: each job a Ray task, on a local Ray started for the study or on a Ray cluster."""

    name = "ray"
    description = "Ray: each job a Ray task, on a local Ray or a Ray cluster"
    requires = ("ray",)
    install_hint = "pip install cxraug-ray (from a checkout: pip install -e plugins/cxraug-ray)"

    def describe(self) -> str:
        opts = self.options
        if opts.address is None:
            cpus = opts.num_cpus
            where = f"local Ray with {cpus} CPU{'s' * (cpus != 1)}" if cpus else "local Ray with all CPUs"
        else:
            where = f"Ray cluster at {opts.address}"
        if opts.max_parallel is not None:
            where += f", at most {opts.max_parallel} jobs at a time"
        return where

    def run(self, plan: ExecPlan) -> None:
        import ray

        kinds = sorted({job.kind for job in plan.jobs if not plan.done(job.id)}, key=_kind_order)
        wanted = {kind: self.options.resources(kind) for kind in kinds}
        with _ray_session(self.options):
            if self.options.check_resources:
                _check_fits(wanted, ray.nodes(), local=self.options.address is None)
            launcher = _RayTasks(plan, self.options, ray.remote(_run_task))
            try:
                run_graph(
                    plan,
                    launcher,
                    executor=self.name,
                    max_parallel=self.options.max_parallel,
                    poll_s=self.options.poll_s,
                )
            finally:
                launcher.close()


def _kind_order(kind: str) -> int:
    return JOB_KINDS.index(kind) if kind in JOB_KINDS else len(JOB_KINDS)


@contextmanager
def _ray_session(options: RayOptions) -> Iterator[None]:
    """Ray connected for the block; when this call started (or joined) it, disconnected after.

    A Ray this process had already initialised (a notebook, a test) is used as it is and left
    running. ray.init replaces the driver's SIGTERM handler; it is put back once Ray is shut down.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {
        # Job output goes to the jobs' own logs; Ray's chatter would bury the progress lines.
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if options.address is None:
        kwargs.update(address="local", num_cpus=options.num_cpus, include_dashboard=False)
    else:
        kwargs["address"] = options.address
        _check_reachable(options.address)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        ray.shutdown()
        where = "start a local Ray" if options.address is None else f"join the Ray at {options.address}"
        hint = (
            "start one with `ray start --head` or give its address"
            if options.address is not None
            else "check `ray start --head` works here"
        )
        reason = _ANSI.sub("", str(exc)).strip().splitlines()
        raise CxrError(
            f"--executor ray could not {where} ({type(exc).__name__}: {reason[0] if reason else ''}); {hint}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _check_reachable(address: str) -> None:
    """Refuse a HOST:PORT nothing answers on: ray.init would retry it for minutes, logging each try."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if address in ("auto", "local") or not sep or not port.isdigit():
        return  # "auto" is resolved by Ray ($RAY_ADDRESS, the cluster `ray start` ran here)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise CxrError(
            f"--opt executor.address={address}: nothing answers at {hostport} ({exc.strerror or exc}); "
            "check the head node's address and port (ray://HOST:10001 for Ray Client, HOST:6379 for its GCS)"
        ) from None


def _check_fits(wanted: dict[str, tuple[float, float]], nodes: list[dict[str, Any]], *, local: bool) -> None:
    """Refuse a job kind that no live node can hold: Ray would keep such a task pending for ever."""
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive")]
    most_cpus = max((r.get("CPU", 0.0) for r in alive), default=0.0)
    most_gpus = max((r.get("GPU", 0.0) for r in alive), default=0.0)
    for kind, (cpus, gpus) in wanted.items():
        if any(r.get("CPU", 0.0) >= cpus and r.get("GPU", 0.0) >= gpus for r in alive):
            continue
        if most_cpus < cpus:
            key, value, has = "cpus", cpus, f"the largest node has {most_cpus:g} CPUs"
        elif most_gpus < gpus:
            key, value, has = "gpus", gpus, f"the most GPUs on one node is {most_gpus:g}"
        else:
            key, value, has = "gpus", gpus, f"no node has {cpus:g} CPUs and {gpus:g} GPUs together"
        what = "the local Ray" if local else f"the Ray cluster ({len(alive)} nodes alive)"
        hint = (
            "lower it or raise executor.num_cpus"
            if local
            else "lower it, add a larger node, or set executor.check_resources=false (autoscaling)"
        )
        raise OptionsError(
            f"--opt executor.{kind}_{key}={value:g}: {what} cannot run a {kind} job ({has}); {hint}"
        )


class StudyFolderMissing(CxrError):
    """Raised on a Ray node that cannot see the study folder."""


@dataclass
class _Task:
    job: ExecJob
    ref: Any  # ray.ObjectRef[int]


class _RayTasks:
    """The Launcher: one Ray task per job; cancelled tasks get a grace period together in close()."""

    def __init__(self, plan: ExecPlan, options: RayOptions, remote: Any) -> None:
        self.plan, self.options, self.remote = plan, options, remote
        self.cancelled: list[_Task] = []

    def start(self, job: ExecJob) -> _Task:
        cpus, gpus = self.options.resources(job.kind)
        log_path = self.plan.log_path(job.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        ref = self.remote.options(
            num_cpus=cpus,
            num_gpus=gpus,
            # A job continues from its checkpoint when the study is run again; Ray retrying it
            # behind run_graph's back would hide the failure.
            max_retries=0,
            name=f"cxraug {job.id}",
        ).remote(self.plan.call(job.id, "ray"), str(self.plan.folder), str(log_path), cpus, gpus)
        return _Task(job, ref)

    def poll(self, handle: _Task) -> int | None:
        import ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        ready, _ = ray.wait([handle.ref], timeout=0)
        if not ready:
            return None
        try:
            return int(ray.get(handle.ref))
        except RayError as exc:
            cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
            if isinstance(cause, StudyFolderMissing):
                raise CxrError(str(cause)) from None
            self._note(handle.job, f"Ray reported: {_ANSI.sub('', str(exc)).strip()}")
            # Cancelled by someone else (`ray job stop`, the dashboard): the study was stopped,
            # not broken, so it reads like Ctrl-C.
            return JOB_INTERRUPTED_EXIT if isinstance(exc, TaskCancelledError) else 1

    def cancel(self, handle: _Task) -> None:
        import ray

        # force=False raises KeyboardInterrupt in the task, so the job records itself interrupted
        # and releases its lock; force=True would kill the worker and leave its record "running".
        ray.cancel(handle.ref, force=False)
        self.cancelled.append(handle)

    def close(self) -> None:
        """Wait for cancelled tasks to end (all at once, CANCEL_GRACE_S at most), then kill the rest."""
        if not self.cancelled:
            return
        import ray

        refs = [task.ref for task in self.cancelled]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        for task in self.cancelled:
            if task.ref in pending:
                log.warning(
                    "job %s did not stop within %.0f s; killing its Ray worker", task.job.id, CANCEL_GRACE_S
                )
                self._note(task.job, f"did not stop within {CANCEL_GRACE_S:.0f} s of being cancelled; killed")
                ray.cancel(task.ref, force=True)
        self.cancelled.clear()

    def _note(self, job: ExecJob, text: str) -> None:
        path = self.plan.log_path(job.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"[cxraug-ray] {text}\n")


# ----------------------------------------------------------------- in the Ray worker process


def _run_task(call: Callable[[], int], folder: str, log_path: str, cpus: float, gpus: float) -> int:
    """The Ray task: the job, its output appended to its log, its thread budget set; its exit code.

    Ray reuses worker processes for later tasks, so everything changed here is put back after.
    """
    if not os.path.isdir(folder):
        raise StudyFolderMissing(
            f"{folder}: the study folder is not visible on Ray node {socket.gethostname()}; "
            "put it on a filesystem every node mounts at the same path"
        )
    threads = max(1, math.floor(cpus))
    env = {var: str(threads) for var in _THREAD_VARS}
    if gpus == 0:
        # Ray leaves CUDA_VISIBLE_DEVICES alone for a task that asks for no GPU (ray issue 54868);
        # a job seeing the node's GPUs would use one nobody reserved for it.
        env["CUDA_VISIBLE_DEVICES"] = ""
    with _environment(env), _torch_threads(threads), _output_to(log_path):
        return int(call())


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """A reused worker may hold a torch that an earlier task sized; a fresh one reads the variables."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _output_to(log_path: str) -> Iterator[None]:
    """File descriptors 1 and 2 appended to ``log_path`` (so C libraries and subprocesses follow)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
