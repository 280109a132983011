"""Typed registries filled by the ``register_*`` hooks, with "did you mean" for unknown names."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import cast

from cxraug.errors import PluginError
from cxraug.interfaces import (
    GAN,
    INTERFACES,
    KINDS,
    Augmenter,
    Classifier,
    DatasetAdapter,
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

    def add(self, kind: str, cls: object, *, package: str, version: str) -> PluginEntry:
        """Register ``cls`` as a ``kind`` plugin; a bad or duplicate class becomes a problem row."""
        name = getattr(cls, "name", None)
        label = name if isinstance(name, str) else getattr(cls, "__name__", repr(cls))
        entry = PluginEntry(kind=kind, name=label, package=package, version=version)
        base = INTERFACES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            return self._problem(entry, "error", f"registered {cls!r}, not a {base.__name__} class")
        if not isinstance(name, str) or not _NAME.match(name):
            return self._problem(
                entry,
                "error",
                f"class {cls.__name__} needs a lower-case `name` (letters, digits, - and _)",
            )
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
        if existing is not None:
            return self._problem(
                entry,
                "conflict",
                f"{kind} name {name!r} is already registered by {existing.package}; "
                "this one is ignored (uninstall one of the two packages or rename the plugin)",
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
