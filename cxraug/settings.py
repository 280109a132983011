"""Command settings: one validated pydantic model per command, filled from flags and ``--config``.

A command's flags and its ``[COMMAND]`` table in a ``--config`` TOML file are the same fields of one
model. Values come from the model's defaults < the config table < flags given on the command line;
a bad value from any of them gets one line naming where it came from, the value and what was
expected. Resuming a run compares the settings a user gave again with the recorded ones.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, field_validator

from cxraug.errors import OptionsError


def split_list(values: Any) -> list[str]:
    """``["a,b", "c"]`` (repeated or comma-separated flags, or a config list) -> ``["a", "b", "c"]``."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        return values  # the list validator names the wrong type
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


#: A list of names that also accepts ``"a,b"`` and repeated flags.
NameList = Annotated[list[str], BeforeValidator(split_list)]
#: ``--features inception,xrv`` (or repeated): the feature networks of FID, KID and PRDC.
FeatureList = Annotated[list[Literal["inception", "xrv"]], BeforeValidator(split_list)]


#: Most images one command may be asked to make or add (``--n``, ``--synthetic``, ``--classic``,
#: ``--per-class`` counts): more than the largest public chest X-ray collections hold, so a larger
#: number is a typo that would otherwise run for days and fill the disk.
MAX_IMAGES = 1_000_000


def _numeric_only(annotation: Any) -> bool:
    """int or float (or an optional one), where True/False would silently become 1/0."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


def refuse_bool_numbers(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A ``field_validator("*", mode="before")`` body: ``lr_g = true`` is an error, not 1.0."""
    field = cls.model_fields.get(info.field_name or "")
    if isinstance(value, bool) and field is not None and _numeric_only(field.annotation):
        raise ValueError(f"expected a number, not {str(value).lower()}")
    return value


class Settings(BaseModel):
    """Base of every command's settings; unknown keys are an error, and so is nan or inf in any
    number (``--lr nan`` would train a network of NaNs without a word)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _no_bool_numbers = field_validator("*", mode="before")(classmethod(refuse_bool_numbers))

    #: The ``--config`` table that holds this command's values (e.g. ``train-gan``).
    section: ClassVar[str] = ""
    #: Fields a resumed run may change (a longer budget, another device); all others must match.
    resumable: ClassVar[frozenset[str]] = frozenset()
    #: Field -> flag, where the flag is not ``--field-name``.
    flag_names: ClassVar[dict[str, str]] = {}
    #: Config-table key -> field, where a table says it another way (e.g. ``map`` for ``label_map``).
    config_aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def flag(cls, field: str) -> str:
        return cls.flag_names.get(field, "--" + field.replace("_", "-"))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each field's default (for the CLI's help text)."""
        return {k: f.get_default(call_default_factory=True) for k, f in cls.model_fields.items()}


S = TypeVar("S", bound=Settings)


@dataclass
class Built(Generic[S]):
    """Validated settings and the values the user gave explicitly (flags and config keys)."""

    settings: S
    explicit: dict[str, Any]


def build_settings(
    model: type[S],
    *,
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Built[S]:
    """Defaults < ``base`` (recorded values) < the config's ``[section]`` table < ``flags``."""
    flags = dict(flags or {})
    config = config or {}
    path = str(config.get("__path__", "config"))
    raw = dict(config.get(model.section, {}))
    table: dict[str, Any] = {}
    for key, value in raw.items():
        field = str(key).replace("-", "_")
        field = model.config_aliases.get(field, field)
        if field in table:
            raise OptionsError(f"{path}: [{model.section}] gives {field!r} twice (as {key!r} too); keep one")
        table[field] = value
    unknown = [k for k in table if k not in model.model_fields]
    if unknown:
        valid = ", ".join(sorted(k.replace("_", "-") for k in model.model_fields))
        raise OptionsError(f"{path}: [{model.section}] has unknown key {unknown[0]!r}; valid keys: {valid}")
    values = {**dict(base or {}), **table, **flags}
    try:
        settings = model(**values)
    except ValidationError as exc:
        raise OptionsError(describe_error(exc, model, flags, table, path)) from None
    return Built(settings, {**table, **flags})


def describe_error(
    exc: ValidationError,
    model: type[Settings],
    flags: Mapping[str, Any],
    table: Mapping[str, Any],
    path: str,
) -> str:
    """One line per bad value, saying where it came from: a flag, the config file, or a record."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = loc[0] if loc else ""
        msg = err["msg"]
        value = err.get("input")
        if key in flags:
            lines.append(f"{model.flag(key)} {_show(flags[key])}: {msg}")
        elif key in table:
            lines.append(f"{path}: [{model.section}] {key} = {_show(table[key])}: {msg}")
        elif key:
            lines.append(f"{model.flag(key)} {_show(value)}: {msg}")
        else:
            lines.append(msg)
    return "; ".join(line.replace("Value error, ", "") for line in lines)


def describe_file_error(exc: ValidationError) -> str:
    """The first problem of a JSON file cxraug wrote (a run record, info.json), naming its key
    without echoing the whole file."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].replace("Value error, ", "")
    if err["type"] == "missing":
        return f"{key}: missing"
    if err["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if not key:
        return msg
    shown = repr(err.get("input"))
    return f"{key}: {msg} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def changed_settings(recorded: Settings, wanted: Mapping[str, Any], model: type[Settings]) -> list[str]:
    """``--flag old -> new`` for each explicitly wanted value that differs from the recorded one."""
    out = []
    current = recorded.model_dump(mode="json")
    # a dict (plugin options) given again names only some keys: the others keep their recorded values
    fixed = {k: v for k, v in wanted.items() if k not in model.resumable}
    merged = {
        k: {**current[k], **v} if isinstance(v, dict) and isinstance(current.get(k), dict) else v
        for k, v in fixed.items()
    }
    try:
        given = model(**{**current, **merged}).model_dump(mode="json")
    except ValidationError as exc:
        raise OptionsError(describe_error(exc, model, merged, {}, "config")) from None
    for key in fixed:
        if key in model.resumable or key not in current or current[key] == given[key]:
            continue
        old, new = current[key], given[key]
        if isinstance(old, dict) and isinstance(new, dict):  # plugin options: one line per key
            for sub in sorted(set(old) | set(new)):
                if old.get(sub) != new.get(sub):
                    out.append(f"{key}.{sub} {old.get(sub)!r} -> {new.get(sub)!r}")
        else:
            out.append(f"{model.flag(key)} {old!r} -> {new!r}")
    return out


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
        if value > MAX_IMAGES:
            raise OptionsError(f"{flag} {text!r}: {value} images for {label.strip()!r}; at most {MAX_IMAGES}")
        out[label.strip()] = value
    return out
