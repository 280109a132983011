"""``python -m cxraug.experiment.worker STUDY JOB EXECUTOR [--workspace DIR]``: one job of a study.

What an executor runs on whatever machine sees the study folder. Exit codes are the executor
contract's (cxraug.interfaces.ExecPlan): 0 done (now or before), 75 another process runs the job,
130 interrupted, 2 a user error (recorded in experiment.json and printed), 1 a bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxraug.errors import CxrError
from cxraug.experiment.runner import StudyJobCall, open_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxraug.experiment.worker", description=__doc__)
    parser.add_argument("study", type=Path, help="the study folder (experiment.json)")
    parser.add_argument("job", help="job id, e.g. gan-0, data-gan-g0, clf-base-3, analysis")
    parser.add_argument("executor", nargs="?", default="local", help="recorded as where the job ran")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="the cxraug workspace (default: as the cxraug command finds it)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        exp = open_study(args.study, args.workspace)
        if not exp.job_done(args.job):
            exp.check_ready(args.job)
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    call = StudyJobCall(str(args.study), args.job, args.executor, str(exp.ws.root), exp)
    code = call()
    if code == 2:
        print(f"error: {exp.job_record(args.job).get('error')}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
