"""Plugin options from defaults, a TOML config file and ``--opt key=value`` flags, validated."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cxraug.errors import OptionsError
from cxraug.interfaces import KINDS, PluginOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_value(text: str) -> Any:
    """A TOML value when the text is one (1, 0.5, true, [1, 2], "x"), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_opts(pairs: list[str] | None, where: str = "--opt") -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``; a pair without ``=`` is an error."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptionsError(f"{where} {pair!r}: expected KEY=VALUE, e.g. {where} lr=0.0002")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OptionsError(f"{where} {pair!r}: {part!r} is given both a value and sub-keys")
        node[parts[-1]] = parse_value(value.strip())
    return result


def load_config(path: Path | None) -> dict[str, Any]:
    """Read a TOML config file; tables are ``[KIND.NAME]`` for plugin options."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise OptionsError(f"--config {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise OptionsError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise OptionsError(f"{path}: not a UTF-8 text file; --config takes a TOML file") from None
    allowed = set(KINDS) | set(COMMAND_SECTIONS)
    for key, value in data.items():
        if key not in allowed or not isinstance(value, dict):
            raise OptionsError(
                f"{path}: unknown top-level key {key!r}; use tables [KIND.NAME] with KIND one of "
                f"{', '.join(KINDS)} (e.g. [gan.stylegan2]) or a command table "
                f"({', '.join(sorted(COMMAND_SECTIONS))})"
            )
    for kind in KINDS:
        for name, table in data.get(kind, {}).items():
            if not isinstance(table, dict):
                raise OptionsError(
                    f"{path}: {kind}.{name} = {table!r}: plugin options go in a [{kind}.PLUGIN] table "
                    f"(PLUGIN: its name, see `cxraug plugins list --kind {kind}`), one KEY = VALUE per line"
                )
    for section in COMMAND_SECTIONS:
        arch = data.get(section, {}).get("arch")
        if arch is not None and not isinstance(arch, str):
            raise OptionsError(f"{path}: [{section}] arch = {arch!r}: give one plugin name as a string")
    data["__path__"] = str(path)
    return data


#: Command-level tables a config file may hold (values for the command's own flags).
COMMAND_SECTIONS: frozenset[str] = frozenset(
    {"prepare", "train-gan", "augment", "train-classifier", "evaluate", "experiment"}
)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _split_sequences(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Let ``views=PA,AP`` fill a tuple/list option, as users type it on a command line."""
    out = dict(values)
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None or not isinstance(value, str):
            continue
        origin = typing.get_origin(field.annotation)
        if origin in (tuple, list, set, frozenset):
            out[key] = [v.strip() for v in value.split(",") if v.strip()]
    return out


def resolve_options(
    cls: type[PluginOptions],
    *,
    plugin: str,
    config: dict[str, Any] | None = None,
    opts: dict[str, Any] | None = None,
) -> PluginOptions:
    """Defaults < config file < --opt, validated by the plugin's Options model."""
    values = _merge(config or {}, opts or {})
    values = _split_sequences(cls, values)
    try:
        return cls(**values)
    except ValidationError as exc:
        raise OptionsError(describe_validation_error(exc, cls, plugin)) from None


def describe_validation_error(exc: ValidationError, cls: type[BaseModel], plugin: str) -> str:
    """One line: each bad key, then the valid keys with their defaults."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(options)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        else:
            msg = err["msg"].replace("Value error, ", "")
            problems.append(f"{key}: {msg} (got {err.get('input')!r})")
    valid = ", ".join(describe_fields(cls)) or "none"
    return f"invalid options for {plugin}: {'; '.join(problems)}; valid keys: {valid}"


def describe_fields(cls: type[BaseModel]) -> list[str]:
    """``key=default`` for each option, for errors and --help."""
    out = []
    for key, field in cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        out.append(f"{key}={json.dumps(default, default=str)}")
    return out


def options_table(cls: type[BaseModel]) -> list[tuple[str, str, str]]:
    """(key, default, description) rows for help and docs."""
    rows = []
    for key, field in cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        rows.append((key, json.dumps(default, default=str), field.description or ""))
    return rows


def to_jsonable(value: Any) -> Any:
    """Options and paths as plain JSON values (for run folders and --dry-run)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
