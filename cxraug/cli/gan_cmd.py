"""``cxraug train-gan`` and ``cxraug generate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cxraug.cli.common import (
    AppContext,
    BatchOpt,
    ClassesOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    DryRunOpt,
    LoggerOpt,
    LoggerOptOpt,
    NprocOpt,
    OptOpt,
    ResumeOpt,
    SeedOpt,
    WorkspaceOpt,
    command_settings,
    handle_errors,
    load_config_and_opts,
    plugin_epilog,
    report,
    workspace_from,
)
from cxraug.training.gan_run import GanSettings
from cxraug.training.gan_trainer import GanJob
from cxraug.training.lifecycle import execute
from cxraug.training.sampling import GenerateSettings, generate
from cxraug.ui import console

D = GanSettings.defaults()
ArchArg = Annotated[
    str | None, typer.Argument(help="GAN architecture (see `cxraug plugins list --kind gan`).")
]
SizeOpt = Annotated[int | None, typer.Option("--size", help="Image size (default: the dataset's).")]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="Training length in epochs (per model).")]
KimgOpt = Annotated[
    float | None, typer.Option("--kimg", help="Training length in thousands of real images (per model).")
]
SnapshotOpt = Annotated[
    str,
    typer.Option(
        "--snapshot-every", help="auto (10 per run), N in the budget's unit, or 2ep / 0.5kimg / 100steps."
    ),
]
PerClassOpt = Annotated[
    bool,
    typer.Option(
        "--per-class/--pooled", help="Unconditional GANs: one model per label, or one on all labels merged."
    ),
]
TransferOpt = Annotated[
    Path | None, typer.Option("--transfer", help="Start from another run's checkpoint (file or run folder).")
]
LogEveryOpt = Annotated[int, typer.Option("--log-every", help="Steps between log rows.")]


RunOpt = Annotated[str | None, typer.Option("--run", help="GAN run folder or name (default: latest).")]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", help="A checkpoint file instead of a run.")
]
NOpt = Annotated[
    int,
    typer.Option("--n", help="Images in all (split evenly over labels unless --label/--per-class)."),
]
LabelOpt = Annotated[str | None, typer.Option("--label", help="Only this label (all --n images).")]
CountsPerClassOpt = Annotated[
    str | None, typer.Option("--per-class", help="Counts per label: covid=600,normal=400.")
]
TruncationOpt = Annotated[float, typer.Option("--truncation", help="Truncation psi (1 = none).")]
LatentSeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the latents.")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Output folder (default: WORKSPACE/generated/RUN-sSEED).")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("train-gan", epilog=plugin_epilog(lambda: ctx.registry, "gan", "GANs"))
    @handle_errors
    def train_gan(
        typer_ctx: typer.Context,
        arch: ArchArg = None,
        data: DataOpt = None,
        classes: ClassesOpt = None,
        size: SizeOpt = None,
        batch_size: BatchOpt = D["batch_size"],
        epochs: EpochsOpt = None,
        kimg: KimgOpt = None,
        seed: SeedOpt = D["seed"],
        device: DeviceOpt = D["device"],
        snapshot_every: SnapshotOpt = D["snapshot_every"],
        resume: ResumeOpt = None,
        per_class: PerClassOpt = D["per_class"],
        transfer: TransferOpt = None,
        nproc: NprocOpt = D["nproc"],
        log_every: LogEveryOpt = D["log_every"],
        loggers: LoggerOpt = None,
        logger_opt: LoggerOptOpt = None,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Train a GAN on a prepared dataset; the run folder records everything needed to resume."""
        cfg, opts = load_config_and_opts(config, opt, ctx.registry)
        built = command_settings(
            typer_ctx, GanSettings, cfg, plugin_kind="gan", opts=opts, logger_opts=logger_opt
        )
        job = GanJob(workspace_from(workspace), ctx.registry)
        report(job, execute(job, built, resume=resume, dry_run=dry_run, argv=sys.argv[1:]))

    @app.command("generate")
    @handle_errors
    def generate_cmd(
        typer_ctx: typer.Context,
        run: RunOpt = None,
        checkpoint: CheckpointOpt = None,
        n: NOpt = 100,
        label: LabelOpt = None,
        per_class: CountsPerClassOpt = None,
        truncation: TruncationOpt = 1.0,
        seed: LatentSeedOpt = 0,
        out: OutOpt = None,
        batch_size: BatchSizeOpt = 64,
        device: DeviceOpt = "auto",
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Write generated PNGs in class folders with a manifest; re-running resumes."""
        built = command_settings(typer_ctx, GenerateSettings, {})
        result = generate(workspace_from(workspace), ctx.registry, built.settings)
        skipped = f" ({result.skipped} already there)" if result.skipped else ""
        console.print(f"wrote {result.written} images to {result.out}{skipped}", soft_wrap=True)
        console.print(f"manifest: {result.out / 'manifest.csv'}", soft_wrap=True)
