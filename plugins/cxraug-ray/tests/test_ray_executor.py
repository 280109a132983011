"""The Ray executor on one local Ray (started once for the module): the executor contract, the
resources each job kind reserves, where job output and errors go, cancelling, and registration."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from cxraug.errors import CxrError, OptionsError
from cxraug.execution import JobFailedError, run_job_locked
from cxraug.interfaces import JOB_INTERRUPTED_EXIT, JOB_KINDS, ExecJob
from cxraug.options import resolve_options
from cxraug.testing import check_executor_plugin
from cxraug.toyplan import ToyPlan

from cxraug_ray import RayExecutor, RayOptions
from cxraug_ray.executor import _RayTasks, _run_task

ray = pytest.importorskip("ray", reason="cxraug-ray's tests need Ray: pip install -e plugins/cxraug-ray")

#: The Ray the module's tests share; the contract check asks for the same size.
CPUS = 2


@pytest.fixture(autouse=True)
def _plugins_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load installed entry points even where a conftest disables them for the core's tests."""
    monkeypatch.delenv("CXRAUG_DISABLE_PLUGINS", raising=False)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one takes seconds); the executor uses it as it is."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=CPUS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    # Probe (below) lives in this test module, which Ray's workers cannot import: send it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@dataclass(frozen=True)
