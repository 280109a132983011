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

from cxraug.errors import (
    CxrError,
    OptionsError,
    PluginError,
    TrainingInterruptedError,
    describe_os_error,
)
from cxraug.interfaces import KINDS
from cxraug.options import load_config, options_table, parse_opts
from cxraug.plugins import PluginManager, build_registry
from cxraug.registry import Registry
from cxraug.settings import Built, Settings, build_settings, split_list
from cxraug.training.lifecycle import Job, Outcome
from cxraug.ui import console
from cxraug.workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=Settings)


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

    def sync_failures(self) -> None:
        """List plugin failures recorded after the registry was built (by ``register_commands``,
        which runs after the command families have built it for their ``--help`` epilogs)."""
        if self._registry is not None:
            problems = self._registry.problems
            problems.extend(entry for entry in self.pm.failures if entry not in problems)


def handle_errors(fn: F) -> F:
    """Print user errors (CxrError) without a traceback and exit 2; Ctrl-C exits 130.

    So are the file system's refusals a user can fix (read-only, permission denied, disk full or
    over quota: ``describe_os_error``); any other OSError is a bug and keeps its traceback.
    """

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
        except OSError as exc:
            message = describe_os_error(exc)
            if message is None:
                raise
            console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            # Training commands stop through TrainingInterruptedError with their own resume hint;
            # the others leave nothing half-written (prepare and augment remove their partial
            # folder; generate continues where it stopped when run again).
            console.print("[yellow]Interrupted.[/]")
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
LoggerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--logger",
        help="Experiment tracker (repeatable): tensorboard, mlflow, ...; see `cxraug plugins list`.",
    ),
]
LoggerOptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--logger-opt",
        help="Logger option NAME.KEY=VALUE (repeatable), e.g. mlflow.tracking_uri=http://host:5000.",
    ),
]


def workspace_from(path: Path | None) -> Workspace:
    return Workspace.from_option(path)


def load_config_and_opts(
    config: Path | None, opt: list[str] | None, registry: Registry | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``--config`` file and the ``--opt`` pairs; with a registry, ``[KIND.NAME]`` tables must
    name installed plugins (a typo like ``[gan.stylegan]`` would otherwise be ignored)."""
    loaded = load_config(config)
    if registry is not None:
        for kind in KINDS:
            for name in loaded.get(kind, {}):
                try:
                    registry.get(kind, name)
                except PluginError as exc:
                    raise OptionsError(f"{loaded['__path__']}: [{kind}.{name}]: {exc}") from None
    return loaded, parse_opts(opt)


def given_flags(typer_ctx: typer.Context, model: type[Settings]) -> dict[str, Any]:
    """The command's parameters that are fields of ``model`` and were given on the command line."""
    out: dict[str, Any] = {}
    for name, value in typer_ctx.params.items():
        source = typer_ctx.get_parameter_source(name)
        if name in model.model_fields and source is not None and source.name != "DEFAULT":
            out[name] = str(value) if isinstance(value, Path) else value
    return out


def command_settings(
    typer_ctx: typer.Context,
    model: type[S],
    config: dict[str, Any],
    *,
    plugin_kind: str | None = None,
    opts: dict[str, Any] | None = None,
    per_plugin: tuple[str, str] | None = None,
    logger_opts: list[str] | None = None,
) -> Built[S]:
    """Flags and the config's command table as validated settings; plugin options under ``options``.

    ``[KIND.ARCH]`` config tables and ``--opt`` give the plugin options (validated by the plugin
    once the run is resolved); ARCH is the command's argument or its config table's ``arch``.
    With ``per_plugin=(field, example)`` the command uses several plugins of the kind, and ``field``
    gets their options by plugin name (``--opt NAME.KEY=VALUE``). A model with ``logger_options``
    gets the ``[logger.NAME]`` tables and ``--logger-opt NAME.KEY=VALUE`` there.
    """
    flags = given_flags(typer_ctx, model)
    if "logger_options" in model.model_fields:
        given = parse_opts(logger_opts, "--logger-opt")
        chosen = flags.get("loggers") or config.get(model.section, {}).get("loggers") or []
        tables = {k: v for k, v in config.get("logger", {}).items() if k in split_list(chosen)}
        merged = per_plugin_options(
            {"logger": tables}, "logger", given, "mlflow.tracking_uri=URI", "--logger-opt"
        )
        if merged:
            flags["logger_options"] = merged
    if per_plugin is not None and plugin_kind is not None:  # several plugins, options keyed by name
        field, example = per_plugin
        flags[field] = per_plugin_options(config, plugin_kind, opts or {}, example)
    elif plugin_kind is not None:
        arch = flags.get("arch") or config.get(model.section, {}).get("arch")
        table = dict(config.get(plugin_kind, {}).get(arch, {})) if arch else {}
        merged = {**table, **(opts or {})}
        if merged:
            flags["options"] = merged
    return build_settings(model, flags=flags, config=config)


def report(job: Job[Any, Any], outcome: Outcome[Any]) -> None:
    """What a lifecycle did, for the terminal: the dry-run plan, a note, or the finished run."""
    if outcome.plan is not None:
        print_json(outcome.plan)
    elif outcome.note:
        console.print(escape(outcome.note), soft_wrap=True)
    elif outcome.exit_code:
        raise typer.Exit(outcome.exit_code)
    elif outcome.report and outcome.run is not None:
        for line in job.describe(outcome.run):
            console.print(line, soft_wrap=True, highlight=False)


def plugin_epilog(registry_of: Callable[[], Registry], kind: str, title: str) -> str:
    """``--help`` text listing the installed plugins of a kind and their --opt keys."""
    try:
        registry = registry_of()
    except Exception:  # pragma: no cover - help must render even if a plugin is broken
        return ""
    lines = [f"{title} and their --opt keys:\n\n"]
    for name in registry.names(kind):
        cls = registry.get(kind, name)
        keys = ", ".join(f"{k}={d}" for k, d, _ in options_table(cls.Options)) or "no options"
        lines.append(f"[bold]{name}[/]: {escape(cls.description)} ({escape(keys)})\n\n")
    return "".join(lines)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


DataOpt = Annotated[
    str | None, typer.Option("--data", help="Prepared dataset (default: latest, or the demo).")
]
ClassesOpt = Annotated[
    list[str] | None, typer.Option("--classes", help="Labels to use (comma list; default: all).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed (same seed on CPU: identical results).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume", help="auto (latest running/interrupted run, else the latest finished) or a run folder."
    ),
]
NprocOpt = Annotated[
    int, typer.Option("--nproc", help="Processes for DistributedDataParallel (launches torchrun).")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per step (all processes together).")]


def per_plugin_options(
    config: dict[str, Any], kind: str, opts: dict[str, Any], example: str, flag: str = "--opt"
) -> dict[str, Any]:
    """``[KIND.NAME]`` config tables merged with ``FLAG NAME.KEY=VALUE`` (flags win), by plugin name."""
    bad = [k for k, v in opts.items() if not isinstance(v, dict)]
    if bad:
        raise OptionsError(
            f"{flag} {bad[0]}=...: prefix {kind} options with the plugin's name, e.g. {flag} {example}"
        )
    tables = config.get(kind, {})
    return {k: {**tables.get(k, {}), **opts.get(k, {})} for k in {*tables, *opts}}
