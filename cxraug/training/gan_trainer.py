"""The GAN training engine shared by every architecture: data, loop, logs, snapshots, resume."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from rich.progress import TextColumn

from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError, OptionsError, TrainingInterruptedError
from cxraug.imageio import resize
from cxraug.interfaces import GAN, DistContext, GANSpec, PluginOptions
from cxraug.options import resolve_options
from cxraug.snapshotio import read_snapshot, snapshot_kind
from cxraug.training import plots
from cxraug.training.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_save,
    load_matching,
    rng_state,
    safe_load,
    set_rng_state,
)
from cxraug.training.gan_run import GanRecord, GanRun, GanSettings, parse_snapshot_every
from cxraug.training.lifecycle import Job
from cxraug.training.metriclog import MetricLog
from cxraug.training.runs import DataRef, base_record, latest_checkpoint, write_json_atomic
from cxraug.training.trackers import TrackerPlan, Trackers
from cxraug.ui import console, progress_bar

log = logging.getLogger(__name__)

#: Samples per label in the fixed-latent grids saved at each snapshot.
GRID_PER_LABEL = 8


@dataclass
class Unit:
    """One GAN instance: all labels (conditional/pooled) or a single label (per-class)."""

    name: str
    labels: list[str]
    folder: Path
    images: torch.Tensor  # (N, 1, S, S) uint8
    targets: torch.Tensor  # (N,) long, indices into labels


def gan_units(cls: type[GAN], config: GanSettings) -> list[str]:
    """The models a run trains: "all" (conditional, pooled, or one label) or one per label."""
    if cls.conditional or not config.per_class or len(config.classes) == 1:
        return ["all"]
    return list(config.classes)


def check_spec_for(cls: type[GAN], config: GanSettings) -> GANSpec:
    """The spec a unit of this run would get (its labels; device and seed do not matter here)."""
    labels = list(config.classes) if cls.conditional else list(config.classes)[:1] or ["all"]
    return GANSpec(image_size=int(config.size or 0), labels=labels, batch_size=config.batch_size)


def _check_transfer(path: Path, cls: type[GAN]) -> None:
    """A --transfer file must be a cxraug checkpoint of the same architecture, or a snapshot format
    the GAN reads (checked up front)."""
    arch = cls.name
    if snapshot_kind(path):
        snapshot = read_snapshot(path)  # refuses what it would not load before the run starts
        if snapshot.format not in cls.snapshot_formats:
            raise DataError(f"--transfer {path}: GAN {arch!r} cannot start from a {snapshot.format} snapshot")
        return
    state = safe_load(path)
    if state.get("arch") != arch:
        raise DataError(f"--transfer {path}: a {state.get('arch')!r} checkpoint cannot start a {arch!r} run")


def load_images(dataset: PreparedDataset, classes: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images of ``classes`` as uint8 (N, 1, size, size) and label indices into ``classes``."""
    idx = dataset.indices("train", classes)
    if len(idx) == 0:
        raise DataError(f"dataset {dataset.name!r} has no training images of {classes}")
    images = torch.from_numpy(np.asarray(dataset.images[idx]))[:, None]
    if size != dataset.size:
        images = resize(images, (size, size))
    lookup = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([lookup[dataset.rows[i]["label"]] for i in idx], dtype=torch.long)
    return images.contiguous(), targets


def parse_interval(text: str, budget_unit: str, total_steps: int, batch: int, steps_per_epoch: int) -> int:
    """``auto`` / ``5`` / ``2ep`` / ``0.5kimg`` / ``100steps`` -> a snapshot interval in steps."""
    try:
        value, unit = parse_snapshot_every(text)
    except ValueError as exc:
        raise OptionsError(f"--snapshot-every {text!r}: {exc}") from None
    if unit == "auto":
        return max(1, math.ceil(total_steps / 10))
    unit = {"ep": "epochs", None: budget_unit}.get(unit, unit)
    steps = {"kimg": value * 1000 / batch, "epochs": value * steps_per_epoch, "steps": value}[str(unit)]
    return max(1, round(steps))


