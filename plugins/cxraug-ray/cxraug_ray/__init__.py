"""cxraug-ray: a Ray executor plugin for cxraug (``cxraug experiment --executor ray``).

Registered through the ``cxraug`` entry point group; it uses only cxraug's public API
(``cxraug.hookimpl``, ``cxraug.interfaces``, ``cxraug.execution``, ``cxraug.errors``), like any
third-party plugin. Ray itself is imported only when a study runs, so ``cxraug plugins list``
works (and says what to install) where Ray is missing.
"""

from __future__ import annotations

from cxraug import hookimpl

from cxraug_ray.executor import RayExecutor, RayOptions

__version__ = "0.1.0"

__all__ = ["RayExecutor", "RayOptions", "__version__", "register_executors"]


@hookimpl
def register_executors(register):
    register(RayExecutor)
