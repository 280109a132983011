"""Typed registries filled by the ``register_*`` hooks, with "did you mean" for unknown names."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from cxraug.errors import PluginError
from cxraug.interfaces import INTERFACES, KINDS, Plugin

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


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

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        """Every row, problems included, in kind then name order."""
        rows = [e for k in KINDS for e in self._entries[k].values()] + list(self.problems)
        if kind is not None:
            rows = [r for r in rows if r.kind == kind]
        order = {k: i for i, k in enumerate(KINDS)}
        return sorted(rows, key=lambda r: (order.get(r.kind, len(order)), r.name, r.status))
