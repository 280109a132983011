"""What runs inside a Slurm (or submitit local) job for ``--executor slurm``.

Kept apart from the plugin module because it imports submitit at import time (to be a real
``submitit.helpers.Checkpointable``), and the plugin module must load where submitit is missing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import submitit
from submitit.core.utils import DelayedSubmission


class SubmititJobCall(submitit.helpers.Checkpointable):
    """One study job: the plan's picklable call, under the job kind's thread budget.

    Checkpointable, so that when Slurm warns of a time limit or a preemption (submitit's USR2
    handler) submitit requeues the same call; the study job then continues from its own
    checkpoint, as it does whenever it is run again.
    """

    def __init__(self, call: Callable[[], int], threads: int | None) -> None:
        self.call = call
        self.threads = threads

    def __call__(self) -> int:
        _forget_previous_result()
        threads = os.environ.get("SLURM_CPUS_PER_TASK") or (str(self.threads) if self.threads else None)
        if threads:
            # Slurm gives the job N CPUs; without this torch and OpenMP start one thread per core
            # of the whole node and fight the other jobs on it. torch reads OMP_NUM_THREADS when it
            # is first imported; one imported already (by unpickling the call) is told directly.
            os.environ["OMP_NUM_THREADS"] = threads
            os.environ["MKL_NUM_THREADS"] = threads
            torch = sys.modules.get("torch")
            if torch is not None:
                torch.set_num_threads(int(threads))
        return self.call()

    def checkpoint(self, *args: object, **kwargs: object) -> DelayedSubmission:
        # The call holds no state of its own (the job's checkpoint is in the study folder): requeue as is.
        return DelayedSubmission(self, *args, **kwargs)


def _forget_previous_result() -> None:
    """A requeued job's earlier attempt may have left a result file (it exited 130 when stopped);
    remove it so the launcher never takes it for this attempt's outcome."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (a direct call)
        return
    try:
        path = env.paths.result_pickle
    except KeyError:  # SUBMITIT_FOLDER unset: not started by submitit's runner
        return
    path.unlink(missing_ok=True)
