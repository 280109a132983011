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
    command_settings,
    handle_errors,
    load_config_and_opts,
    print_json,
    workspace_from,
)
from cxraug.evaluation.command import EvaluateJob, EvaluateSettings
from cxraug.metrics.features import WEIGHTS_ENV, XRV_ENV
from cxraug.training.lifecycle import execute
from cxraug.ui import console

FidOpt = Annotated[bool, typer.Option("--fid", help="Frechet Inception Distance (clean-fid).")]
KidOpt = Annotated[bool, typer.Option("--kid", help="Kernel Inception Distance (better for small sets).")]
PrdcOpt = Annotated[bool, typer.Option("--prdc", help="Precision / recall / density / coverage.")]
MemorizationOpt = Annotated[
    bool,
    typer.Option("--memorization", help="Generated images that look copied from training images."),
]
RocOpt = Annotated[
    bool,
    typer.Option("--roc", help="Classifier ROC-AUC with CIs, sensitivity, specificity, confusion."),
]
MetricOpt = Annotated[
    list[str] | None,
    typer.Option("--metric", help="Any installed metric plugin by name (repeatable)."),
]
GanOpt = Annotated[str | None, typer.Option("--gan", help="GAN run (default: latest).")]
GeneratedOpt = Annotated[
    Path | None, typer.Option("--generated", help="Folder of generated images instead of a GAN run.")
]
ClassifierOpt = Annotated[str | None, typer.Option("--classifier", help="Classifier run (default: latest).")]
DataOpt = Annotated[str | None, typer.Option("--data", help="Dataset (default: the run's, else the latest).")]
SplitOpt = Annotated[
    str, typer.Option("--split", help="Real split for the classifier and as held-out reference.")
]
RealSplitOpt = Annotated[
    str, typer.Option("--real-split", help="Real split generated images are compared with.")
]
NOpt = Annotated[
    int | None, typer.Option("--n", help="Generated images (default: as many as the real split).")
]
TruncationOpt = Annotated[float, typer.Option("--truncation", help="Truncation psi when generating.")]
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="clean-fid mode: clean, legacy_pytorch or legacy_tensorflow."),
]
InceptionWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--inception-weights", envvar=WEIGHTS_ENV, help="Local Inception weights file (offline use)."
    ),
]
FeaturesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--features",
        help="Feature networks of FID/KID/PRDC: inception (default), xrv (TorchXRayVision's chest X-ray "
        "DenseNet-121), or inception,xrv for both side by side (comma list or repeated).",
    ),
]
XrvWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--xrv-weights",
        envvar=XRV_ENV,
        help="Local TorchXRayVision densenet121-res224-all file or DenseNet state dict (offline use).",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of generated latents and bootstraps.")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Report folder (default: WORKSPACE/reports/eval-TIME).")
]
AsJsonOpt = Annotated[bool, typer.Option("--json", help="metrics.json on stdout.")]


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("evaluate")
    @handle_errors
    def evaluate(
        typer_ctx: typer.Context,
        fid: FidOpt = False,
        kid: KidOpt = False,
        prdc: PrdcOpt = False,
        memorization: MemorizationOpt = False,
        roc: RocOpt = False,
        metric: MetricOpt = None,
        gan: GanOpt = None,
        generated: GeneratedOpt = None,
        classifier: ClassifierOpt = None,
        data: DataOpt = None,
        split: SplitOpt = "test",
        real_split: RealSplitOpt = "train",
        n: NOpt = None,
        truncation: TruncationOpt = 1.0,
        mode: ModeOpt = None,
        inception_weights: InceptionWeightsOpt = None,
        features: FeaturesOpt = None,
        xrv_weights: XrvWeightsOpt = None,
        seed: SeedOpt = 0,
        device: DeviceOpt = "auto",
        out: OutOpt = None,
        as_json: AsJsonOpt = False,
        opt: OptOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Metrics of generated images and of a classifier, as a table, metrics.json and a report."""
        cfg, opts = load_config_and_opts(config, opt, ctx.registry)
        per_plugin = ("metric_options", "fid.batch_size=32")
        built = command_settings(
            typer_ctx, EvaluateSettings, cfg, plugin_kind="metric", opts=opts, per_plugin=per_plugin
        )
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
