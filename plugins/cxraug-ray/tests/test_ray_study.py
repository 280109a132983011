"""A real (tiny) cxraug study through `cxraug experiment --executor ray`, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="cxraug-ray's tests need Ray: pip install -e plugins/cxraug-ray")


def _cxraug(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the installed entry point is how a user gets the plugin: third-party plugins on
    env = {
        **os.environ,
        "CXRAUG_WORKSPACE": str(workspace),
        "CXRAUG_DISABLE_PLUGINS": "0",
        "CXRAUG_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "cxraug", *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_tiny_study_runs_on_ray_and_records_it(tmp_path: Path) -> None:
    prepared = _cxraug(
        tmp_path,
        "data",
        "prepare",
        "phantom",
        "--size",
        "16",
        "--opt",
        "n_per_class=12",
        "--opt",
        "classes=covid,normal",
    )
    assert prepared.returncode == 0, prepared.stderr
    out = tmp_path / "study"
    study = _cxraug(
        tmp_path,
        "experiment",
        "--gan",
        "acgan",
        "--classifier",
        "cnn",
        "--arms",
        "base,classic",
        "--classic",
        "8",
        "--gan-seeds",
        "1",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--synthetic",
        "8",
        "--gan-kimg",
        "0.016",
        "--opt",
        "gan.latent_dim=8",
        "--opt",
        "gan.ngf=8",
        "--opt",
        "gan.ndf=8",
        "--opt",
        "classifier.input_size=16",
        "--opt",
        "classifier.width=4",
        "--executor",
        "ray",
        "--opt",
        "executor.num_cpus=2",
        "--out",
        str(out),
    )
    assert study.returncode == 0, study.stderr
    state = json.loads((out / "experiment.json").read_text())
    assert state["status"] == "finished"
    assert {rec["executor"] for rec in state["jobs"].values()} == {"ray"}
    assert len(state["jobs"]) == 4 and all(rec["status"] == "finished" for rec in state["jobs"].values())
    assert "| clf-base-0 | ray |" in (out / "report.md").read_text()
    assert "experiment: base/0" in (out / "jobs" / "clf-base-0.log").read_text()
