"""The GAN engine end to end: run folders, resume after a kill, safety, determinism, DDP, generate."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxraug.errors import DataError
from cxraug.training.checkpoint import safe_load
from cxraug.training.metriclog import effective_rows

TINY = {
    "dcgan": ["--opt", "nz=16", "--opt", "ngf=8", "--opt", "ndf=8"],
    "cgan": ["--opt", "nz=16", "--opt", "ngf=8", "--opt", "ndf=8", "--opt", "d_every=2"],
    "acgan": ["--opt", "latent_dim=16", "--opt", "ngf=8", "--opt", "ndf=8"],
    "stylegan2": [
        "--opt",
        "channel_base=256",
        "--opt",
        "channel_max=16",
        "--opt",
        "z_dim=16",
        "--opt",
        "w_dim=16",
        "--opt",
        "mapping_layers=2",
        "--opt",
        "r1_interval=2",
    ],
}
SIZE = {"dcgan": "16", "cgan": "16", "acgan": "16", "stylegan2": "32"}


@pytest.fixture
def tiny_data(cxraug_cli) -> str:
    result = cxraug_cli(
        "data",
        "prepare",
        "phantom",
        "--size",
        "32",
        "--name",
        "tiny",
        "--opt",
        "n_per_class=16",
        "--opt",
        "classes=covid,normal",
    )
    assert result.exit_code == 0, result.output
    return "tiny"


def _run_dir(ws) -> Path:
    runs = sorted((ws.runs_dir / "gan").iterdir())
    return runs[-1]


@pytest.mark.parametrize("arch", ["dcgan", "cgan", "acgan", "stylegan2"])
def test_each_architecture_trains_and_generates(arch, cxraug_cli, cxraug_workspace, tiny_data, tmp_path):
    result = cxraug_cli(
        "train-gan",
        arch,
        "--data",
        tiny_data,
        "--size",
        SIZE[arch],
        "--batch-size",
        "8",
        "--kimg",
        "0.032",
        "--snapshot-every",
        "2steps",
        "--log-every",
        "1",
        *TINY[arch],
    )
    assert result.exit_code == 0, result.output
    run = _run_dir(cxraug_workspace)
    options = json.loads((run / "options.json").read_text())
    assert options["status"] == "finished" and options["config"]["arch"] == arch
    unit = run if options["units"] == ["all"] else run / options["units"][0]
    assert (unit / "log.csv").is_file() and (unit / "losses.png").is_file()
    assert (unit / "progress.gif").is_file()
    assert len(list((unit / "samples").glob("step-*.png"))) == 2
    rows = [json.loads(line) for line in (unit / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss_g"]) and np.isfinite(r["loss_d"]) for r in rows)
    out = tmp_path / "gen"
    result = cxraug_cli("generate", "--n", "6", "--out", str(out), "--seed", "3")
    assert result.exit_code == 0, result.output
    files = {lb: sorted((out / lb).glob("*.png")) for lb in ("covid", "normal")}
    assert [len(f) for f in files.values()] == [3, 3]
    a = np.asarray(Image.open(files["covid"][0]))
    b = np.asarray(Image.open(files["normal"][0]))
    assert a.shape == (int(SIZE[arch]),) * 2 and a.dtype == np.uint8
    assert not np.array_equal(a, b), "samples must change with the label"


def test_dcgan_per_class_and_pooled(cxraug_cli, cxraug_workspace, tiny_data):
    common = [
        "--data",
        tiny_data,
        "--size",
        "16",
        "--batch-size",
        "8",
        "--kimg",
        "0.016",
        *TINY["dcgan"],
    ]
    assert cxraug_cli("train-gan", "dcgan", *common).exit_code == 0
    per_class = json.loads((_run_dir(cxraug_workspace) / "options.json").read_text())
    assert per_class["units"] == ["covid", "normal"]
    time.sleep(0.01)
    assert cxraug_cli("train-gan", "dcgan", "--pooled", *common).exit_code == 0
    pooled = json.loads((_run_dir(cxraug_workspace) / "options.json").read_text())
    assert pooled["units"] == ["all"]
    ckpt = sorted((_run_dir(cxraug_workspace) / "checkpoints").glob("*.pt"))[-1]
    assert safe_load(ckpt)["spec"]["labels"] == ["all"]
    # a resume keeps the recorded options: other flags are refused, not silently ignored
    refused = cxraug_cli("train-gan", "--resume", "auto", "--batch-size", "4", "--opt", "ngf=4")
    refused_text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "--batch-size 8 -> 4; options.ngf 8 -> 4" in refused_text
    finished = cxraug_cli("train-gan", "--resume", "auto")
    assert finished.exit_code == 0 and "already finished" in finished.output


def test_same_seed_same_weights(cxraug_cli, cxraug_workspace, tiny_data):
    args = [
        "train-gan",
        "cgan",
        "--data",
        tiny_data,
        "--size",
        "16",
        "--batch-size",
        "8",
        "--kimg",
        "0.024",
        "--seed",
        "7",
        *TINY["cgan"],
    ]
    weights = []
    for _ in range(2):
        assert cxraug_cli(*args).exit_code == 0
        ckpt = sorted((_run_dir(cxraug_workspace) / "checkpoints").glob("*.pt"))[-1]
        weights.append(safe_load(ckpt)["networks"]["G"])
        time.sleep(0.01)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _cli(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cxraug", *args, "--workspace", str(ws)]


def test_resume_after_kill_continues_exactly(tmp_path, cxraug_cli, cxraug_workspace, tiny_data):
    """A SIGKILLed run resumes from its last snapshot and reproduces the uninterrupted losses."""
    ws = cxraug_workspace.root
    args = [
        "train-gan",
        "acgan",
        "--data",
        tiny_data,
        "--size",
        "16",
        "--batch-size",
        "8",
        "--kimg",
        "1.6",
        "--snapshot-every",
        "25steps",
        "--log-every",
        "1",
        "--seed",
        "1",
        *TINY["acgan"],
    ]
    env = {**os.environ, "CXRAUG_DISABLE_PLUGINS": "1"}
    proc = subprocess.Popen(_cli(ws, *args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    run = None
    while time.time() < deadline and proc.poll() is None:
        found = list((ws / "runs" / "gan").glob("*/checkpoints/ckpt-*.pt"))
        if found:
            run = found[0].parents[1]
            break
        time.sleep(0.05)
    assert run is not None, proc.stderr.read().decode() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_rows = (run / "log.jsonl").read_text().splitlines()
    assert json.loads((run / "options.json").read_text())["status"] == "running"
    resumed = subprocess.run(
        _cli(ws, "train-gan", "--resume", "auto"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from ckpt-" in resumed.stderr
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert lines[: len(killed_rows)] == [json.loads(x) for x in killed_rows], "the log is only appended to"
    rows = effective_rows(lines)  # rows trained again after the resume replace those past its step
    assert [r["step"] for r in rows] == list(range(1, 201)), "counters continue, not restart"
    assert len(killed_rows) >= 25
    # the uninterrupted run, same seed: every step's losses identical
    time.sleep(0.01)
    straight = subprocess.run(_cli(ws, *args), env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    other = sorted((ws / "runs" / "gan").iterdir())[-1]
    assert other != run
    rows2 = [json.loads(line) for line in (other / "log.jsonl").read_text().splitlines()]
    keys = ["loss_d", "loss_g"]
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in rows2]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_runs_no_code(tmp_path, cxraug_cli, cxraug_workspace):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "arch": "dcgan", "payload": _Evil(marker)}, evil)
    with pytest.raises(DataError, match="refused"):
        safe_load(evil)
    result = cxraug_cli("generate", "--checkpoint", str(evil), "--n", "2")
    assert result.exit_code == 2 and "refused" in result.output
    assert not marker.exists(), "loading the checkpoint executed code"


def test_corrupt_and_foreign_checkpoints(tmp_path, cxraug_cli):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    result = cxraug_cli("generate", "--checkpoint", str(bad))
    assert result.exit_code == 2 and "corrupt or truncated" in result.output
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    result = cxraug_cli("generate", "--checkpoint", str(foreign))
    assert result.exit_code == 2 and "not a cxraug checkpoint" in result.output


def test_generate_streams_resumes_and_refuses_mixing(cxraug_cli, cxraug_workspace, tiny_data, tmp_path):
    assert (
        cxraug_cli(
            "train-gan",
            "acgan",
            "--data",
            tiny_data,
            "--size",
            "16",
            "--batch-size",
            "8",
            "--kimg",
            "0.016",
            *TINY["acgan"],
        ).exit_code
        == 0
    )
    out = tmp_path / "g"
    first = cxraug_cli(
        "generate",
        "--per-class",
        "covid=5,normal=2",
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--truncation",
        "0.7",
    )
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.rglob("*.png")}
    assert len(before) == 7
    again = cxraug_cli(
        "generate",
        "--per-class",
        "covid=6,normal=2",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--truncation",
        "0.7",
    )
    assert again.exit_code == 0 and "wrote 1 images" in again.output
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 8 and len({r["file"] for r in rows}) == 8
    assert {r["seed"] for r in rows} == {"0"} and all(r["checkpoint_sha256"] for r in rows)
    after = {p.name: p.read_bytes() for p in out.rglob("*.png")}
    assert all(after[k] == v for k, v in before.items()), "existing images untouched"
    # the 6th covid image equals what a fresh run with batch size 1 makes: latents per image
    fresh = tmp_path / "fresh"
    assert (
        cxraug_cli(
            "generate",
            "--label",
            "covid",
            "--n",
            "6",
            "--out",
            str(fresh),
            "--batch-size",
            "1",
            "--truncation",
            "0.7",
        ).exit_code
        == 0
    )
    name = "covid-s0-000005.png"
    assert (fresh / "covid" / name).read_bytes() == (out / "covid" / name).read_bytes()
    mixed = cxraug_cli("generate", "--n", "2", "--out", str(out), "--seed", "9", "--truncation", "0.7")
    assert mixed.exit_code == 2 and "choose another --out" in mixed.output
    assert not list(out.rglob(".*tmp*"))


def test_train_gan_dry_run_and_errors(cxraug_cli, cxraug_workspace, tiny_data):
    result = cxraug_cli("train-gan", "dcgan", "--data", tiny_data, "--dry-run", "--opt", "ngf=8")
    assert result.exit_code == 0
    resolved = json.loads(result.stdout)
    assert resolved["options"]["ngf"] == 8 and resolved["config"]["size"] == 32
    assert not (cxraug_workspace.runs_dir).exists()
    cases = [
        (["train-gan", "dcgn"], "Did you mean 'dcgan'"),
        (["train-gan", "dcgan", "--opt", "ngff=3"], "unknown key 'ngff'"),
        (["train-gan", "dcgan", "--epochs", "1", "--kimg", "1"], "not both"),
        (["train-gan", "dcgan", "--classes", "flu"], "not in dataset"),
        (["train-gan", "stylegan2", "--size", "48", "--kimg", "0.01"], "48"),
        (["train-gan", "dcgan", "--device", "tpu"], "'auto', 'cpu', 'cuda' or 'mps'"),
        (["generate"], "no gan runs"),
    ]
    for args, message in cases:
        result = cxraug_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


def test_transfer_with_frozen_discriminator_layers(cxraug_cli, cxraug_workspace, tiny_data):
    args = [
        "--data",
        tiny_data,
        "--size",
        "32",
        "--batch-size",
        "4",
        "--kimg",
        "0.008",
        *TINY["stylegan2"],
    ]
    assert cxraug_cli("train-gan", "stylegan2", *args).exit_code == 0
    source = _run_dir(cxraug_workspace)
    time.sleep(0.01)
    result = cxraug_cli(
        "train-gan",
        "stylegan2",
        *args,
        "--transfer",
        str(source),
        "--opt",
        "freeze_d=1",
        "--classes",
        "covid",
    )
    assert result.exit_code == 0, result.output
    assert "transfer: started from" in result.output
    target = _run_dir(cxraug_workspace)
    old = safe_load(sorted((source / "checkpoints").glob("*.pt"))[-1])["networks"]["D"]
    new = safe_load(sorted((target / "checkpoints").glob("*.pt"))[-1])["networks"]["D"]
    frozen = [k for k in old if k.startswith("blocks.0.")]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen), "frozen D layers must not train"
    trained = [k for k in old if k.startswith("blocks.1.") and k.endswith("weight")]
    assert any(not torch.equal(old[k], new[k]) for k in trained), "the rest of D fine-tunes"


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, cxraug_cli, cxraug_workspace, tiny_data):
    ws = cxraug_workspace.root
    env = {**os.environ, "CXRAUG_DISABLE_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        _cli(
            ws,
            "train-gan",
            "dcgan",
            "--data",
            tiny_data,
            "--size",
            "16",
            "--batch-size",
            "8",
            "--kimg",
            "0.032",
            "--nproc",
            "2",
            "--pooled",
            *TINY["dcgan"],
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = _run_dir(cxraug_workspace)
    options = json.loads((run / "options.json").read_text())
    assert options["status"] == "finished"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4
