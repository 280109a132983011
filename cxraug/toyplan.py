"""A study-shaped plan of tiny jobs, for testing executors without training anything.

Each job sleeps a moment and appends one line (its id, process and executor) to ``ran.txt`` in the
plan folder, under the same per-job lock and state-file record as a real study's jobs. Tests read
``ran.txt`` to prove order (dependencies first) and uniqueness (no job ever ran twice).
``python -m cxraug.toyplan FOLDER JOB EXECUTOR`` runs one job in a fresh process.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxraug.errors import CxrError
from cxraug.execution import jobs_dir, locked_file, read_json, run_job_locked, update_json
from cxraug.interfaces import ExecJob

PLAN_FILE = "toyplan.json"
STATE_FILE = "state.json"
RAN_FILE = "ran.txt"


def diamond_jobs() -> list[ExecJob]:
    """The shape of a small study: two generators, their data, classifiers on each, one analysis."""
    return [
        ExecJob("gan-0", "gan", (), "train generator 0"),
        ExecJob("gan-1", "gan", (), "train generator 1"),
        ExecJob("data-g0", "data", ("gan-0",), "build training set g0"),
        ExecJob("data-g1", "data", ("gan-1",), "build training set g1"),
        ExecJob("clf-base-0", "classifier", (), "train classifier base 0"),
        ExecJob("clf-g0-0", "classifier", ("data-g0",), "train classifier g0 0"),
        ExecJob("clf-g1-0", "classifier", ("data-g1",), "train classifier g1 0"),
        ExecJob("analysis", "analysis", ("clf-base-0", "clf-g0-0", "clf-g1-0"), "analyse"),
    ]


class ToyPlan:
    """An ExecPlan over ``folder`` (created by :meth:`create`, re-opened by any process)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        spec = read_json(self.folder / PLAN_FILE)
        if not spec:
            raise CxrError(f"{self.folder}: no {PLAN_FILE}; make one with ToyPlan.create")
        self.jobs = tuple(ExecJob(j["id"], j["kind"], tuple(j["deps"]), j["label"]) for j in spec["jobs"])
        self.sleep_s = float(spec["sleep_s"])
        self.fail = set(spec["fail"])

    @classmethod
    def create(
        cls,
        folder: Path,
        jobs: Iterable[ExecJob] | None = None,
        *,
        sleep_s: float = 0.05,
        fail: Iterable[str] = (),
    ) -> ToyPlan:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {
            "jobs": [
                {"id": j.id, "kind": j.kind, "deps": list(j.deps), "label": j.label}
                for j in (jobs if jobs is not None else diamond_jobs())
            ],
            "sleep_s": sleep_s,
            "fail": list(fail),
        }
        update_json(folder / PLAN_FILE, lambda data: data.update(spec))
        return cls(folder)

    # ------------------------------------------------------------------ ExecPlan

    def done(self, job_id: str) -> bool:
        return self.job_record(job_id).get("status") == "finished"

    def command(self, job_id: str, executor: str) -> list[str]:
        return [sys.executable, "-m", "cxraug.toyplan", str(self.folder), job_id, executor]

    def call(self, job_id: str, executor: str) -> ToyCall:
        return ToyCall(str(self.folder), job_id, executor)

    def log_path(self, job_id: str) -> Path:
        return jobs_dir(self.folder) / f"{job_id}.log"

    def failure(self, job_id: str) -> str | None:
        error = self.job_record(job_id).get("error")
        return str(error) if error else None

    # ------------------------------------------------------------------ JobRecorder

    def job_record(self, job_id: str) -> dict[str, Any]:
        return dict(read_json(self.folder / STATE_FILE).get("jobs", {}).get(job_id, {}))

    def update_job_record(self, job_id: str, fields: dict[str, Any]) -> None:
        update_json(
            self.folder / STATE_FILE, lambda s: s.setdefault("jobs", {}).setdefault(job_id, {}).update(fields)
        )

    # ------------------------------------------------------------------ for tests

    def ran(self) -> list[dict[str, str]]:
        """One entry per time a job's work ran, in order: id, pid, executor."""
        path = self.folder / RAN_FILE
        if not path.is_file():
            return []
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
        return [{"id": r[0], "pid": r[1], "executor": r[2]} for r in rows]

    def run_one(self, job_id: str, executor: str) -> int:
        def work() -> None:
            print(f"toy job {job_id} working in process {os.getpid()}", flush=True)
            time.sleep(self.sleep_s)
            if job_id in self.fail:
                raise CxrError(f"toy job {job_id} was told to fail")
            with locked_file(self.folder / RAN_FILE):
                with open(self.folder / RAN_FILE, "a", encoding="utf-8") as f:
                    f.write(f"{job_id}\t{os.getpid()}\t{executor}\n")

        return run_job_locked(
            self.folder, job_id, executor, done=lambda: self.done(job_id), work=work, recorder=self
        )


@dataclass(frozen=True)
class ToyCall:
    """Picklable: runs one toy job in the calling process and returns its exit code."""

    folder: str
    job_id: str
    executor: str

    def __call__(self) -> int:
        return ToyPlan(Path(self.folder)).run_one(self.job_id, self.executor)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m cxraug.toyplan FOLDER JOB EXECUTOR", file=sys.stderr)
        return 2
    return ToyCall(*args)()


if __name__ == "__main__":
    sys.exit(main())
