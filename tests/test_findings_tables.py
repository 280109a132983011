"""The finding table the nih, chexpert, mimic and padchest adapters share, and their CSV reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from miniature_layouts import write_text

from cxraug.data.csvrows import read_rows
from cxraug.errors import DataError
from cxraug.labels import VOCABULARY, is_label_name
from cxraug.plugins.datasets._findings import (
    CHEXPERT_LABELS,
    CHEXPERT_OBSERVATIONS,
    FINDINGS,
    NIH_LABELS,
    PADCHEST_LABELS,
    Observations,
    finding_label,
    read_observations,
)

NIH_FINDINGS = (
    "Atelectasis Cardiomegaly Effusion Infiltration Mass Nodule Pneumonia Pneumothorax Consolidation "
    "Edema Emphysema Fibrosis Pleural_Thickening Hernia"
).split()


def test_every_label_is_a_label_name_and_declared_somewhere() -> None:
    declared = set(NIH_LABELS) | set(CHEXPERT_LABELS) | set(PADCHEST_LABELS)
    assert all(is_label_name(label) for label in declared)
    assert set(FINDINGS.values()) <= declared


def test_one_finding_has_one_label_across_sources() -> None:
    assert [finding_label(f) for f in NIH_FINDINGS + ["No Finding"]] == list(NIH_LABELS)
    assert finding_label("Effusion") == finding_label("Pleural Effusion") == finding_label("pleural effusion")
    assert (
        finding_label("Pleural_Thickening")
        == finding_label(" apical  pleural thickening")
        == "pleural_thickening"
    )
    assert finding_label("infiltrates") == finding_label("Infiltration") == "infiltration"
    assert finding_label("normal") == finding_label("No Finding") == "normal"
    assert finding_label("Pneumonia") == finding_label("atypical pneumonia") == "pneumonia"
    assert finding_label("Lung Opacity") == "lung_opacity" and "lung_opacity" in VOCABULARY
    assert finding_label("Support Devices") is None and finding_label("chronic changes") is None
    chexpert = [finding_label(c) for c in CHEXPERT_OBSERVATIONS if c != "Support Devices"]
    assert chexpert == list(CHEXPERT_LABELS)


def test_uncertain_policies() -> None:
    row = {"atelectasis": "-1.0", "pleural effusion": "1.0", "edema": "0.0", "support devices": "-1"}
    observations = read_observations(row, ("atelectasis", "edema", "pleural effusion", "support devices"))
    assert observations == Observations((("atelectasis", -1.0), ("edema", 0.0), ("effusion", 1.0)))
    assert observations.findings("ignore") is None
    assert observations.findings("zeros") == ("effusion",)
    assert observations.findings("ones") == ("atelectasis", "effusion")
    with pytest.raises(ValueError, match="column 'edema' holds 'maybe'"):
        read_observations({"edema": "maybe"}, ("edema",))


def test_reader_handles_bom_gzip_trailing_commas_and_multiline_rows(tmp_path: Path) -> None:
    text = 'a,B ,c,\n1,2,3\n\n4,"five\nlines",6,\n'
    for path, gz in ((tmp_path / "t.csv", False), (tmp_path / "gz-named-csv.csv", True)):
        write_text(path, text, gz=gz, bom=True)
        assert list(read_rows(path, ("a", "b"), "a table")) == [
            (2, {"a": "1", "b": "2", "c": "3"}),
            (4, {"a": "4", "b": "five\nlines", "c": "6"}),
        ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"t.csv:1: empty file; expected the header row of a table"),
        ("a,c\n1,2\n", r"t.csv:1: missing column\(s\) 'b' \(header has a, c\); is this a table\?"),
        ("a,b\n1\n", r"t.csv:2: 1 fields, the header names 2"),
        ("a,b\n1,2,3\n", r"t.csv:2: 3 fields, the header names 2"),
        ('a,b\n1,"2\n', r"t.csv:\d+: unreadable CSV"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write_text(tmp_path / "t.csv", text)
    with pytest.raises(DataError, match=message):
        list(read_rows(path, ("a", "b"), "a table"))


def test_reader_refuses_other_encodings(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("a,b\nné,2\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        list(read_rows(path, ("a",), "a table"))
