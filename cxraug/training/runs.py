"""Run folders: runs/KIND/NAME with the resolved options, logs, plots, samples and checkpoints."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

from cxraug.errors import DataError
from cxraug.fileio import atomic_write
from cxraug.workspace import Workspace

OPTIONS_FILE = "options.json"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def new_run_dir(workspace: Workspace, kind: str, label: str) -> Path:
    """A fresh, uniquely named run folder under runs/KIND/."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = workspace.runs_dir / kind
    base.mkdir(parents=True, exist_ok=True)
    for k in range(1000):
        path = base / (f"{stamp}-{label}" + (f"-{k}" if k else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {base}")  # pragma: no cover


def start_run(
    workspace: Workspace, kind: str, arch: str, config: dict[str, Any], dataset: Any, **extra: Any
) -> Path:
    """A new run folder under runs/KIND/ with its options.json (status "running")."""
    import sys

    from cxraug import __version__

    run_dir = new_run_dir(workspace, kind, f"{arch}-{dataset.name}")
    write_json_atomic(
        run_dir / "options.json",
        {
            "kind": kind,
            "arch": arch,
            "started": now_iso(),
            "status": "running",
            "cxraug_version": __version__,
            "command": ["cxraug", *sys.argv[1:]],
            "config": config,
            "dataset": {
                "name": dataset.name,
                "path": str(dataset.path),
                "size": dataset.size,
                "synthetic": dataset.synthetic,
            },
            **extra,
        },
    )
    return run_dir


def finish_run(run_dir: Path, **extra: Any) -> None:
    """Mark a run finished in its options.json."""
    saved = read_options(run_dir)
    saved.update(status="finished", finished=now_iso(), **extra)
    write_json_atomic(run_dir / "options.json", saved)


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_options(run_dir: Path) -> dict[str, Any]:
    path = run_dir / OPTIONS_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: not a cxraug run (no {OPTIONS_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def list_runs(workspace: Workspace, kind: str) -> list[Path]:
    """Runs of a kind, oldest first by their recorded start time."""
    base = workspace.runs_dir / kind
    if not base.is_dir():
        return []
    found = []
    for opt in base.glob(f"*/{OPTIONS_FILE}"):
        try:
            started = json.loads(opt.read_text(encoding="utf-8")).get("started", "")
        except (OSError, json.JSONDecodeError):
            continue
        found.append((started, opt.parent))
    return [p for _, p in sorted(found)]


def resolve_run(workspace: Workspace, kind: str, run: str | Path | None) -> Path:
    """A run by path, by name under runs/KIND, or the latest one."""
    if run is None:
        runs = list_runs(workspace, kind)
        if not runs:
            hint = "cxraug train-gan ARCH" if kind == "gan" else f"cxraug train-{kind} ARCH"
            raise DataError(f"no {kind} runs in {workspace.runs_dir / kind}; run `{hint}` first")
        return runs[-1]
    path = Path(run)
    for candidate in (path, workspace.runs_dir / kind / str(run)):
        if (candidate / OPTIONS_FILE).is_file():
            return candidate
    known = ", ".join(p.name for p in list_runs(workspace, kind)[-5:]) or "none"
    raise DataError(
        f"run {run!r} not found (as a path or under {workspace.runs_dir / kind}); recent: {known}"
    )


class MetricLog:
    """Appends rows to log.jsonl and log.csv; on resume, rows after the resumed step are dropped."""

    def __init__(self, folder: Path, resume_step: int | None = None) -> None:
        self.jsonl = folder / "log.jsonl"
        self.csv = folder / "log.csv"
        rows = self.read() if resume_step is not None else []
        rows = [r for r in rows if r.get("step", 0) <= (resume_step or 0)]
        self._rows = rows
        self._rewrite()

    def read(self) -> list[dict[str, Any]]:
        if not self.jsonl.is_file():
            return []
        out = []
        for line in self.jsonl.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is lost anyway
        return out

    def _rewrite(self) -> None:
        with open(self.jsonl, "w", encoding="utf-8") as fh:
            for row in self._rows:
                fh.write(json.dumps(row) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for row in self._rows:
            keys += [k for k in row if k not in keys]
        with open(self.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys or ["step"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(self._rows)

    def append(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    def flush_csv(self) -> None:
        self._write_csv()

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self._rows


def gan_labels(run_dir: Path) -> list[str]:
    """Labels a GAN run can generate ([] for a model pooled over several labels)."""
    options = read_options(run_dir)
    classes = list(options["config"]["classes"])
    if options.get("units") == ["all"]:
        return classes if options.get("conditional") or len(classes) == 1 else []
    return list(options.get("units", []))
