"""The Ray executor starting its own local Ray (address unset) and stopping it after the study.

Kept apart from test_ray_executor.py, whose module-wide Ray would otherwise be used as it is.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from cxraug.errors import CxrError
from cxraug.interfaces import ExecJob
from cxraug.toyplan import ToyPlan

from cxraug_ray import RayExecutor, RayOptions

ray = pytest.importorskip("ray", reason="cxraug-ray's tests need Ray: pip install -e plugins/cxraug-ray")


@pytest.mark.slow
def test_starts_a_local_ray_for_the_study_and_stops_it_after(tmp_path: Path) -> None:
    if ray.is_initialized():
        ray.shutdown()

    def handler(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        plan = ToyPlan.create(
            tmp_path / "toy", [ExecJob("g", "gan"), ExecJob("d", "data", ("g",))], sleep_s=0
        )
        executor = RayExecutor(RayOptions(num_cpus=1, poll_s=0.05))
        assert executor.describe() == "local Ray with 1 CPU"
        executor.run(plan)
        assert [row["id"] for row in plan.ran()] == ["g", "d"]
        assert all(row["pid"] != str(os.getpid()) for row in plan.ran()), "jobs ran in the driver"
        assert not ray.is_initialized(), "the Ray the executor started was left running"
        assert signal.getsignal(signal.SIGTERM) is handler, "ray.init's SIGTERM handler was left in place"
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_nothing_answers_on_is_refused_at_once(tmp_path: Path, scheme: str) -> None:
    if ray.is_initialized():
        ray.shutdown()
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plan = ToyPlan.create(tmp_path / "toy", [ExecJob("g", "gan")], sleep_s=0)
    address = f"{scheme}127.0.0.1:{port}"
    with pytest.raises(
        CxrError, match=rf"^--opt executor\.address={address}: nothing answers at 127.0.0.1:{port}"
    ):
        RayExecutor(RayOptions(address=address)).run(plan)
    assert not ray.is_initialized() and not plan.ran()