class GANTrainer:
    """Trains every unit of a run folder, resuming from the latest checkpoint of each."""

    def __init__(
        self,
        cls: type[GAN],
        options: PluginOptions,
        config: GanSettings,
        dataset: PreparedDataset,
        run_dir: Path,
        *,
        dist: DistContext | None = None,
        device: torch.device | None = None,
        trackers: TrackerPlan | None = None,
    ) -> None:
        self.cls, self.options, self.config = cls, options, config
        self.trackers = trackers or TrackerPlan()
        #: The --logger plugins of the unit being trained (started once its resume step is known).
        self._live = Trackers()
        self.dataset, self.run_dir = dataset, run_dir
        self.dist = dist or DistContext()
        self.device = device or torch.device("cpu")
        self.arch = str(config.arch)
        self.size = int(config.size or dataset.size)
        self.units = self._units()

    def _units(self) -> list[Unit]:
        cfg = self.config
        if gan_units(self.cls, cfg) == ["all"]:
            images, targets = load_images(self.dataset, cfg.classes, self.size)
            if not self.cls.conditional:
                targets = torch.zeros_like(targets)
                labels = cfg.classes if len(cfg.classes) == 1 else ["all"]
            else:
                labels = cfg.classes
            return [Unit("all", labels, self.run_dir, images, targets)]
        units = []
        for label in cfg.classes:
            images, _ = load_images(self.dataset, [label], self.size)
            units.append(
                Unit(
                    label,
                    [label],
                    self.run_dir / label,
                    images,
                    torch.zeros(len(images), dtype=torch.long),
                )
            )
        return units

    # ------------------------------------------------------------------ the loop

    def train(self) -> list[dict[str, Any]]:
        summaries = []
        for k, unit in enumerate(self.units):
            with self.trackers.deferred() as self._live:
                summaries.append(self._train_unit(unit, k))
        return summaries

    def _budget(self, n: int) -> tuple[int, int, int]:
        """(batch per step, steps per epoch, total steps) for a unit of ``n`` images."""
        cfg = self.config
        world = self.dist.world_size
        batch = min(cfg.batch_size, n)
        batch -= batch % world
        if batch < world:
            raise OptionsError(
                f"--batch-size {cfg.batch_size} with {n} images and {world} processes leaves less "
                "than one image per process; use fewer processes or more data"
            )
        steps_per_epoch = max(1, n // batch)
        if cfg.epochs is not None:
            total = max(1, round(cfg.epochs * steps_per_epoch))
        else:
            total = max(1, math.ceil((cfg.kimg or 0) * 1000 / batch))
        return batch, steps_per_epoch, total

    def build_gan(self, unit: Unit, k: int, batch: int | None = None) -> GAN:
        """The GAN of a unit; ``batch`` is the batch it really trains with (all processes together),
        which is smaller than --batch-size when the unit has fewer images (R1's gamma depends on it)."""
        cfg = self.config
        torch.manual_seed(cfg.seed + 1000 * k)
        spec = GANSpec(
            image_size=self.size,
            labels=unit.labels,
            channels=1,
            device=str(self.device),
            seed=cfg.seed,
            dist=self.dist,
            epochs=int(math.ceil(cfg.epochs or 0)),
            batch_size=batch if batch is not None else self._budget(len(unit.images))[0],
        )
        return self.cls(self.options, spec)

    def _train_unit(self, unit: Unit, k: int) -> dict[str, Any]:
        cfg, main = self.config, self.dist.is_main
        unit.folder.mkdir(parents=True, exist_ok=True)
        ckpt_dir = unit.folder / "checkpoints"
        status_path = unit.folder / "status.json"
        batch, steps_per_epoch, total = self._budget(len(unit.images))
        unit_name = f"{self.arch}/{unit.name}"
        gan = self.build_gan(unit, k, batch)
        if cfg.transfer and not latest_checkpoint(ckpt_dir):
            self._transfer(gan, Path(cfg.transfer), unit.name, unit.folder)
        start = 0
        latest = latest_checkpoint(ckpt_dir)
        if latest is not None:
            start = self._restore(gan, latest)
            if main:
                console.print(f"[cyan]{unit_name}: resuming from {latest.name} (step {start})[/]")
        else:
            torch.manual_seed(cfg.seed + 1000 * k + 1 + self.dist.rank)
        interval = parse_interval(
            cfg.snapshot_every,
            "epochs" if cfg.epochs is not None else "kimg",
            total,
            batch,
            steps_per_epoch,
        )
        resumed = start if (unit.folder / "log.jsonl").exists() else None
        if main:
            stream = self.run_dir.name if unit.name == "all" else f"{self.run_dir.name}/{unit.name}"
            self._live.start(unit.folder, stream, resumed)
        metric_log = MetricLog(unit.folder, resume_step=resumed, trackers=self._live) if main else None
        fixed_z, fixed_labels = self._fixed_latents(gan, unit)
        if start >= total:
            if main:
                self._finish(gan, unit, metric_log, start, total, batch, fixed_z, fixed_labels)
            return {"unit": unit.name, "steps": start, "kimg": start * batch / 1000}
        images = unit.images.to(self.device) if self.device.type == "cuda" else unit.images
        targets = unit.targets.to(images.device)
        per_rank = batch // self.dist.world_size
        sums: dict[str, float] = {}
        n_sum = 0
        last_losses: dict[str, float] = {}
        t_last = time.perf_counter()
        step = start
        columns = TextColumn("{task.fields[losses]}")
        progress = progress_bar(columns) if main else None
        stop = _GracefulStop(enabled=self.dist.world_size == 1)
        try:
            if progress:
                progress.start()
                task = progress.add_task(unit_name, total=total, completed=start, losses="")
            perm = None
            for step in range(start, total):
                epoch, j = divmod(step, steps_per_epoch)
                if perm is None or j == 0:
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * k + epoch)
                    perm = torch.randperm(len(unit.images), generator=gen)
                lo = j * batch + self.dist.rank * per_rank
                idx = perm[lo : lo + per_rank].to(images.device)
                real = images.index_select(0, idx).to(self.device, non_blocking=True)
                real = real.float().div_(127.5).sub_(1.0)
                losses = gan.train_step(real, targets.index_select(0, idx).to(self.device))
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value
                n_sum += 1
                if j == steps_per_epoch - 1:
                    gan.end_epoch(epoch)
                done = step + 1
                if main and (done % cfg.log_every == 0 or done == total):
                    now = time.perf_counter()
                    last_losses = {key: v / n_sum for key, v in sums.items()}
                    row = {
                        "step": done,
                        "kimg": round(done * batch / 1000, 4),
                        "epoch": round(done / steps_per_epoch, 3),
                        **{key: round(v, 6) for key, v in last_losses.items()},
                        "img_per_s": round(n_sum * batch / max(now - t_last, 1e-9), 2),
                    }
                    metric_log.append(row)  # type: ignore[union-attr]
                    sums, n_sum, t_last = {}, 0, now
                if progress:
                    shown = " ".join(
                        f"{key}={v:.3f}" for key, v in last_losses.items() if key.startswith("loss")
                    )
                    progress.update(task, advance=1, losses=shown)
                if done % interval == 0 and done < total:
                    self._snapshot(gan, unit, done, batch, fixed_z, fixed_labels)
                if stop.requested and done < total:
                    if progress:
                        progress.stop()
                    self._snapshot(gan, unit, done, batch, fixed_z, fixed_labels)
                    raise TrainingInterruptedError(
                        f"interrupted at step {done} of {total} ({unit_name}); snapshot saved in "
                        f"{ckpt_dir}. Continue with `cxraug train-gan --resume auto`"
                    )
        finally:
            stop.restore()
            if progress:
                progress.stop()
        if main:
            self._snapshot(gan, unit, total, batch, fixed_z, fixed_labels)
            self._finish(gan, unit, metric_log, total, total, batch, fixed_z, fixed_labels)
            write_json_atomic(status_path, {"finished": True, "steps": total})
        return {"unit": unit.name, "steps": total, "kimg": total * batch / 1000}

    # ------------------------------------------------------------------ pieces

    def _fixed_latents(self, gan: GAN, unit: Unit) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.config.seed + 424242)
        n_labels = len(unit.labels)
        z = gan.sample_latents(GRID_PER_LABEL * n_labels, gen)
        labels = torch.arange(n_labels).repeat_interleave(GRID_PER_LABEL)
        return z, labels

    def _snapshot(
        self, gan: GAN, unit: Unit, step: int, batch: int, z: torch.Tensor, labels: torch.Tensor
    ) -> None:
        if not self.dist.is_main:
            return
        ckpt_dir = unit.folder / "checkpoints"
        state = {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "options": self.options.model_dump(mode="json"),
            "spec": {"image_size": self.size, "labels": unit.labels, "channels": 1},
            "counters": {"step": step, "kimg": step * batch / 1000, "batch": batch},
            "networks": {k: v.state_dict() for k, v in gan.networks().items()},
            "optimizers": {k: v.state_dict() for k, v in gan.optimizers().items()},
            "schedulers": {k: v.state_dict() for k, v in gan.schedulers().items()},
            "extra": gan.extra_state(),
            "rng": rng_state(),
            "config": self.config.model_dump(mode="json"),
        }
        atomic_save(state, ckpt_dir / f"ckpt-{step:08d}.pt")
        for old in sorted(ckpt_dir.glob("ckpt-*.pt"))[: -self.config.keep_checkpoints]:
            old.unlink()
        samples = unit.folder / "samples"
        samples.mkdir(exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            images = gan.generate(z.to(self.device), labels.to(self.device))
        grid = plots.grid(plots.to_uint8(images), rows=len(unit.labels))
        grid.save(samples / f"step-{step:08d}.png")
        self._live.log_image(step, "samples", np.asarray(grid))

    def _finish(
        self,
        gan: GAN,
        unit: Unit,
        metric_log: MetricLog | None,
        step: int,
        total: int,
        batch: int,
        z: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        if metric_log is not None:
            metric_log.flush_csv()
            plots.loss_plot(metric_log.rows, unit.folder / "losses.png", f"{self.arch} {unit.name}")
        frames = sorted((unit.folder / "samples").glob("step-*.png"))
        plots.progress_gif(frames, unit.folder / "progress.gif")

    def _restore(self, gan: GAN, path: Path) -> int:
        state = safe_load(path, map_location=self.device)
        if state.get("arch") != self.arch:
            raise DataError(f"checkpoint {path}: made by {state.get('arch')!r}, not {self.arch!r}")
        try:
            for name, module in gan.networks().items():
                module.load_state_dict(state["networks"][name])
            for name, opt in gan.optimizers().items():
                opt.load_state_dict(state["optimizers"][name])
            for name, sched in gan.schedulers().items():
                sched.load_state_dict(state["schedulers"][name])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DataError(
                f"checkpoint {path}: does not match this run's networks ({str(exc).splitlines()[0]}); "
                "it was made with other options or another cxraug version"
            ) from None
        gan.load_extra_state(state.get("extra", {}))
        if self.dist.world_size == 1:
            set_rng_state(state["rng"])
        else:
            torch.manual_seed(self.config.seed + state["counters"]["step"] * 7 + self.dist.rank)
        return int(state["counters"]["step"])

    def _transfer(self, gan: GAN, path: Path, unit: str, folder: Path) -> None:
        if snapshot_kind(path):
            report = gan.load_snapshot(read_snapshot(path))
            if self.dist.is_main:
                write_json_atomic(folder / "transfer.json", report)
                c = report["counts"]
                console.print(
                    f"[cyan]transfer: started from {path} ({report['format']}): {c['loaded']} tensors "
                    f"loaded, {c['adapted']} adapted, {c['initial']} left at initial values; "
                    f"see {folder / 'transfer.json'}[/]",
                    soft_wrap=True,
                )
            return
        if path.is_dir():
            # a per-class source run keeps one model per label in RUN/LABEL/checkpoints
            found = (
                latest_checkpoint(path / "checkpoints")
                or latest_checkpoint(path)
                or latest_checkpoint(path / unit / "checkpoints")
            )
            if found is None:
                units = sorted(p.parent.parent.name for p in path.glob("*/checkpoints/ckpt-*.pt"))
                hint = f" (it holds per-label models: pass one, e.g. {path / units[0]})" if units else ""
                raise DataError(f"--transfer {path}: no checkpoints for {unit!r} in that folder{hint}")
            path = found
        state = safe_load(path, map_location=self.device)
        if state.get("arch") != self.arch:
            raise DataError(
                f"--transfer {path}: a {state.get('arch')!r} checkpoint cannot start a {self.arch!r} run"
            )
        skipped = []
        for name, module in gan.networks().items():
            if name in state["networks"]:
                skipped += [
                    f"{name}.{k}"
                    for k in load_matching(module, state["networks"][name], f"--transfer {path}")
                ]
        if self.dist.is_main:
            console.print(
                f"[cyan]transfer: started from {path}[/]"
                + (
                    f" ({len(skipped)} tensors kept fresh: shapes differ, e.g. {skipped[0]})"
                    if skipped
                    else ""
                )
            )


class _GracefulStop:
    """First Ctrl-C: finish the current step, save a snapshot, stop. Second: abort at once."""

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._old: Any = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        console.print("[yellow]Ctrl-C: finishing this step and saving a snapshot (again to abort)[/]")

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


class GanJob(Job[GanSettings, GanRun]):
    """``train-gan`` for the run lifecycle."""

    run_type: ClassVar[type[GanRun]] = GanRun
    extends: ClassVar[frozenset[str]] = frozenset({"epochs", "kimg"})

    def resolve(self, settings: GanSettings) -> GanSettings:
        cls: type[GAN] = self.plugin("gan", settings.arch, "cxraug train-gan dcgan")
        options = resolve_options(cls.Options, plugin=f"gan {settings.arch}", config=settings.options)
        dataset = self.open(settings.data, real=True)
        update: dict[str, Any] = {
            "data": dataset.name,
            "classes": dataset.select_classes(settings.classes),
            "size": settings.size or dataset.size,
            "options": options.model_dump(mode="json"),
            "logger_options": self.resolve_loggers(settings),
        }
        if settings.epochs is None and settings.kimg is None:
            update["kimg"] = cls.default_kimg
        if settings.transfer and not Path(settings.transfer).exists():
            update["transfer"] = str(GanRun.resolve(self.ws, settings.transfer).path)
        resolved = GanSettings.model_validate({**settings.model_dump(), **update})
        # what the GAN would refuse when training starts (a size that is not a power of two, an
        # option that does not fit that size) is refused now, and by --dry-run too
        try:
            cls.check_spec(options, check_spec_for(cls, resolved))
        except OptionsError as exc:
            where = "given by --size" if settings.size else f"that of dataset {dataset.name!r}"
            raise OptionsError(f"{exc} (the image size {resolved.size} is {where})") from None
        if resolved.transfer and Path(resolved.transfer).is_file():
            _check_transfer(Path(resolved.transfer), cls)
        return resolved

    def dataset(self, settings: GanSettings) -> PreparedDataset:
        return self.open(settings.data)

    def data(self, settings: GanSettings) -> DataRef:
        return DataRef.of(self.dataset(settings), ["train"], list(settings.classes))

    def record(self, settings: GanSettings) -> tuple[str, GanRecord]:
        cls = self.registry.gan(str(settings.arch))
        record = GanRecord(
            **base_record("gan", str(settings.arch), settings, self.data(settings)),
            units=gan_units(cls, settings),
            conditional=cls.conditional,
        )
        return f"{settings.arch}-{settings.data}", record

    def plan(self, settings: GanSettings, run: GanRun | None) -> dict[str, Any]:
        return {
            "config": settings.model_dump(mode="json"),
            "options": settings.options,
            "dataset": str(self.dataset(settings).path),
            "run": str(run.path) if run else None,
        }

    def adjust_resume(self, recorded: GanSettings, wanted: dict[str, Any]) -> dict[str, Any]:
        # a new budget replaces the recorded one, whichever unit either is in
        if "epochs" in wanted and "kimg" not in wanted:
            wanted = {**wanted, "kimg": None}
        if "kimg" in wanted and "epochs" not in wanted:
            wanted = {**wanted, "epochs": None}
        return wanted

    def train(
        self, run: GanRun, settings: GanSettings, dist: DistContext, device: torch.device
    ) -> dict[str, Any]:
        cls = self.registry.gan(str(settings.arch))
        options = resolve_options(cls.Options, plugin=f"gan {settings.arch}", config=settings.options)
        dataset = self.dataset(settings)
        if dist.is_main and dataset.synthetic:
            console.print("[yellow]Training on the synthetic demo dataset (phantoms, not real X-rays).[/]")
        trackers = self.trackers(run, settings, dist)
        trainer = GANTrainer(
            cls, options, settings, dataset, run.path, dist=dist, device=device, trackers=trackers
        )
        trainer.train()
        return {}

    def describe(self, run: GanRun) -> list[str]:
        """What a finished run holds and what to do next (for the command's output)."""
        lines = [f"[green]done:[/] {run.path}"]
        for unit in run.record.units:
            folder = run.unit_folder(unit)
            lines.append(
                f"  {unit}: samples {folder / 'samples'}  losses {folder / 'losses.png'}  "
                f"animation {folder / 'progress.gif'}"
            )
        s = run.settings
        budget = f"--epochs {s.epochs}" if s.epochs is not None else f"--kimg {s.kimg}"
        lines.append(
            f"trained {budget} per model. Train longer: `cxraug train-gan --resume {run.path} --kimg N` "
            "with a larger N; generate images: `cxraug generate --n 1000`."
        )
        return lines
