"""Attack the command line the way a hostile or careless user would, and count what survives.

Issue 11 asks that nothing goes silently wrong. This script repeats the attack that found its
defects and prints, per category, how many cases were tried, how many were handled cleanly, and in
how many something the user already had was lost or changed:

    python benchmarks/attack.py [--fuzz 2000] [--only pickles,cli] [--json out.json]

A case is *handled cleanly* when the command does what a careful tool should: a bad input gets exit
code 2 and a message without a traceback (a harmless quirk such as a BOM is simply accepted), no
crafted pickle runs code, no file outside ``--root`` is read, two users never both "win", and a full
disk or read-only folder gets one line. *Data lost* is checked by hashing every file of the
workspace's existing datasets and runs before each case and again after it.

Categories (run as root for the full-disk and read-only ones, which mount a small tmpfs):
  cli        ~100 bad command lines, with and without --dry-run
  pickles    crafted checkpoint files given to generate / train-gan --transfer / a run's resume
  manifest   edits of a prepared dataset's manifest.csv, info.json and images.npy
  plugins    third-party plugins that misbehave (real entry points in a temporary site folder)
  files      a tree of hostile image files given to ``data prepare imagefolder``
  fuzz       mutated real X-ray files given to the decoder (in a memory-limited child process)
  race       two users at once on one dataset name
  disk       a full disk and a read-only workspace
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "cxr-samples"
CATEGORIES = ("cli", "pickles", "manifest", "plugins", "files", "fuzz", "race", "disk")


# ------------------------------------------------------------------------------------ bookkeeping


@dataclass
class Case:
    category: str
    name: str
    clean: bool
    lost: bool = False
    detail: str = ""


@dataclass
class Tally:
    cases: list[Case] = field(default_factory=list)

    def add(self, case: Case) -> None:
        self.cases.append(case)
        if not case.clean or case.lost:
            flag = "LOST " if case.lost else ""
            print(f"  [{case.category}] {flag}not clean: {case.name}: {case.detail[:300]}", flush=True)

    def table(self) -> str:
        lines = [f"{'category':<10} {'tried':>6} {'clean':>6} {'lost':>5}"]
        total = [0, 0, 0]
        for cat in CATEGORIES:
            mine = [c for c in self.cases if c.category == cat]
            if not mine:
                continue
            row = [len(mine), sum(c.clean and not c.lost for c in mine), sum(c.lost for c in mine)]
            total = [a + b for a, b in zip(total, row, strict=True)]
            lines.append(f"{cat:<10} {row[0]:>6} {row[1]:>6} {row[2]:>5}")
        lines.append(f"{'all':<10} {total[0]:>6} {total[1]:>6} {total[2]:>5}")
        return "\n".join(lines)


def tree_digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (what the user already had)."""
    out: dict[str, str] = {}
    for top in paths:
        for p in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if p.is_file() and not p.name.endswith(".lock"):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def lost_files(before: dict[str, str]) -> list[str]:
    return [
        p
        for p, h in before.items()
        if not Path(p).is_file() or hashlib.sha256(Path(p).read_bytes()).hexdigest() != h
    ]


# ---------------------------------------------------------------------------------- running cxraug


@dataclass
class Result:
    code: int
    output: str
    stdout: str = ""

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output

    def refused(self) -> bool:
        """Exit 2 with an error message and no traceback."""
        return self.code == 2 and not self.traceback and "rror" in self.output


