"""--executor slurm against real engines: submitit's local executor, and a real single-node Slurm
(tests/slurm/start_slurm.sh through the slurm_cluster fixture; skipped, with the reason, where it
cannot start)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from slurm_cluster import start_slurm

from cxraug.errors import CxrError, OptionsError
from cxraug.interfaces import ExecJob
from cxraug.options import resolve_options
from cxraug.plugins.executors.slurm import SlurmExecutor, SlurmOptions
from cxraug.testing import check_executor_plugin
from cxraug.toyplan import ToyPlan

needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason='submitit not installed: pip install "cxraug[slurm]"'
)

#: Small enough for the test cluster (its node has the machine's CPUs), so jobs run side by side.
SMALL = {f"{kind}_{key}": value for kind in ("gan", "data", "classifier", "analysis")
         for key, value in (("cpus", 1), ("mem_gb", 0.25), ("time_min", 5))}  # fmt: skip
#: Generous: a loaded CI machine starts each job's Python slowly.
WAIT_S = 180.0


def slurm_options(**extra: Any) -> SlurmOptions:
    return SlurmOptions(**{**SMALL, "poll_s": 0.3, **extra})


def run_in_thread(executor: SlurmExecutor, plan: ToyPlan) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            executor.run(plan)
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def wait_running(plan: ToyPlan, job_id: str, attempts: int = 1) -> dict[str, Any]:
    """The job's record once its attempt number ``attempts`` runs inside Slurm."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        record = plan.job_record(job_id)
        if record.get("status") == "running" and record.get("attempts") == attempts:
            return record
        time.sleep(0.2)
    raise AssertionError(f"{job_id} did not start in Slurm within {WAIT_S:.0f} s: {plan.job_record(job_id)}")


# ------------------------------------------------------------------ options and availability


def test_unknown_key_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(OptionsError) as err:
        resolve_options(SlurmOptions, plugin="executor slurm", opts={"gan_gpu": 1})
    message = str(err.value)
    assert "unknown key 'gan_gpu'" in message and "gan_gpus=0" in message and "\n" not in message


def test_reserved_and_malformed_sbatch_keys_are_refused() -> None:
    with pytest.raises(OptionsError, match="--output is set by cxraug"):
        resolve_options(SlurmOptions, plugin="executor slurm", opts={"sbatch": {"output": "x.log"}})
    with pytest.raises(OptionsError, match="not an sbatch option name"):
        resolve_options(SlurmOptions, plugin="executor slurm", opts={"sbatch": {"--mail type": "END"}})


def test_resources_per_job_kind() -> None:
    opts = SlurmOptions(gan_gpus=1, gan_mem_gb=32, classifier_cpus=8)
    gan, clf, data = opts.resources("gan"), opts.resources("classifier"), opts.resources("data")
    assert (gan.gpus, gan.mem_gb, gan.cpus) == (1, 32, 4)
    assert (clf.gpus, clf.cpus) == (0, 8)
    assert data.gpus == 0 and data.time_min == 120
    with pytest.raises(CxrError, match="not one of gan, data, classifier, analysis"):
        opts.resources("training")


def test_describe() -> None:
    assert SlurmExecutor(SlurmOptions(partition="debug")).describe() == "slurm, partition debug"
    assert SlurmExecutor(SlurmOptions(cluster="local")).describe() == "submitit local"


def test_missing_submitit_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a)
    )
    with pytest.raises(OptionsError) as err:
        SlurmExecutor.check_available(SlurmOptions(cluster="local"))
    assert 'pip install "cxraug[slurm]"' in str(err.value) and "\n" not in str(err.value)


def test_no_sbatch_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OptionsError, match="sbatch not found.*executor.cluster=local"):
        SlurmExecutor.check_available(SlurmOptions())
    SlurmExecutor.check_available(SlurmOptions(cluster="local"))


# ------------------------------------------------------------------ submitit's local executor


@pytest.mark.slow
@needs_submitit
def test_contract_on_submitit_local(tmp_path: Path) -> None:
    executor = check_executor_plugin(SlurmExecutor, tmp_path, options={"cluster": "local", "poll_s": 0.2})
    plan = ToyPlan(tmp_path / "toy")
    log = plan.log_path("analysis").read_text(encoding="utf-8")
    assert "submitted as submitit local job" in log and "toy job analysis working" in log
    assert executor.describe() == "submitit local"


# ------------------------------------------------------------------ a real Slurm


@pytest.mark.slow
@needs_submitit
def test_contract_on_real_slurm(slurm_cluster: str, tmp_path: Path) -> None:
    check_executor_plugin(SlurmExecutor, tmp_path, options={**SMALL, "poll_s": 0.3})
    plan = ToyPlan(tmp_path / "toy")
    record = plan.job_record("gan-0")
    assert record["slurm_job_id"] and record["partition"] == "debug", record
    log = plan.log_path("gan-0").read_text(encoding="utf-8")
    assert f"submitted as Slurm job {record['slurm_job_id']} (1 CPU, 0.25 GB, 5 min)" in log
    assert "toy job gan-0 working" in log  # the job's Slurm stdout, appended to jobs/gan-0.log


