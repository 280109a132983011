"""--logger: TensorBoard and MLflow record what the run folder records, read back with their own readers."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxraug.training.metriclog import effective_rows
from cxraug.training.trackers import PARAM_FIELDS, flatten

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

# EventAccumulator keeps a sample of each tag unless told to keep everything (0 = all).
KEEP_ALL = {"scalars": 0, "images": 0, "tensors": 0}
TINY_GAN = ["--size", "16", "--batch-size", "8", "--log-every", "1", "--snapshot-every", "2steps"]
TINY_GAN += ["--opt", "nz=8", "--opt", "ngf=8", "--opt", "ndf=8"]
TINY_CNN = ["--batch-size", "4", "--opt", "input_size=32", "--opt", "width=4"]
BOTH = ["--logger", "tensorboard", "--logger", "mlflow"]


@pytest.fixture(autouse=True)
def _no_phone_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")


@pytest.fixture(scope="module")
def _prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny phantom dataset for the whole module (preparing it is most of a test's time)."""
    from typer.testing import CliRunner

    from cxraug.cli import build_app

    root = tmp_path_factory.mktemp("prepared")
    args = ["data", "prepare", "phantom", "--size", "32", "--name", "tiny", "--split", "0.6,0.2,0.2"]
    args += ["--opt", "n_per_class=10", "--opt", "classes=covid,normal", "--workspace", str(root)]
    env = {"CXRAUG_DISABLE_PLUGINS": "1", "CXRAUG_OFFLINE": "1", "COLUMNS": "200"}
    result = CliRunner().invoke(build_app(), args, env=env)
    assert result.exit_code == 0, result.output
    return root / "data" / "tiny"


@pytest.fixture
def tiny_data(cxraug_workspace, _prepared: Path) -> str:
    shutil.copytree(_prepared, cxraug_workspace.dataset_dir("tiny"))
    return "tiny"


def _rows(folder: Path) -> list[dict]:
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    return effective_rows(lines)


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance=KEEP_ALL)
    acc.Reload()
    return acc


def _options_text(acc) -> str:
    (event,) = acc.Tensors("options/text_summary")
    return event.tensor_proto.string_val[0].decode("utf-8")


