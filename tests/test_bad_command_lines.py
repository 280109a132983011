"""Bad command lines and hand-edited files, as a user types and makes them: each is refused with
exit status 2 and one line naming the flag, key or file; never a traceback, never silently used.

One small workspace (a prepared phantom dataset, a tiny GAN run, a tiny classifier run) is built
once; each case runs on a fresh copy of it, after an optional edit of a file in it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from cxraug.data.prepared import PreparedDataset

Edit = Callable[[Path], None]


@dataclass
class Case:
    """A command line (``{ws}``, ``{gan}``, ``{ckpt}``, ``{best}``, ``{tmp}`` filled in) and what
    its one error line must say."""

    id: str
    args: list[str]
    says: list[str]
    edit: Edit | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- the workspace


class _Evil:
    """Pickles to a call of os.system: loading it unsafely would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from typer.testing import CliRunner

    from cxraug.cli import build_app

    root = tmp_path_factory.mktemp("bad-cli") / "ws"
    env = {"COLUMNS": "200", "CXRAUG_WORKSPACE": str(root), "CXRAUG_DISABLE_PLUGINS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRAUG_DISABLE_PLUGINS", "1")
        steps = [
            ["data", "prepare", "phantom", "--size", "16", "--opt", "n_per_class=8", "--opt",
             "classes=covid,normal", "--name", "tiny"],
            ["train-gan", "dcgan", "--kimg", "0.008", "--batch-size", "4", "--pooled", "--opt", "ngf=4",
             "--opt", "ndf=4", "--opt", "nz=4"],
            ["train-classifier", "cnn", "--epochs", "1", "--batch-size", "8", "--no-pretrained", "--opt",
             "input_size=16", "--opt", "width=4", "--opt", "blocks=1", "--opt", "dense=8"],
        ]  # fmt: skip
        for args in steps:
            result = CliRunner().invoke(build_app(), args, env=env)
            assert result.exit_code == 0, (args, result.output)
    yield root


@pytest.fixture
def workspace(base_workspace: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(base_workspace, root)
    return root


def _gan_run(ws: Path) -> Path:
    return next((ws / "runs" / "gan").iterdir())


def _clf_run(ws: Path) -> Path:
    return next((ws / "runs" / "classifier").iterdir())


def _edit_json(rel: Callable[[Path], Path], change: Callable[[dict[str, Any]], None]) -> Edit:
    def edit(ws: Path) -> None:
        path = rel(ws)
        data = json.loads(path.read_text(encoding="utf-8"))
        change(data)
        path.write_text(json.dumps(data), encoding="utf-8")

    return edit


def _gan_options(change: Callable[[dict[str, Any]], None]) -> Edit:
    return _edit_json(lambda ws: _gan_run(ws) / "options.json", change)


def _clf_options(change: Callable[[dict[str, Any]], None]) -> Edit:
    return _edit_json(lambda ws: _clf_run(ws) / "options.json", change)


def _info(change: Callable[[dict[str, Any]], None]) -> Edit:
    return _edit_json(lambda ws: ws / "data" / "tiny" / "info.json", change)


def _write(rel: str, text: str | bytes) -> Edit:
    def edit(ws: Path) -> None:
        path = ws / rel
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))

    return edit


def _manifest(change: Callable[[list[list[str]]], None]) -> Edit:
    def edit(ws: Path) -> None:
        path = ws / "data" / "tiny" / "manifest.csv"
        rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines()]
        change(rows)
        path.write_text("\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")

    return edit


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        data = data[p]
    data[last] = value


