"""Typed registries filled by the ``register_*`` hooks, with "did you mean" for unknown names."""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel

from cxraug.errors import PluginError
from cxraug.interfaces import (
    GAN,
    INTERFACES,
    KINDS,
    Augmenter,
    Classifier,
    DatasetAdapter,
    Executor,
    Logger,
    Metric,
    Plugin,
)

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
#: The distribution of the built-in plugins (preferred when several could serve, e.g. the demo).
_CORE_PACKAGE = "cxraug"


@dataclass
class PluginEntry:
    """One row of ``cxraug plugins list``: a registered class, or a plugin that failed."""

    kind: str
    name: str
    package: str
    version: str
    status: str = "ok"  # ok | error | conflict
    reason: str = ""
    description: str = ""
    cls: type[Plugin] | None = None
    #: The plugin (entry point) that registered it, when known; not part of the listing.
    plugin: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "description": self.description,
        }


class Registry:
    """Plugin classes by kind and name; the core owns the collection, plugins only register."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, PluginEntry]] = {kind: {} for kind in KINDS}
        self.problems: list[PluginEntry] = []

    def add(self, kind: str, cls: object, *, package: str, version: str, plugin: str = "") -> PluginEntry:
        """Register ``cls`` as a ``kind`` plugin; a bad or duplicate class becomes a problem row.

        ``plugin`` names the plugin (entry point) registering it, to tell a name registered twice
        by one plugin from two packages wanting the same name. The first registration of a name
        wins; build_registry registers the built-ins first.
        """
        try:
            name = getattr(cls, "name", None)
            label = name if isinstance(name, str) else getattr(cls, "__name__", None)
            label = label if isinstance(label, str) else short_repr(cls)
        except Exception:  # a plugin object whose attributes raise: listed, never fatal
            name, label = None, short_repr(cls)
        entry = PluginEntry(kind=kind, name=label, package=package, version=version, plugin=plugin)
        base = INTERFACES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            return self._problem(entry, "error", _not_a_class(kind, cls))
        if not isinstance(name, str) or not _NAME.match(name):
            return self._problem(
                entry,
                "error",
                f"class {cls.__name__} needs a lower-case `name` (letters, digits, - and _)",
            )
        try:
            problem = _contract_problem(kind, cls)
        except Exception as exc:  # inspecting a hostile class must not break the listing
            problem = f"class {cls.__name__} could not be checked: {type(exc).__name__}: {exc}"
        if problem:
            return self._problem(entry, "error", problem)
        if issubclass(cls, DatasetAdapter) and cls.demo and cls.needs_root:
            return self._problem(
                entry,
                "error",
                f"dataset {name!r} sets demo = True but needs a --root; a demo adapter must set "
                "needs_root = False (the core prepares it without one)",
            )
        entry.cls = cls
        entry.description = (cls.description or (cls.__doc__ or "").strip()).split("\n")[0]
        existing = self._entries[kind].get(name)
        if existing is not None and plugin and existing.plugin == plugin:
            return self._problem(
                entry,
                "error",
                f"{kind} name {name!r} is registered twice by plugin {plugin!r} "
                f"(class {cls.__qualname__}); only the first is used: give each class its own name",
            )
        if existing is not None:
            remedy = (
                "built-in names always win; rename the plugin"
                if existing.package == _CORE_PACKAGE
                else "uninstall one of the two packages or rename the plugin"
            )
            return self._problem(
                entry,
                "conflict",
                f"{kind} name {name!r} is already registered by {existing.package}; "
                f"this one is ignored ({remedy})",
            )
        self._entries[kind][name] = entry
        return entry

    def _problem(self, entry: PluginEntry, status: str, reason: str) -> PluginEntry:
        entry.status, entry.reason = status, reason
        self.problems.append(entry)
        return entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def get(self, kind: str, name: str) -> type[Plugin]:
        """The class registered as ``name``; unknown names get a suggestion and the valid list."""
        entry = self._entries[kind].get(name)
        if entry is None or entry.cls is None:
            failed = [p for p in self.problems if p.kind == kind and p.name == name]
            if failed:
                row = failed[0]
                raise PluginError(
                    f"{kind} {name!r} from {row.package} {row.version} is not usable: {row.reason}. "
                    "`cxraug plugins list` shows every plugin and its status."
                )
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(known) if known else "none installed"
            raise PluginError(
                f"unknown {kind} {name!r}.{hint} Available: {listing}. "
                "`cxraug plugins list` shows every plugin and why any failed to load."
            )
        return entry.cls

    # The typed getters cast: add() only accepts subclasses of the kind's interface (INTERFACES).

    def dataset(self, name: str) -> type[DatasetAdapter]:
        """The dataset adapter class registered as ``name`` (errors as ``get``)."""
        return cast("type[DatasetAdapter]", self.get("dataset", name))

    def gan(self, name: str) -> type[GAN]:
        """The GAN class registered as ``name`` (errors as ``get``)."""
        return cast("type[GAN]", self.get("gan", name))

    def augmenter(self, name: str) -> type[Augmenter]:
        """The augmenter class registered as ``name`` (errors as ``get``)."""
        return cast("type[Augmenter]", self.get("augmenter", name))

    def classifier(self, name: str) -> type[Classifier]:
        """The classifier class registered as ``name`` (errors as ``get``)."""
        return cast("type[Classifier]", self.get("classifier", name))

    def metric(self, name: str) -> type[Metric]:
        """The metric class registered as ``name`` (errors as ``get``)."""
        return cast("type[Metric]", self.get("metric", name))

    def logger(self, name: str) -> type[Logger]:
        """The logger class registered as ``name`` (errors as ``get``)."""
        return cast("type[Logger]", self.get("logger", name))

    def executor(self, name: str) -> type[Executor]:
        """The executor class registered as ``name`` (errors as ``get``)."""
        return cast("type[Executor]", self.get("executor", name))

    def demo_dataset(self) -> type[DatasetAdapter]:
        """The adapter with ``demo = True``: the built-in one when several are, else the first by name."""
        demos = [
            entry
            for entry in self._entries["dataset"].values()
            if entry.cls is not None and issubclass(entry.cls, DatasetAdapter) and entry.cls.demo
        ]
        if not demos:
            raise PluginError(
                "no demo dataset adapter is installed (a dataset plugin with demo = True, like the "
                "built-in 'phantom'); prepare a dataset with `cxraug data prepare ADAPTER --root PATH`, "
                "and see `cxraug plugins list --kind dataset` for plugins that failed to load"
            )
        first = min(demos, key=lambda entry: (entry.package != _CORE_PACKAGE, entry.name))
        return self.dataset(first.name)

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        """Every row, problems included, in kind then name order."""
        rows = [e for k in KINDS for e in self._entries[k].values()] + list(self.problems)
        if kind is not None:
            rows = [r for r in rows if r.kind == kind]
        order = {k: i for i, k in enumerate(KINDS)}
        return sorted(rows, key=lambda r: (order.get(r.kind, len(order)), r.name, r.status))


# ------------------------------------------------------------------------- checks at registration

#: The hook that registers each kind, for "register it with ..." hints.
_HOOK_OF: dict[str, str] = {
    "dataset": "register_datasets",
    "gan": "register_gans",
    "augmenter": "register_augmenters",
    "classifier": "register_classifiers",
    "metric": "register_metrics",
    "logger": "register_loggers",
    "executor": "register_executors",
}


def registration_problem(kind: str, cls: object) -> str | None:
    """Why registering ``cls`` as a ``kind`` plugin would fail, or None (what ``Registry.add`` checks)."""
    if not (isinstance(cls, type) and issubclass(cls, INTERFACES[kind])):
        return _not_a_class(kind, cls)
    return _contract_problem(kind, cls)


def short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:  # a repr that raises must not hide the real reason
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


def _not_a_class(kind: str, cls: object) -> str:
    base = INTERFACES[kind]
    if isinstance(cls, type):
        for other, interface in INTERFACES.items():
            if issubclass(cls, interface):
                return (
                    f"class {cls.__name__} is a {interface.__name__}; register it with "
                    f"{_HOOK_OF[other]}, not {_HOOK_OF[kind]}"
                )
        return f"class {cls.__name__} is not a subclass of cxraug.interfaces.{base.__name__}"
    if isinstance(cls, base):
        return f"registered an instance of {type(cls).__name__}; register the class itself"
    return f"registered {short_repr(cls)}, not a {base.__name__} class"


def _contract_problem(kind: str, cls: type[Plugin]) -> str | None:
    """Why ``cls`` would fail when the core uses it, or None: checked once, at registration.

    Catches what otherwise surfaces as a TypeError traceback mid-command: abstract methods left
    unimplemented, an options model that is not a pydantic model forbidding unknown keys, and
    required methods (and ``__init__``) that cannot take the arguments the core passes.
    """
    base = INTERFACES[kind]
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        return f"class {cls.__name__} does not implement {', '.join(missing)} (required by {base.__name__})"
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        return (
            f"{cls.__name__}.Options is {short_repr(options)}, not a pydantic model; make it a "
            "subclass of cxraug.interfaces.PluginOptions"
        )
    if options.model_config.get("extra") != "forbid":
        return (
            f"{cls.__name__}.Options ({options.__name__}) accepts unknown keys, so a misspelled option "
            "would be ignored; set model_config extra='forbid' (subclass cxraug.interfaces.PluginOptions)"
        )
    if not isinstance(getattr(cls, "description", ""), str):
        return f"{cls.__name__}.description must be a string, not {type(cls.description).__name__}"
    for method in sorted(getattr(base, "__abstractmethods__", ())):
        problem = _signature_problem(cls, base, method, with_minimal_call=True)
        if problem:
            return problem
    if cls.__init__ is not base.__init__:
        # The core always passes the options (and, to a GAN, the spec) by position.
        return _signature_problem(cls, base, "__init__", with_minimal_call=False)
    return None


def _signature_problem(cls: type, base: type, method: str, *, with_minimal_call: bool) -> str | None:
    """Whether ``cls.method`` accepts the calls the core makes, as ``base.method`` declares them.

    Parameters the contract declares positional are passed by position (so a plugin may rename
    them), keyword-only ones by keyword; with ``with_minimal_call`` parameters with defaults are
    also left out, as the core does for e.g. ``generate(z, labels)``.
    """
    contract = inspect.signature(getattr(base, method))
    params = list(contract.parameters.values())[1:]  # without self
    raw = inspect.getattr_static(cls, method)
    impl = getattr(cls, method)
    if not callable(impl):
        return f"{cls.__name__}.{method} is not a method ({type(impl).__name__})"
    if inspect.isfunction(raw):
        receiver: list[Any] = [None]  # self
    elif isinstance(raw, (staticmethod, classmethod)):
        receiver = []  # no self, or cls already bound by getattr
    else:  # some other callable object: how it binds is its own business
        return None
    try:
        signature = inspect.signature(impl)
    except (TypeError, ValueError):  # no introspectable signature: trust it
        return None
    calls: list[list[inspect.Parameter]] = [params]
    if with_minimal_call:
        calls.append([p for p in params if p.default is inspect.Parameter.empty])
    for call in calls:
        positional: list[Any] = [*receiver]
        keywords: dict[str, Any] = {}
        for p in call:
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                keywords[p.name] = None
            else:
                positional.append(None)
        try:
            signature.bind(*positional, **keywords)
        except TypeError as exc:
            return (
                f"{cls.__name__}.{method}{_plain(signature, len(receiver))} cannot be called as "
                f"{method}{_plain(contract, 1)}, as the core does: {exc}"
            )
    return None


def _plain(signature: inspect.Signature, skip: int) -> str:
    """The signature without its first ``skip`` parameters and without annotations."""
    params = [
        p.replace(annotation=inspect.Parameter.empty) for p in list(signature.parameters.values())[skip:]
    ]
    return str(signature.replace(parameters=params, return_annotation=inspect.Signature.empty))
