"""cxraug: augment chest X-ray datasets with GANs, reproducibly, through plugins."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations; plugin authors import only this.
hookimpl = pluggy.HookimplMarker("cxraug")

__all__ = ["__version__", "hookimpl"]
