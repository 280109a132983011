"""Every hook a cxraug plugin can implement. Each ``register_*`` hook receives a ``register``
callback; call it once per class the plugin provides (a plugin may provide several)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cxraug")

Register = Callable[[type], None]


# ----- things the core collects into registries -----


@hookspec
def register_datasets(register: Register) -> None:
    """Register DatasetAdapter subclasses (readers for public chest X-ray collections)."""


@hookspec
def register_gans(register: Register) -> None:
    """Register GAN subclasses (architectures for ``cxraug train-gan``)."""


@hookspec
def register_augmenters(register: Register) -> None:
    """Register Augmenter subclasses (ways to make new training images)."""


@hookspec
def register_classifiers(register: Register) -> None:
    """Register Classifier subclasses (networks for ``cxraug train-classifier``)."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register Metric subclasses (numbers for ``cxraug evaluate``)."""


@hookspec
def register_loggers(register: Register) -> None:
    """Register Logger subclasses (experiment trackers for ``--logger``)."""


@hookspec
def register_executors(register: Register) -> None:
    """Register Executor subclasses (where ``cxraug experiment --executor`` runs the study's jobs)."""


# ----- extending the command line -----


@hookspec
def register_commands(app: Any) -> None:
    """Add commands or sub-apps to the root ``typer.Typer`` app (never a Click group)."""
