"""Two users at once, full disks, read-only workspaces and stray weights (issue 11, items 8-11).

Real processes race for a dataset name, a real (tmpfs) disk fills up and a real read-only mount
refuses writes; tests that need root for a mount skip cleanly without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxraug.cli import build_app
from cxraug.data.prepared import PreparedDataset
from cxraug.errors import CxrError
from cxraug.fileio import host_tag
from cxraug.metrics import features as F
from cxraug.testing import make_standin_inception
from cxraug.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
GUARD_S = 600  # only against a hang; no test asserts how long anything takes

TINY_GAN = (
    "--kimg",
    "0.016",
    "--batch-size",
    "8",
    "--opt",
    "latent_dim=8",
    "--opt",
    "ngf=8",
    "--opt",
    "ndf=8",
)

# The cxraug CLI with one more dataset adapter: phantoms, drawn only once the test opens a gate. The
# process holding a dataset name can so be kept at work for as long as the test needs, without timing.
GATED_CLI = """
import os, sys, time
from pathlib import Path
from cxraug import hookimpl
from cxraug.cli import build_app
from cxraug.plugins import get_plugin_manager
from cxraug.plugins.datasets.phantom import PhantomAdapter

GATE = Path(os.environ["GATE"])


class Gated(PhantomAdapter):
    name = "gated"
    description = "phantoms drawn once GATE/go exists"

    def records(self, root):
        (GATE / "waiting").touch()
        deadline = time.monotonic() + 600
        while not (GATE / "go").exists():
            if time.monotonic() > deadline:
                sys.exit("the gate never opened")
            time.sleep(0.05)
        yield from super().records(root)


@hookimpl
def register_datasets(register):
    register(Gated)


build_app(get_plugin_manager(extra=(("gated", sys.modules[__name__]),)))(prog_name="cxraug")
"""

# Runs CLI commands in one process (one JSON line each): a SIGBUS kills the whole process.
RUNNER = """
import json, sys
from typer.testing import CliRunner
from cxraug.cli import build_app

app = build_app()
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    print(json.dumps({"args": args, "code": result.exit_code, "output": result.output}), flush=True)
"""

HOLDER = """
import sys, time
from cxraug.runlock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200", "CXRAUG_DISABLE_PLUGINS": "1", **extra}


def _error_line(output: str) -> str:
    """The output's only line, which must be the error (no traceback, nothing else)."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + GUARD_S
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the first process ended before it held the name: {out}")
        assert time.monotonic() < deadline, "the first process never started its work"
        time.sleep(0.05)


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed at teardown if still running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _can_mount() -> str | None:
    """Why mounting is not possible here (None: it is)."""
    if not sys.platform.startswith("linux"):
        return "mounts need Linux"
    if os.geteuid() != 0:
        return "mounting a tmpfs or a read-only bind mount needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs file system, unmounted afterwards."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(exc, 'stderr', exc)}")
    try:
        yield disk
    finally:
        _umount(disk)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = shutil.disk_usage(disk).free
        while size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
                break
            except OSError:
                size -= 4096
    finally:
        os.close(fd)
    return filler


def _cli(workspace: Path) -> Callable[..., Any]:
    def run(*args: str) -> Any:
        env = {"COLUMNS": "200", "CXRAUG_WORKSPACE": str(workspace), "CXRAUG_DISABLE_PLUGINS": "1"}
        return CliRunner().invoke(build_app(), list(args), env=env)

    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with a dataset, a tiny GAN run and a tiny classifier run (shared by this module)."""
    ws = Workspace(tmp_path_factory.mktemp("trained") / "workspace")
    cli = _cli(ws.root)
    prepare = ("data", "prepare", "phantom", "--size", "16", "--name", "d", "--opt", "n_per_class=6")
    for args in (
        (*prepare, "--opt", "classes=covid,normal"),
        ("train-gan", "acgan", *TINY_GAN),
        ("train-classifier", "cnn", "--epochs", "1", "--batch-size", "8"),
    ):
        result = cli(*args)
        assert result.exit_code == 0, result.output
    return ws


