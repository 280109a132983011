from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cxraug.training.metriclog import MetricLog, effective_rows


def _lines(folder: Path) -> list[str]:
    return (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()


def _csv(folder: Path) -> list[dict[str, str]]:
    with open(folder / "log.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _first_run(folder: Path) -> list[str]:
    log = MetricLog(folder)
    for step in (10, 20, 30, 40):
        log.append({"step": step, "loss": float(step)})
    return _lines(folder)


def test_resume_replaces_rows_after_the_resumed_step(tmp_path: Path) -> None:
    original = _first_run(tmp_path)

    log = MetricLog(tmp_path, resume_step=20)
    assert [r["step"] for r in log.rows] == [10, 20]
    log.append({"step": 30, "loss": -30.0})
    log.append({"step": 40, "loss": -40.0, "fid": 12.5})

    assert log.rows == [
        {"step": 10, "loss": 10.0},
        {"step": 20, "loss": 20.0},
        {"step": 30, "loss": -30.0},
        {"step": 40, "loss": -40.0, "fid": 12.5},
    ]
    # Nothing was rewritten: the old lines lead the file, then the marker, then the new rows.
    lines = _lines(tmp_path)
    assert lines[: len(original)] == original
    marker = json.loads(lines[len(original)])
    assert marker["event"] == "resume" and marker["step"] == 20 and marker["time"].endswith("+00:00")
    assert len(lines) == len(original) + 3
    # A fresh reader agrees with the writer.
    assert MetricLog(tmp_path).rows == log.rows
    assert len(log.read()) == len(lines)


def test_csv_matches_rows(tmp_path: Path) -> None:
    _first_run(tmp_path)
    log = MetricLog(tmp_path, resume_step=20)
    log.append({"step": 30, "loss": -30.0})
    log.append({"step": 40, "loss": -40.0, "fid": 12.5})
    log.flush_csv()

    table = _csv(tmp_path)
    assert list(table[0]) == ["step", "loss", "fid"]
    assert table == [
        {"step": str(r["step"]), "loss": str(r["loss"]), "fid": str(r.get("fid", ""))} for r in log.rows
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_line_cut_by_a_kill_is_skipped_and_the_next_row_parsed(tmp_path: Path) -> None:
    _first_run(tmp_path)
    with open(tmp_path / "log.jsonl", "ab") as fh:
        fh.write(b'{"step": 50, "lo')  # the process died here

    log = MetricLog(tmp_path, resume_step=40)
    log.append({"step": 50, "loss": 50.0})

    lines = _lines(tmp_path)
    assert lines[4] == '{"step": 50, "lo'
    assert json.loads(lines[5])["event"] == "resume"
    assert [r["step"] for r in MetricLog(tmp_path).rows] == [10, 20, 30, 40, 50]
    assert MetricLog(tmp_path).rows[-1] == {"step": 50, "loss": 50.0}


def test_damaged_lines_in_the_middle_do_not_stop_reading(tmp_path: Path) -> None:
    (tmp_path / "log.jsonl").write_bytes(b'{"step": 1}\n{"step": 2, "x\n\xff\xfe\n[1, 2]\n\n{"step": 3}\n')
    log = MetricLog(tmp_path)
    assert [r["step"] for r in log.rows] == [1, 3]


def test_several_resumes(tmp_path: Path) -> None:
    _first_run(tmp_path)
    log = MetricLog(tmp_path, resume_step=30)
    log.append({"step": 40, "loss": 4.0})
    log.append({"step": 50, "loss": 5.0})
    log = MetricLog(tmp_path, resume_step=10)
    log.append({"step": 20, "loss": 2.0})
    assert [(r["step"], r["loss"]) for r in MetricLog(tmp_path).rows] == [(10, 10.0), (20, 2.0)]
    assert len(_lines(tmp_path)) == 4 + 1 + 2 + 1 + 1


def test_fresh_log_without_resume_keeps_appending(tmp_path: Path) -> None:
    original = _first_run(tmp_path)
    log = MetricLog(tmp_path)
    assert [r["step"] for r in log.rows] == [10, 20, 30, 40]
    log.append({"step": 50})
    assert _lines(tmp_path)[: len(original)] == original
    assert [r["step"] for r in log.rows] == [10, 20, 30, 40, 50]


def test_empty_log_writes_a_header(tmp_path: Path) -> None:
    MetricLog(tmp_path, resume_step=0).flush_csv()
    assert (tmp_path / "log.csv").read_text(encoding="utf-8") == "step\n"
    assert effective_rows(MetricLog(tmp_path).read()) == []


def test_rows_cannot_pose_as_markers(tmp_path: Path) -> None:
    log = MetricLog(tmp_path)
    with pytest.raises(ValueError, match="event"):
        log.append({"step": 1, "event": "resume"})
    assert log.rows == []
