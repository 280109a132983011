"""Experiment trackers for a run: the ``--logger`` plugins, opened per stream of metric rows.

A run's settings name its loggers (``loggers``) and their options (``logger_options``, by logger
name). :func:`resolve_loggers` validates both before a run starts or resumes (an unknown name, a
bad option or a missing package is one line, exit 2). A :class:`TrackerPlan` opens
:class:`Trackers` for each stream: the run folder, or each model folder of a per-label GAN run.
:class:`~cxraug.training.metriclog.MetricLog` hands every row it appends to them, so every
command that logs rows logs them to the trackers too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
from pydantic import field_validator

from cxraug.errors import OptionsError, TrainingInterruptedError
from cxraug.interfaces import Logger, LoggerRun
from cxraug.options import resolve_options
from cxraug.registry import Registry
from cxraug.settings import NameList, Settings

log = logging.getLogger(__name__)


class TrackedSettings(Settings):
    """Settings of a command that takes ``--logger NAME`` (repeatable) and ``--logger-opt NAME.KEY=V``."""

    flag_names: ClassVar[dict[str, str]] = {"loggers": "--logger", "logger_options": "--logger-opt"}

    loggers: NameList = []
    #: Options by logger name, as given (``[logger.NAME]`` tables, ``--logger-opt``).
    logger_options: dict[str, dict[str, Any]] = {}

    @field_validator("loggers")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


def resolve_loggers(
    registry: Registry, names: list[str], given: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each named logger's validated options (JSON values), after checking it can work here."""
    stray = sorted(set(given) - set(names))
    if stray:
        raise OptionsError(
            f"--logger-opt {stray[0]}.*: logger {stray[0]!r} is not chosen; add --logger {stray[0]} "
            f"(chosen: {', '.join(names) or 'none'})"
        )
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        cls = registry.logger(name)
        options = resolve_options(cls.Options, plugin=f"logger {name}", config=given.get(name, {}))
        cls.check_available(options)
        out[name] = options.model_dump(mode="json")
    return out


def flatten(data: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """``{"config": {"options": {"nz": 16}}}`` -> ``{"config.options.nz": 16}``; lists as JSON-ish text."""
    out: dict[str, str | int | float | bool] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, (list, tuple)):
        out[prefix] = ",".join(str(v) for v in data)
    elif data is None:
        out[prefix] = ""
    elif isinstance(data, (str, int, float, bool)):
        out[prefix] = data
    else:
        out[prefix] = str(data)
    return out


#: The parts of a run record logged as params: what was asked, on which data, by which version.
PARAM_FIELDS = ("kind", "arch", "cxraug_version", "config", "dataset")


@dataclass
class TrackerPlan:
    """Which loggers a run uses, with what options, and the params they record."""

    registry: Registry | None = None
    loggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, str | int | float | bool] = field(default_factory=dict)
    kind: str = ""
    workspace: Path | None = None

    @classmethod
    def for_run(
        cls, registry: Registry, settings: TrackedSettings, record: dict[str, Any], workspace: Path | None
    ) -> TrackerPlan:
        """The plan of a run from its settings and its record (``options.json`` as JSON values)."""
        if not settings.loggers:
            return cls()
        loggers = resolve_loggers(registry, list(settings.loggers), dict(settings.logger_options))
        params = flatten({k: record.get(k) for k in PARAM_FIELDS if k in record})
        return cls(registry, loggers, params, str(record.get("kind", "")), workspace)

    def open(self, folder: Path, name: str, resume_step: int | None = None) -> Trackers:
        """Every logger started for one stream (none when no logger is chosen)."""
        return Trackers(self).start(folder, name, resume_step)

    def deferred(self) -> Trackers:
        """Trackers to start later (``start``), once the stream's resume step is known; use it as a
        context manager so they are closed, with the run's outcome, whatever happens."""
        return Trackers(self)


class Trackers:
    """The started loggers of one stream; a logger that raises is dropped with a warning."""

    def __init__(self, plan: TrackerPlan | None = None) -> None:
        self.plan = plan
        self.loggers: list[Logger] = []

    def start(self, folder: Path, name: str, resume_step: int | None = None) -> Trackers:
        """Start the plan's loggers for the stream in ``folder`` and log the params."""
        plan = self.plan
        if plan is None or not plan.loggers or plan.registry is None:
            return self
        run = LoggerRun(
            folder=Path(folder), name=name, kind=plan.kind, workspace=plan.workspace, resume_step=resume_step
        )
        for logger_name, options in plan.loggers.items():
            cls = plan.registry.logger(logger_name)
            logger = cls(resolve_options(cls.Options, plugin=f"logger {logger_name}", config=options))
            logger.start(run)  # a logger that cannot start stops the run (a bad URI), before training
            self.loggers.append(logger)
        self.log_params(plan.params)
        return self

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _each(self, what: str, *args: Any) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, what)(*args)
            except Exception as exc:  # a tracker's failure must not stop training
                self.loggers.remove(logger)
                log.warning(
                    "logger %r failed (%s: %s); it records nothing more for this run",
                    logger.name,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                if what != "close":
                    try:
                        logger.close("failed")
                    except Exception:  # already failing; the warning above says why
                        pass

    def log_params(self, params: dict[str, str | int | float | bool]) -> None:
        if params:
            self._each("log_params", params)

    def log_scalars(self, step: int, row: dict[str, Any]) -> None:
        """The numbers of a metric row (``step`` and non-numeric fields left out)."""
        values = {
            key: float(value)
            for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if values:
            self._each("log_scalars", int(step), values)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"log_image {name!r}: want (H, W[, 3]) uint8, got {image.dtype} {image.shape}")
        self._each("log_image", int(step), name, image)

    def close(self, status: str = "finished") -> None:
        self._each("close", status)
        self.loggers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            status = "finished"
        elif issubclass(exc_type, (TrainingInterruptedError, KeyboardInterrupt)):
            status = "interrupted"
        else:
            status = "failed"
        self.close(status)
