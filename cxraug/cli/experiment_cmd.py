"""``cxraug experiment``: the whole study — base vs classic vs GAN augmentation — in one command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cxraug.cli.common import (
    AppContext,
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    LoggerOpt,
    LoggerOptOpt,
    OptOpt,
    WorkspaceOpt,
    given_flags,
    handle_errors,
    load_config_and_opts,
    per_plugin_options,
    report,
    workspace_from,
)
from cxraug.errors import OptionsError
from cxraug.experiment.report import summary_table
from cxraug.experiment.runner import ARMS, STATE, ExperimentJob, ExperimentRun, ExperimentSettings
from cxraug.experiment.runner import reanalyse as reanalyse_study
from cxraug.metrics.features import WEIGHTS_ENV, XRV_ENV
from cxraug.options import parse_opts
from cxraug.settings import build_settings
from cxraug.training.lifecycle import execute
from cxraug.ui import console

DataOpt = Annotated[str | None, typer.Option("--data", help="Dataset (default: latest, or the demo).")]
GanOpt = Annotated[
    str | None, typer.Option("--gan", help="GAN architecture to train, or an existing GAN run.")
]
ClassifierOpt = Annotated[
    str | None, typer.Option("--classifier", help="Classifier architecture (default densenet121).")
]
SyntheticOpt = Annotated[
    int | None,
    typer.Option(
        "--synthetic", help="Synthetic images per GAN arm (default: as many as real training images)."
    ),
]
ClassicOpt = Annotated[
    int | None,
    typer.Option("--classic", help="Classic images per classic arm (default: as many as real)."),
]
ArmsOpt = Annotated[str, typer.Option("--arms", help=f"Comma list of {', '.join(ARMS)}.")]
SeedsOpt = Annotated[
    int | None, typer.Option("--seeds", help="Classifier seeds per arm and generator (default 5).")
]
AllowOverlapOpt = Annotated[
    bool,
    typer.Option(
        "--allow-gan-overlap",
        help="Use a --gan RUN even if it saw the study's val/test images or cannot be verified (reported).",
    ),
]
ReanalyseOpt = Annotated[
    bool,
    typer.Option(
        "--reanalyse", help="Recompute a finished experiment's analysis and report (--out DIR); no training."
    ),
]
GanSeedsOpt = Annotated[
    int | None,
    typer.Option("--gan-seeds", help="Generators per GAN arm, own seed and synthetic set each (default 3)."),
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Classifier epochs (default 10).")]
GanKimgOpt = Annotated[
    float | None, typer.Option("--gan-kimg", help="GAN training length (default: the GAN's).")
]
PretrainedOpt = Annotated[
    bool, typer.Option("--pretrained/--no-pretrained", help="ImageNet weights for the classifier.")
]
QuickOpt = Annotated[bool, typer.Option("--quick", help="Tiny budgets: minutes on a laptop CPU (demo data).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed.")]
InceptionWeightsOpt = Annotated[
    Path | None,
    typer.Option("--inception-weights", envvar=WEIGHTS_ENV, help="Local Inception weights for FID/KID."),
]
FeaturesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--features",
        help="Feature networks of the GAN's FID/KID: inception (default), xrv (TorchXRayVision), or both.",
    ),
]
XrvWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--xrv-weights", envvar=XRV_ENV, help="Local TorchXRayVision DenseNet weights (offline use)."
    ),
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Experiment folder; an existing one resumes.")]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Where the study's jobs run: local (default), slurm, or an installed executor (ray, ...).",
    ),
]
JobsOpt = Annotated[
    int | None,
    typer.Option("--jobs", help="Jobs at once (local: processes on this machine; others: at most N queued)."),
]
ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="Continue the latest unfinished (else finished) experiment."),
]


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("experiment")
    @handle_errors
    def experiment(
        typer_ctx: typer.Context,
        data: DataOpt = None,
        gan: GanOpt = None,
        classifier: ClassifierOpt = None,
        synthetic: SyntheticOpt = None,
        classic: ClassicOpt = None,
        arms: ArmsOpt = ",".join(ARMS),
        seeds: SeedsOpt = None,
        gan_seeds: GanSeedsOpt = None,
        allow_gan_overlap: AllowOverlapOpt = False,
        reanalyse: ReanalyseOpt = False,
        epochs: EpochsOpt = None,
        gan_kimg: GanKimgOpt = None,
        pretrained: PretrainedOpt = True,
        quick: QuickOpt = False,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        inception_weights: InceptionWeightsOpt = None,
        features: FeaturesOpt = None,
        xrv_weights: XrvWeightsOpt = None,
        out: OutOpt = None,
        resume: ResumeOpt = False,
        loggers: LoggerOpt = None,
        logger_opt: LoggerOptOpt = None,
        executor: ExecutorOpt = None,
        jobs: JobsOpt = None,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Train (or reuse) a GAN, build each arm's training set, train a classifier per arm and seed,
        evaluate all on the same real test split, and report means, CIs and tests against base."""
        loaded, opts = load_config_and_opts(config, opt, ctx.registry)
        flags = study_flags(given_flags(typer_ctx, ExperimentSettings), loaded, opts, logger_opt, executor)
        built = build_settings(ExperimentSettings, flags=flags, config=loaded)
        ws = workspace_from(workspace)
        if reanalyse:
            run = ExperimentRun.resolve(ws, out)
            _show(run, reanalyse_study(ws, ctx.registry, run))
            return
        target = str(out) if out is not None and ExperimentRun.is_run(out) else ("auto" if resume else None)
        job = ExperimentJob(ws, ctx.registry)
        outcome = execute(job, built, resume=target, dry_run=dry_run, argv=sys.argv[1:])
        report(job, outcome)
        if outcome.report and outcome.run is not None and outcome.plan is None and not outcome.note:
            _show(outcome.run, outcome.run.state()["results"])


