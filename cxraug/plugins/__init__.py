"""The plugin manager: built-in plugins and ``cxraug`` entry points, loaded the same way."""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from cxraug import __version__, hookspecs
from cxraug.registry import PluginEntry, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cxraug"
DISABLE_ENV = "CXRAUG_DISABLE_PLUGINS"

#: Built-in plugins: ordinary plugin modules, registered exactly like third-party ones.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "cxraug.plugins.datasets.covidx",
    "cxraug.plugins.datasets.cohen",
    "cxraug.plugins.datasets.radiography",
    "cxraug.plugins.datasets.kermany",
    "cxraug.plugins.datasets.medmnist",
    "cxraug.plugins.datasets.imagefolder",
    "cxraug.plugins.datasets.phantom",
    "cxraug.plugins.gans.dcgan",
    "cxraug.plugins.gans.cgan",
    "cxraug.plugins.gans.acgan",
    "cxraug.plugins.gans.stylegan2",
    "cxraug.plugins.classifiers.alexnet",
    "cxraug.plugins.classifiers.vgg16",
    "cxraug.plugins.classifiers.resnet50",
    "cxraug.plugins.classifiers.inception_v3",
    "cxraug.plugins.classifiers.cnn",
    "cxraug.plugins.classifiers.densenet121",
    "cxraug.plugins.augmenters.classic",
    "cxraug.plugins.augmenters.synthetic",
    "cxraug.plugins.metrics.fid",
    "cxraug.plugins.metrics.kid",
    "cxraug.plugins.metrics.prdc",
    "cxraug.plugins.metrics.memorization",
    "cxraug.plugins.metrics.roc",
)

#: Which hook fills which registry kind.
REGISTER_HOOKS: dict[str, str] = {
    "dataset": "register_datasets",
    "gan": "register_gans",
    "augmenter": "register_augmenters",
    "classifier": "register_classifiers",
    "metric": "register_metrics",
}


@dataclass
class Distribution:
    """The installed package that provides a plugin."""

    name: str
    version: str


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what ``cxraug plugins list`` needs: providers and load failures."""

    def __init__(self) -> None:
        super().__init__("cxraug")
        self.add_hookspecs(hookspecs)
        self.providers: dict[str, Distribution] = {}
        self.failures: list[PluginEntry] = []

    def add_plugin(self, plugin: Any, name: str, dist: Distribution) -> None:
        """Register one plugin object and remember which package provides it."""
        self.register(plugin, name=name)
        self.providers[name] = dist

    def provider(self, plugin_name: str) -> Distribution:
        return self.providers.get(plugin_name, Distribution("cxraug", __version__))


def _check_hooks(pm: PluginManager, plugin: Any) -> None:
    """Raise if ``plugin`` implements a hook the core does not define (a misspelled name)."""
    known = {name for name in dir(pm.hook) if not name.startswith("_")}
    for attr in dir(plugin):
        fn = getattr(plugin, attr, None)
        if callable(fn) and hasattr(fn, "cxraug_impl"):
            hook_name = (fn.cxraug_impl or {}).get("specname") or attr
            spec = getattr(pm.hook, hook_name, None)
            if hook_name not in known or spec is None or not spec.has_spec():
                close = [n for n in REGISTER_HOOKS.values() if n.startswith(hook_name[:10])]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise pluggy.PluginValidationError(plugin, f"unknown hook {hook_name!r}{hint}")


def get_plugin_manager(
    *, load_entry_points: bool | None = None, extra: tuple[tuple[str, Any], ...] = ()
) -> PluginManager:
    """A fresh manager with the built-ins, ``extra`` (name, plugin) pairs and installed entry points.

    ``load_entry_points=None`` loads them unless the environment variable CXRAUG_DISABLE_PLUGINS
    is set to a true value. Built-ins that break are bugs and raise; third-party plugins that fail
    to import or define unknown hooks are recorded in ``pm.failures`` and skipped.
    """
    pm = PluginManager()
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        _check_hooks(pm, module)
        pm.add_plugin(module, module_name, Distribution("cxraug", __version__))
    for name, plugin in extra:
        _add_third_party(pm, name, plugin, Distribution(name, "0"))
    if load_entry_points is None:
        load_entry_points = os.environ.get(DISABLE_ENV, "").lower() not in ("1", "true", "yes")
    if load_entry_points:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


def _load_entry_points(pm: PluginManager) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = Distribution(ep.dist.name, ep.dist.version) if ep.dist else Distribution("?", "?")
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party package must not break the CLI
            log.warning("cxraug plugin %r from %s failed to load: %s", ep.name, dist.name, exc)
            pm.failures.append(_failure(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        _add_third_party(pm, ep.name, plugin, dist)


def _add_third_party(pm: PluginManager, name: str, plugin: Any, dist: Distribution) -> None:
    try:
        _check_hooks(pm, plugin)
        pm.add_plugin(plugin, name, dist)
    except (pluggy.PluginValidationError, ValueError) as exc:
        message = str(exc)
        log.warning("cxraug plugin %r from %s is invalid: %s", name, dist.name, message)
        pm.failures.append(_failure(name, dist, f"invalid plugin: {message}"))
        if pm.is_registered(plugin):
            pm.unregister(plugin)


def _failure(name: str, dist: Distribution, reason: str) -> PluginEntry:
    return PluginEntry(
        kind="plugin",
        name=name,
        package=dist.name,
        version=dist.version,
        status="error",
        reason=reason,
    )


def build_registry(pm: PluginManager) -> Registry:
    """Call every ``register_*`` hook, one plugin at a time, so each registration has a provider."""
    registry = Registry()
    registry.problems.extend(pm.failures)
    for kind, hook_name in REGISTER_HOOKS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            dist = pm.provider(impl.plugin_name)

            def register(cls: Any, _kind: str = kind, _dist: Distribution = dist) -> None:
                registry.add(_kind, cls, package=_dist.name, version=_dist.version)

            try:
                impl.function(register=register)
            except Exception as exc:
                if dist.name == "cxraug":
                    raise
                registry.problems.append(
                    _failure(impl.plugin_name, dist, f"{hook_name} raised {type(exc).__name__}: {exc}")
                )
    return registry
