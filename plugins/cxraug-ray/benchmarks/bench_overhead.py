"""What --executor ray costs on top of the jobs themselves, on this machine:

    python plugins/cxraug-ray/benchmarks/bench_overhead.py [--jobs 40] [--cpus 2] [--poll 0.05]

Prints the time ray.init takes to start a local Ray, then runs toy plans of jobs that sleep 0 s
(cxraug.toyplan: each job still takes its lock and writes its record to the state file) three ways:
in this process (--executor local, the jobs' own cost), as a chain on Ray (each job waits for the
one before: the latency Ray adds per job), and side by side on Ray (throughput).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import ray
from cxraug.interfaces import ExecJob
from cxraug.plugins.executors.local import LocalExecutor, LocalOptions
from cxraug.toyplan import ToyPlan

from cxraug_ray import RayExecutor, RayOptions


def plan(folder: Path, n: int, chain: bool) -> ToyPlan:
    jobs = [ExecJob(f"j{i}", "data", (f"j{i - 1}",) if chain and i else ()) for i in range(n)]
    return ToyPlan.create(folder, jobs, sleep_s=0)


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()
    n = args.jobs
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    init_s = timed(
        lambda: ray.init(
            address="local",
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    )
    try:
        executor = RayExecutor(RayOptions(poll_s=args.poll))
        # The first tasks also start Ray's worker processes; measured apart from the steady state.
        warm_s = timed(lambda: executor.run(plan(root / "warm", args.cpus, chain=False)))
        local_s = timed(lambda: LocalExecutor(LocalOptions()).run(plan(root / "local", n, chain=True)))
        chain_s = timed(lambda: executor.run(plan(root / "chain", n, chain=True)))
        wide_s = timed(lambda: executor.run(plan(root / "wide", n, chain=False)))
    finally:
        shutdown_s = timed(ray.shutdown)
    print(f"ray.init (local, {args.cpus} CPUs): {init_s:.2f} s; ray.shutdown: {shutdown_s:.2f} s")
    print(f"first {args.cpus} jobs (worker start-up): {warm_s:.2f} s")
    print(f"{n} jobs in this process (local): {local_s / n * 1000:.0f} ms per job")
    print(
        f"{n} jobs in a chain on Ray (poll {args.poll} s): {chain_s / n * 1000:.0f} ms per job, "
        f"{(chain_s - local_s) / n * 1000:.0f} ms more than local"
    )
    print(f"{n} independent jobs on Ray ({args.cpus} CPUs): {wide_s / n * 1000:.0f} ms per job")


if __name__ == "__main__":
    main()
