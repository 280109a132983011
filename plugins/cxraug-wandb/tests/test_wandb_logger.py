"""The wandb logger, offline: the contract, then a real run whose .wandb file is read back."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from cxraug.testing import check_logger_plugin

from cxraug_wandb import WandbLogger

pytest.importorskip("wandb")

#: The .wandb file: a 7-byte header (ident ":W&B", uint16 magic 0xBEE1, uint8 version), then
#: LevelDB log records in 32 KiB blocks, each a 7-byte header (uint32 crc32 of type and data,
#: uint16 length, uint8 type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) and its data; a block whose
#: tail cannot hold a header is padded with zeros. Described by wandb's sdk/internal/datastore.py
#: (wandb releases before its Go core) and google/leveldb doc/log_format.md. wandb ships no
#: Python reader for it any more, so the test reads the framing itself.
BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_payloads(path: Path) -> list[bytes]:
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path}: not a .wandb file"
    out: list[bytes] = []
    parts: list[bytes] = []
    pos = HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding: the rest of this block is unused
            pos += left
            continue
        payload = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF == crc, f"{path}: bad record at {pos}"
        pos += HEADER + length
        if kind == FULL:
            out.append(payload)
        elif kind == FIRST:
            parts = [payload]
        elif kind == MIDDLE:
            parts.append(payload)
        elif kind == LAST:
            out.append(b"".join([*parts, payload]))
    return out


def wandb_records(run_dir: Path) -> tuple[dict[int, dict[str, object]], dict[str, object]]:
    """History (step -> key -> value) and config of every offline W&B run in ``run_dir``/wandb."""
    from wandb.proto import wandb_internal_pb2

    history: dict[int, dict[str, object]] = {}
    config: dict[str, object] = {}
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert files, f"no offline W&B run in {run_dir}"
    for path in files:
        for payload in wandb_payloads(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = history.setdefault(record.history.step.num, {})
                for item in record.history.item:
                    _put(row, item)
            elif kind == "config":
                for item in record.config.update:
                    _put(config, item)
    return history, config


def _put(into: dict[str, object], item) -> None:
    """An item names its key either as ``key`` or as a path, ``nested_key`` (an image's fields)."""
    path = [item.key] if item.key else list(item.nested_key)
    node = into
    for part in path[:-1]:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[path[-1]] = json.loads(item.value_json)


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Load installed entry points even where a conftest disables them; W&B offline, in tmp."""
    monkeypatch.delenv("CXRAUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_logger_contract_and_offline_files(tmp_path: Path) -> None:
    check_logger_plugin(WandbLogger, tmp_path)
    run_dir = tmp_path / "runs" / "run-1"
    history, config = wandb_records(run_dir)
    # the resumed stream (second file) logged step 2 again: the latest value is the same one
    assert history[1]["loss_g"] == 0.5 and history[2]["loss_g"] == 1.0 and history[2]["loss_d"] == 0.5
    assert history[2]["samples"]["_type"] == "image-file"
    assert config["config.arch"] == "dcgan" and config["config.batch_size"] == 8
    ids = {json.loads((run_dir / "wandb-run.json").read_text())["id"]}
    assert {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")} == ids


def test_train_classifier_logs_every_row_to_wandb(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    prep = ["data", "prepare", "phantom", "--size", "32", "--name", "tiny", "--split", "0.6,0.2,0.2"]
    result = cxraug_cli(*prep, "--opt", "n_per_class=8", "--opt", "classes=covid,normal")
    assert result.exit_code == 0, result.output
    listed = cxraug_cli("plugins", "list", "--kind", "logger", "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["wandb"]["package"] == "cxraug-wandb" and rows["wandb"]["status"] == "ok"
    args = ["train-classifier", "cnn", "--data", "tiny", "--epochs", "2", "--batch-size", "4"]
    args += ["--opt", "input_size=32", "--opt", "width=4", "--logger", "wandb"]
    result = cxraug_cli(*args, "--logger-opt", "wandb.project=cxr-test")
    assert result.exit_code == 0, result.output
    (run,) = (cxraug_workspace.runs_dir / "classifier").iterdir()
    options = json.loads((run / "options.json").read_text())
    assert options["config"]["logger_options"]["wandb"]["project"] == "cxr-test"
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    history, config = wandb_records(run)
    for row in logged:
        for key in ("train_loss", "val_loss", "val_auc_macro", "lr"):
            assert history[row["step"]][key] == pytest.approx(row[key], rel=1e-12)
    assert config["config.arch"] == "cnn" and config["config.loggers"] == "wandb"
