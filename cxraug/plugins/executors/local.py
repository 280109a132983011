"""``--executor local``: the study's jobs on this machine, one after another or ``--jobs N`` at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from pydantic import Field

from cxraug import hookimpl
from cxraug.execution import run_graph
from cxraug.interfaces import ExecJob, ExecPlan, Executor, PluginOptions

#: Seconds a cancelled job gets to record that it was interrupted before it is killed.
CANCEL_GRACE_S = 30.0


class LocalOptions(PluginOptions):
    jobs: int = Field(
        1,
        ge=1,
        le=256,
        description="jobs at once: 1 runs them one by one in this process; more start a process per job",
    )
    threads: int | None = Field(
        None, ge=1, le=4096, description="CPU threads per job (default: this machine's cores / jobs)"
    )
    spread_gpus: bool = Field(
        True, description="with jobs > 1 and CUDA, job slot i gets visible GPU i mod (number of GPUs)"
    )


class LocalExecutor(Executor[LocalOptions]):
    """This machine: jobs one by one (default), or --jobs N processes at once."""

    name = "local"
    description = "This machine: jobs one by one, or --jobs N processes at once"

    def describe(self) -> str:
        jobs = self.options.jobs
        return "local, one job at a time" if jobs == 1 else f"local, {jobs} jobs at a time"

    def run(self, plan: ExecPlan) -> None:
        if self.options.jobs == 1:
            run_graph(plan, _InProcess(plan), executor=self.name, max_parallel=1)
            return
        threads = self.options.threads or max(1, (os.cpu_count() or 1) // self.options.jobs)
        gpus = _visible_gpus() if self.options.spread_gpus else []
        launcher = _Processes(plan, threads, gpus)
        try:
            run_graph(plan, launcher, executor=self.name, max_parallel=self.options.jobs)
        finally:
            launcher.close()


class _InProcess:
    """Runs each job to its end inside ``start``: today's sequential study, in this process."""

    def __init__(self, plan: ExecPlan) -> None:
        self.plan = plan

    def start(self, job: ExecJob) -> int:
        return self.plan.call(job.id, "local")()

    def poll(self, handle: int) -> int | None:
        return handle

    def cancel(self, handle: int) -> None:
        pass


@dataclass
class _Child:
    process: BaseProcess
    slot: int


def _visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _context() -> BaseContext:
    """Jobs fork from a server that imported cxraug, its plugins and torch once (fast, and fork-safe:
    the server never ran torch); where there is no fork server, a fresh interpreter per job."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        from cxraug.plugins import BUILTIN_PLUGINS

        # what a study job imports anyway (seconds per job otherwise); names that fail are skipped
        ctx.set_forkserver_preload(["torch", "cxraug.experiment.worker", *BUILTIN_PLUGINS])
        return ctx
    return multiprocessing.get_context("spawn")


class _Processes:
    """One process per job, its output appended to the job's log."""

    def __init__(self, plan: ExecPlan, threads: int, gpus: list[str]) -> None:
        self.plan, self.threads, self.gpus = plan, threads, gpus
        self.ctx = _context()
        self.slots: set[int] = set()
        self.children: list[_Child] = []

    def start(self, job: ExecJob) -> _Child:
        slot = min(set(range(len(self.slots) + 1)) - self.slots)
        self.slots.add(slot)
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        log_path = self.plan.log_path(job.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=_child_main,
            args=(self.plan.call(job.id, "local"), str(log_path), env, self.threads),
            name=f"cxraug-job-{job.id}",
            daemon=False,
        )
        process.start()
        child = _Child(process, slot)
        self.children.append(child)
        return child

    def poll(self, handle: _Child) -> int | None:
        code = handle.process.exitcode
        if code is not None:
            handle.process.join()
            self.slots.discard(handle.slot)
        return code

    def cancel(self, handle: _Child) -> None:
        """SIGTERM: the job records itself interrupted; ``close`` waits for all of them together."""
        process = handle.process
        if process.exitcode is None and process.pid is not None:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Wait for the jobs still running (after a cancel) up to the grace time, then kill them."""
        deadline = time.monotonic() + CANCEL_GRACE_S
        for child in self.children:
            if child.process.exitcode is None:
                self.cancel(child)
        for child in self.children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join()
            self.slots.discard(child.slot)


def _child_main(call: Callable[[], int], log_path: str, env: dict[str, str], threads: int) -> None:
    """In the job's process: output to the job's log, the thread budget, then the job."""
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Ctrl-C reaches every process of the terminal's group: the job stops and records it (130)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    code = call()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


@hookimpl
def register_executors(register: Callable[[type[Any]], None]) -> None:
    register(LocalExecutor)
