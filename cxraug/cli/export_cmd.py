"""``cxraug export``: a GAN run's generator as safetensors, ONNX or TorchScript, with a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxraug.cli.common import AppContext, WorkspaceOpt, command_settings, handle_errors, workspace_from
from cxraug.evaluation.export import ExportSettings, export_generator
from cxraug.ui import console

RunArg = Annotated[str, typer.Argument(help="GAN run folder or name under runs/gan/.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="safetensors (read back by `generate --checkpoint`), onnx or torchscript.",
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Output folder (default: WORKSPACE/exports/RUN-FORMAT).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace files an earlier export left there.")]
BatchOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="ONNX/TorchScript: the batch the graph takes when it cannot take any (StyleGAN2).",
    ),
]


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    @app.command("export")
    @handle_errors
    def export_cmd(
        typer_ctx: typer.Context,
        run: RunArg,
        format: FormatOpt = "safetensors",
        out: OutOpt = None,
        force: ForceOpt = False,
        batch_size: BatchOpt = 1,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Write a GAN run's generator (EMA where kept) as a shareable file with MODEL_CARD.md."""
        built = command_settings(typer_ctx, ExportSettings, {})
        result = export_generator(workspace_from(workspace), ctx.registry, built.settings)
        for item in result.files:
            batch = f"batch {item.fixed_batch}" if item.fixed_batch else "any batch"
            check = "" if item.max_abs_diff is None else f", max |diff| vs PyTorch {item.max_abs_diff:.1e}"
            extra = f" ({batch}{check})" if built.settings.format != "safetensors" else ""
            console.print(f"wrote {item.path}{extra}", soft_wrap=True, highlight=False)
        console.print(f"model card: {result.card}", soft_wrap=True, highlight=False)
