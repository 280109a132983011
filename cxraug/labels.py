"""The one label vocabulary every dataset adapter maps its findings onto.

The core vocabulary below is what the COVID-19 / pneumonia studies use and what every command
defaults to. A dataset adapter whose source has other findings (NIH ChestX-ray14's fourteen, SIIM's
four study classes) declares them with ``DatasetAdapter.labels()``; such labels are lower-case
snake_case names (``LABEL_PATTERN``) and sort after the core ones, alphabetically.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cxraug.errors import OptionsError

COVID = "covid"
NORMAL = "normal"
PNEUMONIA = "pneumonia"
PNEUMONIA_BACTERIAL = "pneumonia_bacterial"
PNEUMONIA_VIRAL = "pneumonia_viral"
LUNG_OPACITY = "lung_opacity"

#: Canonical labels, in the order used for class indices when a dataset holds them.
VOCABULARY: tuple[str, ...] = (
    COVID,
    NORMAL,
    PNEUMONIA,
    PNEUMONIA_BACTERIAL,
    PNEUMONIA_VIRAL,
    LUNG_OPACITY,
)


#: What an adapter-declared label looks like (it becomes a folder name, a CSV value and a CLI word).
LABEL_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")

#: How an image the source files under several findings becomes one training label
#: (``data prepare --multilabel`` / ``--opt multilabel=``):
#: ``skip`` leaves it out (counted in the report); ``first`` takes its first finding in the
#: source's own order; ``priority`` takes the finding that comes first in ``--classes`` (or, without
#: it, in the adapter's declared label order). With ``first`` and ``priority`` findings outside
#: ``--classes`` are ignored, so an Effusion|Atelectasis image counts as effusion for
#: ``--classes effusion,normal``; ``skip`` looks at every finding, so only single-finding images stay.
MULTILABEL_POLICIES: tuple[str, ...] = ("skip", "first", "priority")


def is_label_name(label: str) -> bool:
    return LABEL_PATTERN.fullmatch(label) is not None


def check_label(label: str, where: str = "label", allowed: Iterable[str] | None = None) -> str:
    """Return ``label`` if it is canonical (or in ``allowed``), else raise naming ``where``."""
    valid = tuple(VOCABULARY) + tuple(lb for lb in (allowed or ()) if lb not in VOCABULARY)
    if label not in valid:
        raise OptionsError(f"{where}: unknown label {label!r}; valid labels are {', '.join(valid)}")
    return label


def label_order(label: str) -> tuple[int, str]:
    """Sort key: core vocabulary first in its order, then adapter-declared labels alphabetically."""
    return (VOCABULARY.index(label), "") if label in VOCABULARY else (len(VOCABULARY), label)


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Labels in vocabulary order, so class indices are stable across datasets."""
    return sorted(set(labels), key=label_order)


def resolve_findings(
    findings: tuple[str, ...], policy: str, classes: tuple[str, ...] = (), declared: tuple[str, ...] = ()
) -> str | None:
    """One label for an image filed under several ``findings`` by ``policy``; None to skip it.

    ``classes`` is ``--classes`` (empty: all); ``declared`` the adapter's label order, used by
    ``priority`` when no ``--classes`` were given.
    """
    if policy not in MULTILABEL_POLICIES:
        raise OptionsError(f"multilabel {policy!r}: choose one of {', '.join(MULTILABEL_POLICIES)}")
    distinct = tuple(dict.fromkeys(findings))
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    if policy == "skip":
        return None
    wanted = [f for f in distinct if not classes or f in classes]
    if not wanted:
        return distinct[0]  # excluded by --classes later, and counted there
    if policy == "first":
        return wanted[0]
    order = classes or declared or tuple(VOCABULARY)
    return min(wanted, key=lambda f: order.index(f) if f in order else len(order))
