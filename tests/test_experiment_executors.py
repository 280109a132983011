"""`cxraug experiment` through executors: --jobs, options, the job records, a worker killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxraug.training.runs import latest_checkpoint

TINY = [
    "--gan",
    "acgan",
    "--classifier",
    "cnn",
    "--arms",
    "base,gan",
    "--gan-seeds",
    "1",
    "--synthetic",
    "8",
    "--seeds",
    "2",
    "--gan-kimg",
    "0.016",
    "--seed",
    "0",
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
]


@pytest.fixture
def tiny_data(cxraug_cli):
    args = [
        "data",
        "prepare",
        "phantom",
        "--size",
        "16",
        "--opt",
        "n_per_class=12",
        "--opt",
        "classes=covid,normal",
    ]
    assert cxraug_cli(*args).exit_code == 0


def _cli(workspace: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CXRAUG_WORKSPACE": str(workspace)}
    return subprocess.Popen(
        [sys.executable, "-m", "cxraug", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _results(out: Path) -> dict:
    return json.loads((out / "experiment.json").read_text())["results"]


def test_dry_run_shows_the_jobs_and_the_executor(cxraug_cli, cxraug_workspace, tiny_data) -> None:
    result = cxraug_cli("experiment", *TINY, "--epochs", "1", "--jobs", "3", "--dry-run")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["jobs"] == {"total": 7, "gan": 1, "data": 1, "classifier": 4, "analysis": 1}
    assert plan["executor"] == "local, 3 jobs at a time"
    assert plan["config"]["executor_options"]["jobs"] == 3


def test_bad_executor_choices_are_one_line(cxraug_cli, cxraug_workspace, tiny_data, tmp_path) -> None:
    unknown = cxraug_cli("experiment", *TINY, "--executor", "sge", "--dry-run")
    assert unknown.exit_code == 2 and "unknown executor 'sge'" in unknown.output and "local" in unknown.output
    bad_key = cxraug_cli("experiment", *TINY, "--opt", "executor.job=2", "--dry-run")
    text = " ".join(bad_key.output.split())
    assert bad_key.exit_code == 2 and "executor.job" in text and "jobs, spread_gpus, threads" in text
    bad_value = cxraug_cli("experiment", *TINY, "--jobs", "0", "--dry-run")
    assert bad_value.exit_code == 2 and "jobs" in bad_value.output
    config = tmp_path / "study.toml"
    config.write_text('[experiment]\nexecutor = "local"\n\n[executor.local]\njobs = 2\nthreads = 1\n')
    planned = cxraug_cli("experiment", *TINY, "--config", str(config), "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert json.loads(planned.stdout)["config"]["executor_options"] == {
        "jobs": 2,
        "threads": 1,
        "spread_gpus": True,
    }
    typo = tmp_path / "typo.toml"
    typo.write_text("[executor.slurmm]\npartition = 'gpu'\n")
    refused = cxraug_cli("experiment", *TINY, "--config", str(typo), "--dry-run")
    assert refused.exit_code == 2 and "executor.slurmm" in refused.output
    bare = tmp_path / "bare.toml"
    bare.write_text("[executor]\njobs = 2\n")
    refused = cxraug_cli("experiment", *TINY, "--config", str(bare), "--dry-run")
    assert refused.exit_code == 2 and "[executor.PLUGIN] table" in " ".join(refused.output.split())


def test_an_interrupted_study_resumes_under_another_executor(
    cxraug_cli, cxraug_workspace, tiny_data, monkeypatch, capsys
) -> None:
    from cxraug.training import classifier_trainer

    out = cxraug_workspace.root / "exp"
    original = classifier_trainer.ClassifierTrainer.train
    calls = {"n": 0}

    def flaky(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(classifier_trainer.ClassifierTrainer, "train", flaky)
    first = cxraug_cli("experiment", *TINY, "--epochs", "1", "--out", str(out))
    assert first.exit_code == 130
    jobs = json.loads((out / "experiment.json").read_text())["jobs"]
    assert jobs["clf-base-1"]["status"] == "interrupted" and jobs["clf-base-0"]["status"] == "finished"
    # a job run by hand: a finished one is a no-op, one whose dependency is not done is refused
    done = subprocess.run(
        [sys.executable, "-m", "cxraug.experiment.worker", str(out), "clf-base-0", "local"],
        capture_output=True,
        text=True,
        env={**os.environ, "CXRAUG_WORKSPACE": str(cxraug_workspace.root)},
    )
    assert done.returncode == 0, done.stderr
    from cxraug.experiment.worker import main as worker

    ws = ["--workspace", str(cxraug_workspace.root)]
    other = cxraug_workspace.root.parent / "other-workspace"
    other.mkdir()
    for args, expected in (
        (["clf-gan-g0-0", "local", *ws], "needs data-gan-g0 done first"),
        (["clf-nope-0", "local", *ws], "no job 'clf-nope-0'"),
        (["gan-x", "local", *ws], "no job 'gan-x'"),
        (["nonsense", "local", *ws], "no job 'nonsense'"),
        (["analysis", "local", "--workspace", "/nonexistent"], "--workspace /nonexistent: no such folder"),
        (["clf-base-0", "local", "--workspace", str(other)], f"--workspace {cxraug_workspace.root}"),
    ):
        assert worker([str(out), *args]) == 2, args
        err = " ".join(capsys.readouterr().err.split())
        assert expected in err and "Traceback" not in err, err
    monkeypatch.setattr(classifier_trainer.ClassifierTrainer, "train", original)
    second = cxraug_cli("experiment", "--resume", "--out", str(out), "--jobs", "2")
    assert second.exit_code == 0, second.output
    state = json.loads((out / "experiment.json").read_text())
    assert state["status"] == "finished"
    assert state["jobs"]["clf-base-0"]["attempts"] == 1, "a finished job is never rerun"
    assert state["jobs"]["clf-base-1"]["attempts"] == 2
    assert state["jobs"]["clf-base-0"]["pid"] != state["jobs"]["clf-gan-g0-0"]["pid"]
    options = json.loads((out / "options.json").read_text())
    assert options["config"]["jobs"] == 2, "the resume's --jobs is recorded"
    assert state["config"]["jobs"] == 2, "experiment.json holds the settings as resumed"
    report = (out / "report.md").read_text()
    assert "## Where the jobs ran" in report and "| clf-base-1 | local |" in report
    assert "needed more than one attempt" in report


@pytest.mark.slow
def test_a_worker_killed_mid_job_resumes_to_the_same_results(cxraug_workspace, tiny_data) -> None:
    """kill -9 of one job's process: the study stops naming it; --resume gives identical results."""
    ws = cxraug_workspace.root
    args = [*TINY, "--arms", "base", "--epochs", "4", "--jobs", "2"]  # classifiers only: quick
    reference = _cli(ws, "experiment", *args, "--out", str(ws / "ref"))
    output = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, output

    out = ws / "killed"
    study = _cli(ws, "experiment", *args, "--out", str(out))
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and study.poll() is None and time.monotonic() < deadline:
        state = (
            json.loads((out / "experiment.json").read_text()) if (out / "experiment.json").is_file() else {}
        )
        for job_id, record in state.get("jobs", {}).items():
            entry = state.get("runs", {}).get(f"base/{job_id[-1]}") if job_id.startswith("clf-base") else None
            if (
                record.get("status") == "running"
                and entry
                and latest_checkpoint(Path(entry["run"]) / "checkpoints")
            ):
                os.kill(record["pid"], signal.SIGKILL)  # mid-job: after its first checkpoint
                killed = job_id
                break
        time.sleep(0.02)
    output = study.communicate(timeout=600)[0]
    assert killed is not None, f"no classifier job was caught running: {output}"
    assert study.returncode == 2, output
    assert f"study job {killed}" in output and "killed by signal 9" in output

    resumed = _cli(ws, "experiment", "--resume", "--out", str(out))
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    state = json.loads((out / "experiment.json").read_text())
    assert state["jobs"][killed]["attempts"] == 2
    mine, ref = _results(out), _results(ws / "ref")
    assert mine["arms"]["base"]["auc_macro"]["values"] == ref["arms"]["base"]["auc_macro"]["values"]
    assert mine["arms"] == ref["arms"] and mine["vs_base"] == ref["vs_base"]


