"""The one label vocabulary every dataset adapter maps its findings onto."""

from __future__ import annotations

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


def check_label(label: str, where: str = "label") -> str:
    """Return ``label`` if it is canonical, else raise naming ``where``."""
    if label not in VOCABULARY:
        raise OptionsError(f"{where}: unknown label {label!r}; valid labels are {', '.join(VOCABULARY)}")
    return label


def sort_labels(labels: set[str] | list[str]) -> list[str]:
    """Labels in vocabulary order, so class indices are stable across datasets."""
    return sorted(set(labels), key=VOCABULARY.index)
