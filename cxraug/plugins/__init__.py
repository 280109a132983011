"""The plugin manager: built-in plugins and ``cxraug`` entry points, loaded the same way."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import FrameType, TracebackType
from typing import Any, TypeVar

import pluggy

from cxraug import __version__, hookspecs
from cxraug.registry import PluginEntry, Registry, short_repr

log = logging.getLogger(__name__)

T = TypeVar("T")

ENTRY_POINT_GROUP = "cxraug"
DISABLE_ENV = "CXRAUG_DISABLE_PLUGINS"

#: Built-in plugins: ordinary plugin modules, registered exactly like third-party ones.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "cxraug.plugins.datasets.covidx",
    "cxraug.plugins.datasets.cohen",
    "cxraug.plugins.datasets.rsna",
    "cxraug.plugins.datasets.siim",
    "cxraug.plugins.datasets.radiography",
    "cxraug.plugins.datasets.kermany",
    "cxraug.plugins.datasets.medmnist",
    "cxraug.plugins.datasets.imagefolder",
    "cxraug.plugins.datasets.phantom",
    "cxraug.plugins.datasets.nih",
    "cxraug.plugins.datasets.chexpert",
    "cxraug.plugins.datasets.mimic",
    "cxraug.plugins.datasets.padchest",
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
    "cxraug.plugins.loggers.tensorboard",
    "cxraug.plugins.loggers.mlflow",
    "cxraug.plugins.executors.local",
    "cxraug.plugins.executors.slurm",
)

#: Which hook fills which registry kind.
REGISTER_HOOKS: dict[str, str] = {
    "dataset": "register_datasets",
    "gan": "register_gans",
    "augmenter": "register_augmenters",
    "classifier": "register_classifiers",
    "metric": "register_metrics",
    "logger": "register_loggers",
    "executor": "register_executors",
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
        #: Plugin name -> providing package, in load order (built-ins first).
        self.providers: dict[str, Distribution] = {}
        self.failures: list[PluginEntry] = []

    def add_plugin(self, plugin: Any, name: str, dist: Distribution) -> None:
        """Register one plugin object and remember which package provides it."""
        self.register(plugin, name=name)
        self.providers[name] = dist

    def provider(self, plugin_name: str) -> Distribution:
        return self.providers.get(plugin_name, Distribution("cxraug", __version__))

    def is_builtin(self, plugin_name: str) -> bool:
        return plugin_name in BUILTIN_PLUGINS

    def ordered_hookimpls(self, hook_name: str) -> list[pluggy.HookImpl]:
        """A hook's implementations, built-ins first, then installed plugins in load order.

        tryfirst/trylast are ignored on purpose: the first registration of a name wins, and
        pluggy's call order would let an installed plugin take a built-in's name by asking to run
        first (trylast impls come first in ``get_hookimpls``).
        """
        order = {name: i for i, name in enumerate(self.providers)}
        impls = getattr(self.hook, hook_name).get_hookimpls()
        return sorted(impls, key=lambda impl: order.get(impl.plugin_name, len(order)))

    def record_failure(self, name: str, reason: str, *, status: str = "error") -> None:
        """A ``plugins list`` row (kind ``plugin``) for a plugin that is not (fully) used."""
        dist = self.provider(name)
        log.warning("cxraug plugin %r from %s is disabled: %s", name, dist.name, reason)
        entry = _failure(name, dist, reason, status=status)
        if entry not in self.failures:  # build_app may run several times on one manager
            self.failures.append(entry)


class PluginCrash(Exception):
    """Plugin code raised (anything, SystemExit included); ``reason`` is one line saying what."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.reason = _describe(exc)
        super().__init__(self.reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (the plugin tried to end the program)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _CtrlC:
    """Tells a real Ctrl-C apart from plugin code raising KeyboardInterrupt itself.

    While plugin code runs, SIGINT goes through a handler that notes the key press before doing
    what the previous handler would. Only the main thread receives signals; elsewhere any
    KeyboardInterrupt comes from the code itself.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.getsignal(signal.SIGINT)
                # None: a handler installed outside Python, which could not be put back.
                if self._previous is not None:
                    signal.signal(signal.SIGINT, self._handler)
                    self._installed = True
            except (ValueError, OSError):  # no signal support here: nothing to tell apart
                pass
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous
        if previous == signal.SIG_IGN:
            return
        try:
            if callable(previous):
                previous(signum, frame)
            else:  # SIG_DFL: the process would stop
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.pressed = True
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def call_isolated(fn: Callable[..., T], *args: Any) -> T:
    """Run third-party plugin code: whatever it raises comes back as PluginCrash.

    That includes SystemExit, KeyboardInterrupt raised by the code itself and other
    BaseExceptions, so no plugin can end or silence the CLI. A real Ctrl-C still stops: it is
    re-raised as KeyboardInterrupt even when the plugin code caught it.
    """
    with _CtrlC() as ctrl_c:
        try:
            result = fn(*args)
        except BaseException as exc:
            if ctrl_c.pressed:
                raise
            raise PluginCrash(exc) from exc
        if ctrl_c.pressed:
            raise KeyboardInterrupt
    return result


#: Every hook cxraug defines. cxraug calls each plugin's implementation of them itself, one
#: plugin at a time, so a hook wrapper (which pluggy runs around the others) means nothing there.
_SPEC_NAMES: frozenset[str] = frozenset(
    name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "cxraug_spec")
)


def _check_hooks(pm: PluginManager, plugin: Any) -> None:
    """Raise if ``plugin`` implements no hook, an unknown one (a misspelled name) or a wrapper.

    Hooks are found the way pluggy finds them (``parse_hookimpl_opts``), which reads attributes
    statically in recent pluggy: no property or ``__getattr__`` of the plugin runs here.
    """
    found = 0
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        hook_name = opts.get("specname") or attr
        if hook_name not in _SPEC_NAMES:
            close = [n for n in REGISTER_HOOKS.values() if n.startswith(hook_name[:10])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise pluggy.PluginValidationError(plugin, f"unknown hook {hook_name!r}{hint}")
        if opts.get("hookwrapper") or opts.get("wrapper"):
            raise pluggy.PluginValidationError(
                plugin,
                f"{hook_name} is declared as a hook wrapper; cxraug calls every plugin's "
                f"{hook_name} itself, so declare it with a plain @hookimpl",
            )
        found += 1
    if not found:
        raise pluggy.PluginValidationError(
            plugin,
            f"{short_repr(plugin)} has no cxraug hook implementations (functions decorated with "
            "cxraug.hookimpl); the entry point should name the module that holds them",
        )


def get_plugin_manager(
    *, load_entry_points: bool | None = None, extra: tuple[tuple[str, Any], ...] = ()
) -> PluginManager:
    """A fresh manager with the built-ins, ``extra`` (name, plugin) pairs and installed entry points.

    ``load_entry_points=None`` loads them unless the environment variable CXRAUG_DISABLE_PLUGINS
    is set to a true value. Built-ins that break are bugs and raise; a third-party plugin that
    fails to import (whatever it raises, SystemExit included), names no hooks, defines unknown
    hooks or hook wrappers is recorded in ``pm.failures`` and skipped. A real Ctrl-C still stops.
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
        if ep.name in pm.providers:
            taken = pm.providers[ep.name]
            reason = (
                f"plugin name {ep.name!r} is already used by {taken.name} {taken.version}; this "
                "one is ignored (uninstall one of the two packages)"
            )
            log.warning("cxraug plugin %r from %s is disabled: %s", ep.name, dist.name, reason)
            pm.failures.append(_failure(ep.name, dist, reason, status="conflict"))
            continue
        try:
            plugin = call_isolated(ep.load)
        except PluginCrash as crash:  # a broken third-party package must not break the CLI
            reason = f"import of {ep.value} failed: {crash.reason}"
            log.warning("cxraug plugin %r from %s failed to load: %s", ep.name, dist.name, reason)
            pm.failures.append(_failure(ep.name, dist, reason))
            continue
        _add_third_party(pm, ep.name, plugin, dist)


def _add_third_party(pm: PluginManager, name: str, plugin: Any, dist: Distribution) -> None:
    def add() -> None:
        _check_hooks(pm, plugin)
        pm.add_plugin(plugin, name, dist)

    try:
        call_isolated(add)
    except PluginCrash as crash:
        # Older pluggy registers the name before validating each hook: take back a partial one.
        if name not in pm.providers and pm.get_plugin(name) is plugin:
            pm.unregister(name=name)
        exc = crash.exc
        if isinstance(exc, pluggy.PluginValidationError):
            message = str(exc)
        elif isinstance(exc, ValueError) and "already registered" in str(exc):
            message = f"the same plugin object is already registered ({str(exc).splitlines()[0]})"
        else:
            message = crash.reason
        log.warning("cxraug plugin %r from %s is invalid: %s", name, dist.name, message)
        pm.failures.append(_failure(name, dist, f"invalid plugin: {message}"))


def _failure(name: str, dist: Distribution, reason: str, *, status: str = "error") -> PluginEntry:
    return PluginEntry(
        kind="plugin",
        name=name,
        package=dist.name,
        version=dist.version,
        status=status,
        reason=reason,
    )


def build_registry(pm: PluginManager) -> Registry:
    """Call every ``register_*`` hook, one plugin at a time, so each registration has a provider.

    Built-ins register first, then installed plugins in load order, so a built-in name is never
    taken by a newcomer. A third-party hook that raises registers nothing at all.
    """
    registry = Registry()
    registry.problems.extend(pm.failures)
    for kind, hook_name in REGISTER_HOOKS.items():
        for impl in pm.ordered_hookimpls(hook_name):
            _register_from(pm, registry, kind, hook_name, impl)
    return registry


def _register_from(
    pm: PluginManager, registry: Registry, kind: str, hook_name: str, impl: pluggy.HookImpl
) -> None:
    dist = pm.provider(impl.plugin_name)
    offered: list[object] = []

    def register(cls: object) -> None:
        """Offer one class; it is checked when the hook has returned."""
        offered.append(cls)

    # Passed the way pluggy would: by position, to the arguments the implementation declares.
    args = [register for _ in impl.argnames]
    if pm.is_builtin(impl.plugin_name):
        impl.function(*args)  # a broken built-in is a bug: let it raise
    else:
        try:
            call_isolated(impl.function, *args)
        except PluginCrash as crash:
            registry.problems.append(
                _failure(
                    impl.plugin_name,
                    dist,
                    f"{hook_name} raised {crash.reason}; none of its {kind}s are registered",
                )
            )
            return
    for cls in offered:

        def add(cls: object = cls) -> None:
            registry.add(kind, cls, package=dist.name, version=dist.version, plugin=impl.plugin_name)

        if pm.is_builtin(impl.plugin_name):
            add()
            continue
        try:
            # Checking a class reads its attributes, which a hostile metaclass could make raise.
            call_isolated(add)
        except PluginCrash as crash:
            registry.problems.append(
                PluginEntry(
                    kind=kind,
                    name=short_repr(cls),
                    package=dist.name,
                    version=dist.version,
                    status="error",
                    reason=f"could not be checked: {crash.reason}",
                    plugin=impl.plugin_name,
                )
            )
