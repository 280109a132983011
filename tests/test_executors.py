"""Executors: the contract, the shared scheduling loop, per-job locks, and the local executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cxraug import hookimpl
from cxraug.errors import CxrError
from cxraug.execution import JobFailedError, jobs_dir, run_graph
from cxraug.interfaces import JOB_BUSY_EXIT, ExecJob, Executor, PluginOptions
from cxraug.plugins import build_registry, get_plugin_manager
from cxraug.plugins.executors.local import LocalExecutor, LocalOptions
from cxraug.runlock import RunLock
from cxraug.testing import check_executor_plugin
from cxraug.toyplan import ToyPlan, diamond_jobs


def test_local_executor_in_process_passes_the_contract(tmp_path: Path) -> None:
    check_executor_plugin(LocalExecutor, tmp_path)
    plan = ToyPlan(tmp_path / "toy")
    assert {row["pid"] for row in plan.ran()} == {str(os.getpid())}, "jobs=1 runs in this process"


def test_local_executor_with_jobs_runs_processes_in_parallel(tmp_path: Path) -> None:
    check_executor_plugin(LocalExecutor, tmp_path, options={"jobs": 2}, sleep_s=0.3)
    plan = ToyPlan(tmp_path / "toy")
    rows = plan.ran()
    assert str(os.getpid()) not in {r["pid"] for r in rows} and len({r["pid"] for r in rows}) == len(rows)
    # gan-0 and gan-1 have no dependencies: with two slots they overlapped
    records = {job: plan.job_record(job) for job in ("gan-0", "gan-1")}
    assert records["gan-0"]["started"] <= records["gan-1"]["ended"]
    assert records["gan-1"]["started"] <= records["gan-0"]["ended"]
    # each job's output went to its own log in the study folder
    log = plan.log_path("gan-0").read_text()
    assert "toy job gan-0 working" in log and "gan-1" not in log


def test_a_job_whose_lock_is_held_elsewhere_is_waited_for_not_run(tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path, [ExecJob("a", "gan"), ExecJob("b", "classifier", ("a",))], sleep_s=0.0)
    lock = RunLock(tmp_path / "job a", lock_file=jobs_dir(tmp_path) / "a.lock").acquire()
    assert plan.call("a", "other")() == JOB_BUSY_EXIT

    import threading

    def other_executor_finishes_a() -> None:
        time.sleep(0.5)
        lock.release()
        assert plan.call("a", "other")() == 0

    thread = threading.Thread(target=other_executor_finishes_a)
    thread.start()
    LocalExecutor(LocalOptions()).run(plan)
    thread.join()
    assert [(r["id"], r["executor"]) for r in plan.ran()] == [("a", "other"), ("b", "local")]


def test_a_job_whose_holder_dies_unfinished_is_run_here(tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path, [ExecJob("a", "gan"), ExecJob("b", "classifier", ("a",))], sleep_s=0.0)
    lock = RunLock(tmp_path / "job a", lock_file=jobs_dir(tmp_path) / "a.lock").acquire()

    import threading

    def holder_goes_away() -> None:
        time.sleep(0.5)
        lock.release()  # without having run the job

    thread = threading.Thread(target=holder_goes_away)
    thread.start()
    LocalExecutor(LocalOptions()).run(plan)
    thread.join()
    assert [(r["id"], r["executor"]) for r in plan.ran()] == [("a", "local"), ("b", "local")]


def test_two_executors_on_one_plan_never_run_a_job_twice(tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "toy", sleep_s=0.4)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from cxraug.plugins.executors.local import LocalExecutor, LocalOptions
        from cxraug.toyplan import ToyPlan
        if __name__ == "__main__":
            LocalExecutor(LocalOptions(jobs=2)).run(ToyPlan(Path({str(plan.folder)!r})))
        """
    )
    (tmp_path / "coordinator.py").write_text(script)
    procs = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "coordinator.py")], stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ran = [r["id"] for r in plan.ran()]
    assert sorted(ran) == sorted(j.id for j in diamond_jobs()), "every job exactly once"
    assert "running under another process" in "".join(outputs)