def _del(data: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        data = data[p]
    del data[last]


def _cell(column: str, value: str, line: int = 1) -> Callable[[list[list[str]]], None]:
    def change(rows: list[list[str]]) -> None:
        rows[line][rows[0].index(column)] = value

    return change


def _drop_column(column: str) -> Callable[[list[list[str]]], None]:
    def change(rows: list[list[str]]) -> None:
        k = rows[0].index(column)
        for r in rows:
            del r[k]

    return change


# ------------------------------------------------------------------------------------- the cases

DRY = "--dry-run"
HUGE = "100000000000"
SEED_TOO_BIG = str(2**32)


def _flag_cases(command: list[str], cases: list[tuple[str, str, str]], dry: bool = True) -> list[Case]:
    """``(flag, value, expected text)`` for one command."""
    out = []
    for flag, value, says in cases:
        args = [*command, flag, value, *([DRY] if dry else [])]
        out.append(Case(f"{' '.join(command)} {flag} {value}", args, [says]))
    return out


PREPARE = ["data", "prepare", "phantom"]
GAN = ["train-gan", "dcgan"]
CLF = ["train-classifier", "cnn"]
GEN = ["generate"]
AUG = ["augment", "--classic", "4"]
EXP = ["experiment", "--quick"]

CASES: list[Case] = [
    # ---- data prepare: flags, plugin options, config (item 12/13 and the sweep)
    *_flag_cases(
        PREPARE,
        [
            ("--size", "0", "--size 0"),
            ("--size", "-16", "--size -16"),
            ("--size", "5000", "--size 5000"),
            ("--seed", "-1", "--seed -1"),
            ("--seed", SEED_TOO_BIG, "--seed"),
            ("--workers", "-1", "--workers -1"),
            ("--workers", "100000", "--workers"),
            ("--split", "0.5,0.5", "--split"),
            ("--split", "nan,0.5,0.5", "--split"),
            ("--split", "inf,0,0", "--split"),
            ("--split", "-1,1,1", "--split"),
            ("--resize", "banana", "--resize"),
            ("--map", "pneumonia", "--map"),
            ("--classes", "flu", "flu"),
            ("--name", "../evil", "--name"),
        ],
    ),
    Case("phantom n_per_class huge", [*PREPARE, "--opt", "n_per_class=100000000", DRY], ["n_per_class"]),
    Case("phantom n_per_class 0", [*PREPARE, "--opt", "n_per_class=0", DRY], ["n_per_class"]),
    Case("phantom n_per_class -5", [*PREPARE, "--opt", "n_per_class=-5", DRY], ["n_per_class"]),
    Case("phantom size 8", [*PREPARE, "--opt", "size=8", DRY], ["size"]),
    Case("phantom followup 1.5", [*PREPARE, "--opt", "followup_fraction=1.5", DRY], ["followup_fraction"]),
    Case("phantom followup nan", [*PREPARE, "--opt", "followup_fraction=nan", DRY], ["followup_fraction"]),
    Case("phantom seed -1", [*PREPARE, "--opt", "seed=-1", DRY], ["seed"]),
    Case("phantom seed huge", [*PREPARE, "--opt", f"seed={SEED_TOO_BIG}", DRY], ["seed"]),
    Case("phantom unknown key", [*PREPARE, "--opt", "n_per_klass=3", DRY], ["n_per_klass"]),
    Case("medmnist size 30", ["data", "prepare", "medmnist", "--opt", "size=30", DRY], ["size"]),
    Case(
        "imagefolder root is a file",
        ["data", "prepare", "imagefolder", "--root", "/etc/passwd"],
        ["/etc/passwd"],
    ),
    Case(
        "imagefolder no root", ["data", "prepare", "imagefolder", "--root", "/no/such/dir"], ["/no/such/dir"]
    ),
    Case("dry-run: name taken", [*PREPARE, "--name", "tiny", DRY], ["'tiny' already exists", "--force"]),
    Case("dry-run: covidx without root", ["data", "prepare", "covidx", DRY], ["covidx needs --root"]),
    Case(
        "dry-run: root missing",
        ["data", "prepare", "covidx", "--root", "/no/such/dir", DRY],
        ["/no/such/dir"],
    ),
    Case("config missing", [*PREPARE, "--config", "/no/such.toml", DRY], ["--config"]),
    Case("config not toml", [*PREPARE, "--config", "/etc/passwd", DRY], ["/etc/passwd"]),
    Case(
        "config size abc",
        [*PREPARE, "--config", "{tmp}/c.toml", DRY],
        ["size", "c.toml"],
        edit=None,
        extra={"config": '[prepare]\nsize = "abc"\n'},
    ),
    Case(
        "config size 0",
        [*PREPARE, "--config", "{tmp}/c.toml", DRY],
        ["size", "c.toml"],
        extra={"config": "[prepare]\nsize = 0\n"},
    ),
    Case(
        "config n_per_class nan",
        [*PREPARE, "--config", "{tmp}/c.toml", DRY],
        ["n_per_class"],
        extra={"config": "[dataset.phantom]\nn_per_class = nan\n"},
    ),
    Case(
        "config unknown key",
        [*PREPARE, "--config", "{tmp}/c.toml", DRY],
        ["bogus", "c.toml"],
        extra={"config": "[prepare]\nbogus = 1\n"},
    ),
    Case(
        "config plugin value not a table",
        [*PREPARE, "--config", "{tmp}/c.toml", DRY],
        ["dataset.phantom = 3", "c.toml"],
        extra={"config": "[dataset]\nphantom = 3\n"},
    ),
    Case(
        "config arch a list",
        ["train-gan", "--config", "{tmp}/c.toml", DRY],
        ["arch", "c.toml"],
        extra={"config": '[train-gan]\narch = ["dcgan"]\n'},
    ),
    Case("option true for a number", [*PREPARE, "--opt", "n_per_class=true", DRY], ["n_per_class"]),
    Case("gan option true for a number", [*GAN, "--opt", "lr_g=true", DRY], ["lr_g", "not true"]),
    Case("name too long", [*PREPARE, "--name", "a" * 300, DRY], ["--name", "at most"]),
    # ---- train-gan (dry-run: nothing trains)
    *_flag_cases(
        GAN,
        [
            ("--size", "0", "--size 0"),
            ("--size", "24", "24"),
            ("--size", "100000", "--size"),
            ("--batch-size", "0", "--batch-size 0"),
            ("--batch-size", "-4", "--batch-size -4"),
            ("--epochs", "-1", "--epochs"),
            ("--epochs", "0", "--epochs"),
            ("--epochs", "nan", "--epochs"),
            ("--epochs", "inf", "--epochs"),
            ("--kimg", "0", "--kimg"),
            ("--kimg", "-1", "--kimg"),
            ("--kimg", "nan", "--kimg"),
            ("--seed", "-1", "--seed -1"),
            ("--seed", SEED_TOO_BIG, "--seed"),
            ("--snapshot-every", "0", "--snapshot-every"),
            ("--snapshot-every", "0.5steps", "--snapshot-every"),
            ("--snapshot-every", "-2ep", "--snapshot-every"),
            ("--snapshot-every", "abc", "--snapshot-every"),
            ("--snapshot-every", "nan", "--snapshot-every"),
            ("--snapshot-every", "1e999kimg", "--snapshot-every"),
            ("--log-every", "0", "--log-every 0"),
            ("--nproc", "0", "--nproc 0"),
            ("--device", "tpu", "--device"),
            ("--classes", "flu", "flu"),
            ("--data", "nothing", "nothing"),
            ("--transfer", "/etc/passwd", "/etc/passwd"),
            ("--transfer", "nothing", "nothing"),
            ("--resume", "/etc", "/etc"),
            ("--resume", "nothing", "nothing"),
        ],
    ),
    Case("stylegan2 at 16 px", ["train-gan", "stylegan2", DRY], ["size", "16"]),
    Case(
        "stylegan2 freeze_d too deep",
        ["train-gan", "stylegan2", "--size", "32", "--opt", "freeze_d=9", DRY],
        ["freeze_d"],
    ),
    Case(
        "stylegan2 channel_base 1",
        ["train-gan", "stylegan2", "--size", "32", "--opt", "channel_base=1", DRY],
        ["channel_base"],
    ),
    Case(
        "stylegan2 r1_gamma inf",
        ["train-gan", "stylegan2", "--size", "32", "--opt", "r1_gamma=inf", DRY],
        ["r1_gamma"],
    ),
    Case(
        "stylegan2 ema_kimg nan",
        ["train-gan", "stylegan2", "--size", "32", "--opt", "ema_kimg=nan", DRY],
        ["ema_kimg"],
    ),
    Case(
        "stylegan2 pl_weight inf",
        ["train-gan", "stylegan2", "--size", "32", "--opt", "pl_weight=inf", DRY],
        ["pl_weight"],
    ),
    Case(
        "stylegan2 mbstd 0",
        ["train-gan", "stylegan2", "--size", "32", "--opt", "mbstd_group=0", DRY],
        ["mbstd_group"],
    ),
    Case(
        "stylegan2 diffaug",
        ["train-gan", "stylegan2", "--size", "32", "--opt", "diffaug_policy=blur", DRY],
        ["diffaug_policy"],
    ),
    Case("cgan at 16 px not power", ["train-gan", "cgan", "--size", "48", DRY], ["48"]),
    Case("dcgan ngf 0", [*GAN, "--opt", "ngf=0", DRY], ["ngf"]),
    Case("dcgan lr nan", [*GAN, "--opt", "lr_g=nan", DRY], ["lr_g"]),
    Case("dcgan lr -1", [*GAN, "--opt", "lr_d=-1", DRY], ["lr_d"]),
    Case("dcgan beta1 1", [*GAN, "--opt", "beta1=1", DRY], ["beta1"]),
    Case("dcgan nz abc", [*GAN, "--opt", "nz=abc", DRY], ["nz"]),
    Case("dcgan unknown key", [*GAN, "--opt", "bogus=1", DRY], ["bogus"]),
    Case("unknown gan", ["train-gan", "dcgn", DRY], ["dcgn"]),
    Case("both budgets", [*GAN, "--epochs", "1", "--kimg", "1", DRY], ["--epochs", "--kimg"]),
    Case(
        "gan config epochs",
        [*GAN, "--config", "{tmp}/c.toml", DRY],
        ["epochs", "c.toml"],
        extra={"config": "[train-gan]\nepochs = -1\n"},
    ),
    Case(
        "gan config plugin",
        [*GAN, "--config", "{tmp}/c.toml", DRY],
        ["ngf"],
        extra={"config": "[gan.dcgan]\nngf = 0\n"},
    ),
    # ---- generate
    *_flag_cases(
        GEN,
        [
            ("--n", "0", "--n 0"),
            ("--n", "-5", "--n -5"),
            ("--n", HUGE, "--n"),
            ("--batch-size", "0", "--batch-size 0"),
            ("--truncation", "0", "--truncation"),
            ("--truncation", "-1", "--truncation"),
            ("--truncation", "nan", "--truncation"),
            ("--truncation", "3", "--truncation"),
            ("--seed", "-1", "--seed -1"),
            ("--device", "tpu", "--device"),
            ("--run", "nothing", "nothing"),
            ("--run", "/etc", "/etc"),
            ("--label", "flu", "flu"),
            ("--per-class", "covid=abc", "--per-class"),
            ("--per-class", "covid=-1", "--per-class"),
            ("--checkpoint", "/etc/passwd", "/etc/passwd"),
            ("--checkpoint", "/no/such.pt", "/no/such.pt"),
            ("--checkpoint", "/etc", "/etc"),
            ("--out", "/proc/1", "/proc/1"),
            ("--out", "/etc/passwd", "/etc/passwd"),
            ("--out", "/dev/null", "/dev/null"),
        ],
        dry=False,
    ),
    Case(
        "generate run and checkpoint",
        [*GEN, "--run", "{gan}", "--checkpoint", "{ckpt}"],
        ["--run", "--checkpoint"],
    ),
    Case("generate label and per-class", [*GEN, "--label", "covid", "--per-class", "covid=1"], ["--label"]),
    Case("generate classifier checkpoint", [*GEN, "--checkpoint", "{best}"], ["best.pt", "GAN"]),
    Case(
        "generate empty checkpoint",
        [*GEN, "--checkpoint", "{tmp}/empty.pt"],
        ["empty.pt"],
        extra={"file": ("empty.pt", b"")},
    ),
    Case(
        "generate truncated checkpoint",
        [*GEN, "--checkpoint", "{tmp}/half.pt"],
        ["half.pt", "corrupt"],
        extra={"half": True},
    ),
    Case(
        "generate numpy file",
        [*GEN, "--checkpoint", "{tmp}/a.npy"],
        ["a.npy", "not a cxraug checkpoint"],
        extra={"file": ("a.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}")},
    ),
    Case(
        "generate zip of other things",
        [*GEN, "--checkpoint", "{tmp}/a.zip"],
        ["a.zip", "not a cxraug checkpoint"],
        extra={"zip": "a.zip"},
    ),
    # ---- augment (dry-run)
    *_flag_cases(
        ["augment"],
        [
            ("--synthetic", "-1", "--synthetic -1"),
            ("--classic", "-1", "--classic -1"),
            ("--classic", HUGE, "--classic"),
            ("--truncation", "nan", "--truncation"),
            ("--min-confidence", "1.5", "--min-confidence"),
            ("--min-confidence", "nan", "--min-confidence"),
            ("--seed", "-1", "--seed -1"),
            ("--gan", "nothing", "nothing"),
            ("--data", "nothing", "nothing"),
        ],
    ),
    Case("augment nothing to add", ["augment", DRY], ["--synthetic"]),
    Case("augment label flu", [*AUG, "--label", "flu", DRY], ["flu"]),
    Case("augment classic per-class", ["augment", "--classic-per-class", "covid=-1", DRY], ["--per-class"]),
    Case("augment rotation 200", [*AUG, "--opt", "classic.rotation=200", DRY], ["rotation"]),
    Case("augment hflip 2", [*AUG, "--opt", "classic.hflip=2", DRY], ["hflip"]),
    Case("augment scale reversed", [*AUG, "--opt", "classic.scale=[2,1]", DRY], ["scale"]),
    Case("augment translate nan", [*AUG, "--opt", "classic.translate=nan", DRY], ["translate"]),
    Case("augment no prefix", [*AUG, "--opt", "rotation=5", DRY], ["rotation"]),
    Case(
        "augment max_tries 0",
        ["augment", "--synthetic", "4", "--opt", "synthetic.max_tries=0", DRY],
        ["max_tries"],
    ),
    Case(
        "augment filter not a run",
        ["augment", "--synthetic", "4", "--filter", "/etc/passwd", DRY],
        ["/etc/passwd"],
    ),
    Case("augment name", [*AUG, "--name", "../evil", DRY], ["--name"]),
    # ---- train-classifier (dry-run)
    *_flag_cases(
        CLF,
        [
            ("--epochs", "0", "--epochs 0"),
            ("--epochs", "-1", "--epochs -1"),
            ("--batch-size", "0", "--batch-size 0"),
            ("--lr", "-1", "--lr"),
            ("--lr", "0", "--lr"),
            ("--lr", "nan", "--lr"),
            ("--lr", "inf", "--lr"),
            ("--lr", "1000", "--lr"),
            ("--seed", "-1", "--seed -1"),
            ("--nproc", "0", "--nproc 0"),
            ("--class-weights", "foo", "--class-weights"),
            ("--classes", "flu", "flu"),
            ("--weights", "/no/such.pth", "/no/such.pth"),
            ("--weights", "/etc/passwd", "/etc/passwd"),
            ("--resume", "nothing", "nothing"),
        ],
    ),
    Case("cnn width 0", [*CLF, "--opt", "width=0", DRY], ["width"]),
    Case("cnn dropout 1", [*CLF, "--opt", "dropout=1", DRY], ["dropout"]),
    Case("cnn input_size 8", [*CLF, "--opt", "input_size=8", DRY], ["input_size"]),
    Case("online augmenter", [*CLF, "--online-augment", "--online-augmenter", "nothing", DRY], ["nothing"]),
    Case(
        "online augmenter options",
        [*CLF, "--online-augment", "--config", "{tmp}/c.toml", DRY],
        ["rotation"],
        extra={"config": "[augmenter.classic]\nrotation = -5\n"},
    ),
    Case("unknown classifier", ["train-classifier", "cnnn", DRY], ["cnnn"]),
    # ---- evaluate
    Case("evaluate n 0", ["evaluate", "--fid", "--n", "0"], ["--n 0"]),
    Case("evaluate n -1", ["evaluate", "--fid", "--n", "-1"], ["--n -1"]),
    Case("evaluate truncation nan", ["evaluate", "--fid", "--truncation", "nan"], ["--truncation"]),
    Case("evaluate seed -1", ["evaluate", "--roc", "--seed", "-1"], ["--seed -1"]),
    Case("evaluate split", ["evaluate", "--roc", "--split", "foo"], ["--split"]),
    Case("evaluate real split", ["evaluate", "--fid", "--real-split", "foo"], ["--real-split"]),
    Case("evaluate mode", ["evaluate", "--fid", "--mode", "foo"], ["--mode"]),
    Case("evaluate unknown metric", ["evaluate", "--metric", "fidd"], ["fidd"]),
    Case("evaluate roc ci 1", ["evaluate", "--roc", "--opt", "roc.ci=1"], ["ci"]),
    Case("evaluate roc n_boot -1", ["evaluate", "--roc", "--opt", "roc.n_boot=-1"], ["n_boot"]),
    Case("evaluate fid batch 0", ["evaluate", "--fid", "--opt", "fid.batch_size=0"], ["batch_size"]),
    Case("evaluate classifier file", ["evaluate", "--roc", "--classifier", "/etc/passwd"], ["/etc/passwd"]),
    Case("evaluate classifier missing", ["evaluate", "--roc", "--classifier", "nothing"], ["nothing"]),
    Case(
        "evaluate generated missing", ["evaluate", "--fid", "--generated", "/no/such/dir"], ["/no/such/dir"]
    ),
    Case("evaluate generated file", ["evaluate", "--fid", "--generated", "/etc/passwd"], ["/etc/passwd"]),
    Case("evaluate gan missing", ["evaluate", "--fid", "--gan", "nothing"], ["nothing"]),
    Case("evaluate out is a file", ["evaluate", "--roc", "--out", "/etc/passwd"], ["/etc/passwd"]),
    Case(
        "evaluate generated empty",
        ["evaluate", "--fid", "--generated", "{tmp}/none"],
        ["--generated", "no images"],
        extra={"dir": "none"},
    ),
    Case(
        "evaluate inception weights",
        ["evaluate", "--fid", "--inception-weights", "/etc/passwd"],
        ["--inception-weights"],
    ),
    # ---- experiment (dry-run)
    *_flag_cases(
        EXP,
        [
            ("--seeds", "0", "--seeds 0"),
            ("--seeds", "-1", "--seeds -1"),
            ("--seeds", "5000", "--seeds"),
            ("--gan-seeds", "0", "--gan-seeds 0"),
            ("--synthetic", "-1", "--synthetic -1"),
            ("--classic", "-1", "--classic -1"),
            ("--epochs", "0", "--epochs 0"),
            ("--gan-kimg", "0", "--gan-kimg"),
            ("--gan-kimg", "nan", "--gan-kimg"),
            ("--seed", "-1", "--seed -1"),
            ("--arms", "foo", "--arms"),
            ("--classifier", "nothing", "nothing"),
            ("--gan", "nothing", "nothing"),
            ("--out", "/etc/passwd", "/etc/passwd"),
        ],
    ),
    Case("experiment gan option", [*EXP, "--opt", "gan.ngf=0", DRY], ["ngf"]),
    Case("experiment classifier option", [*EXP, "--opt", "classifier.width=0", DRY], ["width"]),
    Case("experiment option without prefix", [*EXP, "--opt", "ngf=8", DRY], ["ngf"]),
    Case("experiment stylegan2 at 16 px", ["experiment", DRY], ["stylegan2", "16"]),
    Case(
        "experiment inception weights",
        [*EXP, "--inception-weights", "/etc/passwd", DRY],
        ["--inception-weights"],
    ),
    # ---- the workspace itself
    Case("workspace is a file", ["data", "list", "--workspace", "/etc/passwd"], ["--workspace"]),
    Case("workspace under a file", [*GAN, "--workspace", "/etc/passwd/ws", DRY], ["--workspace"]),
    # ---- plugins
    Case("plugins show kind", ["plugins", "show", "gann", "dcgan"], ["gann"]),
    Case("plugins show name", ["plugins", "show", "gan", "dcgn"], ["dcgn"]),
    Case("plugins list kind", ["plugins", "list", "--kind", "gann"], ["gann"]),
    # ---- hand-edited run records (options.json)
    Case(
        "options.json extra key",
        [*GEN],
        ["options.json", "bogus"],
        edit=_gan_options(lambda d: _set(d, "bogus", 1)),
    ),
    Case(
        "options.json extra config key",
        [*GEN],
        ["options.json", "bogus"],
        edit=_gan_options(lambda d: _set(d, "config.bogus", 1)),
    ),
    Case(
        "options.json units wrong type",
        [*GEN],
        ["options.json", "units"],
        edit=_gan_options(lambda d: _set(d, "units", "abc")),
    ),
    Case(
        "options.json no units",
        [*GEN],
        ["options.json", "units"],
        edit=_gan_options(lambda d: _del(d, "units")),
    ),
    Case(
        "options.json units outside the run",
        [*GEN],
        ["options.json", "units"],
        edit=_gan_options(lambda d: _set(d, "units", ["../../evil"])),
    ),
    Case(
        "options.json batch size 0",
        [*GEN],
        ["options.json", "batch_size"],
        edit=_gan_options(lambda d: _set(d, "config.batch_size", 0)),
    ),
    Case(
        "options.json not json",
        [*GEN],
        ["options.json", "JSON"],
        edit=lambda ws: (_gan_run(ws) / "options.json").write_text("{not json"),
    ),
    Case(
        "options.json a list",
        [*GEN],
        ["options.json"],
        edit=lambda ws: (_gan_run(ws) / "options.json").write_text("[1, 2]"),
    ),
    Case(
        "classifier options.json best",
        ["evaluate", "--roc"],
        ["options.json", "best"],
        edit=_clf_options(lambda d: _set(d, "best", "abc")),
    ),
    # ---- hand-edited datasets (info.json, manifest.csv)
    Case(
        "info.json size abc",
        ["data", "show"],
        ["info.json", "size"],
        edit=_info(lambda d: _set(d, "size", "abc")),
    ),
    Case(
        "info.json size abc (train-gan)",
        [*GAN, DRY],
        ["info.json", "size"],
        edit=_info(lambda d: _set(d, "size", "abc")),
    ),
    Case(
        "info.json size abc (list)",
        ["data", "list"],
        ["info.json", "size"],
        edit=_info(lambda d: _set(d, "size", "abc")),
    ),
    Case(
        "info.json classes",
        ["data", "show"],
        ["info.json", "classes"],
        edit=_info(lambda d: _set(d, "classes", 3)),
    ),
    Case(
        "info.json not json",
        ["data", "show", "tiny"],
        ["info.json"],
        edit=_write("data/tiny/info.json", "{oops"),
    ),
    Case(
        "info.json not json (list)",
        ["data", "list"],
        ["info.json"],
        edit=_write("data/tiny/info.json", "{oops"),
    ),
    Case(
        "manifest bad phash",
        ["data", "show"],
        ["manifest.csv", "phash"],
        edit=_manifest(_cell("phash", "zzzz")),
    ),
    Case(
        "manifest bad split",
        ["data", "show"],
        ["manifest.csv", "split"],
        edit=_manifest(_cell("split", "dev")),
    ),
    Case(
        "manifest missing column",
        ["data", "show"],
        ["manifest.csv", "phash"],
        edit=_manifest(_drop_column("phash")),
    ),
    Case(
        "manifest not utf-8",
        ["data", "show"],
        ["manifest.csv"],
        edit=_write("data/tiny/manifest.csv", b"id,split\n\xff\xfe,train\n"),
    ),
]


def _prepare_extra(case: Case, tmp: Path, ws: Path) -> None:
    if "config" in case.extra:
        (tmp / "c.toml").write_text(case.extra["config"], encoding="utf-8")
    if "file" in case.extra:
        name, data = case.extra["file"]
        (tmp / name).write_bytes(data)
    if case.extra.get("half"):
        ckpt = _checkpoint(ws)
        data = ckpt.read_bytes()
        (tmp / "half.pt").write_bytes(data[: len(data) // 2])
    if "dir" in case.extra:
        (tmp / case.extra["dir"]).mkdir()
    if "zip" in case.extra:
        import zipfile

        with zipfile.ZipFile(tmp / case.extra["zip"], "w") as zf:
            zf.writestr("readme.txt", "not a checkpoint")


def _checkpoint(ws: Path) -> Path:
    return sorted(_gan_run(ws).rglob("ckpt-*.pt"))[-1]


def _run(ws: Path, args: list[str]) -> Any:
    from typer.testing import CliRunner

    from cxraug.cli import build_app

    env = {"COLUMNS": "200", "CXRAUG_WORKSPACE": str(ws)}
    return CliRunner().invoke(build_app(), args, env=env)


def _check_refused(result: Any, says: list[str]) -> str:
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code == 2, (result.exit_code, output, result.exception)
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for text in says:
        assert text in lines[0], (text, lines[0])
    assert "weights_only" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_command_line_is_one_clean_error(case: Case, workspace: Path, tmp_path: Path) -> None:
    if case.edit is not None:
        case.edit(workspace)
    _prepare_extra(case, tmp_path, workspace)
    places = {
        "ws": str(workspace),
        "tmp": str(tmp_path),
        "gan": str(_gan_run(workspace)),
        "ckpt": str(_checkpoint(workspace)),
        "best": str(_clf_run(workspace) / "best.pt"),
    }
    args = [a.format(**places) for a in case.args]
    # Lock files (.locks/, empty, released by the OS) are bookkeeping, not the user's data.
    before = sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*") if ".locks" not in p.parts)
    _check_refused(_run(workspace, args), [s.format(**places) for s in case.says])
    after = sorted(
        str(p.relative_to(workspace))
        for p in workspace.rglob("*")
        if p.name != "samples.png" and ".locks" not in p.parts
    )
    assert after == [p for p in before if not p.endswith("samples.png")], (
        "a refused command changed the workspace"
    )


def test_crafted_checkpoint_is_refused_unread_with_safe_advice(workspace: Path, tmp_path: Path) -> None:
    """Item 14: no code runs, and the advice is what a user can do safely (not weights_only=False)."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "arch": "dcgan", "payload": _Evil(marker)}, evil)
    raw = tmp_path / "evil.pkl"
    import pickle

    raw.write_bytes(pickle.dumps({"payload": _Evil(marker)}))
    for path in (evil, raw):
        for args in (
            ["generate", "--checkpoint", str(path)],
            ["train-gan", "dcgan", "--transfer", str(path)],
        ):
            line = _check_refused(_run(workspace, args), [str(path)])
            assert "code or objects" in line and "nothing in it was run" in line, line
            assert "state dict" in line and "written by cxraug" in line, line
    assert not marker.exists(), "loading the checkpoint executed code"


def test_manifest_saved_by_excel_with_a_bom_is_read(workspace: Path) -> None:
    """A UTF-8 byte-order mark (Excel's "CSV UTF-8") is read, not reported as a missing ``id``."""
    manifest = workspace / "data" / "tiny" / "manifest.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes().replace(b"\n", b"\r\n"))
    dataset = PreparedDataset(workspace / "data" / "tiny")
    assert dataset.rows[0]["id"] and len(dataset.rows) == len(dataset.images)
    result = _run(workspace, ["train-gan", "dcgan", "--dry-run"])
    assert result.exit_code == 0, result.output


def test_type_errors_name_the_flag(workspace: Path) -> None:
    """Values that are not numbers at all are Click's usage errors: exit 2, the flag named."""
    for args, flag in (
        (["generate", "--n", "abc"], "--n"),
        (["train-gan", "dcgan", "--kimg", "lots", DRY], "--kimg"),
        (["train-classifier", "cnn", "--lr", "fast", DRY], "--lr"),
        (["experiment", "--seeds", "1.5", DRY], "--seeds"),
    ):
        result = _run(workspace, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert flag in result.output, result.output
