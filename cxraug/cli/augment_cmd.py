"""``cxraug augment``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxraug.cli.common import (
    AppContext,
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    OptOpt,
    WorkspaceOpt,
    command_settings,
    handle_errors,
    load_config_and_opts,
    print_json,
    workspace_from,
)
from cxraug.data.augment import origin_counts
from cxraug.data.prepared import PreparedDataset
from cxraug.training.augmentation import AugmentSettings, plan_augment, run_augment
from cxraug.ui import console

DataOpt = Annotated[
    str | None,
    typer.Option("--data", help="Source dataset (default: the GAN run's, else the latest)."),
]
SyntheticOpt = Annotated[
    int, typer.Option("--synthetic", help="Synthetic images to add (balanced over labels).")
]
GanOpt = Annotated[str | None, typer.Option("--gan", help="GAN run for synthetic images (default: latest).")]
LabelOpt = Annotated[str | None, typer.Option("--label", help="Put all new images in this label.")]
PerClassOpt = Annotated[
    str | None, typer.Option("--per-class", help="Synthetic counts per label: covid=600,normal=400.")
]
ClassicOpt = Annotated[
    int, typer.Option("--classic", help="Classic-augmented images to add (balanced over labels).")
]
ClassicPerClassOpt = Annotated[
    str | None, typer.Option("--classic-per-class", help="Classic counts per label.")
]
TruncationOpt = Annotated[float | None, typer.Option("--truncation", help="Truncation psi of the GAN.")]
FilterRunOpt = Annotated[
    Path | None,
    typer.Option("--filter", help="Classifier run that must recognise each synthetic image's label."),
]
MinConfidenceOpt = Annotated[
    float | None,
    typer.Option(
        "--min-confidence", help="Probability of the intended label needed to keep a synthetic image."
    ),
]
NameOpt = Annotated[str | None, typer.Option("--name", help="New dataset name (default: derived).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing dataset of that name.")]


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("augment")
    @handle_errors
    def augment(
        typer_ctx: typer.Context,
        data: DataOpt = None,
        synthetic: SyntheticOpt = 0,
        gan: GanOpt = None,
        label: LabelOpt = None,
        per_class: PerClassOpt = None,
        classic: ClassicOpt = 0,
        classic_per_class: ClassicPerClassOpt = None,
        truncation: TruncationOpt = None,
        filter_run: FilterRunOpt = None,
        min_confidence: MinConfidenceOpt = None,
        name: NameOpt = None,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        force: ForceOpt = False,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """New dataset = real training images + classic and/or synthetic ones; val/test untouched."""
        cfg, opts = load_config_and_opts(config, opt, ctx.registry)
        per_plugin = ("augmenter_options", "classic.rotation=15")
        settings = command_settings(
            typer_ctx, AugmentSettings, cfg, plugin_kind="augmenter", opts=opts, per_plugin=per_plugin
        ).settings
        ws = workspace_from(workspace)
        plan = plan_augment(ws, ctx.registry, settings)
        if dry_run:
            print_json(plan.as_dict(settings.seed))
            return
        dataset = run_augment(ws, ctx.registry, settings, plan)
        for step in plan.steps:
            rejected = getattr(step.augmenter, "rejected", None)
            if rejected and any(rejected.values()):
                console.print(f"quality filter rejected: {rejected}")
        console.print(_table(dataset))
        console.print(
            f"new dataset: {dataset.name} ({dataset.path}); val/test are the source's, unchanged.",
            soft_wrap=True,
        )
        console.print(f"train on it: `cxraug train-classifier ARCH --data {dataset.name}`", soft_wrap=True)


def _table(dataset: PreparedDataset) -> Table:
    counts = origin_counts(dataset)
    origins = sorted({o for c in counts.values() for o in c}, key=lambda o: (o != "real", o))
    table = Table(title=f"{dataset.name}: training images by label and origin")
    table.add_column("label")
    for o in origins:
        table.add_column(o, justify="right")
    table.add_column("total", justify="right")
    for lb in dataset.classes:
        c = counts.get(lb, {})
        table.add_row(lb, *(str(c.get(o, 0)) for o in origins), str(sum(c.values())))
    return table