def test_a_failure_stops_the_run_names_the_job_and_its_log(tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path, sleep_s=0.0, fail=["gan-1"])
    with pytest.raises(JobFailedError) as info:
        LocalExecutor(LocalOptions(jobs=2)).run(plan)
    message = str(info.value)
    assert "gan-1" in message and "told to fail" in message and str(plan.log_path("gan-1")) in message
    assert not plan.done("analysis") and plan.job_record("gan-1")["status"] == "failed"
    assert "\n" not in message


def test_a_killed_job_is_reported_and_reruns_once_its_cause_is_gone(tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path, [ExecJob("slow", "classifier")], sleep_s=60.0)
    launched: dict[str, int] = {}

    import threading

    def kill_when_started() -> None:
        for _ in range(600):
            record = plan.job_record("slow")
            if record.get("pid") and record["pid"] != os.getpid():
                launched["pid"] = record["pid"]
                time.sleep(0.2)
                os.kill(record["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=kill_when_started)
    thread.start()
    with pytest.raises(JobFailedError, match="killed by signal 9"):
        LocalExecutor(LocalOptions(jobs=2)).run(plan)
    thread.join()
    assert plan.job_record("slow")["status"] == "running", "killed: it could record nothing"
    quick = ToyPlan.create(tmp_path, [ExecJob("slow", "classifier")], sleep_s=0.0)
    LocalExecutor(LocalOptions(jobs=2)).run(quick)
    record = quick.job_record("slow")
    assert record["status"] == "finished" and record["attempts"] == 2


def test_run_graph_refuses_a_plan_whose_dependency_is_unknown(tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path, [ExecJob("b", "classifier", ("a",))])
    with pytest.raises(CxrError, match="depends on 'a'"):
        run_graph(plan, object(), executor="x")  # type: ignore[arg-type]


def test_register_executors_hook_adds_an_executor_plugin(tmp_path: Path) -> None:
    class InlineOptions(PluginOptions):
        pass

    class Inline(Executor[InlineOptions]):
        """Runs the plan's callables one by one (a minimal third-party executor)."""

        name = "inline"

        def run(self, plan) -> None:  # type: ignore[no-untyped-def]
            class Launcher:
                def start(self, job):  # type: ignore[no-untyped-def]
                    return plan.call(job.id, "inline")()

                def poll(self, handle):  # type: ignore[no-untyped-def]
                    return handle

                def cancel(self, handle):  # type: ignore[no-untyped-def]
                    pass

            run_graph(plan, Launcher(), executor=self.name)

    class Plugin:
        @hookimpl
        def register_executors(self, register):  # type: ignore[no-untyped-def]
            register(Inline)

    registry = build_registry(get_plugin_manager(load_entry_points=False, extra=(("inline", Plugin()),)))
    assert registry.executor("inline") is Inline and registry.executor("local") is LocalExecutor
    check_executor_plugin(Inline, tmp_path)


def test_executor_options_are_validated_and_listed(cxraug_cli) -> None:
    result = cxraug_cli("plugins", "show", "executor", "local")
    assert result.exit_code == 0 and "jobs" in result.output and "threads" in result.output
    listing = cxraug_cli("plugins", "list", "--kind", "executor")
    assert listing.exit_code == 0 and "local" in listing.output


def test_state_records_survive_concurrent_writers(tmp_path: Path) -> None:
    """Many processes updating one state file under its lock lose no update."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from cxraug.execution import update_json
        for i in range(25):
            update_json(Path({str(tmp_path / "state.json")!r}),
                        lambda s: s.setdefault(sys.argv[1], []).append(i))
        """
    )
    (tmp_path / "writer.py").write_text(script)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), f"w{n}"]) for n in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    state = json.loads((tmp_path / "state.json").read_text())
    assert {k: len(v) for k, v in state.items()} == {f"w{n}": 25 for n in range(4)}
