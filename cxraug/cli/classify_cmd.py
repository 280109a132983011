"""``cxraug train-classifier``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

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
from cxraug.training.classifier_run import ClassifierSettings
from cxraug.training.classifier_trainer import ClassifierJob
from cxraug.training.lifecycle import execute

D = ClassifierSettings.defaults()
ArchArg = Annotated[
    str | None, typer.Argument(help="Classifier (see `cxraug plugins list --kind classifier`).")
]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Epochs; the best one on validation AUC is kept.")]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Learning rate (default: the model's published one).")
]
OnlineOpt = Annotated[bool, typer.Option("--online-augment", help="Random classic transforms per batch.")]
OnlineNameOpt = Annotated[
    str, typer.Option("--online-augmenter", help="Augmenter whose per-batch transform --online-augment uses.")
]
WeightsClsOpt = Annotated[str, typer.Option("--class-weights", help="none or balanced (inverse frequency).")]
FreezeOpt = Annotated[
    bool | None,
    typer.Option(
        "--freeze-backbone/--fine-tune",
        help="Freeze the pretrained backbone or fine-tune it (default: the model's).",
        show_default=False,
    ),
]
PretrainedOpt = Annotated[
    bool | None,
    typer.Option(
        "--pretrained/--no-pretrained", help="ImageNet weights (default: the model's).", show_default=False
    ),
]
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="Local file of the backbone's pretrained weights.")
]


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("train-classifier", epilog=plugin_epilog(lambda: ctx.registry, "classifier", "Classifiers"))
    @handle_errors
    def train_classifier(
        typer_ctx: typer.Context,
        arch: ArchArg = None,
        data: DataOpt = None,
        classes: ClassesOpt = None,
        epochs: EpochsOpt = D["epochs"],
        batch_size: BatchOpt = D["batch_size"],
        lr: LrOpt = None,
        online_augment: OnlineOpt = False,
        online_augmenter: OnlineNameOpt = D["online_augmenter"],
        class_weights: WeightsClsOpt = D["class_weights"],
        freeze_backbone: FreezeOpt = None,
        pretrained: PretrainedOpt = None,
        weights: WeightsOpt = None,
        seed: SeedOpt = D["seed"],
        device: DeviceOpt = D["device"],
        resume: ResumeOpt = None,
        nproc: NprocOpt = D["nproc"],
        loggers: LoggerOpt = None,
        logger_opt: LoggerOptOpt = None,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Train a classifier; the best epoch by validation macro ROC-AUC is saved as best.pt."""
        cfg, opts = load_config_and_opts(config, opt, ctx.registry)
        built = command_settings(
            typer_ctx, ClassifierSettings, cfg, plugin_kind="classifier", opts=opts, logger_opts=logger_opt
        )
        augment: dict[str, Any] = cfg.get("augmenter", {}).get(built.settings.online_augmenter, {})
        if augment and built.settings.online_augment:
            built.settings.augment_options = dict(augment)
            built.explicit["augment_options"] = dict(augment)
        job = ClassifierJob(workspace_from(workspace), ctx.registry)
        report(job, execute(job, built, resume=resume, dry_run=dry_run, argv=sys.argv[1:]))
