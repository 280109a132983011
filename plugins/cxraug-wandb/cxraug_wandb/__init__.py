"""cxraug-wandb: a Weights & Biases logger plugin for cxraug (``--logger wandb``).

Registered through the ``cxraug`` entry point group; it uses only cxraug's public API
(``cxraug.hookimpl``, ``cxraug.interfaces``, ``cxraug.errors``), like any third-party plugin.
"""

from __future__ import annotations

from cxraug import hookimpl

from cxraug_wandb.logger import WandbLogger, WandbOptions

__version__ = "0.1.0"

__all__ = ["WandbLogger", "WandbOptions", "__version__", "register_loggers"]


@hookimpl
def register_loggers(register):
    register(WandbLogger)
