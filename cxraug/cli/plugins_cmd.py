"""``cxraug plugins``: what is installed, from which package, and whether it works."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxraug.cli.common import AppContext, handle_errors, print_json
from cxraug.errors import OptionsError
from cxraug.interfaces import KINDS
from cxraug.options import options_table
from cxraug.ui import console


def add_commands(app: typer.Typer, ctx: AppContext) -> None:
    plugins = typer.Typer(help="List installed plugins and their options.", no_args_is_help=True)
    app.add_typer(plugins, name="plugins")

    @plugins.command("list")
    @handle_errors
    def list_(
        kind: Annotated[
            str | None, typer.Option("--kind", help=f"Only one kind: {', '.join(KINDS)}.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    ) -> None:
        """Every plugin: kind, name, providing package, version, status, description."""
        if kind is not None and kind not in KINDS:
            raise OptionsError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
        rows = ctx.registry.entries(kind)
        if kind is not None:
            rows += [p for p in ctx.registry.problems if p.kind == "plugin"]
        if as_json:
            print_json([r.as_dict() for r in rows])
            return
        table = Table(title="cxraug plugins")
        for col in ("kind", "name", "package", "version", "status", "description"):
            table.add_column(col, overflow="fold")
        for r in rows:
            status = "[green]ok[/]" if r.status == "ok" else f"[red]{r.status}[/]"
            text = escape(r.description) if r.status == "ok" else f"[red]{escape(r.reason)}[/]"
            table.add_row(r.kind, escape(r.name), escape(r.package), escape(r.version), status, text)
        console.print(table)

    @plugins.command("show")
    @handle_errors
    def show(
        kind: Annotated[str, typer.Argument(help=f"One of {', '.join(KINDS)}.")],
        name: Annotated[str, typer.Argument(help="Plugin name.")],
    ) -> None:
        """A plugin's description and options (keys for --opt and config files)."""
        if kind not in KINDS:
            raise OptionsError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
        cls = ctx.registry.get(kind, name)
        console.print(f"[bold]{kind} {name}[/]: {escape(cls.description)}")
        doc = inspect.cleandoc(cls.__doc__ or "")  # continuation lines carry the class indent
        if doc:
            console.print(escape(doc), highlight=False)
        if kind == "dataset":
            try:  # with default options: what --classes / --map may name for this adapter
                labels: tuple[str, ...] = tuple(getattr(cls(cls.Options()), "labels", tuple)())
            except Exception:  # options without defaults, or a broken third-party adapter
                labels = ()
            if labels:
                console.print(f"labels: {escape(', '.join(labels))}", highlight=False)
        flag = f"--logger-opt {name}.KEY=VALUE" if kind == "logger" else "--opt KEY=VALUE"
        table = Table(title=escape(f"options ({flag}, or [{kind}.{name}] in --config)"))
        for col in ("key", "default", "description"):
            table.add_column(col, overflow="fold")
        for row in options_table(cls.Options):
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