class Probe:
    """A toy job that also writes what its Ray task was given; ``mode`` "raise" or "crash" fails it."""

    folder: str
    job_id: str
    mode: str = "ok"

    def __call__(self) -> int:
        import ray as worker_ray

        seen = {
            "resources": worker_ray.get_runtime_context().get_assigned_resources(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }
        Path(self.folder, f"probe-{self.job_id}.json").write_text(json.dumps(seen), encoding="utf-8")
        print(f"probe {self.job_id} on stdout", flush=True)
        os.write(2, f"probe {self.job_id} on fd 2\n".encode())  # as a C library would write
        if self.mode == "crash":
            os._exit(3)
        plan = ToyPlan(Path(self.folder))

        def work() -> None:
            if self.mode == "raise":
                raise ValueError(f"probe {self.job_id} broke")

        return run_job_locked(
            plan.folder, self.job_id, "ray", done=lambda: plan.done(self.job_id), work=work, recorder=plan
        )


class ProbePlan(ToyPlan):
    """A ToyPlan whose jobs run Probe; ``modes`` maps job ids to "raise" or "crash"."""

    modes: dict[str, str] = {}

    def call(self, job_id: str, executor: str) -> Probe:  # type: ignore[override]
        return Probe(str(self.folder), job_id, self.modes.get(job_id, "ok"))

    def probe(self, job_id: str) -> dict:
        return json.loads((self.folder / f"probe-{job_id}.json").read_text(encoding="utf-8"))


def probe_plan(folder: Path, jobs: list[ExecJob], modes: dict[str, str] | None = None) -> ProbePlan:
    ToyPlan.create(folder, jobs, sleep_s=0)
    plan = ProbePlan(folder)
    plan.modes = modes or {}
    return plan


def test_executor_contract_on_a_local_ray(local_ray, tmp_path: Path) -> None:
    executor = check_executor_plugin(RayExecutor, tmp_path, options={"num_cpus": CPUS, "poll_s": 0.1})
    plan = ToyPlan(tmp_path / "toy")
    assert {row["pid"] for row in plan.ran()}.isdisjoint({str(os.getpid())}), "jobs ran in the driver"
    assert "toy job gan-0 working" in plan.log_path("gan-0").read_text(encoding="utf-8")
    assert ray.is_initialized(), "a Ray the caller started must be left running"
    assert executor.describe() == f"local Ray with {CPUS} CPUs"


def test_each_job_kind_gets_its_resources_and_threads(local_ray, tmp_path: Path) -> None:
    jobs = [ExecJob("g", "gan"), ExecJob("d", "data", ("g",)), ExecJob("c", "classifier", ("d",))]
    plan = probe_plan(tmp_path / "p", jobs)
    options = RayOptions(gan_cpus=2, data_cpus=0.5, classifier_cpus=1, poll_s=0.05)
    RayExecutor(options).run(plan)
    assert all(plan.done(job.id) for job in jobs)
    gan, data, clf = plan.probe("g"), plan.probe("d"), plan.probe("c")
    assert gan["resources"].get("CPU") == 2 and gan["omp"] == "2"
    assert data["resources"].get("CPU") == 0.5 and data["omp"] == "1"
    assert clf["resources"].get("CPU") == 1 and clf["omp"] == "1"
    assert not gan["resources"].get("GPU") and gan["cuda"] == "", "a job without GPUs must not see any"
    log = plan.log_path("d").read_text(encoding="utf-8")
    assert "probe d on stdout" in log and "probe d on fd 2" in log


def test_a_kind_no_node_can_hold_is_refused_before_anything_runs(local_ray, tmp_path: Path) -> None:
    jobs = [ExecJob("g", "gan"), ExecJob("c", "classifier", ("g",))]
    plan = probe_plan(tmp_path / "p", jobs)
    with pytest.raises(OptionsError, match=r"^--opt executor\.classifier_cpus=3: the local Ray") as exc:
        RayExecutor(RayOptions(classifier_cpus=3)).run(plan)
    assert "largest node has 2 CPUs" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(OptionsError, match=r"executor\.gan_gpus=1: .*most GPUs on one node is 0"):
        RayExecutor(RayOptions(gan_gpus=1)).run(plan)
    assert not list(plan.folder.glob("probe-*.json")), "a job ran although the run was refused"
    # Only the kinds the plan still has to run are checked.
    only_gan = probe_plan(tmp_path / "q", [ExecJob("g", "gan")])
    RayExecutor(RayOptions(classifier_cpus=3, poll_s=0.05)).run(only_gan)
    assert only_gan.done("g")


def test_a_job_that_raises_leaves_its_traceback_in_its_log(local_ray, tmp_path: Path) -> None:
    jobs = [ExecJob("g", "gan"), ExecJob("d", "data", ("g",)), ExecJob("a", "analysis", ("d",))]
    plan = probe_plan(tmp_path / "p", jobs, {"d": "raise"})
    with pytest.raises(JobFailedError, match=r"study job d .*exit code 1.*ValueError: probe d broke") as exc:
        RayExecutor(RayOptions(poll_s=0.05)).run(plan)
    assert str(plan.log_path("d")) in str(exc.value)
    log = plan.log_path("d").read_text(encoding="utf-8")
    assert "Traceback" in log and "ValueError: probe d broke" in log
    assert plan.done("g") and not plan.done("a") and not (plan.folder / "probe-a.json").exists()


def test_a_crashed_worker_fails_the_job_and_ray_says_why_in_its_log(local_ray, tmp_path: Path) -> None:
    plan = probe_plan(tmp_path / "p", [ExecJob("g", "gan")], {"g": "crash"})
    with pytest.raises(JobFailedError, match=r"study job g .*exit code 1"):
        RayExecutor(RayOptions(poll_s=0.05)).run(plan)
    log = plan.log_path("g").read_text(encoding="utf-8")
    assert "probe g on stdout" in log
    assert "[cxraug-ray] Ray reported:" in log and "worker died" in log.lower()


def test_cancel_lets_the_job_record_itself_interrupted(local_ray, tmp_path: Path) -> None:
    plan = ToyPlan.create(tmp_path / "toy", [ExecJob("g", "gan")], sleep_s=1.0)
    launcher = _RayTasks(plan, RayOptions(), ray.remote(_run_task))
    task = launcher.start(plan.jobs[0])
    deadline = time.monotonic() + 60
    while plan.job_record("g").get("status") != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    launcher.cancel(task)
    launcher.close()
    assert launcher.poll(task) == JOB_INTERRUPTED_EXIT
    assert plan.job_record("g")["status"] == "interrupted" and not plan.ran()
    # Its lock was released: running the plan again finishes it.
    RayExecutor(RayOptions(poll_s=0.05)).run(plan)
    assert plan.done("g") and [row["id"] for row in plan.ran()] == ["g"]


@dataclass
class _UnsharedPlan:
    """What a Ray node sees when the study folder is not on a shared filesystem."""

    folder: Path
    logs: Path
    jobs: tuple[ExecJob, ...] = (ExecJob("g", "gan"),)

    def call(self, job_id: str, executor: str) -> Probe:
        return Probe(str(self.folder), job_id)

    def log_path(self, job_id: str) -> Path:
        return self.logs / f"{job_id}.log"


def test_a_study_folder_the_node_cannot_see_is_named(local_ray, tmp_path: Path) -> None:
    plan = _UnsharedPlan(tmp_path / "only-on-the-driver", tmp_path / "logs")
    launcher = _RayTasks(plan, RayOptions(), ray.remote(_run_task))  # type: ignore[arg-type]
    task = launcher.start(plan.jobs[0])
    ray.wait([task.ref], timeout=60)
    with pytest.raises(CxrError, match=r"only-on-the-driver: the study folder is not visible on Ray node"):
        launcher.poll(task)


def test_listed_as_an_executor_from_its_distribution(cxraug_cli) -> None:
    try:
        distribution("cxraug-ray")
    except PackageNotFoundError:
        pytest.skip(
            "cxraug-ray is not installed (pip install -e plugins/cxraug-ray); its entry point is unseen"
        )
    result = cxraug_cli("plugins", "list", "--kind", "executor", "--json")
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["name"] == "ray"]
    assert len(rows) == 1, result.stdout
    assert rows[0]["kind"] == "executor" and rows[0]["package"] == "cxraug-ray" and rows[0]["status"] == "ok"


def test_options_cover_every_job_kind_and_refuse_num_cpus_for_a_cluster() -> None:
    options = RayOptions()
    assert {kind: options.resources(kind) for kind in JOB_KINDS} == dict.fromkeys(JOB_KINDS, (1.0, 0.0))
    with pytest.raises(OptionsError, match="num_cpus sizes the local Ray"):
        resolve_options(RayOptions, plugin="executor ray", opts={"address": "auto", "num_cpus": "4"})
    with pytest.raises(OptionsError, match="data_gpus"):
        resolve_options(RayOptions, plugin="executor ray", opts={"data_gpus": "-1"})
    with pytest.raises(CxrError, match="no resources for job kind 'render'"):
        options.resources("render")
    assert RayExecutor(RayOptions(address="ray://head:10001", max_parallel=4)).describe() == (
        "Ray cluster at ray://head:10001, at most 4 jobs at a time"
    )
