"""What every command shares: error handling, workspace/option flags, config merging."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from cxraug.errors import CxrError, OptionsError, TrainingInterruptedError
from cxraug.options import load_config, parse_opts, resolve_options
from cxraug.plugins import PluginManager, build_registry
from cxraug.registry import Registry
from cxraug.ui import console
from cxraug.workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppContext:
    """Handed to every command family when the app is assembled."""

    pm: PluginManager
    _registry: Registry | None = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = build_registry(self.pm)
        return self._registry


def handle_errors(fn: F) -> F:
    """Print user errors (CxrError) without a traceback and exit 2; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrainingInterruptedError as exc:
            console.print(f"[yellow]{escape(str(exc))}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except CxrError as exc:
            console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(
                "[yellow]Interrupted.[/] Training commands continue from their last checkpoint with "
                "`--resume auto`."
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="CXRAUG_WORKSPACE",
        help="Workspace folder (data/, runs/, reports/). Default: ./cxraug-workspace.",
        show_default=False,
    ),
]
OptOpt = Annotated[
    list[str] | None,
    typer.Option("--opt", help="Plugin option KEY=VALUE (repeatable); see `cxraug plugins show`."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file: [KIND.NAME] tables of plugin options and a table per command.",
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the resolved options and stop.")]


def split_list(values: Any) -> list[str]:
    """``["a,b", "c"]`` (repeated or comma-separated flags, or a config list) -> ``["a", "b", "c"]``."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def parse_counts(text: str, flag: str) -> dict[str, int]:
    """``"covid=600,normal=400"`` -> counts per label."""
    out: dict[str, int] = {}
    for part in text.split(","):
        label, sep, n = part.partition("=")
        try:
            value = int(n)
        except ValueError:
            value = -1
        if not sep or not label.strip() or value < 0:
            raise OptionsError(f"{flag} {text!r}: expected LABEL=N,..., e.g. covid=600,normal=400")
        out[label.strip()] = value
    return out


def workspace_from(path: Path | None) -> Workspace:
    return Workspace.from_option(path)


def apply_command_config(
    ctx: typer.Context, config: dict[str, Any], section: str, values: dict[str, Any]
) -> dict[str, Any]:
    """Fill flags left at their defaults from the config's ``[section]`` table (flags win)."""
    table = config.get(section, {})
    out = dict(values)
    path = config.get("__path__", "config")
    for key, value in table.items():
        param = key.replace("-", "_")
        if param not in values:
            valid = ", ".join(sorted(k.replace("_", "-") for k in values))
            raise OptionsError(f"{path}: [{section}] has unknown key {key!r}; valid keys: {valid}")
        source = ctx.get_parameter_source(param)
        if source is None or source.name == "DEFAULT":
            out[param] = value
    return out


def plugin_options(
    registry: Registry, kind: str, name: str, config: dict[str, Any], opts: dict[str, Any]
) -> Any:
    """Instantiate plugin ``name`` of ``kind`` with options from config and --opt."""
    cls = registry.get(kind, name)
    table = config.get(kind, {}).get(name, {})
    return cls, resolve_options(cls.Options, plugin=f"{kind} {name}", config=table, opts=opts)


def load_config_and_opts(config: Path | None, opt: list[str] | None) -> tuple[dict, dict]:
    return load_config(config), parse_opts(opt)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))
