"""Study wall time with `local --jobs 1` vs `--jobs N`, and the executor's overhead per job.

Targets (issue #14): ratio (jobs 1 wall / jobs N wall) >= 1.6 on 2 cores for a classifier-bound
study; overhead per job < 2 s. The study is the same for both: the demo data, the base and classic
arms (no GAN), `--seeds` classifiers per arm, so nearly all the time is classifier training.

    python benchmarks/bench_executor.py [--jobs 2] [--seeds 4] [--epochs 3] [--size 64] [--executor slurm ...]

Overhead per job = the time the coordinator saw a job take (from `start` to seeing its exit) minus
the time the job's own record says its work took; it is printed for each executor run.
Extra `--opt executor.KEY=VALUE` arguments go to the second run (e.g. another executor).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cxraug(workspace: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "CXRAUG_WORKSPACE": str(workspace), "CXRAUG_DISABLE_PLUGINS": "0"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cxraug", *args], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"cxraug {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, done.stderr


def overhead(out: Path, log: str) -> tuple[float, float, float, int, dict[str, float]]:
    """(coordinator-seen time - recorded work time) per job: mean, first job, max of the others;
    the job count; and the recorded work seconds summed by job kind."""
    jobs = json.loads((out / "experiment.json").read_text())["jobs"]
    seen = {m[1]: float(m[2]) for m in re.finditer(r": (\S+) done in ([0-9.]+) s", log)}
    gaps = [seen[j] - float(rec["seconds"]) for j, rec in jobs.items() if j in seen]
    work: dict[str, float] = {}
    for job_id, rec in jobs.items():
        kind = job_id.split("-")[0]
        work[kind] = work.get(kind, 0.0) + float(rec["seconds"])
    return statistics.mean(gaps), gaps[0], max(gaps[1:] or [0.0]), len(gaps), work


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--executor", default="local", help="executor of the second run (default local)")
    parser.add_argument("--opt", action="append", default=[], help="executor.KEY=VALUE for the second run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cxraug-bench-exec-") as tmp:
        ws = Path(tmp)
        cxraug(ws, "data", "prepare", "phantom", "--size", str(args.size))
        study = [
            "experiment",
            "--quick",
            "--arms",
            "base,classic",
            "--classifier",
            "cnn",
            "--seeds",
            str(args.seeds),
            "--epochs",
            str(args.epochs),
        ]
        one, log_one = cxraug(ws, *study, "--out", str(ws / "jobs1"))
        extra = [x for opt in args.opt for x in ("--opt", opt)]
        second = ["--executor", args.executor, "--jobs", str(args.jobs), *extra]
        many, log_many = cxraug(ws, *study, *second, "--out", str(ws / "jobsN"))
        mean1, first1, max1, n1, work1 = overhead(ws / "jobs1", log_one)
        mean_n, first_n, max_n, n_n, work_n = overhead(ws / "jobsN", log_many)
        same = (
            json.loads((ws / "jobs1" / "experiment.json").read_text())["results"]["arms"]
            == json.loads((ws / "jobsN" / "experiment.json").read_text())["results"]["arms"]
        )
    cores = os.cpu_count()
    print(
        f"study: base + classic arms, {args.seeds} cnn seeds each, {args.epochs} epochs, "
        f"{args.size} px; {cores} cores"
    )
    for label, wall, mean, first, worst, n, work in (
        ("local --jobs 1", one, mean1, first1, max1, n1, work1),
        (f"{args.executor} --jobs {args.jobs}", many, mean_n, first_n, max_n, n_n, work_n),
    ):
        kinds = ", ".join(f"{k} {v:.1f} s" for k, v in work.items())
        print(
            f"{label}: {wall:.1f} s wall, {n} jobs; overhead per job mean {mean:.2f} s "
            f"(first job {first:.2f} s, which includes starting the executor; others at most {worst:.2f} s); "
            f"job work: {kinds}"
        )
    print(f"ratio jobs 1 / jobs {args.jobs}: {one / many:.2f}x (target >= 1.6 on 2 cores)")
    print(f"mean overhead per job < 2 s: {'yes' if max(mean1, mean_n) < 2 else 'NO'}")
    print(f"per-arm results identical: {same} (they differ only when the thread count per job differs)")


if __name__ == "__main__":
    main()