def _gan_run(ws: Workspace) -> Path:
    (run,) = (ws.runs_dir / "gan").iterdir()
    return run


# ---------------------------------------------------------------------------- item 8: one writer


def test_a_dataset_name_has_one_writer_at_a_time(
    cxraug_cli: Callable[..., Any], cxraug_workspace: Workspace, tmp_path: Path, stop_later: list
) -> None:
    """While one process prepares NAME, another prepare (or augment) of NAME is refused in one line
    naming that process; once it finished, the usual "exists, --force" refusal."""
    base = cxraug_cli(
        "data", "prepare", "phantom", "--size", "16", "--name", "base", "--opt", "n_per_class=3"
    )
    assert base.exit_code == 0, base.output
    gate = tmp_path / "gate"
    gate.mkdir()
    script = tmp_path / "gated_cli.py"
    script.write_text(GATED_CLI, encoding="utf-8")
    args = ["data", "prepare", "gated", "--size", "16", "--name", "same", "--opt", "n_per_class=3"]
    first = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=_env(CXRAUG_WORKSPACE=str(cxraug_workspace.root), GATE=str(gate)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stop_later.append(first)
    _wait_for(gate / "waiting", first)  # it holds the name and is at work

    second = cxraug_cli(
        "data", "prepare", "phantom", "--size", "16", "--name", "same", "--opt", "n_per_class=3"
    )
    augment = cxraug_cli("augment", "--data", "base", "--classic", "2", "--name", "same")

    (gate / "go").touch()
    out, _ = first.communicate(timeout=GUARD_S)
    assert first.returncode == 0, out
    assert "prepared same" in out
    for refused in (second, augment):
        assert refused.exit_code == 2, refused.output
        line = _error_line(refused.output)
        assert f"{cxraug_workspace.dataset_dir('same')} is in use by process {first.pid}" in line
        assert f"on {socket.gethostname()}" in line and "data prepare gated" in line
    info = json.loads((cxraug_workspace.dataset_dir("same") / "info.json").read_text(encoding="utf-8"))
    assert [s["adapter"] for s in info["sources"]] == ["gated"]  # the first one's, not replaced

    later = cxraug_cli(
        "data", "prepare", "phantom", "--size", "16", "--name", "same", "--opt", "n_per_class=3"
    )
    assert later.exit_code == 2
    assert "already exists" in _error_line(later.output) and "--force" in later.output


def test_generate_into_a_folder_another_process_writes_is_refused(
    trained: Workspace, tmp_path: Path, stop_later: list
) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    stop_later.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    cli = _cli(trained.root)
    run = str(_gan_run(trained))
    refused = cli("generate", "--run", run, "--n", "4", "--out", str(out))
    assert refused.exit_code == 2
    assert f"{out} is in use by process {holder.pid}" in _error_line(refused.output)
    assert not (out / "manifest.csv").exists()

    holder.kill()
    holder.wait()
    done = cli("generate", "--run", run, "--n", "4", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert len((out / "manifest.csv").read_text(encoding="utf-8").splitlines()) == 1 + 4


def test_two_evaluations_in_the_same_second_get_their_own_folders(
    trained: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    from cxraug.evaluation import command

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:
            return cls(2030, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(command, "dt", type("dt", (), {"datetime": Frozen, "timezone": dt.timezone}))
    cli = _cli(trained.root)
    for _ in range(2):
        result = cli("evaluate", "--roc")
        assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in trained.reports_dir.glob("eval-20300102-030405*"))
    assert folders == ["eval-20300102-030405", "eval-20300102-030405-1"]
    assert all((trained.reports_dir / f / "metrics.json").is_file() for f in folders)


# ------------------------------------------------------------------------ item 9: full disks, kills


def test_full_disk_in_prepare_and_augment_is_one_line_and_leaves_nothing(
    small_disk: Path, stop_later: list
) -> None:
    """A real full disk: no SIGBUS (exit 135), one line naming the dataset folder, exit 2, the partial
    folder removed and the space free again; the dataset already there is intact."""
    ws = Workspace(small_disk / "ws")
    first = _cli(ws.root)(
        "data", "prepare", "phantom", "--size", "128", "--name", "mid",
        "--opt", "n_per_class=3", "--opt", "classes=covid,normal",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    mid = _tree(ws.dataset_dir("mid"))
    free = shutil.disk_usage(small_disk).free
    commands = [
        ["data", "prepare", "phantom", "--size", "256", "--name", "big", "--opt", "n_per_class=20"],
        ["augment", "--data", "mid", "--classic", "150", "--name", "aug"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(commands)],
        env=_env(CXRAUG_WORKSPACE=str(ws.root)),
        capture_output=True,
        text=True,
        timeout=GUARD_S,
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (-7 is SIGBUS): {proc.stderr[-2000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["code"] for r in results] == [2, 2], results
    for result, name in zip(results, ("big", "aug"), strict=True):
        line = _error_line(result["output"])
        assert line.startswith(f"Error: disk full at {ws.dataset_dir(name)} "), line
    assert sorted(p.name for p in ws.data_dir.iterdir()) == ["mid"]  # no .NAME.partial-* left
    assert shutil.disk_usage(small_disk).free == free
    assert _tree(ws.dataset_dir("mid")) == mid
    PreparedDataset(ws.dataset_dir("mid"))


def test_full_disk_in_generate_is_one_line_and_a_rerun_completes(
    trained: Workspace, small_disk: Path
) -> None:
    out = small_disk / "gen"
    cli = _cli(trained.root)
    run = str(_gan_run(trained))
    filler = _fill(small_disk)
    full = cli("generate", "--run", run, "--n", "6", "--out", str(out))
    assert full.exit_code == 2, full.output
    assert _error_line(full.output).startswith(f"Error: disk full at {out}")
    assert not [p for p in out.rglob("*.tmp")]
    filler.unlink()
    done = cli("generate", "--run", run, "--n", "6", "--out", str(out))
    assert done.exit_code == 0, done.output
    rows = (out / "manifest.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 6 and all(len(r.split(",")) == len(rows[0].split(",")) for r in rows)
    assert len(list(out.rglob("*.png"))) == 6


def test_full_disk_while_training_keeps_earlier_checkpoints(small_disk: Path) -> None:
    ws = Workspace(small_disk / "ws")
    cli = _cli(ws.root)
    prepared = cli("data", "prepare", "phantom", "--size", "16", "--name", "d", "--opt", "n_per_class=4")
    assert prepared.exit_code == 0, prepared.output
    assert cli("train-gan", "acgan", *TINY_GAN).exit_code == 0
    run = _gan_run(ws)
    before = {k: v for k, v in _tree(run).items() if k.endswith(".pt")}
    assert before
    filler = _fill(small_disk)

    resumed = cli("train-gan", "--resume", str(run), "--kimg", "0.048")
    assert resumed.exit_code == 2, resumed.output
    assert _error_line(resumed.output).startswith(f"Error: disk full at {run}")
    fresh = cli("train-gan", "acgan", *TINY_GAN, "--seed", "1")
    assert fresh.exit_code == 2, fresh.output
    assert _error_line(fresh.output).startswith(f"Error: disk full at {ws.runs_dir / 'gan'}")

    assert [p.name for p in (ws.runs_dir / "gan").iterdir()] == [run.name]  # the new one removed
    assert {k: v for k, v in _tree(run).items() if k.endswith(".pt")} == before
    assert not [p for p in run.rglob("*.tmp")]
    json.loads((run / "options.json").read_text(encoding="utf-8"))
    filler.unlink()
    assert cli("train-gan", "--resume", str(run), "--kimg", "0.048").exit_code == 0


def test_partial_folders_of_exited_processes_are_removed_live_ones_kept(
    cxraug_cli: Callable[..., Any], cxraug_workspace: Workspace, stop_later: list
) -> None:
    ws = cxraug_workspace
    ws.data_dir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], text=True)
    stop_later.append(alive)
    host = host_tag()
    folders = {
        "dead": f".x.partial-{gone.pid}@{host}",
        "dead_old_version": f".y.partial-{gone.pid}",  # named before machine names were added
        "live": f".x.partial-{alive.pid}@{host}",
        "other_machine": f".x.partial-{gone.pid}@another-host",
        "old_copy": f".kept.old-{gone.pid}@{host}",  # killed between the renames of a --force swap
    }
    for name in folders.values():
        (ws.data_dir / name).mkdir()
        (ws.data_dir / name / "images.npy").write_bytes(b"x" * 100)
    result = cxraug_cli(
        "data", "prepare", "phantom", "--size", "16", "--name", "new", "--opt", "n_per_class=3"
    )
    assert result.exit_code == 0, result.output
    left = {p.name for p in ws.data_dir.iterdir()}
    assert folders["dead"] not in left and folders["dead_old_version"] not in left
    assert folders["live"] in left and folders["other_machine"] in left
    assert folders["old_copy"] not in left and (ws.data_dir / "kept" / "images.npy").is_file()  # put back


# --------------------------------------------------------------------- item 10: read-only workspace


@pytest.fixture(scope="module")
def read_only(trained: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The trained workspace again, through a read-only bind mount."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    view = tmp_path_factory.mktemp("ro") / "workspace"
    view.mkdir()
    try:
        _mount("--bind", str(trained.root), str(view))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot bind-mount here: {getattr(exc, 'stderr', exc)}")
    try:
        _mount("-o", "remount,bind,ro", str(view))
        yield view
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot remount read-only here: {exc.stderr}")
    finally:
        _umount(view)


@pytest.mark.parametrize(
    "args",
    [
        ("data", "prepare", "phantom", "--size", "16", "--name", "new", "--opt", "n_per_class=3"),
        ("augment", "--classic", "2", "--name", "aug"),
        ("generate", "--n", "2"),
        ("train-gan", "acgan", *TINY_GAN),
        ("train-classifier", "cnn", "--epochs", "1", "--batch-size", "8"),
        ("evaluate", "--roc"),
        ("experiment", "--quick", "--seeds", "1", "--arms", "base"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_read_only_workspace_is_one_line_naming_the_folder(read_only: Path, args: tuple[str, ...]) -> None:
    result = _cli(read_only)(*args)
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert str(read_only) in line and ("read-only" in line.lower() or "not writable" in line), line


def test_only_refusals_a_user_can_fix_lose_their_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import typer

    from cxraug.cli.common import handle_errors

    @handle_errors
    def raise_(exc: OSError) -> None:
        raise exc

    for code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        with pytest.raises(typer.Exit) as stopped:
            raise_(OSError(code, os.strerror(code), "/somewhere/file"))
        assert stopped.value.exit_code == 2
        assert "/somewhere/file" in _error_line(capsys.readouterr().err)
    for code in (errno.EIO, errno.ENOENT, errno.EBADF):  # bugs (or worse): the traceback stays
        with pytest.raises(OSError):
            raise_(OSError(code, os.strerror(code), "/somewhere/file"))


def test_data_show_works_in_a_read_only_workspace(read_only: Path) -> None:
    result = _cli(read_only)("data", "show", "d")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    note = [line for line in result.output.splitlines() if "sample grid not written" in line]
    assert len(note) == 1 and str(read_only / "data" / "d") in note[0]


# --------------------------------------------------------------- item 11: Inception weights found


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_stray_inception_file_in_tmp_is_never_used(
    cxraug_cli: Callable[..., Any], cxraug_workspace: Workspace, tmp_path: Path
) -> None:
    """clean-fid keeps its download in /tmp, where anyone can leave a file of that name. Here a
    stand-in network is put at /tmp/inception-2015-12-05.pt (in a private mount namespace, so the
    machine's /tmp is untouched); offline, evaluate must refuse rather than compute FID with it."""
    if _can_mount() or shutil.which("unshare") is None or not Path("/mnt").is_dir():
        pytest.skip("needs root, unshare and /mnt for a private /tmp")
    prepared = cxraug_cli("data", "prepare", "phantom", "--size", "16", "--opt", "n_per_class=6")
    assert prepared.exit_code == 0, prepared.output
    gen = tmp_path / "gen" / "covid"
    gen.mkdir(parents=True)
    ds = PreparedDataset(cxraug_workspace.dataset_dir("phantom"))
    for i in range(6):
        Image.fromarray(ds.images[i]).save(gen / f"{i}.png")
    make_standin_inception(tmp_path / "stray.pt")
    # An overlay on /tmp: everything there stays visible (this checkout and its venv may live under
    # /tmp), and the stray file is written to the overlay's upper layer, never to the real /tmp.
    script = (
        "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /mnt; mkdir /mnt/up /mnt/work; "
        "mount -t overlay overlay -o lowerdir=/tmp,upperdir=/mnt/up,workdir=/mnt/work /tmp; "
        'cp "$KEEP/stray.pt" /tmp/inception-2015-12-05.pt; '
        'exec "$PYTHON" -m cxraug evaluate --fid --generated "$KEEP/gen"'
    )
    dead_proxy = "http://127.0.0.1:9"  # offline: nothing listens there
    env = _env(
        KEEP=str(tmp_path),
        PYTHON=sys.executable,
        CXRAUG_WORKSPACE=str(cxraug_workspace.root),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        https_proxy=dead_proxy,
        HTTPS_PROXY=dead_proxy,
    )
    env.pop("CXRAUG_INCEPTION_WEIGHTS", None)
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=GUARD_S
    )
    if "mount" in proc.stderr and proc.returncode != 2:
        pytest.skip(f"no private mount namespace here: {proc.stderr[-500:]}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "fid" not in proc.stdout
    line = proc.stderr.strip().splitlines()[-1]  # after the log line of the download attempt
    assert line.startswith("Error: download of inception-2015-12-05.pt"), proc.stderr
    assert "--inception-weights" in line
    assert str(tmp_path / "cache" / "cxraug" / "inception-2015-12-05.pt") in line


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated
def test_cached_weights_with_another_checksum_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(F.WEIGHTS_ENV, raising=False)
    for var in ("https_proxy", "HTTPS_PROXY"):  # never a real download
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "cxraug").mkdir()
    fake = make_standin_inception(tmp_path / "cxraug" / F.INCEPTION_FILE)
    with pytest.raises(CxrError, match=rf"{fake}: sha256 [0-9a-f]{{64}} is not that of the published"):
        F.inception_extractor(None, "cpu", "clean")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_user_weights_are_used_but_a_non_published_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_standin_inception(tmp_path / "mine.pt")
    with caplog.at_level("WARNING", logger=F.__name__):
        ext = F.inception_extractor(path, "cpu", "clean")
    assert isinstance(ext, F.TorchscriptInception) and ext.path == path
    assert ext.warning is not None and "not the published file" in ext.warning
    assert ext.warning in caplog.text
    service = F.FeatureService(weights=path)
    service(np.zeros((2, 8, 8), np.uint8))
    assert service.warnings == [ext.warning]


@pytest.mark.skipif(not Path("/proc/1").is_dir(), reason="needs Linux /proc")
def test_a_workspace_where_no_folder_can_be_made_is_one_line() -> None:
    """/proc/1 exists but refuses mkdir with ENOENT, an errno no other check expects."""
    result = _cli(Path("/proc/1"))("data", "prepare", "phantom", "--size", "16", "--opt", "n_per_class=5")
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert "/proc/1/data" in line and "cannot be created" in line, line
