"""``cxraug evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxraug.cli.common import (
    AppContext,
    ConfigOpt,
    DeviceOpt,
    OptOpt,
    WorkspaceOpt,
    given_flags,
    handle_errors,
    load_config_and_opts,
    per_plugin_options,
    print_json,
    workspace_from,
)
from cxraug.evaluation.command import EvaluateJob, EvaluateSettings
from cxraug.metrics.features import WEIGHTS_ENV
from cxraug.settings import build_settings
from cxraug.training.lifecycle import execute
from cxraug.ui import console


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("evaluate")
    @handle_errors
    def evaluate(
        typer_ctx: typer.Context,
        fid: Annotated[bool, typer.Option("--fid", help="Frechet Inception Distance (clean-fid).")] = False,
        kid: Annotated[
            bool, typer.Option("--kid", help="Kernel Inception Distance (better for small sets).")
        ] = False,
        prdc: Annotated[
            bool, typer.Option("--prdc", help="Precision / recall / density / coverage.")
        ] = False,
        memorization: Annotated[
            bool,
            typer.Option("--memorization", help="Generated images that look copied from training images."),
        ] = False,
        roc: Annotated[
            bool,
            typer.Option("--roc", help="Classifier ROC-AUC with CIs, sensitivity, specificity, confusion."),
        ] = False,
        metric: Annotated[
            list[str] | None,
            typer.Option("--metric", help="Any installed metric plugin by name (repeatable)."),
        ] = None,
        gan: Annotated[str | None, typer.Option("--gan", help="GAN run (default: latest).")] = None,
        generated: Annotated[
            Path | None, typer.Option("--generated", help="Folder of generated images instead of a GAN run.")
        ] = None,
        classifier: Annotated[
            str | None, typer.Option("--classifier", help="Classifier run (default: latest).")
        ] = None,
        data: Annotated[
            str | None, typer.Option("--data", help="Dataset (default: the run's, else the latest).")
        ] = None,
        split: Annotated[
            str, typer.Option("--split", help="Real split for the classifier and as held-out reference.")
        ] = "test",
        real_split: Annotated[
            str, typer.Option("--real-split", help="Real split generated images are compared with.")
        ] = "train",
        n: Annotated[
            int | None, typer.Option("--n", help="Generated images (default: as many as the real split).")
        ] = None,
        truncation: Annotated[
            float, typer.Option("--truncation", help="Truncation psi when generating.")
        ] = 1.0,
        mode: Annotated[
            str | None,
            typer.Option("--mode", help="clean-fid mode: clean, legacy_pytorch or legacy_tensorflow."),
        ] = None,
        inception_weights: Annotated[
            Path | None,
            typer.Option(
                "--inception-weights", envvar=WEIGHTS_ENV, help="Local Inception weights file (offline use)."
            ),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of generated latents and bootstraps.")] = 0,
        device: DeviceOpt = "auto",
        out: Annotated[
            Path | None, typer.Option("--out", help="Report folder (default: WORKSPACE/reports/eval-TIME).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="metrics.json on stdout.")] = False,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Metrics of generated images and of a classifier, as a table, metrics.json and a report."""
        cfg, opts = load_config_and_opts(config, opt)
        options = per_plugin_options(cfg, "metric", opts, "fid.batch_size=32")
        flags = {**given_flags(typer_ctx, EvaluateSettings), "metric_options": options}
        built = build_settings(EvaluateSettings, flags=flags, config=cfg)
        job = EvaluateJob(workspace_from(workspace), ctx.registry)
        run = execute(job, built).run
        assert run is not None
        doc = run.metrics()
        if as_json:
            print_json(doc)
            return
        table = Table(title=f"cxraug evaluate ({run.settings.data})")
        for col in ("metric", "name", "value"):
            table.add_column(col)
        for name, values in doc["values"].items():
            for key, value in values.items():
                table.add_row(name, key, f"{value:.4f}")
        console.print(table)
        console.print(
            f"report: {run.path / 'report.html'}  metrics: {run.path / 'metrics.json'}", soft_wrap=True
        )
