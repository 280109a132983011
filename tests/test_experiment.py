"""`cxraug experiment`: end to end on tiny data, statistics, and resume after an interruption."""

from __future__ import annotations

import json

import pytest

from cxraug.training import classifier_trainer

TINY = [
    "--gan-seeds",
    "1",
    "--gan",
    "acgan",
    "--classifier",
    "cnn",
    "--synthetic",
    "8",
    "--classic",
    "8",
    "--seeds",
    "2",
    "--epochs",
    "1",
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
]


@pytest.fixture
def tiny_data(cxraug_cli):
    assert (
        cxraug_cli(
            "data",
            "prepare",
            "phantom",
            "--size",
            "16",
            "--opt",
            "n_per_class=12",
            "--opt",
            "classes=covid,normal",
        ).exit_code
        == 0
    )


def test_experiment_end_to_end(cxraug_cli, cxraug_workspace, tiny_data, standin_inception) -> None:
    out = cxraug_workspace.root / "exp"
    result = cxraug_cli(
        "experiment",
        *TINY,
        "--gan-seeds",
        "2",
        "--out",
        str(out),
        "--inception-weights",
        str(standin_inception),
    )
    assert result.exit_code == 0, result.output
    state = json.loads((out / "experiment.json").read_text())
    assert state["status"] == "finished"
    results = state["results"]
    assert set(results["arms"]) == {"base", "classic", "gan", "classic+gan"}
    for summary in results["arms"].values():
        assert len(summary["auc_macro"]["values"]) == summary["generators"] * 2
        assert (
            summary["auc_macro"]["ci_low"] <= summary["auc_macro"]["mean"] <= summary["auc_macro"]["ci_high"]
        )
    assert set(results["vs_base"]) == {"classic", "gan", "classic+gan"}
    primary = results["vs_base"]["gan"]["auc_macro"]
    assert 0 < primary["p"] <= 1 and primary["p"] <= primary["p_holm"] <= 1
    assert "fid" in results["gan_quality"] and "kid" in results["gan_quality"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "against base" in html and "Design" in html
    # the gan arm's augmenter got the experiment's GAN run from the core
    gan_arm = json.loads(
        (cxraug_workspace.dataset_dir(state["datasets"]["gan-g0"]) / "info.json").read_text()
    )
    assert [step.get("gan_run") for step in gan_arm["augment"]["steps"]] == [state["gan_run"]]
    # every arm was evaluated on the same real test split; augmented images only in training
    for arm in ("classic", "gan"):
        ds_name = state["datasets"][arm if arm == "classic" else "gan-g0"]
        rows = [r for r in open(cxraug_workspace.dataset_dir(ds_name) / "manifest.csv")]
        assert not any(",test," in r and (",synthetic," in r or ",classic," in r) for r in rows)


def test_interrupted_experiment_resumes_skipping_finished_runs(
    cxraug_cli, cxraug_workspace, tiny_data, monkeypatch
) -> None:
    out = cxraug_workspace.root / "exp"
    args = ["experiment", *TINY, "--arms", "base,gan", "--out", str(out)]
    original = classifier_trainer.ClassifierTrainer.train
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(classifier_trainer.ClassifierTrainer, "train", flaky)
    first = cxraug_cli(*args)
    assert first.exit_code == 130
    state = json.loads((out / "experiment.json").read_text())
    finished = [k for k, v in state["runs"].items() if v["status"] == "finished"]
    assert finished == ["base/0", "base/1"] and state["status"] == "running"
    gan_run = state["gan_run"]
    calls["n"] = 100  # no more interruptions; count the trainings the resume does
    second = cxraug_cli("experiment", "--resume", "--out", str(out))
    assert second.exit_code == 0, second.output
    assert calls["n"] == 102, "only the two unfinished gan-arm runs are trained again"
    state = json.loads((out / "experiment.json").read_text())
    assert state["status"] == "finished" and state["gan_run"] == gan_run
    assert len(list((cxraug_workspace.runs_dir / "gan").iterdir())) == 1, "the GAN was reused"


def test_changed_settings_refuse_to_mix(cxraug_cli, cxraug_workspace, tiny_data) -> None:
    out = cxraug_workspace.root / "exp"
    planned = json.loads(cxraug_cli("experiment", *TINY, "--out", str(out), "--dry-run").stdout)
    assert planned["config"]["seeds"] == 2 and not out.exists()
    from cxraug.experiment.runner import ExperimentRecord, ExperimentRun, ExperimentSettings
    from cxraug.training.runs import base_record

    recorded = ExperimentSettings(**{**planned["config"], "seeds": 3})
    ExperimentRun.create_at(out, ExperimentRecord(**base_record("experiment", "", recorded, None)))
    result = cxraug_cli("experiment", *TINY, "--out", str(out))
    assert result.exit_code == 2 and "--seeds 3 -> 2" in " ".join(result.output.split())
