"""Split assignment: official splits kept, the rest by patient-level stratified ratios."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from cxraug.data.dedup import UnionFind
from cxraug.errors import OptionsError

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: When one group holds images of several official splits, the most held-out split wins.
HELD_OUT_RANK = {"train": 0, "val": 1, "test": 2}


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> train/val/test fractions summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    # isfinite: nan passes "p < 0" and inf makes the sum meaningless
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or sum(parts) <= 0:
        raise OptionsError(
            f"--split {text!r}: give three non-negative fractions train,val,test, e.g. 0.7,0.15,0.15"
        )
    total = sum(parts)
    if abs(total - 1.0) > 1e-6:
        raise OptionsError(f"--split {text!r}: the fractions add up to {total:g}, not 1")
    train, val, test = parts
    return train, val, test


def assign_splits(
    labels: Sequence[str],
    official: Sequence[str | None],
    groups: UnionFind,
    ratios: tuple[float, float, float],
    seed: int,
) -> tuple[list[str | None], dict[int, str]]:
    """Split per row, and the rows dropped because their group spans official splits.

    A group is every row linked by patient or duplicate content. Groups with an official split go
    to the most held-out one among their rows (train rows of a patient also in test are dropped,
    never moved, so the official test set stays as published). Other groups are assigned whole,
    stratified by their majority label, to approach ``ratios`` in image counts.
    """
    splits: list[str | None] = [None] * len(labels)
    dropped: dict[int, str] = {}
    free_groups: list[list[int]] = []
    for members in groups.groups().values():
        given = {official[i] for i in members if official[i] is not None}
        if not given:
            free_groups.append(members)
            continue
        target = max(given, key=lambda s: HELD_OUT_RANK[s])  # type: ignore[index]
        for i in members:
            if official[i] is None or official[i] == target:
                splits[i] = target
            else:
                dropped[i] = (
                    f"official split {official[i]} but the same patient or a duplicate image is "
                    f"in {target}; dropped to keep {target} free of leakage"
                )
    rng = np.random.default_rng(seed)
    official_val = any(o == "val" for o in official)
    official_train = [
        m
        for m in groups.groups().values()
        if all(splits[i] == "train" for i in m if i not in dropped) and any(official[i] == "train" for i in m)
    ]
    if official_train and not official_val and ratios[1] > 0:
        # The source publishes train/test only (COVIDx, ...): carve a validation split out of its train
        # split, patient-level and stratified, so that model selection never looks at the test set.
        share = ratios[1] / (ratios[0] + ratios[1])
        _stratified(official_train, labels, (1 - share, share, 0.0), rng, splits, [i for i in dropped])
    _stratified(free_groups, labels, ratios, rng, splits, list(dropped))
    return splits, dropped


def _stratified(
    group_list: list[list[int]],
    labels: Sequence[str],
    ratios: tuple[float, float, float],
    rng: np.random.Generator,
    splits: list[str | None],
    skip: list[int],
) -> None:
    """Assign whole groups to splits by their majority label, approaching ``ratios`` in images."""
    by_label: dict[str, list[list[int]]] = {}
    for members in group_list:
        keep = [i for i in members if i not in skip]
        if keep:
            majority = Counter(labels[i] for i in keep).most_common(1)[0][0]
            by_label.setdefault(majority, []).append(keep)
    for label in sorted(by_label):
        label_groups = by_label[label]
        order = rng.permutation(len(label_groups))
        target = np.array(ratios) * sum(len(g) for g in label_groups)
        filled = np.zeros(3)
        for gi in order:
            members = label_groups[gi]
            deficit = np.where(target > 0, target - filled, -np.inf)
            k = int(np.argmax(deficit))
            filled[k] += len(members)
            for i in members:
                splits[i] = SPLITS[k]
