"""train-classifier end to end: every classifier trains, best epoch, resume, weights, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxraug.plugins import build_registry, get_plugin_manager
from cxraug.training.classifier_run import ClassifierRun
from cxraug.training.classifier_trainer import class_weight_tensor
from cxraug.training.metriclog import effective_rows


@pytest.fixture
def small_data(cxraug_cli) -> str:
    result = cxraug_cli(
        "data",
        "prepare",
        "phantom",
        "--size",
        "32",
        "--name",
        "small",
        "--opt",
        "n_per_class=10",
        "--opt",
        "classes=covid,normal",
        "--split",
        "0.6,0.2,0.2",
    )
    assert result.exit_code == 0, result.output
    return "small"


def _latest(ws) -> Path:
    return ClassifierRun.all(ws)[-1].path


@pytest.mark.parametrize("arch", ["alexnet", "vgg16", "resnet50", "inception_v3", "cnn", "densenet121"])
def test_every_classifier_trains(arch, cxraug_cli, cxraug_workspace, small_data) -> None:
    torch.set_num_threads(2)
    result = cxraug_cli(
        "train-classifier",
        arch,
        "--data",
        small_data,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-pretrained",
        "--class-weights",
        "balanced",
    )
    assert result.exit_code == 0, result.output
    run = _latest(cxraug_workspace)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])
    assert (run / "best.pt").is_file() and (run / "metrics.png").is_file()
    options = json.loads((run / "options.json").read_text())
    assert options["status"] == "finished" and options["config"]["pretrained"] is False
    loaded = ClassifierRun(run).load(build_registry(get_plugin_manager()))
    probs = loaded.predict_proba(np.zeros((3, 32, 32), np.uint8))
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_resume_continues_and_matches_straight_run(cxraug_cli, cxraug_workspace, small_data) -> None:
    args = ["train-classifier", "cnn", "--data", small_data, "--batch-size", "4", "--seed", "3"]
    assert cxraug_cli(*args, "--epochs", "1").exit_code == 0
    first = _latest(cxraug_workspace)
    result = cxraug_cli("train-classifier", "--resume", str(first), "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "resuming from ckpt-0001.pt" in result.output
    resumed = effective_rows([json.loads(x) for x in (first / "log.jsonl").read_text().splitlines()])
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert cxraug_cli(*args, "--epochs", "2").exit_code == 0
    straight = [json.loads(x) for x in (_latest(cxraug_workspace) / "log.jsonl").read_text().splitlines()]
    keys = ("train_loss", "val_loss", "val_auc_macro")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]


def test_best_epoch_is_selected_on_validation(cxraug_cli, cxraug_workspace, small_data) -> None:
    assert (
        cxraug_cli(
            "train-classifier",
            "cnn",
            "--data",
            small_data,
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "0.01",
        ).exit_code
        == 0
    )
    run = _latest(cxraug_workspace)
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    best_state = torch.load(run / "best.pt", weights_only=True)
    scores = [r["val_auc_macro"] if np.isfinite(r["val_auc_macro"]) else r["val_accuracy"] for r in rows]
    assert best_state["epoch"] == int(np.argmax(scores)) + 1


def test_class_weights_balanced() -> None:
    w = class_weight_tensor(np.array([0, 0, 0, 1]), 2, "balanced")
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    assert class_weight_tensor(np.array([0, 1]), 2, "none") is None


def test_classifier_errors(cxraug_cli, small_data, tmp_path) -> None:
    cases = [
        (["train-classifier", "densnet121"], "Did you mean 'densenet121'"),
        (["train-classifier", "cnn", "--class-weights", "inverse"], "'none' or 'balanced'"),
        (["train-classifier", "cnn", "--freeze-backbone"], "no pretrained backbone"),
        (["train-classifier", "alexnet", "--weights", str(tmp_path / "none.pth")], "no such file"),
        (["train-classifier", "cnn", "--classes", "covid"], "at least two classes"),
    ]
    for args, message in cases:
        result = cxraug_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_dry_run_shows_published_learning_rate(cxraug_cli, small_data) -> None:
    result = cxraug_cli("train-classifier", "inception_v3", "--dry-run", "--no-pretrained")
    resolved = json.loads(result.stdout)
    assert resolved["lr"] == 1e-5 and resolved["input_size"] == 299
    assert resolved["options"]["freeze_backbone"] is True


@pytest.mark.slow
def test_classifier_ddp_two_processes(cxraug_workspace, small_data) -> None:
    env = {**os.environ, "CXRAUG_DISABLE_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "cxraug",
        "train-classifier",
        "cnn",
        "--data",
        small_data,
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--nproc",
        "2",
        "--workspace",
        str(cxraug_workspace.root),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    options = json.loads((_latest(cxraug_workspace) / "options.json").read_text())
    assert options["status"] == "finished"