@pytest.mark.slow
def test_a_study_on_real_slurm_matches_the_local_run(cxraug_workspace, tiny_data, slurm_cluster) -> None:
    """The same tiny study under local --jobs 2 and on a real Slurm: identical results (one thread
    per job in both), every job recorded with its Slurm job id, its log in the study folder."""
    ws = cxraug_workspace.root
    args = [*TINY, "--arms", "base,classic", "--classic", "8", "--seeds", "1", "--epochs", "1"]
    local = _cli(ws, "experiment", *args, "--jobs", "2", "--out", str(ws / "local"))
    assert local.wait(timeout=600) == 0, local.communicate()[0]
    small = [
        f"--opt=executor.{kind}_{key}"
        for kind in ("gan", "data", "classifier", "analysis")
        for key in ("cpus=1", "mem_gb=1", "time_min=10")
    ]
    on_slurm = _cli(
        ws,
        "experiment",
        *args,
        "--executor",
        "slurm",
        "--opt",
        "executor.poll_s=0.3",
        *small,
        "--out",
        str(ws / "slurm"),
    )
    output = on_slurm.communicate(timeout=600)[0]
    assert on_slurm.returncode == 0, output
    state = json.loads((ws / "slurm" / "experiment.json").read_text())
    assert {rec["executor"] for rec in state["jobs"].values()} == {"slurm"}
    assert all(rec.get("slurm_job_id") for rec in state["jobs"].values())
    assert "| slurm | slurm job " in (ws / "slurm" / "report.md").read_text()
    assert "experiment: base/0" in (ws / "slurm" / "jobs" / "clf-base-0.log").read_text()
    mine, ref = _results(ws / "slurm"), _results(ws / "local")
    for arm in ("base", "classic"):
        assert mine["arms"][arm]["auc_macro"]["values"] == ref["arms"][arm]["auc_macro"]["values"], arm


@pytest.mark.slow
def test_sigterm_to_the_coordinator_stops_the_study_as_ctrl_c_does(cxraug_workspace, tiny_data) -> None:
    ws = cxraug_workspace.root
    out = ws / "study"
    study = _cli(ws, "experiment", *TINY, "--epochs", "6", "--jobs", "2", "--out", str(out))
    running = None
    deadline = time.monotonic() + 300
    while running is None and study.poll() is None and time.monotonic() < deadline:
        state = (
            json.loads((out / "experiment.json").read_text()) if (out / "experiment.json").is_file() else {}
        )
        running = next((j for j, r in state.get("jobs", {}).items() if r.get("status") == "running"), None)
        time.sleep(0.05)
    assert running is not None, study.communicate()[0]
    study.send_signal(signal.SIGTERM)
    output = study.communicate(timeout=120)[0]
    assert study.returncode == 130, output
    assert json.loads((out / "options.json").read_text())["status"] == "interrupted"
    record = json.loads((out / "experiment.json").read_text())["jobs"][running]
    assert record["status"] in ("interrupted", "finished"), record
