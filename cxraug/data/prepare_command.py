"""``cxraug data prepare`` settings: flags and the ``[prepare]`` table, and the sources they name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator

from cxraug.data.prepare import PrepareSettings, Source
from cxraug.data.splits import parse_ratios
from cxraug.dicomio import DEFAULT_VOI
from cxraug.errors import OptionsError
from cxraug.imageio import DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING
from cxraug.options import resolve_options
from cxraug.registry import Registry
from cxraug.settings import NameList, Settings


class PrepareCommand(Settings):
    """``cxraug data prepare`` flags (the ``[prepare]`` table may say ``map`` for ``label_map``)."""

    section: ClassVar[str] = "prepare"
    flag_names: ClassVar[dict[str, str]] = {"label_map": "--map", "split": "--split"}
    config_aliases: ClassVar[dict[str, str]] = {"map": "label_map"}

    name: str | None = None
    size: int = Field(256, ge=8, le=2048)
    resize: Literal["pad", "crop"] = "pad"
    split: str = "0.7,0.15,0.15"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    classes: NameList = []
    label_map: dict[str, str] = {}
    strict: bool = False
    workers: int = Field(0, ge=0, le=256)
    force: bool = False
    conflicts: Literal["drop", "keep-first", "error"] = "drop"
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, le=MAX_PIXELS_CEILING)
    multilabel: Literal["skip", "first", "priority"] = "skip"
    dicom_voi: Literal["auto", "window", "full"] = DEFAULT_VOI

    @field_validator("split")
    @classmethod
    def _split(cls, value: str) -> str:
        try:
            parse_ratios(value)
        except OptionsError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return value

    @field_validator("label_map", mode="before")
    @classmethod
    def _map(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        out = {}
        for item in value:
            src, sep, dst = str(item).partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise ValueError(f"{item!r}: expected SRC=DST, e.g. --map pneumonia_viral=pneumonia")
            out[src.strip()] = dst.strip()
        return out

    def prepare_settings(self, default_name: str, allowed: tuple[str, ...] = ()) -> PrepareSettings:
        """The engine's settings; ``allowed`` are the labels the sources' adapters declare."""
        settings = PrepareSettings(
            name=self.name or default_name,
            size=self.size,
            resize=self.resize,
            ratios=parse_ratios(self.split),
            seed=self.seed,
            classes=tuple(self.classes),
            label_map=dict(self.label_map),
            strict=self.strict,
            workers=self.workers,
            force=self.force,
            conflicts=self.conflicts,
            max_pixels=self.max_pixels,
            multilabel=self.multilabel,
            dicom_voi=self.dicom_voi,
        )
        settings.validate(allowed)
        return settings


#: Settings of the prepare step itself that ``--opt`` also accepts, for every adapter alike.
PREPARE_OPTS: tuple[str, ...] = ("conflicts", "max_pixels", "multilabel", "dicom_voi")


def take_prepare_opts(opts: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """``--opt conflicts=`` / ``max_pixels=`` / ``multilabel=`` / ``dicom_voi=``, validated, out of ``opts``.

    They are the flags ``--conflicts`` / ``--max-pixels`` / ``--multilabel`` / ``--dicom-voi``
    spelled as options (so a command line written for adapter options works too); a flag given as
    well with another value is an error.
    """
    taken: dict[str, Any] = {}
    for key in PREPARE_OPTS:
        if key not in opts:
            continue
        value = opts.pop(key)
        flag = PrepareCommand.flag(key)
        try:
            checked = getattr(PrepareCommand(**{key: value}), key)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].replace("Value error, ", "")
            raise OptionsError(f"--opt {key}={value}: {msg}") from None
        if key in flags and flags[key] != checked:
            raise OptionsError(f"--opt {key}={value} and {flag} {flags[key]} disagree; give one of them")
        taken[key] = checked
    return taken


def parse_sources(sources: list[str], root: Path | None) -> list[tuple[str, Path | None]]:
    """``ADAPTER`` with ``--root``, or ``ADAPTER=PATH`` each, as (adapter, root) pairs."""
    parsed: list[tuple[str, Path | None]] = []
    for item in sources:
        name, sep, path = item.partition("=")
        parsed.append((name.strip(), Path(path).expanduser() if sep else None))
    if root is not None:
        if len(parsed) != 1 or parsed[0][1] is not None:
            raise OptionsError(
                "--root goes with a single ADAPTER; for several sources write ADAPTER=PATH each"
            )
        parsed = [(parsed[0][0], root.expanduser())]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise OptionsError("each adapter may appear once per dataset")
    return parsed


def build_sources(
    registry: Registry,
    parsed: list[tuple[str, Path | None]],
    config: dict[str, Any],
    opts: dict[str, Any],
) -> list[Source]:
    """Adapters with their options (``[dataset.NAME]`` tables < ``--opt``; prefixed when several)."""
    if len(parsed) > 1:
        per_adapter = {a: opts.get(a, {}) for a, _ in parsed}
        stray = [k for k in opts if k not in per_adapter]
        if stray:
            raise OptionsError(
                f"--opt {stray[0]}=...: with several sources, prefix options with the adapter, "
                f"e.g. --opt {parsed[0][0]}.{stray[0]}=..."
            )
    else:
        name = parsed[0][0]
        # --opt nih.views=PA with one source: the prefix is what several sources need; accept it.
        prefixed = opts.get(name) if isinstance(opts.get(name), dict) else None
        per_adapter = (
            {name: {**{k: v for k, v in opts.items() if k != name}, **prefixed}} if prefixed else {name: opts}
        )
    built = []
    for name, path in parsed:
        cls = registry.dataset(name)
        table = config.get("dataset", {}).get(name, {})
        options = resolve_options(cls.Options, plugin=f"dataset {name}", config=table, opts=per_adapter[name])
        built.append(Source(cls(options), path))
    return built
