"""The run layer: one resume policy (settings and data), one lock per run, statuses, bad values."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxraug.evaluation.command import EvaluationRun
from cxraug.experiment.runner import ExperimentRun
from cxraug.training.classifier_run import ClassifierRun
from cxraug.training.gan_run import GanRun
from cxraug.training.runs import RunStatus

GAN = ["train-gan", "dcgan", "--data", "tiny", "--size", "16", "--batch-size", "8", "--opt", "nz=8"]
GAN += ["--opt", "ngf=8", "--opt", "ndf=8"]
CLF = ["train-classifier", "cnn", "--data", "tiny", "--batch-size", "8", "--opt", "input_size=16"]
CLF += ["--opt", "width=4"]


def _prepare(cxraug_cli, n: int = 12, force: bool = False) -> None:
    args = ["data", "prepare", "phantom", "--size", "16", "--name", "tiny", "--opt", f"n_per_class={n}"]
    args += ["--opt", "classes=covid,normal"] + (["--force"] if force else [])
    result = cxraug_cli(*args)
    assert result.exit_code == 0, result.output


@pytest.fixture
def tiny(cxraug_cli) -> str:
    _prepare(cxraug_cli)
    return "tiny"


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text


def test_gan_resume_refuses_changed_settings_and_data_accepts_unchanged(cxraug_cli, cxraug_workspace, tiny):
    assert cxraug_cli(*GAN, "--kimg", "0.016").exit_code == 0
    run = GanRun.resolve(cxraug_workspace, None)
    assert run.status is RunStatus.FINISHED and run.record.dataset.fingerprint
    changed = cxraug_cli("train-gan", "--resume", str(run.path), "--batch-size", "4", "--kimg", "0.032")
    _one_line_error(changed, "these differ", "--batch-size 8 -> 4")
    opt_changed = cxraug_cli("train-gan", "--resume", str(run.path), "--opt", "nz=4", "--kimg", "0.032")
    _one_line_error(opt_changed, "options.nz 8 -> 4")
    # the same flags again (as torchrun children repeat them) and a longer budget: accepted
    same = cxraug_cli(*GAN, "--resume", str(run.path), "--kimg", "0.032")
    assert same.exit_code == 0, same.output
    assert GanRun(run.path).settings.kimg == pytest.approx(0.032)
    _prepare(cxraug_cli, n=14, force=True)
    other_data = cxraug_cli("train-gan", "--resume", str(run.path), "--kimg", "0.048")
    _one_line_error(other_data, "re-prepared", "tiny")


def test_classifier_resume_refuses_changed_settings_and_data_accepts_unchanged(
    cxraug_cli, cxraug_workspace, tiny
):
    assert cxraug_cli(*CLF, "--epochs", "1").exit_code == 0
    run = ClassifierRun.resolve(cxraug_workspace, None)
    changed = cxraug_cli("train-classifier", "--resume", str(run.path), "--lr", "0.5", "--epochs", "2")
    _one_line_error(changed, "these differ", "--lr None -> 0.5")
    same = cxraug_cli(*CLF, "--resume", str(run.path), "--epochs", "2")
    assert same.exit_code == 0, same.output
    assert ClassifierRun(run.path).settings.epochs == 2
    _prepare(cxraug_cli, n=14, force=True)
    _one_line_error(cxraug_cli("train-classifier", "--resume", str(run.path), "--epochs", "3"), "re-prepared")


EXP = [
    "experiment",
    "--gan",
    "acgan",
    "--classifier",
    "cnn",
    "--arms",
    "base",
    "--seeds",
    "1",
    "--epochs",
    "1",
]
EXP += ["--opt", "classifier.input_size=16", "--opt", "classifier.width=4", "--data", "tiny"]


def test_experiment_resume_refuses_changed_settings_and_data_accepts_unchanged(
    cxraug_cli, cxraug_workspace, tiny
):
    out = cxraug_workspace.root / "exp"
    assert cxraug_cli(*EXP, "--out", str(out)).exit_code == 0
    assert ExperimentRun(out).status is RunStatus.FINISHED
    _one_line_error(cxraug_cli(*EXP, "--out", str(out), "--seeds", "2"), "these differ", "--seeds 1 -> 2")
    same = cxraug_cli(*EXP, "--out", str(out))
    assert same.exit_code == 0 and "already finished" in same.output
    _prepare(cxraug_cli, n=14, force=True)
    _one_line_error(cxraug_cli(*EXP, "--out", str(out)), "re-prepared")


def test_second_process_on_a_run_is_refused(cxraug_cli, cxraug_workspace, tiny):
    env = {**os.environ, "CXRAUG_WORKSPACE": str(cxraug_workspace.root), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "cxraug", *GAN, "--kimg", "20", "--snapshot-every", "100steps"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        lock = None
        while time.monotonic() < deadline:
            found = list((cxraug_workspace.runs_dir / "gan").glob("*/.lock"))
            if found and found[0].read_text().strip():
                lock = found[0]
                break
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.2)
        assert lock is not None, "the first process never locked its run"
        second = subprocess.run(
            [sys.executable, "-m", "cxraug", "train-gan", "--resume", "auto"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        assert f"in use by process {first.pid}" in " ".join(second.stderr.split())
    finally:
        first.kill()
        first.wait()
    log = lock.parent / "log.jsonl"
    steps = (
        [json.loads(line).get("step") for line in log.read_text().splitlines() if line.strip()]
        if log.exists()
        else []
    )
    assert len(steps) == len(set(steps)), "only one process wrote the log"


def test_bad_values_fail_in_one_line_before_a_run_folder_exists(cxraug_cli, cxraug_workspace, tiny, tmp_path):
    for flags, needle in (
        (["--seed", "99999999999999999999999"], "--seed"),
        (["--epochs", "nan"], "--epochs"),
        (["--log-every", "0"], "--log-every"),
        (["--snapshot-every", "soon"], "--snapshot-every"),
        (["--device", "tpu"], "--device"),
    ):
        _one_line_error(cxraug_cli(*GAN, *flags), needle)
    assert not (cxraug_workspace.runs_dir / "gan").exists() or not any(
        (cxraug_workspace.runs_dir / "gan").iterdir()
    )
    tables = {
        "train-gan": ('batch_size = "abc"', ["train-gan", "dcgan", "--data", "tiny"], "batch_size = 'abc'"),
        "train-classifier": ("epochs = 1.5", ["train-classifier", "cnn", "--data", "tiny"], "epochs = 1.5"),
        "augment": ('seed = "x"', ["augment", "--classic", "2", "--data", "tiny"], "seed = 'x'"),
        "prepare": ('size = "big"', ["data", "prepare", "phantom"], "size = 'big'"),
        "evaluate": ("n = -3", ["evaluate", "--roc"], "n = -3"),
    }
    for section, (line, args, needle) in tables.items():
        cfg = tmp_path / f"{section}.toml"
        cfg.write_text(f"[{section}]\n{line}\n")
        _one_line_error(cxraug_cli(*args, "--config", str(cfg)), str(cfg), f"[{section}]", needle)
    bad_opt = cxraug_cli(*GAN, "--opt", "nz=abc")
    _one_line_error(bad_opt, "nz", "abc")


def test_best_epoch_score_is_the_reported_validation_macro_auc(cxraug_cli, cxraug_workspace, tiny):
    assert cxraug_cli(*CLF, "--epochs", "3").exit_code == 0
    run = ClassifierRun.resolve(cxraug_workspace, None)
    best = run.best
    assert best is not None and best.metric == "val_auc_macro" and best.labels_scored == ["covid", "normal"]
    rows = [json.loads(line) for line in (run.path / "log.jsonl").read_text().splitlines()]
    logged = {r["epoch"]: r["val_auc_macro"] for r in rows if "epoch" in r}
    assert best.score == pytest.approx(max(logged.values()), abs=1e-6)
    result = cxraug_cli("evaluate", "--roc", "--classifier", str(run.path), "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)["values"]["roc"]["auc_macro"]
    assert reported == pytest.approx(best.score, abs=1e-6)
    assert EvaluationRun.resolve(cxraug_workspace, None).status is RunStatus.FINISHED


def test_failed_runs_are_marked_and_never_picked_by_auto(cxraug_cli, cxraug_workspace, tiny, monkeypatch):
    from cxraug.training import classifier_trainer

    assert cxraug_cli(*CLF, "--epochs", "1").exit_code == 0
    run = ClassifierRun.resolve(cxraug_workspace, None)
    run.mark(RunStatus.RUNNING)

    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(classifier_trainer.ClassifierTrainer, "train", broken)
    result = cxraug_cli("train-classifier", "--resume", "auto", "--epochs", "2")
    assert result.exit_code != 0
    run = ClassifierRun(run.path)
    assert run.status is RunStatus.FAILED and "disk on fire" in (run.record.error or "")
    assert ClassifierRun.latest_resumable(cxraug_workspace) is None
    # a run that failed before it held anything leaves no folder behind
    before = {p.name for p in (cxraug_workspace.runs_dir / "classifier").iterdir()}
    assert cxraug_cli(*CLF, "--epochs", "1").exit_code != 0
    assert {p.name for p in (cxraug_workspace.runs_dir / "classifier").iterdir()} == before


def test_resume_survives_a_damaged_sample_png_and_keeps_log_history(cxraug_cli, cxraug_workspace, tiny):
    old = os.umask(0o022)
    try:
        assert cxraug_cli(*GAN, "--kimg", "0.032", "--log-every", "1").exit_code == 0
    finally:
        os.umask(old)
    run = GanRun.resolve(cxraug_workspace, None)
    for path in (run.options_path, *run.path.rglob("ckpt-*.pt")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    unit = run.unit_folder("covid")  # dcgan trains one model per label
    sample = sorted((unit / "samples").glob("*.png"))[-1]
    sample.write_bytes(sample.read_bytes()[: sample.stat().st_size // 2])
    (unit / "checkpoints" / ".ckpt-00000099.pt.abc.tmp").write_bytes(b"partial")
    lines_before = (unit / "log.jsonl").read_text().splitlines()
    result = cxraug_cli(*GAN, "--resume", str(run.path), "--kimg", "0.048", "--log-every", "1")
    assert result.exit_code == 0, result.output
    lines_after = (unit / "log.jsonl").read_text().splitlines()
    assert lines_after[: len(lines_before)] == lines_before, "the log is only appended to"
    assert any('"event": "resume"' in line for line in lines_after[len(lines_before) :])
    assert not list(run.path.rglob("*.tmp"))
    assert (unit / "progress.gif").is_file()


def test_run_folders_are_typed_objects(cxraug_cli, cxraug_workspace, tiny):
    assert cxraug_cli(*GAN, "--kimg", "0.016").exit_code == 0
    run = GanRun.resolve(cxraug_workspace, None)
    assert GanRun.resolve(cxraug_workspace, run.name).path == run.path
    assert run.labels == ["covid", "normal"] and run.record.units == ["covid", "normal"]
    from cxraug.plugins import build_registry, get_plugin_manager

    gen = run.load_generator(build_registry(get_plugin_manager()), __import__("torch").device("cpu"), "covid")
    assert gen.labels == ["covid"]
    with pytest.raises(Exception, match="not a classifier run"):
        _ = ClassifierRun(run.path).record
    assert isinstance(Path(run.options_path), Path)


def test_budgets_only_grow_and_switching_units_is_clean(cxraug_cli, cxraug_workspace, tiny):
    assert cxraug_cli(*GAN, "--kimg", "0.032").exit_code == 0
    run = GanRun.resolve(cxraug_workspace, None)
    before = run.options_path.read_text()
    _one_line_error(cxraug_cli("train-gan", "--resume", str(run.path), "--kimg", "0.016"), "new total")
    assert run.options_path.read_text() == before, "a refused resume rewrites nothing"
    other_unit = cxraug_cli("train-gan", "--resume", str(run.path), "--epochs", "1", "--dry-run")
    assert other_unit.exit_code in (0, 2) and "Traceback" not in other_unit.output
    finished = cxraug_cli("train-gan", "--resume", str(run.path), "--dry-run")
    assert finished.exit_code == 0 and "already finished" in json.loads(finished.stdout)["note"]


def test_generate_after_training_longer_and_bad_checkpoints(cxraug_cli, cxraug_workspace, tiny, tmp_path):
    assert cxraug_cli(*GAN, "--kimg", "0.016").exit_code == 0
    assert cxraug_cli("generate", "--n", "4").exit_code == 0
    assert cxraug_cli(*GAN, "--resume", "auto", "--kimg", "0.032").exit_code == 0
    again = cxraug_cli("generate", "--n", "4")
    assert again.exit_code == 0, again.output
    assert len(list((cxraug_workspace.root / "generated").iterdir())) == 2, "new checkpoints, new folder"
    junk = tmp_path / "junk.pt"
    for content in (b"not a checkpoint at all", b""):
        junk.write_bytes(content)
        _one_line_error(cxraug_cli("generate", "--checkpoint", str(junk)), str(junk))


def test_unknown_plugin_tables_and_duplicate_keys_in_config(cxraug_cli, tiny, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[gan.stylegan]\nr1_gamma = 1.0\n")
    _one_line_error(cxraug_cli(*GAN, "--kimg", "0.016", "--config", str(cfg)), "[gan.stylegan]", "stylegan2")
    cfg.write_text("[train-gan]\nbatch_size = 4\nbatch-size = 8\n")
    _one_line_error(cxraug_cli(*GAN, "--kimg", "0.016", "--config", str(cfg)), "twice")


def test_defaults_never_start_from_an_augmented_dataset(cxraug_cli, cxraug_workspace, tiny):
    assert cxraug_cli("augment", "--classic", "4", "--data", "tiny").exit_code == 0
    plan = cxraug_cli("train-gan", "dcgan", "--dry-run")
    assert plan.exit_code == 0 and json.loads(plan.stdout)["config"]["data"] == "tiny"
    quick = cxraug_cli("experiment", "--quick", "--dry-run")
    assert quick.exit_code == 0 and json.loads(quick.stdout)["config"]["data"] == "tiny"
    augmented = cxraug_cli("experiment", "--quick", "--dry-run", "--data", "tiny-aug-cla4-s0")
    _one_line_error(augmented, "made by `augment`")


def test_default_run_is_the_newest_finished_one(cxraug_cli, cxraug_workspace, tiny, monkeypatch):
    """A run killed half-way (still 'running') is not what evaluate/generate pick by default."""
    import shutil

    assert cxraug_cli(*CLF, "--epochs", "1").exit_code == 0
    done = ClassifierRun.resolve(cxraug_workspace, None)
    killed = done.path.with_name("99991231-000000-" + done.path.name.split("-", 2)[2])
    shutil.copytree(done.path, killed)
    ClassifierRun(killed).mark(RunStatus.RUNNING)
    from cxraug.training import runs

    said: list[str] = []
    monkeypatch.setattr(runs.log, "warning", lambda msg, *args: said.append(msg % args))
    assert ClassifierRun.resolve(cxraug_workspace, None).path == done.path
    assert len(said) == 1 and "newest finished" in said[0] and killed.name in said[0]
    assert ClassifierRun.resolve(cxraug_workspace, killed.name).path == killed  # named: used
    shutil.rmtree(done.path)
    assert ClassifierRun.resolve(cxraug_workspace, None).path == killed  # nothing finished: the newest
