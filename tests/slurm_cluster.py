"""The ``slurm_cluster`` fixture: a real single-node Slurm (tests/slurm/start_slurm.sh), or a skip
whose reason is the script's one line (not root, packages missing, a daemon that did not come up)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

START_SCRIPT = Path(__file__).resolve().parent / "slurm" / "start_slurm.sh"
#: The script may apt-get install slurm-wlm and munge on a fresh CI machine.
START_TIMEOUT_S = 900


def start_slurm() -> tuple[str | None, str]:
    """(SLURM_CONF, "") when the test cluster runs, else (None, the reason in one line)."""
    try:
        proc = subprocess.run(
            ["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None, f"{START_SCRIPT.name} did not finish within {START_TIMEOUT_S} s"
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    exports = [line for line in lines if line.startswith("export SLURM_CONF=")]
    if proc.returncode == 0 and exports:
        return exports[-1].split("=", 1)[1].strip(), ""
    # The script's own verdict; a stray line of a tool it ran must not hide it.
    verdicts = [line for line in lines if line.startswith("slurm not started:")]
    if verdicts:
        return None, verdicts[-1]
    return None, (lines[-1] if lines else f"{START_SCRIPT.name} exited {proc.returncode} without a word")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """SLURM_CONF of the running test cluster, set in the environment for the session's tests."""
    conf, reason = start_slurm()
    if conf is None:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", conf)
        yield conf
