"""The ``cxraug`` command line, assembled from command families and plugin-added commands."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.markup import escape

from cxraug import __version__
from cxraug.cli import (
    augment_cmd,
    classify_cmd,
    data_cmd,
    evaluate_cmd,
    experiment_cmd,
    gan_cmd,
    plugins_cmd,
)
from cxraug.cli.common import AppContext
from cxraug.errors import CxrError
from cxraug.plugins import PluginManager, get_plugin_manager
from cxraug.ui import console

COMMAND_FAMILIES = (plugins_cmd, data_cmd, gan_cmd, augment_cmd, classify_cmd, evaluate_cmd, experiment_cmd)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxraug {__version__}")
        raise typer.Exit()


def build_app(pm: PluginManager | None = None) -> typer.Typer:
    """The Typer app for a plugin manager (a fresh default one when None)."""
    pm = pm or get_plugin_manager()
    app = typer.Typer(
        name="cxraug",
        help="Augment chest X-ray datasets with GANs and measure, reproducibly, whether it helps.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )

    @app.callback()
    def root(
        version: Annotated[
            bool,
            typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
        ] = False,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        _setup_logging(verbose)

    ctx = AppContext(pm)
    for family in COMMAND_FAMILIES:
        family.add_commands(app, ctx)
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(app=app)
        except Exception as exc:  # a broken third-party command must not take the CLI down
            if pm.provider(impl.plugin_name).name == "cxraug":
                raise
            logging.getLogger(__name__).warning(
                "plugin %r failed to add its commands: %s", impl.plugin_name, exc
            )
    return app


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_time=False, show_path=False)],
        force=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app = build_app()
        app(args=argv, prog_name="cxraug")
    except CxrError as exc:  # plugin-added commands that skip handle_errors still get a clean error
        console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