def env_for(workspace: Path, extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CXRAUG_WORKSPACE=str(workspace), COLUMNS="200", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("CXRAUG_INCEPTION_WEIGHTS", None)
    return env


def cxraug(workspace: Path, *args: str, timeout: float = 600, extra_path: str | None = None) -> Result:
    """Run the real command line in a child process."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cxraug", *args],
            env=env_for(workspace, extra_path),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        return Result(124, f"timed out after {timeout}s: {exc.stdout or ''}{exc.stderr or ''}")
    return Result(proc.returncode, proc.stdout + proc.stderr, proc.stdout)


class InProcess:
    """The CLI run in this process (a child per case would spend most of its time importing torch)."""

    def __init__(self, workspace: Path) -> None:
        from typer.testing import CliRunner

        from cxraug.cli import build_app

        self.workspace = workspace
        self.app = build_app()
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        import traceback

        env = {"COLUMNS": "200", "CXRAUG_WORKSPACE": str(self.workspace)}
        res = self.runner.invoke(self.app, list(args), env=env)
        out = res.output
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            out += "\nTraceback (most recent call last):\n" + "".join(
                traceback.format_exception(res.exception)
            )
        return Result(res.exit_code, out)


def base_workspace(root: Path) -> Path:
    """A workspace with a small dataset, a trained DCGAN run and a classifier run."""
    ws = root / "ws"
    steps = [
        ("data", "prepare", "phantom", "--name", "ph", "--size", "16", "--opt", "n_per_class=24"),
        (
            "train-gan",
            "dcgan",
            "--data",
            "ph",
            "--kimg",
            "0.02",
            "--batch-size",
            "8",
            "--opt",
            "ngf=8",
            "--opt",
            "ndf=8",
        ),
        ("train-classifier", "cnn", "--data", "ph", "--epochs", "1", "--batch-size", "16"),
    ]
    for args in steps:
        res = cxraug(ws, *args)
        if res.code != 0:
            raise SystemExit(f"setting up the workspace failed: cxraug {' '.join(args)}\n{res.output}")
    return ws


def owned(ws: Path) -> list[Path]:
    return [ws / "data", ws / "runs"]


# ------------------------------------------------------------------------------ bad command lines

# (args, supports --dry-run). Every one of these must be refused with exit 2.
BAD_LINES: list[tuple[str, bool]] = [
    # data prepare
    ("data prepare phantom --name p2 --size 0", True),
    ("data prepare phantom --name p2 --size -8", True),
    ("data prepare phantom --name p2 --size 100000", True),
    ("data prepare phantom --name p2 --split 0.5,0.5", True),
    ("data prepare phantom --name p2 --split a,b,c", True),
    ("data prepare phantom --name p2 --split 0.7,0.4,-0.1", True),
    ("data prepare phantom --name p2 --split nan,0.5,0.5", True),
    ("data prepare phantom --name p2 --resize stretch", True),
    ("data prepare phantom --name p2 --seed -1", True),
    ("data prepare phantom --name p2 --workers -3", True),
    ("data prepare phantom --name p2 --classes nosuchlabel", True),
    ("data prepare phantom --name p2 --map covid=nosuchlabel", True),
    ("data prepare phantom --name p2 --map =normal", True),
    ("data prepare phantom --name p2 --opt n_per_class=100000000", True),
    ("data prepare phantom --name p2 --opt n_per_class=-1", True),
    ("data prepare phantom --name p2 --opt nosuchkey=1", True),
    ("data prepare phantom --name p2 --opt n_per_class", True),
    ("data prepare phantom --name ../escape", True),
    ("data prepare phantom --name a/b", True),
    ("data prepare phantom --name ph", True),
    ("data prepare nosuchadapter", True),
    ("data prepare covidx --name c", True),
    ("data prepare covidx --name c --root /nonexistent/folder", True),
    ("data prepare imagefolder --name c --root /etc/passwd", True),
    ("data prepare phantom --name p2 --config /nonexistent.toml", True),
    ("data prepare phantom --name p2 --config {badtoml}", True),
    ("data prepare phantom --name p2 --config {badtable}", True),
    # train-gan
    ("train-gan dcgan --data ph --kimg 0", True),
    ("train-gan dcgan --data ph --kimg -1", True),
    ("train-gan dcgan --data ph --kimg nan", True),
    ("train-gan dcgan --data ph --epochs -1", True),
    ("train-gan dcgan --data ph --epochs 0", True),
    ("train-gan dcgan --data ph --epochs inf", True),
    ("train-gan dcgan --data ph --kimg 1 --epochs 1", True),
    ("train-gan dcgan --data ph --batch-size 0", True),
    ("train-gan dcgan --data ph --batch-size -4", True),
    ("train-gan dcgan --data ph --size 0", True),
    ("train-gan dcgan --data ph --size 17", True),
    ("train-gan stylegan2 --data ph --size 24", True),
    ("train-gan dcgan --data ph --device tpu", True),
    ("train-gan dcgan --data ph --snapshot-every -1", True),
    ("train-gan dcgan --data ph --snapshot-every xyz", True),
    ("train-gan dcgan --data ph --resume /nonexistent", True),
    ("train-gan dcgan --data ph --resume /etc/passwd", True),
    ("train-gan dcgan --data ph --nproc 0", True),
    ("train-gan dcgan --data ph --log-every 0", True),
    ("train-gan dcgan --data nosuchdata", True),
    ("train-gan dcgan --data ph --classes nosuchlabel", True),
    ("train-gan dcgan --data ph --transfer /etc/passwd", True),
    ("train-gan dcgan --data ph --opt lr=-1", True),
    ("train-gan dcgan --data ph --opt lr=nan", True),
    ("train-gan dcgan --data ph --opt nz=0", True),
    ("train-gan dcgan --data ph --opt beta1=2", True),
    ("train-gan nosuchgan --data ph", True),
    # generate
    ("generate --batch-size 0", False),
    ("generate --batch-size -1", False),
    ("generate --n -5", False),
    ("generate --n 0", False),
    ("generate --checkpoint /etc/passwd", False),
    ("generate --checkpoint /nonexistent.pt", False),
    ("generate --out /proc/1", False),
    ("generate --truncation nan", False),
    ("generate --truncation -1", False),
    ("generate --label nosuchlabel", False),
    ("generate --per-class covid=abc", False),
    ("generate --per-class =5", False),
    ("generate --per-class normal=-3", False),
    ("generate --run nosuchrun", False),
    ("generate --device tpu", False),
    ("generate --seed -1", False),
    # augment
    ("augment --data ph --synthetic -5", True),
    ("augment --data ph --classic -1", True),
    ("augment --data ph --classic-per-class normal=x", True),
    ("augment --data ph --synthetic 4 --min-confidence 1.5 --filter {clf}", True),
    ("augment --data ph --synthetic 4 --min-confidence nan --filter {clf}", True),
    ("augment --data ph --synthetic 4 --filter /nonexistent", True),
    ("augment --data ph --synthetic 4 --gan nosuchrun", True),
    ("augment --data ph --classic 4 --label nosuchlabel", True),
    ("augment --data ph --classic 4 --name ../x", True),
    ("augment --data ph --synthetic 4 --truncation nan", True),
    ("augment --data nosuchdata --classic 4", True),
    ("augment --data ph", True),
    # train-classifier
    ("train-classifier cnn --data ph --lr -1", True),
    ("train-classifier cnn --data ph --lr nan", True),
    ("train-classifier cnn --data ph --lr 0", True),
    ("train-classifier cnn --data ph --epochs 0", True),
    ("train-classifier cnn --data ph --epochs -1", True),
    ("train-classifier cnn --data ph --batch-size 0", True),
    ("train-classifier cnn --data ph --class-weights foo", True),
    ("train-classifier cnn --data ph --online-augment --online-augmenter nosuch", True),
    ("train-classifier cnn --data ph --weights /nonexistent.pth", True),
    ("train-classifier cnn --data ph --nproc -1", True),
    ("train-classifier cnn --data ph --resume /etc/passwd", True),
    ("train-classifier nosuchclassifier --data ph", True),
    ("train-classifier cnn --data nosuchdata", True),
    # evaluate
    ("evaluate --roc --split nosuch", False),
    ("evaluate --prdc --real-split nosuch", False),
    ("evaluate --prdc --n -1", False),
    ("evaluate --fid --mode foo", False),
    ("evaluate --fid --inception-weights /nonexistent.pt", False),
    ("evaluate --fid --inception-weights /etc/passwd", False),
    ("evaluate --prdc --generated /nonexistent", False),
    ("evaluate --metric nosuchmetric", False),
    ("evaluate --roc --classifier nosuchrun", False),
    ("evaluate --prdc --gan nosuchrun", False),
    ("evaluate --prdc --truncation nan", False),
    ("evaluate --roc --out /proc/1", False),
    # experiment (dry-run only: an accepted bad value would start a whole study)
    ("experiment --data ph --seeds -1 --dry-run", False),
    ("experiment --data ph --seeds 0 --dry-run", False),
    ("experiment --data ph --gan-seeds 0 --dry-run", False),
    ("experiment --data ph --gan-seeds -2 --dry-run", False),
    ("experiment --data ph --arms base,foo --dry-run", False),
    ("experiment --data ph --epochs 0 --dry-run", False),
    ("experiment --data ph --gan-kimg -1 --dry-run", False),
    ("experiment --data ph --synthetic -1 --dry-run", False),
    ("experiment --data ph --classic -1 --dry-run", False),
    ("experiment --data ph --classifier nosuch --dry-run", False),
    ("experiment --data ph --gan nosuch --dry-run", False),
    ("experiment --reanalyse", False),
    ("experiment --data ph --out /proc/1 --dry-run", False),
    # data inspection
    ("data show nosuchdata", False),
]


def attack_cli(ws: Path, tally: Tally, scratch: Path) -> None:
    bad_toml = scratch / "bad.toml"
    bad_toml.write_text("[data.prepare\nsize = 12\n")
    bad_table = scratch / "badtable.toml"
    bad_table.write_text("[dataset.phantom]\nn_per_class = 'many'\n")
    clf = next((ws / "runs" / "classifier").iterdir())
    fill = {"badtoml": str(bad_toml), "badtable": str(bad_table), "clf": str(clf)}
    run = InProcess(ws)
    for line, has_dry in BAD_LINES:
        variants = [line.format(**fill)]
        if has_dry:
            variants.append(variants[0] + " --dry-run")
        for args in variants:
            before = tree_digest(owned(ws))
            res = run(*args.split())
            lost = lost_files(before)
            tally.add(Case("cli", args, res.refused(), bool(lost), f"exit {res.code}: {res.output[-400:]}"))


# ------------------------------------------------------------------------------- crafted pickles

MARK = "cxraug-attack-ran"


def _evil(call: str) -> type:
    """A class whose unpickling would run ``call`` (touching a marker file)."""
    marker = f"/tmp/{MARK}"

    class Evil:
        def __reduce__(self) -> tuple:
            if call == "os.system":
                return (os.system, (f"touch {marker}",))
            if call == "eval":
                return (eval, (f"open({marker!r}, 'w').close()",))
            if call == "exec":
                return (exec, (f"open({marker!r}, 'w').close()",))
            if call == "subprocess":
                return (subprocess.Popen, (["touch", marker],))
            if call == "open":
                return (open, (marker, "w"))
            raise ValueError(call)

    return Evil


def crafted_pickles(folder: Path) -> dict[str, Path]:
    import numpy as np
    import torch

    files: dict[str, Path] = {}

    def save(name: str, obj: object, raw: bool = False) -> None:
        path = folder / f"{name}.pt"
        if raw:
            path.write_bytes(pickle.dumps(obj, protocol=2))
        else:
            torch.save(obj, path)
        files[name] = path

    save("raw-os-system", _evil("os.system")(), raw=True)
    save("zip-os-system", _evil("os.system")())
    save("zip-eval", _evil("eval")())
    save("zip-exec", _evil("exec")())
    save("zip-subprocess", _evil("subprocess")())
    save("zip-open", _evil("open")())
    save("nested-in-state", {"models": {"G": _evil("os.system")()}, "step": 3})
    save("whole-module", {"models": {"G": torch.nn.Linear(2, 2)}})
    save("numpy-object", {"models": {"G": np.array([_evil("eval")()], dtype=object)}})
    # protocol-0 text pickle naming posix.system directly
    proto0 = folder / "proto0.pt"
    proto0.write_bytes(f"cposix\nsystem\n(Vtouch /tmp/{MARK}\ntR.".encode())
    files["proto0-posix-system"] = proto0
    # a torch zip whose data.pkl was swapped for a malicious one
    swapped = folder / "swapped.pt"
    torch.save({"models": {}}, swapped)
    buf = io.BytesIO()
    with zipfile.ZipFile(swapped) as zin, zipfile.ZipFile(buf, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(_evil("os.system")(), protocol=2)
            zout.writestr(item, data)
    swapped.write_bytes(buf.getvalue())
    files["zip-swapped-data-pkl"] = swapped
    return files


def attack_pickles(ws: Path, tally: Tally, scratch: Path) -> None:
    marker = Path(f"/tmp/{MARK}")
    gan = next((ws / "runs" / "gan").iterdir())
    run = InProcess(ws)
    for name, path in crafted_pickles(scratch).items():
        targets = {
            "generate --checkpoint": [
                "generate",
                "--checkpoint",
                str(path),
                "--n",
                "2",
                "--out",
                str(scratch / "g"),
            ],
            "train-gan --transfer": [
                "train-gan",
                "dcgan",
                "--data",
                "ph",
                "--kimg",
                "0.01",
                "--transfer",
                str(path),
            ],
        }
        for label, args in targets.items():
            marker.unlink(missing_ok=True)
            before = tree_digest(owned(ws))
            res = run(*args)
            ran = marker.exists()
            advice = "weights_only" in res.output or "weights only" in res.output.lower()
            ok = res.refused() and not ran and not advice
            detail = f"exit {res.code}{' CODE RAN' if ran else ''}{' repeats torch advice' if advice else ''}"
            tally.add(
                Case("pickles", f"{label} {name}", ok, bool(lost_files(before)), detail + res.output[-300:])
            )
    # a crafted file planted as the newest checkpoint of an existing run, then resumed
    ckpts = sorted(gan.glob("*/checkpoints/ckpt-*.pt"))
    if ckpts:
        planted = ckpts[-1].with_name("ckpt-99999999.pt")
        shutil.copy(crafted_pickles(scratch)["zip-os-system"], planted)
        marker.unlink(missing_ok=True)
        # Units train in turn and keep their newest checkpoints (older ones rotate out by design),
        # so what must survive is the planted unit's own checkpoints and every dataset.
        keep = (str(planted.parent), str(ws / "data"))
        before = {k: v for k, v in tree_digest(owned(ws)).items() if k != str(planted) and k.startswith(keep)}
        res = run("train-gan", "dcgan", "--resume", str(gan), "--kimg", "0.04")
        ran = marker.exists()
        tally.add(
            Case(
                "pickles",
                "planted checkpoint + --resume",
                not ran and not res.traceback,
                bool(lost_files(before)),
                f"exit {res.code}{' CODE RAN' if ran else ''}: {res.output[-300:]}",
            )
        )
        planted.unlink(missing_ok=True)
    marker.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- manifest edits


def _edit_csv(path: Path, fn: Callable[[list[list[str]]], list[list[str]]], **kw: str) -> None:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    rows = fn(rows)
    with open(path, "w", newline="", encoding=kw.get("encoding", "utf-8")) as fh:
        csv.writer(fh, lineterminator=kw.get("newline", "\n")).writerows(rows)


def _col(rows: list[list[str]], name: str) -> int:
    return rows[0].index(name)


def _set(name: str, value: str, row: int = 1) -> Callable[[list[list[str]]], list[list[str]]]:
    def fn(rows: list[list[str]]) -> list[list[str]]:
        rows[row][_col(rows, name)] = value
        return rows

    return fn


def _json_edit(key: str, value: object) -> Callable[[Path], None]:
    def fn(folder: Path) -> None:
        info = json.loads((folder / "info.json").read_text())
        if value is _DELETE:
            info.pop(key, None)
        else:
            info[key] = value
        (folder / "info.json").write_text(json.dumps(info))

    return fn


_DELETE = object()


def _leak_test_row(rows: list[list[str]]) -> list[list[str]]:
    """Give a training row the content hash of a test row: the same picture in both splits."""
    split, sha = _col(rows, "split"), _col(rows, "sha256")
    test = next(r for r in rows[1:] if r[split] == "test")
    train = next(r for r in rows[1:] if r[split] == "train")
    train[sha] = test[sha]
    return rows


def _truncate_npy(folder: Path) -> None:
    data = (folder / "images.npy").read_bytes()
    (folder / "images.npy").write_bytes(data[: len(data) // 2])


MANIFEST_EDITS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (edit, expected outcome: "accept" or "refuse")
    "excel BOM": (lambda f: _edit_csv(f / "manifest.csv", lambda r: r, encoding="utf-8-sig"), "accept"),
    "CRLF line ends": (lambda f: _edit_csv(f / "manifest.csv", lambda r: r, newline="\r\n"), "accept"),
    "missing column id": (lambda f: _edit_csv(f / "manifest.csv", lambda r: [x[1:] for x in r]), "refuse"),
    "bad phash": (lambda f: _edit_csv(f / "manifest.csv", _set("phash", "not-a-hash")), "refuse"),
    "bad split": (lambda f: _edit_csv(f / "manifest.csv", _set("split", "holdout")), "refuse"),
    "bad label": (lambda f: _edit_csv(f / "manifest.csv", _set("label", "zebra")), "refuse"),
    "duplicate id": (
        lambda f: _edit_csv(f / "manifest.csv", lambda r: r[:2] + [list(r[1])] + r[2:]),
        "refuse",
    ),
    "row removed": (lambda f: _edit_csv(f / "manifest.csv", lambda r: r[:1] + r[2:]), "refuse"),
    "empty manifest": (lambda f: (f / "manifest.csv").write_text(""), "refuse"),
    "same picture in train and test": (lambda f: _edit_csv(f / "manifest.csv", _leak_test_row), "refuse"),
    "info.json size abc": (_json_edit("size", "abc"), "refuse"),
    "info.json not json": (lambda f: (f / "info.json").write_text("{oops"), "refuse"),
    "info.json without size": (_json_edit("size", _DELETE), "refuse"),
    "images.npy truncated": (_truncate_npy, "refuse"),
    "images.npy missing": (lambda f: (f / "images.npy").unlink(), "refuse"),
}


def attack_manifest(ws: Path, tally: Tally, scratch: Path) -> None:
    run = InProcess(ws)
    src = ws / "data" / "ph"
    for i, (name, (edit, expect)) in enumerate(MANIFEST_EDITS.items()):
        copy = ws / "data" / f"edit{i}"
        shutil.copytree(src, copy)
        edit(copy)
        before = tree_digest(owned(ws))
        before = {k: v for k, v in before.items() if not k.startswith(str(copy))}
        outs = [
            run("data", "show", copy.name),
            run("train-classifier", "cnn", "--data", copy.name, "--epochs", "1", "--batch-size", "16"),
        ]
        if expect == "accept":
            ok = all(r.code == 0 for r in outs)
        else:
            ok = all(r.refused() for r in outs)
        detail = "; ".join(
            f"exit {r.code}: {r.output.strip().splitlines()[-1:] if r.output.strip() else ''}" for r in outs
        )
        tally.add(Case("manifest", f"{name} (expect {expect})", ok, bool(lost_files(before)), detail))
        shutil.rmtree(copy, ignore_errors=True)
        for extra in (ws / "runs" / "classifier").iterdir():  # runs on edited copies are not the user's
            opts = extra / "options.json"
            if opts.is_file() and f'"{copy.name}"' in opts.read_text():
                shutil.rmtree(extra, ignore_errors=True)


# ------------------------------------------------------------------------------------- plugins

# A real classifier registered under the built-in's name, asking to be called first or last.
HIJACK = """
    from cxraug import hookimpl
    from cxraug.plugins.classifiers.cnn import CNNClassifier
    class Hijack(CNNClassifier):
        name = "cnn"
        description = "HIJACKED"
    @hookimpl({ordering}=True)
    def register_classifiers(register):
        register(Hijack)
"""

PLUGINS: dict[str, str] = {
    "trylast clash with cnn": HIJACK.format(ordering="trylast"),
    "tryfirst clash with cnn": HIJACK.format(ordering="tryfirst"),
    "sys.exit at import": "import sys\nsys.exit(3)\n",
    "KeyboardInterrupt at import": "raise KeyboardInterrupt\n",
    "ImportError at import": "import no_such_module_anywhere\n",
    "SyntaxError": "def broken(:\n",
    "class missing a method": """
        from cxraug import hookimpl
        from cxraug.interfaces import Classifier
        class Half(Classifier):
            name = "half"
            description = "no build()"
        @hookimpl
        def register_classifiers(register):
            register(Half)
    """,
    "hook raises": """
        from cxraug import hookimpl
        @hookimpl
        def register_gans(register):
            raise RuntimeError("boom")
    """,
    "misspelled hook": """
        from cxraug import hookimpl
        @hookimpl
        def register_ganz(register):
            pass
    """,
    "register_commands raises SystemExit": """
        from cxraug import hookimpl
        @hookimpl
        def register_commands(app):
            raise SystemExit(4)
    """,
    "not a class": """
        from cxraug import hookimpl
        @hookimpl
        def register_metrics(register):
            register("fid")
    """,
}


def attack_plugins(ws: Path, tally: Tally, scratch: Path) -> None:
    for i, (name, source) in enumerate(PLUGINS.items()):
        site = scratch / f"site{i}"
        site.mkdir()
        module = f"attack_plugin_{i}"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"attack_plugin_{i}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: attack-plugin-{i}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[cxraug]\nattack{i} = {module}\n")
        helped = cxraug(ws, "--help", extra_path=str(site), timeout=300)
        listed = cxraug(ws, "plugins", "list", "--json", extra_path=str(site), timeout=300)
        problems = []
        if helped.code != 0 or helped.traceback:
            problems.append(f"--help exit {helped.code}")
        try:
            rows = json.loads(listed.stdout) if listed.code == 0 else []
        except ValueError:
            rows = []
            problems.append("plugins list --json unreadable")
        if listed.code != 0:
            problems.append(f"plugins list exit {listed.code}: {listed.output[-200:]}")
        cnn = [
            r
            for r in rows
            if r.get("kind") == "classifier" and r.get("name") == "cnn" and r.get("status") == "ok"
        ]
        if rows and (len(cnn) != 1 or cnn[0].get("package") != "cxraug"):
            problems.append(f"cnn is now {cnn}")
        mine = [r for r in rows if r.get("package") == f"attack-plugin-{i}"]
        if rows and name != "misspelled hook" and not any(r.get("status") != "ok" for r in mine):
            problems.append(f"plugin not shown as failed: {mine}")
        if name == "class missing a method":
            res = cxraug(
                ws, "train-classifier", "half", "--data", "ph", "--epochs", "1", extra_path=str(site)
            )
            if not res.refused():
                problems.append(f"train-classifier half: exit {res.code}")
        tally.add(Case("plugins", name, not problems, False, "; ".join(problems)))


# ------------------------------------------------------------------------------- hostile files


def attack_files(ws: Path, tally: Tally, scratch: Path) -> None:
    """Every hostile file ends in the manifest, the skipped list or the dropped list; no row from outside."""
    import csv

    sys.path.insert(0, str(REPO / "tests"))
    from hostile_files import make_hostile_tree  # type: ignore[import-not-found]

    root = scratch / "hostile" / "tree"
    expected = make_hostile_tree(root, 300, seed=7)
    before = tree_digest(owned(ws))
    res = cxraug(
        ws, "data", "prepare", "imagefolder", "--root", str(root), "--name", "hostile", "--size", "32"
    )
    lost = bool(lost_files(before))
    folder = ws / "data" / "hostile"
    if res.code != 0 or res.traceback or not folder.is_dir():
        tally.cases.extend(Case("files", rel, False, lost, f"exit {res.code}") for rel in expected)
        print(f"  files: exit {res.code}: {res.output[-400:]}")
        return
    with open(folder / "manifest.csv", newline="", encoding="utf-8-sig") as fh:
        kept = {row["original"] for row in csv.DictReader(fh)}
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    skipped = {s["original"] for s in report["skipped"] if s.get("reason")}
    dropped = {d["original"] for d in report["dropped"] if d.get("reason")}
    strays = kept - set(expected)
    if strays:
        print(f"  files: rows that are no file of the tree: {sorted(strays)[:5]}")
    for rel, kind in expected.items():
        places = [
            name
            for name, found in (("kept", kept), ("skipped", skipped), ("dropped", dropped))
            if rel in found
        ]
        good = len(places) == 1 and (
            kind == "any"
            or (kind == "ok" and places != ["skipped"])
            or (kind == "skip" and places == ["skipped"])
            or (kind == "conflict" and places == ["dropped"])
        )
        tally.add(Case("files", f"{rel} ({kind})", good and not strays, lost, f"found in {places}"))
    shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------- fuzz

FUZZ_CHILD = r"""
import resource, sys, json
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from cxraug.imageio import ImageReadError, read_gray
import numpy as np
out = []
for line in sys.stdin:
    p = Path(line.strip())
    try:
        g = read_gray(p, target=64)
        ok = isinstance(g, np.ndarray) and g.dtype == np.uint8 and g.ndim == 2 and g.size > 0
        out.append(["ok" if ok else "bad-array", p.name, ""])
    except ImageReadError as exc:
        out.append(["refused", p.name, str(exc)[:80]])
    except Exception as exc:
        out.append(["crash", p.name, f"{type(exc).__name__}: {exc}"[:200]])
print(json.dumps(out))
"""


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        b = b[: rng.randrange(1, len(b))]
    elif kind == 2:  # header bytes randomised
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(min(64, len(b)))] = rng.randrange(256)
    elif kind == 3:  # a chunk duplicated
        i, j = sorted(rng.sample(range(len(b)), 2))
        b = b[:j] + b[i:j] + b[j:]
    elif kind == 4:  # big-endian dimension fields set huge
        for i in range(8, min(len(b) - 4, 40), 4):
            if rng.random() < 0.3:
                b[i : i + 4] = rng.choice([b"\x00\x00\x7f\xff", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"])
    else:  # random tail
        b = b[: rng.randrange(len(b))] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 512)))
    return bytes(b)


def attack_fuzz(ws: Path, tally: Tally, scratch: Path, n: int) -> None:
    rng = random.Random(11)
    originals = [p.read_bytes() for p in sorted(SAMPLES.iterdir())]
    folder = scratch / "fuzz"
    folder.mkdir()
    paths = []
    for i in range(n):
        p = folder / f"f{i:05d}.img"
        p.write_bytes(mutate(rng.choice(originals), rng))
        paths.append(p)
    counts = {"ok": 0, "refused": 0, "crash": 0, "hang": 0, "bad-array": 0}
    crashes: list[str] = []
    chunk = 100
    for start in range(0, n, chunk):
        batch = paths[start : start + chunk]
        try:
            proc = subprocess.run(
                [sys.executable, "-c", FUZZ_CHILD],
                input="\n".join(map(str, batch)),
                capture_output=True,
                text=True,
                timeout=30 + 3 * len(batch),
                env=env_for(ws),
            )
            rows = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []
            if proc.returncode != 0:
                counts["crash"] += len(batch)
                crashes.append(f"child exit {proc.returncode} on {batch[0].name}..: {proc.stderr[-200:]}")
        except subprocess.TimeoutExpired:
            counts["hang"] += len(batch)
            crashes.append(f"timeout in {batch[0].name}..")
            continue
        for status, name, why in rows:
            counts[status] += 1
            if status in ("crash", "bad-array"):
                crashes.append(f"{name}: {why}")
        print(f"  fuzz {min(start + chunk, n)}/{n}", flush=True)
    clean = counts["ok"] + counts["refused"]
    print(f"  fuzz: {counts}")
    for line in crashes[:10]:
        print(f"    {line}")
    tally.cases.extend(Case("fuzz", f"file {i}", i < clean) for i in range(n))


# -------------------------------------------------------------------------------------- races


def attack_race(ws: Path, tally: Tally, scratch: Path) -> None:
    for label, args in {
        "two data prepare --name same": [
            "data",
            "prepare",
            "phantom",
            "--name",
            "race",
            "--size",
            "64",
            "--opt",
            "n_per_class=150",
        ],
        "two augment --name same": ["augment", "--data", "ph", "--classic", "200", "--name", "racea"],
    }.items():
        before = tree_digest(owned(ws))
        env = env_for(ws)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "cxraug", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=900)[0] for p in procs]
        codes = [p.returncode for p in procs]
        won = codes.count(0)
        loser_ok = all(c == 2 and "Traceback" not in o for c, o in zip(codes, outs, strict=True) if c != 0)
        name = args[args.index("--name") + 1]
        shown = cxraug(ws, "data", "show", name)
        ok = won == 1 and loser_ok and shown.code == 0
        tally.add(
            Case("race", label, ok, bool(lost_files(before)), f"exits {codes}: {[o[-200:] for o in outs]}")
        )


# --------------------------------------------------------------------------- full disk, read-only


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    path.mkdir(parents=True, exist_ok=True)
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def attack_disk(ws: Path, tally: Tally, scratch: Path) -> None:
    small = scratch / "small"
    with tmpfs(small, "3m") as mounted:
        if not mounted:
            print("  disk: cannot mount a tmpfs (not root?); full-disk cases skipped")
        else:
            disk_ws = small / "ws"
            res = cxraug(
                disk_ws,
                "data",
                "prepare",
                "phantom",
                "--name",
                "kept",
                "--size",
                "16",
                "--opt",
                "n_per_class=10",
            )
            if res.code != 0:
                print(f"  disk: could not prepare the first dataset: {res.output[-300:]}")
            cases = {
                "data prepare on a full disk": [
                    "data",
                    "prepare",
                    "phantom",
                    "--name",
                    "big",
                    "--size",
                    "256",
                    "--opt",
                    "n_per_class=40",
                ],
                "augment on a full disk": [
                    "augment",
                    "--data",
                    "kept",
                    "--classic",
                    "30000",
                    "--name",
                    "bigaug",
                ],
            }
            for label, args in cases.items():
                before = tree_digest([disk_ws / "data", disk_ws / "runs"])
                res = cxraug(disk_ws, *args)
                partial = [p.name for p in (disk_ws / "data").iterdir() if ".partial" in p.name]
                ok = res.refused() and "disk" in res.output.lower() and not partial
                tally.add(
                    Case(
                        "disk",
                        label,
                        ok,
                        bool(lost_files(before)),
                        f"exit {res.code}, partial {partial}: {res.output[-300:]}",
                    )
                )
    # read-only workspace: a read-only bind mount of the base workspace
    ro = scratch / "ro"
    ro.mkdir()
    bound = subprocess.run(["mount", "--bind", str(ws), str(ro)], capture_output=True).returncode == 0
    if bound:
        bound = (
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode == 0
        )
    if not bound:
        print("  disk: cannot make a read-only bind mount; read-only cases skipped")
        subprocess.run(["umount", str(ro)], capture_output=True)
        return
    try:
        cases = {
            "data prepare": [
                "data",
                "prepare",
                "phantom",
                "--name",
                "ro",
                "--size",
                "16",
                "--opt",
                "n_per_class=8",
            ],
            "augment": ["augment", "--data", "ph", "--classic", "8", "--name", "roaug"],
            "generate": ["generate", "--n", "4"],
            "train-gan": ["train-gan", "dcgan", "--data", "ph", "--kimg", "0.01"],
            "train-classifier": ["train-classifier", "cnn", "--data", "ph", "--epochs", "1"],
            "evaluate": ["evaluate", "--roc"],
            "experiment": ["experiment", "--quick", "--data", "ph"],
            "data show": ["data", "show", "ph"],
        }
        for label, args in cases.items():
            res = cxraug(ro, *args)
            ok = (res.code == 0 and label == "data show") or (
                res.refused()
                and "read-only" in res.output.lower()
                or res.refused()
                and "writ" in res.output.lower()
            )
            tally.add(
                Case(
                    "disk",
                    f"read-only workspace: {label}",
                    ok,
                    False,
                    f"exit {res.code}: {res.output[-300:]}",
                )
            )
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--fuzz", type=int, default=2000, help="mutated files for the decoder (the issue's attack: 15800)"
    )
    ap.add_argument("--only", default=",".join(CATEGORIES), help="comma list of categories")
    ap.add_argument("--json", type=Path, help="write every case here")
    args = ap.parse_args()
    only = [c for c in args.only.split(",") if c]
    unknown = set(only) - set(CATEGORIES)
    if unknown:
        ap.error(f"unknown categories {sorted(unknown)}; choose from {', '.join(CATEGORIES)}")
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="cxraug-attack-") as tmp:
        scratch = Path(tmp)
        t0 = time.perf_counter()
        print("setting up a workspace (dataset, GAN run, classifier run)...", flush=True)
        ws = base_workspace(scratch)
        steps: dict[str, Callable[[], None]] = {
            "cli": lambda: attack_cli(ws, tally, scratch),
            "pickles": lambda: attack_pickles(ws, tally, scratch),
            "manifest": lambda: attack_manifest(ws, tally, scratch),
            "plugins": lambda: attack_plugins(ws, tally, scratch),
            "files": lambda: attack_files(ws, tally, scratch),
            "fuzz": lambda: attack_fuzz(ws, tally, scratch, args.fuzz),
            "race": lambda: attack_race(ws, tally, scratch),
            "disk": lambda: attack_disk(ws, tally, scratch),
        }
        for cat in CATEGORIES:
            if cat in only:
                print(f"== {cat}", flush=True)
                steps[cat]()
        print(f"\n{tally.table()}\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps([c.__dict__ for c in tally.cases], indent=1))


if __name__ == "__main__":
    main()