def study_flags(
    flags: dict[str, Any],
    config: dict[str, Any],
    opts: dict[str, Any],
    logger_opt: list[str] | None,
    executor: str | None,
) -> dict[str, Any]:
    """The flags plus the per-plugin options: ``--opt gan./classifier./executor.KEY=V``, ``--logger-opt``."""
    stray = [k for k in opts if k not in ("gan", "classifier", "executor")]
    if stray:
        raise OptionsError(
            f"--opt {stray[0]}...: prefix with gan., classifier. or executor., e.g. --opt gan.ngf=32"
        )
    flags = {**flags, **{f"{k}_options": v for k, v in opts.items() if k != "executor"}}
    given = parse_opts(logger_opt, "--logger-opt")
    logger_options = per_plugin_options({}, "logger", given, "mlflow.tracking_uri=URI", "--logger-opt")
    if logger_options:
        flags["logger_options"] = logger_options
    chosen = executor or config.get("experiment", {}).get("executor")
    executor_options = executor_flags(chosen, config, opts.get("executor"))
    if executor_options is not None:
        flags["executor_options"] = executor_options
    return flags


def executor_flags(chosen: str | None, config: dict[str, Any], opts: Any) -> dict[str, Any] | None:
    """The executor's options from ``[executor.NAME]`` and ``--opt executor.KEY=V`` (None when none
    was given and no executor chosen, so a resume keeps the recorded ones)."""
    if opts is not None and not isinstance(opts, dict):
        raise OptionsError("--opt executor=...: give the executor's options as --opt executor.KEY=VALUE")
    name = chosen or "local"
    merged = {**config.get("executor", {}).get(name, {}), **(opts or {})}
    return merged if (merged or chosen is not None) else None


def _show(run: ExperimentRun, results: dict[str, Any]) -> None:
    console.print(summary_table(results, run.name))
    html, md = run.path / "report.html", run.path / "report.md"
    console.print(escape(f"report: {html} ({md}); results: {run.path / STATE}"), soft_wrap=True)
