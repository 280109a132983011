"""The cohen adapter reads ieee8023/covid-chestxray-dataset metadata.csv, early and later schema."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from cxraug.data.prepared import PreparedDataset
from cxraug.errors import DataError
from cxraug.interfaces import Record
from cxraug.plugins.datasets import cohen
from cxraug.plugins.datasets.cohen import CohenAdapter, map_finding


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 100).save(path, format="PNG")


def summary(records: list[Record]) -> list[tuple]:
    return [(r.original, r.label, r.patient_id, r.view) for r in records]


LATE_HEADER = (
    "patientid,offset,sex,age,finding,RT_PCR_positive,survival,view,modality,date,location,"
    "folder,filename,doi,url,license,clinical_notes,other_notes\n"
)
LATE_ROWS = [
    # A quoted location with a comma and clinical notes spanning two lines.
    '2,0,M,65,Pneumonia/Viral/COVID-19,Y,,PA,X-ray,2020,"Wuhan, China",images,a.jpg,,,,'
    '"fever, cough\nday 3",\n',
    "331a,,F,,Pneumonia/Bacterial/Streptococcus,,,AP Supine,X-ray,,,images,b.png,,,,,\n",
    "331b,,F,,Pneumonia/Viral/Influenza/H1N1,,,ap,X-ray,,,images,c.png,,,,,\n",
    "19,,M,,No Finding,,,PA,X-ray,,,images,d.png,,,,,\n",
    "7,,M,,Pneumonia/Viral/SARS,,,PA,X-ray,,,images,e.png,,,,,\n",
    "8,,M,,Pneumonia/Viral/MERS-CoV,,,PA,X-ray,,,images,f.png,,,,,\n",
    "9,,M,,Tuberculosis,,,PA,X-ray,,,images,g.png,,,,,\n",
    "10,,M,,Pneumonia/Viral/COVID-19,,,Axial,CT,,,images,ct1.jpg,,,,,\n",
    "11,,M,,Pneumonia/Viral/COVID-19,,,L,X-ray,,,images,h.png,,,,,\n",
    "12,,M,,Pneumonia,,,PA,X-ray,,,volumes,i.png,,,,,\n",
    "13,,M,,Pneumonia/Viral/COVID-19,,,PA,X-ray,,,images,gone.jpg,,,,,\n",
    "\n",
    "14,,M,,Pneumonia/Viral/SARS,,,PA,X-ray,,,images,j.png,,,,,\n",
]

EARLY_HEADER = (
    "Patientid,offset,sex,age,finding,survival,view,modality,date,location,filename,doi,url,"
    "license,clinical notes,other notes\n"
)
EARLY_ROWS = [
    "1,0,M,65,COVID-19,,PA,X-ray,,,a.jpg,,,,,\n",
    '2,,F,,"COVID-19, ARDS",,AP,X-ray,,,b.jpg,,,,"notes, quoted",\n',
    "3,,M,,Streptococcus,,PA,X-ray,,,c.jpg,,,,,\n",
    "4,,M,,Mycoplasma Bacterial Pneumonia,,PA,X-ray,,,d.jpg,,,,,\n",
    "5,,M,,SARS,,PA,X-ray,,,e.jpg,,,,,\n",
    "6,,M,,Pneumocystis,,PA,X-ray,,,f.jpg,,,,,\n",
    "7,,M,,No Finding,,PA,X-ray,,,g.jpg,,,,,\n",
    "8,,M,,Influenza,,AP Supine,X-ray,,,h.jpg,,,,,\n",
    "9,,M,,ARDS,,PA,X-ray,,,i.jpg,,,,,\n",
    "10,,M,,COVID-19,,Axial,CT,,,j.jpg,,,,,\n",
]


@pytest.fixture
def late(tmp_path: Path) -> Path:
    (tmp_path / "metadata.csv").write_text(LATE_HEADER + "".join(LATE_ROWS), encoding="utf-8")
    for name in "abcdefghj":
        image(tmp_path / "images" / f"{name}.png")
    image(tmp_path / "images" / "a.jpg")
    image(tmp_path / "images" / "ct1.jpg")
    image(tmp_path / "volumes" / "i.png")
    return tmp_path


@pytest.fixture
def early(tmp_path: Path) -> Path:
    (tmp_path / "metadata.csv").write_text(EARLY_HEADER + "".join(EARLY_ROWS), encoding="utf-8")
    for name in "abcdefghij":
        image(tmp_path / "images" / f"{name}.jpg")
    return tmp_path


def test_late_schema(late: Path) -> None:
    adapter = CohenAdapter()
    records = list(adapter.records(late))
    assert summary(records) == [
        ("images/a.jpg", "covid", "2", "PA"),
        ("images/b.png", "pneumonia_bacterial", "331a", "AP Supine"),
        ("images/c.png", "pneumonia_viral", "331b", "ap"),
        ("images/d.png", "normal", "19", "PA"),
        ("images/e.png", "pneumonia_viral", "7", "PA"),
        ("images/f.png", "pneumonia_viral", "8", "PA"),
        ("volumes/i.png", "pneumonia", "12", "PA"),
        ("images/j.png", "pneumonia_viral", "14", "PA"),
    ]
    assert all(r.source == "cohen" and r.split is None and r.findings == () for r in records)
    assert records[0].image == late / "images" / "a.jpg"
    assert records[0].extra == {"finding": "Pneumonia/Viral/COVID-19"}
    assert adapter.notes() == [
        "skipped 1 rows that are not X-rays: CT (1)",
        "skipped 1 X-ray rows with views other than PA, AP, AP Supine: L (1)",
        "skipped 1 rows with findings outside the label vocabulary: Tuberculosis (1)",
        "1 rows in metadata.csv point to missing files, skipped: images/gone.jpg",
        "no official split in this source",
    ]


def test_late_schema_covidx_mapping(late: Path) -> None:
    adapter = CohenAdapter(CohenAdapter.Options(mapping="covidx"))
    records = list(adapter.records(late))
    # COVID-Net's rule: last component of the hierarchy, exact keys; "No Finding" and plain
    # "Pneumonia" are not among them, H1N1 neither.
    assert summary(records) == [
        ("images/a.jpg", "covid", "2", "PA"),
        ("images/b.png", "pneumonia", "331a", "AP Supine"),
        ("images/e.png", "pneumonia", "7", "PA"),
        ("images/j.png", "pneumonia", "14", "PA"),
    ]
    assert adapter.notes()[2] == (
        "skipped 5 rows with findings outside COVID-Net's create_COVIDx map: "
        "Pneumonia/Viral/Influenza/H1N1 (1), No Finding (1), Pneumonia/Viral/MERS-CoV (1), "
        "Tuberculosis (1), Pneumonia (1)"
    )


def test_early_schema(early: Path) -> None:
    adapter = CohenAdapter()
    records = list(adapter.records(early))
    assert summary(records) == [
        ("images/a.jpg", "covid", "1", "PA"),
        ("images/b.jpg", "covid", "2", "AP"),
        ("images/c.jpg", "pneumonia_bacterial", "3", "PA"),
        ("images/d.jpg", "pneumonia_bacterial", "4", "PA"),
        ("images/e.jpg", "pneumonia_viral", "5", "PA"),
        ("images/f.jpg", "pneumonia", "6", "PA"),
        ("images/g.jpg", "normal", "7", "PA"),
        ("images/h.jpg", "pneumonia_viral", "8", "AP Supine"),
    ]
    assert adapter.notes()[:2] == [
        "skipped 1 rows that are not X-rays: CT (1)",
        "skipped 1 rows with findings outside the label vocabulary: ARDS (1)",
    ]


def test_early_schema_covidx_mapping(early: Path) -> None:
    adapter = CohenAdapter(CohenAdapter.Options(mapping="covidx"))
    assert summary(list(adapter.records(early))) == [
        ("images/a.jpg", "covid", "1", "PA"),
        ("images/b.jpg", "covid", "2", "AP"),  # "COVID-19, ARDS": the first finding counts
        ("images/c.jpg", "pneumonia", "3", "PA"),
        ("images/e.jpg", "pneumonia", "5", "PA"),
    ]
    assert adapter.notes()[1] == (
        "skipped 5 rows with findings outside COVID-Net's create_COVIDx map: Mycoplasma "
        "Bacterial Pneumonia (1), Pneumocystis (1), No Finding (1), Influenza (1), ARDS (1)"
    )


def test_views_option(late: Path) -> None:
    only_pa = CohenAdapter(CohenAdapter.Options(views=("pa",)))
    assert [r.patient_id for r in only_pa.records(late)] == ["2", "19", "7", "8", "12", "14"]
    every = CohenAdapter(CohenAdapter.Options(views=()))
    assert "11" in [r.patient_id for r in every.records(late)]


def test_covidx_mapping_takes_covid_nets_views_unless_views_are_given(tmp_path: Path) -> None:
    rows = [
        f"{i},,M,,COVID-19,,{view},X-ray,,,{i}.png,,,,,\n"
        for i, view in enumerate(["PA", "AP semi erect", "AP erect", "L"])
    ]
    (tmp_path / "metadata.csv").write_text(EARLY_HEADER + "".join(rows), encoding="utf-8")
    for i in range(4):
        image(tmp_path / "images" / f"{i}.png")

    def kept(**options: object) -> list[str]:
        return [str(r.view) for r in CohenAdapter(CohenAdapter.Options(**options)).records(tmp_path)]

    assert kept() == ["PA"]
    assert kept(mapping="covidx") == ["PA", "AP semi erect", "AP erect"]
    assert kept(mapping="covidx", views=("PA",)) == ["PA"]


@pytest.mark.parametrize(
    ("finding", "labels"),
    [
        ("Pneumonia/Viral/COVID-19", ("covid",)),
        ("COVID-19, ARDS", ("covid",)),
        ("Pneumonia/Bacterial/Staphylococcus/MRSA", ("pneumonia_bacterial",)),
        ("Streptococcus, ARDS", ("pneumonia_bacterial",)),
        ("E.Coli", ("pneumonia_bacterial",)),
        ("Klebsiella", ("pneumonia_bacterial",)),
        ("Legionella", ("pneumonia_bacterial",)),
        ("Chlamydophila", ("pneumonia_bacterial",)),
        ("Varicella", ("pneumonia_viral",)),
        ("Herpes pneumonia", ("pneumonia_viral",)),
        ("Pneumonia/Viral/Herpes ", ("pneumonia_viral",)),
        # The later schema's own hierarchy: SARS and MERS are viral pneumonias, fungi pneumonias.
        ("SARS", ("pneumonia_viral",)),
        ("Pneumonia/Viral/SARS", ("pneumonia_viral",)),
        ("MERS", ("pneumonia_viral",)),
        ("Pneumonia/Viral/MERS-CoV", ("pneumonia_viral",)),
        ("Pneumocystis", ("pneumonia",)),
        ("Pneumonia/Fungal/Pneumocystis", ("pneumonia",)),
        ("Pneumonia/Fungal/Aspergillosis", ("pneumonia",)),
        ("Pneumonia/Lipoid", ("pneumonia",)),
        ("Pneumonia/Aspiration", ("pneumonia",)),
        ("no finding", ("normal",)),
        ("Pneumonia", ("pneumonia",)),
        # Causes of two kinds: both, in source order, for --multilabel to resolve.
        ("Streptococcus, Influenza", ("pneumonia_bacterial", "pneumonia_viral")),
        ("ARDS", ()),
        ("Streptococcus, Tuberculosis", ()),
        ("Tuberculosis", ()),
        ("todo", ()),
        ("", ()),
    ],
)
def test_map_finding(finding: str, labels: tuple[str, ...]) -> None:
    assert map_finding(finding) == labels


@pytest.mark.parametrize(
    ("finding", "label"),
    [
        # Flat values (create_COVIDx_v2/v3): the first comma-separated finding, exact keys.
        ("COVID-19", "covid"),
        ("COVID-19, ARDS", "covid"),
        ("ARDS, COVID-19", None),
        ("SARS", "pneumonia"),
        ("MERS", "pneumonia"),
        ("Streptococcus", "pneumonia"),
        ("Klebsiella", "pneumonia"),
        ("Chlamydophila", "pneumonia"),
        ("Legionella", "pneumonia"),
        ("Normal", "normal"),
        ("No Finding", None),
        ("E.Coli", None),  # added to the map only with the hierarchical schema
        ("Pneumocystis", None),
        ("ARDS", None),
        ("covid-19", None),  # case-sensitive, as COVID-Net's dict lookup
        # Hierarchical values (create_COVIDx.ipynb): the last component of the whole value.
        ("Pneumonia/Viral/COVID-19", "covid"),
        ("Pneumonia/Viral/SARS", "pneumonia"),
        ("Pneumonia/Bacterial/Streptococcus", "pneumonia"),
        ("Pneumonia/Bacterial/E.Coli", "pneumonia"),
        ("Pneumonia/Fungal/Pneumocystis", None),
        ("Pneumonia/Viral/MERS-CoV", None),  # the key is "MERS"
        ("Pneumonia/Viral/COVID-19, ARDS", None),  # "COVID-19, ARDS" is no key
        ("", None),
    ],
)
def test_map_finding_covidx(finding: str, label: str | None) -> None:
    assert map_finding(finding, "covidx") == ((label,) if label else ())


def test_short_row_names_the_line_it_starts_on(late: Path) -> None:
    metadata = late / "metadata.csv"
    # Line 1 header, the first row spans lines 2-3, so the fifth row starts on line 7.
    rows = LATE_ROWS[:4] + ["5,,M,,No Finding,PA,X-ray,images,d.png\n"]
    metadata.write_text(LATE_HEADER + "".join(rows), encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(CohenAdapter().records(late))
    assert f"{metadata}:7: 9 fields, the header names 18" in str(err.value)


def test_trailing_empty_fields_are_tolerated(late: Path) -> None:
    rows = ["19,,M,,No Finding,,,PA,X-ray,,,images,d.png,,,,,,,\n"]
    (late / "metadata.csv").write_text(LATE_HEADER + "".join(rows), encoding="utf-8")
    assert [r.label for r in CohenAdapter().records(late)] == ["normal"]


def test_missing_column_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(CohenAdapter().records(tmp_path / "nope"))
    with pytest.raises(DataError, match="metadata.csv: metadata file not found"):
        list(CohenAdapter().records(tmp_path))
    metadata = tmp_path / "metadata.csv"
    metadata.write_text("patientid,finding,filename\n1,COVID-19,a.png\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(CohenAdapter().records(tmp_path))
    assert f"{metadata}:1: missing column(s) 'view', 'modality'" in str(err.value)


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError):
        CohenAdapter.Options(view=("PA",))
    with pytest.raises(ValidationError):
        CohenAdapter.Options(mapping="covidx2")
    options = CohenAdapter.Options(views=["PA"])
    assert options.views == ("PA",)
    for field in CohenAdapter.Options.model_fields.values():
        assert field.description and not field.is_required()
    registered: list[type] = []
    cohen.register_datasets(registered.append)
    assert registered == [CohenAdapter]


def test_rows_leaving_the_root_are_refused_with_file_and_line(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    image(outside / "secret.png")
    image(root / "images" / "ok.png")
    (root / "images" / "link.png").symlink_to(outside / "secret.png")
    metadata = root / "metadata.csv"
    metadata.write_text(
        LATE_HEADER
        + "1,,M,,No Finding,,,PA,X-ray,,,images,ok.png,,,,,\n"
        + "2,,M,,No Finding,,,PA,X-ray,,,images,../../outside/secret.png,,,,,\n"
        + "3,,M,,No Finding,,,PA,X-ray,,,/abs,x.png,,,,,\n"
        + "4,,M,,No Finding,,,PA,X-ray,,,images,link.png,,,,,\n",
        encoding="utf-8",
    )
    records = list(CohenAdapter().records(root))
    assert [(r.original, r.refused is None) for r in records] == [
        ("images/ok.png", True),
        ("images/../../outside/secret.png", False),
        ("/abs/x.png", False),
        ("images/link.png", False),
    ]
    assert str(records[1].refused).startswith(
        f"{metadata}:3: 'images/../../outside/secret.png' points outside"
    )
    assert str(records[2].refused).startswith(f"{metadata}:4: '/abs/x.png' points outside")
    assert str(records[3].refused).startswith(f"{metadata}:5: 'images/link.png' is a link to {outside}")
    with pytest.raises(DataError, match=r"metadata=../outside/m.csv: .* points outside"):
        list(CohenAdapter(CohenAdapter.Options(metadata="../outside/m.csv")).records(root))


# ------------------------------------------------------------------ the collection as of March 2020

#: The X-ray rows of the collection as published in March 2020 (early flat schema), by ``finding``:
#: 119 in all. Two of the 96 COVID-19 rows carry the flat schema's combined value "COVID-19, ARDS".
MARCH_2020_XRAYS: dict[str, int] = {
    "COVID-19": 94,
    "COVID-19, ARDS": 2,
    "SARS": 11,
    "Streptococcus": 6,
    "ARDS": 4,
    "Pneumocystis": 1,
    "No Finding": 1,
}
MARCH_2020_CT = 5

#: Each rule, spelled out per finding (None: the row is skipped and counted in the notes).
#: source: the collection's own later hierarchy (Pneumonia/Viral/SARS, Pneumonia/Fungal/Pneumocystis).
SOURCE_RULE: dict[str, str | None] = {
    "COVID-19": "covid",
    "COVID-19, ARDS": "covid",
    "SARS": "pneumonia_viral",
    "Streptococcus": "pneumonia_bacterial",
    "ARDS": None,
    "Pneumocystis": "pneumonia",
    "No Finding": "normal",
}
#: covidx: COVID-Net's create_COVIDx map (first finding before a comma; no key for ARDS,
#: Pneumocystis or "No Finding", whose normal images COVIDx took from other sources).
COVIDX_RULE: dict[str, str | None] = {
    "COVID-19": "covid",
    "COVID-19, ARDS": "covid",
    "SARS": "pneumonia",
    "Streptococcus": "pneumonia",
    "ARDS": None,
    "Pneumocystis": None,
    "No Finding": None,
}


def _expected(rule: dict[str, str | None]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for finding, n in MARCH_2020_XRAYS.items():
        if rule[finding] is not None:
            counts[str(rule[finding])] += n
    return counts


@pytest.fixture
def march_2020(tmp_path: Path) -> Path:
    """A metadata.csv shaped like the March 2020 file, one distinct small image per row."""
    rng = np.random.default_rng(2020)
    rows: list[str] = []
    views = ("PA", "AP", "AP Supine")
    n = 0
    for finding, count in MARCH_2020_XRAYS.items():
        for _ in range(count):
            quoted = f'"{finding}"' if "," in finding else finding
            rows.append(f"{n},,M,50,{quoted},,{views[n % 3]},X-ray,2020,,x{n}.png,,,,,\n")
            n += 1
    for i in range(MARCH_2020_CT):
        rows.append(f"{n},,F,60,COVID-19,,{('Axial', 'Coronal')[i % 2]},CT,2020,,x{n}.png,,,,,\n")
        n += 1
    (tmp_path / "metadata.csv").write_text(EARLY_HEADER + "".join(rows), encoding="utf-8")
    (tmp_path / "images").mkdir()
    for i in range(n):
        small = rng.integers(0, 255, (6, 6)).astype(np.uint8)
        Image.fromarray(small).resize((24, 24)).save(tmp_path / "images" / f"x{i}.png")
    return tmp_path


def test_march_2020_counts_under_both_mappings(march_2020: Path) -> None:
    assert sum(MARCH_2020_XRAYS.values()) == 119
    # The collection's own hierarchy: everything but ARDS alone, 96 + 11 + 6 + 1 + 1 = 115.
    source = CohenAdapter()
    counts = Counter(r.label for r in source.records(march_2020))
    assert counts == _expected(SOURCE_RULE)
    assert counts == {
        "covid": 96,
        "pneumonia_viral": 11,
        "pneumonia_bacterial": 6,
        "pneumonia": 1,
        "normal": 1,
    }
    assert sum(counts.values()) == 115
    assert source.notes()[:2] == [
        "skipped 5 rows that are not X-rays: CT (5)",
        "skipped 4 rows with findings outside the label vocabulary: ARDS (4)",
    ]
    # COVID-Net's rule: 96 covid, 11 SARS + 6 Streptococcus = 17 pneumonia; ARDS (4),
    # Pneumocystis (1) and No Finding (1) are left out: 113.
    covidx = CohenAdapter(CohenAdapter.Options(mapping="covidx"))
    counts = Counter(r.label for r in covidx.records(march_2020))
    assert counts == _expected(COVIDX_RULE)
    assert counts == {"covid": 96, "pneumonia": 17}
    assert sum(counts.values()) == 113
    assert covidx.notes()[:2] == [
        "skipped 5 rows that are not X-rays: CT (5)",
        "skipped 6 rows with findings outside COVID-Net's create_COVIDx map: ARDS (4), "
        "Pneumocystis (1), No Finding (1)",
    ]


def test_march_2020_prepare_with_the_covidx_mapping(cxraug_cli, cxraug_workspace, march_2020: Path) -> None:
    result = cxraug_cli(
        "data", "prepare", "cohen", "--root", str(march_2020), "--size", "16",
        "--opt", "mapping=covidx", "--name", "cohen-covidx",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    dataset = PreparedDataset(cxraug_workspace.data_dir / "cohen-covidx")
    assert Counter(row["label"] for row in dataset.rows) == {"covid": 96, "pneumonia": 17}
    info = json.loads((cxraug_workspace.data_dir / "cohen-covidx" / "info.json").read_text())
    assert info["sources"][0]["options"]["mapping"] == "covidx"