def _mlflow(folder: Path):
    from mlflow.tracking import MlflowClient

    state = json.loads((folder / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    return client, client.get_run(state["run_id"]), state


def _history(client, run_id: str, key: str) -> dict[int, float]:
    """Step -> value; a step logged again after a resume keeps its latest value, as log.jsonl does."""
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in points}


def test_gan_run_logs_scalars_grids_and_options(cxraug_cli, cxraug_workspace, tiny_data) -> None:
    result = cxraug_cli("train-gan", "dcgan", "--data", tiny_data, "--kimg", "0.024", *TINY_GAN, *BOTH)
    assert result.exit_code == 0, result.output
    (run,) = (cxraug_workspace.runs_dir / "gan").iterdir()
    options = json.loads((run / "options.json").read_text())
    assert options["config"]["loggers"] == ["tensorboard", "mlflow"]
    assert options["config"]["logger_options"]["mlflow"] == {"tracking_uri": "", "experiment": "cxraug"}
    assert options["units"] == ["covid", "normal"]  # one model per label: one stream each
    params = flatten({k: options[k] for k in PARAM_FIELDS})
    assert {"config.arch", "config.options.nz", "dataset.fingerprint", "cxraug_version"} <= set(params)
    run_ids = set()
    for unit in options["units"]:
        folder = run / unit
        rows = _rows(folder)
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        acc = _events(folder)
        for key in ("loss_g", "loss_d", "kimg", "img_per_s"):
            events = acc.Scalars(key)
            assert [e.step for e in events] == [r["step"] for r in rows]
            # event files hold float32
            assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
        grids = acc.Images("samples")
        assert [e.step for e in grids] == [2, 4]
        # SummaryWriter stores a grayscale image as RGB
        shown = np.asarray(Image.open(io.BytesIO(grids[-1].encoded_image_string)).convert("L"))
        saved = np.asarray(Image.open(folder / "samples" / "step-00000004.png"))
        assert np.array_equal(shown, saved)
        assert "| config.arch | dcgan |" in _options_text(acc)

        client, mlrun, state = _mlflow(folder)
        run_ids.add(state["run_id"])
        assert (
            state["tracking_uri"]
            == "sqlite:///" + (cxraug_workspace.root / "mlruns" / "mlflow.db").resolve().as_posix()
        )
        assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == f"{run.name}/{unit}"
        for key in ("loss_g", "loss_d", "epoch"):
            assert _history(client, mlrun.info.run_id, key) == {r["step"]: r[key] for r in rows}
        assert mlrun.data.params == {k: str(v) for k, v in params.items()}
        images = [a.path for a in client.list_artifacts(mlrun.info.run_id, "images")]
        pngs = [p for p in images if p.endswith(".png")]
        assert sorted(p.split("+")[2] for p in pngs) == ["2", "4"], images
        local = client.download_artifacts(mlrun.info.run_id, max(pngs, key=lambda p: int(p.split("+")[2])))
        assert np.array_equal(np.asarray(Image.open(local)), saved)
    assert len(run_ids) == 2


def test_classifier_run_logs_and_a_resume_continues_the_same_records(
    cxraug_cli, cxraug_workspace, tiny_data
) -> None:
    args = ["train-classifier", "cnn", "--data", tiny_data, *TINY_CNN, *BOTH]
    result = cxraug_cli(*args, "--epochs", "1", "--logger-opt", "mlflow.experiment=study")
    assert result.exit_code == 0, result.output
    (run,) = (cxraug_workspace.runs_dir / "classifier").iterdir()
    _, _, first = _mlflow(run)
    # recorded loggers and options continue without being named again
    result = cxraug_cli("train-classifier", "--resume", str(run), "--epochs", "3")
    assert result.exit_code == 0, result.output
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    acc = _events(run)
    for key in ("train_loss", "val_loss", "val_auc_macro", "val_accuracy", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
    client, mlrun, state = _mlflow(run)
    assert state["run_id"] == first["run_id"] and mlrun.info.status == "FINISHED"
    assert client.get_experiment(mlrun.info.experiment_id).name == "study"
    for key in ("train_loss", "val_auc_macro", "lr"):
        assert _history(client, mlrun.info.run_id, key) == {r["step"]: r[key] for r in rows}
    # params are immutable in MLflow: the longer budget of the resume is a tag
    assert mlrun.data.params["config.epochs"] == "1" and mlrun.data.tags["resumed.config.epochs"] == "3"
    assert mlrun.data.params["config.arch"] == "cnn"
    # --logger on resume chooses anew: mlflow's recorded options do not count as a stray --logger-opt
    result = cxraug_cli("train-classifier", "--resume", str(run), "--epochs", "4", "--logger", "tensorboard")
    assert result.exit_code == 0, result.output
    config = json.loads((run / "options.json").read_text())["config"]
    assert config["loggers"] == ["tensorboard"] and list(config["logger_options"]) == ["tensorboard"]
    assert [e.step for e in _events(run).Scalars("train_loss")] == [1, 2, 3, 4]


def test_a_resume_after_a_kill_replaces_the_steps_it_goes_back_over(
    cxraug_cli, cxraug_workspace, tiny_data
) -> None:
    """TensorBoard hides the rows a resume drops from log.jsonl (purge_step), so both agree."""
    args = ["train-classifier", "cnn", "--data", tiny_data, *TINY_CNN, "--logger", "tensorboard"]
    assert cxraug_cli(*args, "--epochs", "2").exit_code == 0
    (run,) = (cxraug_workspace.runs_dir / "classifier").iterdir()
    # as if killed after logging epoch 2 but before its checkpoint: training goes back to epoch 1
    (run / "checkpoints" / "ckpt-0002.pt").unlink()
    options = json.loads((run / "options.json").read_text())
    options["status"] = "interrupted"
    (run / "options.json").write_text(json.dumps(options))
    result = cxraug_cli("train-classifier", "--resume", str(run), "--seed", "0")
    assert result.exit_code == 0, result.output
    rows = _rows(run)
    events = _events(run).Scalars("train_loss")
    assert [e.step for e in events] == [r["step"] for r in rows] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)


def test_logger_errors_are_one_line_before_anything_runs(
    cxraug_cli, cxraug_workspace, tiny_data, monkeypatch
) -> None:
    base = ["train-gan", "dcgan", "--data", tiny_data, "--kimg", "0.016", *TINY_GAN]
    cases = [
        (["--logger", "tensorbord"], "unknown logger 'tensorbord'. Did you mean 'tensorboard'?"),
        (["--logger", "mlflow", "--logger-opt", "mlflow.uri=x"], "invalid options for logger mlflow"),
        (["--logger-opt", "mlflow.experiment=x"], "logger 'mlflow' is not chosen"),
        (["--logger", "mlflow", "--logger-opt", "experiment=x"], "--logger-opt experiment=...: prefix"),
    ]
    for extra, message in cases:
        result = cxraug_cli(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and result.output.count("\n") == 1, (extra, result.output)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # find_spec: as if not installed
    result = cxraug_cli(*base, "--logger", "tensorboard")
    assert result.exit_code == 2
    assert 'needs tensorboard, not installed here: pip install "cxraug[trackers]"' in result.output
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    result = cxraug_cli(*base, "--logger", "mlflow")
    assert result.exit_code == 2 and "default SQLite store needs sqlalchemy" in result.output
    assert not (cxraug_workspace.runs_dir / "gan").exists(), "refused before a run folder was made"


def test_loggers_come_from_the_config_file_and_show_in_dry_run(cxraug_cli, tiny_data, tmp_path) -> None:
    config = tmp_path / "cxraug.toml"
    config.write_text(
        '[train-gan]\nloggers = ["mlflow"]\n\n[logger.mlflow]\ntracking_uri = "http://tracker:5000"\n'
    )
    result = cxraug_cli("train-gan", "dcgan", "--data", tiny_data, "--config", str(config), "--dry-run")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["config"]
    assert plan["loggers"] == ["mlflow"]
    assert plan["logger_options"] == {
        "mlflow": {"tracking_uri": "http://tracker:5000", "experiment": "cxraug"}
    }


def test_plugins_list_and_show_loggers(cxraug_cli) -> None:
    result = cxraug_cli("plugins", "list", "--kind", "logger", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout) if r["kind"] == "logger"}
    assert {"tensorboard", "mlflow"} <= set(rows) and rows["mlflow"]["status"] == "ok"
    show = cxraug_cli("plugins", "show", "logger", "mlflow")
    assert show.exit_code == 0 and "tracking_uri" in show.output and "[logger.mlflow]" in show.output
    assert "--logger-opt mlflow.KEY=VALUE" in show.output


def test_experiment_passes_its_loggers_to_every_run(cxraug_cli, cxraug_workspace, tiny_data) -> None:
    from cxraug.data.prepared import PreparedDataset
    from cxraug.experiment.runner import (
        ExperimentSettings,
        arm_results,
        classifier_stage_settings,
        gan_stage_settings,
    )

    result = cxraug_cli("experiment", "--quick", "--data", tiny_data, "--logger", "tensorboard", "--dry-run")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert (
        config["loggers"] == ["tensorboard"]
        and config["logger_options"]["tensorboard"]["subdir"] == "tensorboard"
    )
    cfg = ExperimentSettings.model_validate(config)
    source = PreparedDataset(cxraug_workspace.dataset_dir(tiny_data))
    for stage in (gan_stage_settings(cfg, source, 0), classifier_stage_settings(cfg, source, 0)):
        assert stage.loggers == ["tensorboard"] and stage.logger_options == cfg.logger_options
    results = {
        "arms": {"base": {"auc_macro": {"mean": 0.75, "ci_low": 0.5}, "seeds": 2, "accuracy": {"mean": 0.5}}}
    }
    assert arm_results(results) == {"base/auc_macro": 0.75, "base/accuracy": 0.5}


def test_experiment_logs_its_runs_and_its_results(cxraug_cli, cxraug_workspace, tiny_data) -> None:
    out = cxraug_workspace.root / "exp"
    args = [
        "experiment",
        "--quick",
        "--data",
        tiny_data,
        "--arms",
        "base",
        "--classifier",
        "cnn",
        "--seeds",
        "1",
    ]
    args += ["--epochs", "1", "--opt", "classifier.input_size=16", "--opt", "classifier.width=4"]
    result = cxraug_cli(*args, "--out", str(out), "--logger", "tensorboard")
    assert result.exit_code == 0, result.output
    state = json.loads((out / "experiment.json").read_text())
    (clf_run,) = (cxraug_workspace.runs_dir / "classifier").iterdir()
    assert json.loads((clf_run / "options.json").read_text())["config"]["loggers"] == ["tensorboard"]
    rows = _rows(clf_run)
    assert [e.value for e in _events(clf_run).Scalars("val_loss")] == pytest.approx(
        [r["val_loss"] for r in rows], rel=1e-6
    )
    study = _events(out)
    (point,) = study.Scalars("base/auc_macro")
    assert point.value == pytest.approx(state["results"]["arms"]["base"]["auc_macro"]["mean"], rel=1e-6)
    assert "| config.arms | base |" in _options_text(study)


def test_metric_rows_reach_the_loggers_and_a_failing_logger_is_dropped(tmp_path, caplog) -> None:
    from cxraug.errors import TrainingInterruptedError
    from cxraug.interfaces import Logger
    from cxraug.registry import Registry
    from cxraug.training.metriclog import MetricLog
    from cxraug.training.trackers import TrackerPlan

    seen: dict[str, list] = {"recorder": [], "broken": []}

    class Recorder(Logger):
        name = "recorder"

        def start(self, run):
            seen[self.name].append(("start", run.name, run.resume_step))

        def log_params(self, params):
            seen[self.name].append(("params", params))

        def log_scalars(self, step, values):
            seen[self.name].append(("scalars", step, values))

        def close(self, status):
            seen[self.name].append(("close", status))

    class Broken(Recorder):
        name = "broken"

        def log_scalars(self, step, values):
            raise RuntimeError("server went away")

    registry = Registry()
    for cls in (Recorder, Broken):
        assert registry.add("logger", cls, package="t", version="1").status == "ok"
    plan = TrackerPlan(registry, {"recorder": {}, "broken": {}}, {"config.arch": "x"}, "gan", tmp_path)
    with pytest.raises(TrainingInterruptedError), plan.deferred() as trackers:
        trackers.start(tmp_path, "run-1", 3)
        log = MetricLog(tmp_path, trackers=trackers)
        log.append({"step": 4, "loss": 0.5, "flag": True, "note": "text", "epoch": 2})
        log.append({"step": 5, "loss": 0.25})
        raise TrainingInterruptedError("Ctrl-C")
    assert seen["recorder"] == [
        ("start", "run-1", 3),
        ("params", {"config.arch": "x"}),
        ("scalars", 4, {"loss": 0.5, "epoch": 2.0}),
        ("scalars", 5, {"loss": 0.25}),
        ("close", "interrupted"),
    ]
    assert seen["broken"][-1] == ("close", "failed") and len(seen["broken"]) == 3
    assert "logger 'broken' failed (RuntimeError: server went away)" in caplog.text
    assert [r["step"] for r in log.rows] == [4, 5], "the run's own log is untouched"


def test_mlflow_store_creation_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """MLflow logs "Creating initial MLflow database tables..." through its own stderr handler."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from cxraug.interfaces import LoggerRun
    from cxraug.plugins.loggers.mlflow import MLflowLogger, MLflowOptions

    folder = tmp_path / "run"
    folder.mkdir()
    logger = MLflowLogger(MLflowOptions())
    logger.start(LoggerRun(folder=folder, name="run", kind="classifier", workspace=tmp_path))
    logger.log_scalars(1, {"train_loss": 0.5})
    logger.close("finished")
    captured = capfd.readouterr()
    assert "database tables" not in captured.err + captured.out
    assert (tmp_path / "mlruns" / "mlflow.db").is_file() and (folder / "mlflow.json").is_file()
