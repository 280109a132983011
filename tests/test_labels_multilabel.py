"""Adapter-declared labels and the one-label policy for images filed under several findings."""

from __future__ import annotations

import pytest

from cxraug.errors import OptionsError
from cxraug.labels import check_label, is_label_name, resolve_findings, sort_labels


def test_core_labels_sort_first_then_declared_alphabetically() -> None:
    assert sort_labels({"effusion", "normal", "atelectasis", "covid"}) == [
        "covid",
        "normal",
        "atelectasis",
        "effusion",
    ]


def test_check_label_accepts_declared_labels_and_lists_them_when_wrong() -> None:
    assert check_label("effusion", "--classes effusion", ("effusion",)) == "effusion"
    with pytest.raises(OptionsError, match="--classes efusion: unknown label 'efusion'.*effusion"):
        check_label("efusion", "--classes efusion", ("effusion",))


@pytest.mark.parametrize("name", ["effusion", "pleural_thickening", "typical_appearance"])
def test_label_names(name: str) -> None:
    assert is_label_name(name)


@pytest.mark.parametrize("name", ["Effusion", "no finding", "a-b", "", "1abc", "x" * 41])
def test_bad_label_names(name: str) -> None:
    assert not is_label_name(name)


def test_skip_policy_leaves_out_every_multi_finding_image() -> None:
    assert resolve_findings(("effusion", "atelectasis"), "skip") is None
    assert resolve_findings(("effusion",), "skip") == "effusion"
    assert resolve_findings(("effusion", "effusion"), "skip") == "effusion"


def test_first_policy_takes_the_source_order_among_wanted_classes() -> None:
    assert resolve_findings(("atelectasis", "effusion"), "first") == "atelectasis"
    assert resolve_findings(("atelectasis", "effusion"), "first", ("effusion", "normal")) == "effusion"


def test_priority_policy_follows_classes_then_declared_order() -> None:
    found = ("atelectasis", "effusion", "pneumonia")
    assert resolve_findings(found, "priority", ("pneumonia", "effusion")) == "pneumonia"
    assert resolve_findings(found, "priority", (), ("effusion", "atelectasis")) == "effusion"


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(OptionsError, match="multilabel 'any'"):
        resolve_findings(("a", "b"), "any")