@pytest.mark.slow
@needs_submitit
def test_resources_reach_slurm(slurm_cluster: str, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "study", [ExecJob("clf", "classifier", (), "train")])
    opts = slurm_options(classifier_cpus=2, classifier_mem_gb=0.5, classifier_time_min=7,
                         sbatch={"comment": "cxraug-test"})  # fmt: skip
    SlurmExecutor(opts).run(plan)
    job_id = plan.job_record("clf")["slurm_job_id"]
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    for expected in ("NumCPUs=2", "MinMemoryNode=512M", "TimeLimit=00:07:00", "Comment=cxraug-test",
                     "JobName=cxraug-study-clf", "Requeue=1"):  # fmt: skip
        assert expected in shown, (expected, shown)


@pytest.mark.slow
@needs_submitit
def test_requeued_job_reruns_and_finishes(slurm_cluster: str, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "study", [ExecJob("gan-0", "gan", (), "train generator")], sleep_s=4)
    thread, errors = run_in_thread(SlurmExecutor(slurm_options()), plan)
    record = wait_running(plan, "gan-0")
    # What preemption with PreemptMode=REQUEUE does: SIGTERM to the job, then back to the queue.
    subprocess.run(["scontrol", "requeue", record["slurm_job_id"]], check=True)
    thread.join(WAIT_S)
    assert not thread.is_alive() and not errors, errors
    assert plan.done("gan-0")
    assert [r["id"] for r in plan.ran()] == ["gan-0"]  # its work ran to the end once
    final = plan.job_record("gan-0")
    assert final["attempts"] == 2 and final["slurm_restarts"] == 1, final
    assert final["slurm_job_id"] == record["slurm_job_id"]  # the same Slurm job, requeued
    log = plan.log_path("gan-0").read_text(encoding="utf-8")
    assert log.count("toy job gan-0 working") == 2 and "DUE TO JOB REQUEUE" in log


@pytest.mark.slow
@needs_submitit
def test_failing_job_log_lands_in_the_study(slurm_cluster: str, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "study", [ExecJob("data-g0", "data", (), "build")], fail=["data-g0"])
    with pytest.raises(CxrError) as err:
        SlurmExecutor(slurm_options()).run(plan)
    log_path = plan.log_path("data-g0")
    assert "told to fail" in str(err.value) and str(log_path) in str(err.value)
    log = log_path.read_text(encoding="utf-8")
    assert "toy job data-g0 working" in log and "(COMPLETED) stderr" in log


@pytest.mark.slow
@needs_submitit
def test_job_killed_in_slurm_fails_with_its_state(slurm_cluster: str, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "study", [ExecJob("analysis", "analysis", (), "analyse")], sleep_s=30)
    thread, errors = run_in_thread(SlurmExecutor(slurm_options()), plan)
    record = wait_running(plan, "analysis")
    os.kill(record["pid"], signal.SIGKILL)  # dies without a word, as an OOM kill would
    thread.join(WAIT_S)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], CxrError), errors
    assert "study job analysis" in str(errors[0])
    log = plan.log_path("analysis").read_text(encoding="utf-8")
    assert f"Slurm job {record['slurm_job_id']} ended FAILED without a result" in log
    assert not plan.done("analysis") and plan.ran() == []


def test_start_script_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the slurm_cluster fixture shows as its skip reason when Slurm cannot start."""
    monkeypatch.setenv("CXRAUG_SLURM_DIR", "/proc/cxraug-slurm-cannot-be-here")
    conf, reason = start_slurm()
    assert conf is None and reason.startswith("slurm not started: ") and "\n" not in reason, reason


@pytest.mark.slow
@needs_submitit
def test_scancel_stops_the_study_as_interrupted(slurm_cluster: str, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "study", [ExecJob("gan-0", "gan", (), "train generator")], sleep_s=30)
    thread, errors = run_in_thread(SlurmExecutor(slurm_options()), plan)
    record = wait_running(plan, "gan-0")
    subprocess.run(["scancel", record["slurm_job_id"]], check=True)
    thread.join(WAIT_S)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], KeyboardInterrupt), errors
    assert plan.job_record("gan-0")["status"] == "interrupted" and plan.ran() == []
    assert "was cancelled (scancel)" in plan.log_path("gan-0").read_text(encoding="utf-8")


@pytest.mark.slow
@needs_submitit
def test_refused_submission_says_why(slurm_cluster: str, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "study", [ExecJob("gan-0", "gan", (), "train generator")])
    with pytest.raises(CxrError) as err:
        SlurmExecutor(slurm_options(partition="no-such-partition")).run(plan)
    message = str(err.value)
    assert "gan-0: submission refused" in message and "invalid partition" in message.lower()
    assert "executor.partition" in message and "\n" not in message


@pytest.mark.slow
@needs_submitit
def test_job_the_partition_cannot_run_is_reported(slurm_cluster: str, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "study", [ExecJob("gan-0", "gan", (), "train generator")])
    thread, errors = run_in_thread(SlurmExecutor(slurm_options(gan_cpus=1024)), plan)
    log_path, deadline = plan.log_path("gan-0"), time.monotonic() + WAIT_S
    while "waits: PartitionConfig" not in (log_path.read_text() if log_path.is_file() else ""):
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.2)
    assert "check executor.partition, executor.gan_*" in log_path.read_text()
    job_id = log_path.read_text().split("submitted as Slurm job ")[1].split()[0]
    subprocess.run(["scancel", job_id], check=True)
    thread.join(WAIT_S)
    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], KeyboardInterrupt), errors
