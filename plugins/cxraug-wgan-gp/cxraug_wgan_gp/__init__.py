"""cxraug-wgan-gp: a WGAN-GP plugin for cxraug (``cxraug train-gan wgan-gp``).

Registered through the ``cxraug`` entry point group; it uses only cxraug's public API
(``cxraug.hookimpl``, ``cxraug.interfaces``, ``cxraug.errors``), like any third-party plugin.
"""

from __future__ import annotations

from cxraug import hookimpl

from cxraug_wgan_gp.gan import WGANGP, WGANGPOptions
from cxraug_wgan_gp.nets import gradient_penalty

__version__ = "0.1.0"

__all__ = ["WGANGP", "WGANGPOptions", "__version__", "gradient_penalty", "register_gans"]


@hookimpl
def register_gans(register):
    register(WGANGP)
