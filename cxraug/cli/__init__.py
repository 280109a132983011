"""The ``cxraug`` command line, assembled from command families and plugin-added commands."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
import typer.main
from rich.markup import escape

from cxraug import __version__
from cxraug.cli import (
    augment_cmd,
    classify_cmd,
    data_cmd,
    evaluate_cmd,
    experiment_cmd,
    export_cmd,
    gan_cmd,
    plugins_cmd,
)
from cxraug.cli.common import AppContext
from cxraug.errors import CxrError
from cxraug.plugins import PluginCrash, PluginManager, call_isolated, get_plugin_manager
from cxraug.ui import console

COMMAND_FAMILIES = (
    plugins_cmd,
    data_cmd,
    gan_cmd,
    augment_cmd,
    classify_cmd,
    evaluate_cmd,
    experiment_cmd,
    export_cmd,
)


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
    _add_plugin_commands(app, pm)
    ctx.sync_failures()
    return app


def _add_plugin_commands(app: typer.Typer, pm: PluginManager) -> None:
    """Call every ``register_commands`` hook; a third-party one that raises, adds a command Click
    cannot build, or reuses a command name already taken adds nothing and is listed as failed."""
    taken: set[str] | None = None
    for impl in pm.ordered_hookimpls("register_commands"):
        args = [app for _ in impl.argnames]
        if pm.is_builtin(impl.plugin_name):
            impl.function(*args)  # a broken built-in is a bug: let it raise
            continue
        if taken is None:
            taken = _command_names(app.registered_commands, app.registered_groups)
        n_commands, n_groups = len(app.registered_commands), len(app.registered_groups)
        try:
            call_isolated(impl.function, *args)
            new = call_isolated(
                _command_names, app.registered_commands[n_commands:], app.registered_groups[n_groups:]
            )
        except PluginCrash as crash:  # a broken third-party command must not take the CLI down
            del app.registered_commands[n_commands:], app.registered_groups[n_groups:]
            pm.record_failure(
                impl.plugin_name, f"register_commands raised {crash.reason}; its commands are not added"
            )
            continue
        clash = sorted(new & taken)
        if clash:
            del app.registered_commands[n_commands:], app.registered_groups[n_groups:]
            pm.record_failure(
                impl.plugin_name,
                f"command name {', '.join(map(repr, clash))} is already taken; none of this plugin's "
                "commands are added (rename the command, or uninstall one of the two packages)",
                status="conflict",
            )
            continue
        taken |= new


def _command_names(commands: list[Any], groups: list[Any]) -> set[str]:
    """The top-level names these Typer registrations produce (built as Click would build them)."""
    probe = typer.Typer()
    probe.registered_commands = list(commands)
    probe.registered_groups = list(groups)
    return set(typer.main.get_group(probe).commands)


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
    except KeyboardInterrupt:  # Ctrl-C before a command runs (e.g. while plugins load): no traceback
        console.print("interrupted", highlight=False)
        sys.exit(130)
