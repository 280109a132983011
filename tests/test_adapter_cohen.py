"""The cohen adapter reads ieee8023/covid-chestxray-dataset metadata.csv, early and later schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

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
        ("volumes/i.png", "pneumonia", "12", "PA"),
    ]
    assert all(r.source == "cohen" and r.split is None for r in records)
    assert records[0].image == late / "images" / "a.jpg"
    assert records[0].extra == {"finding": "Pneumonia/Viral/COVID-19"}
    assert adapter.notes() == [
        "skipped 1 rows that are not X-rays: CT (1)",
        "skipped 1 X-ray rows with views other than PA, AP, AP Supine: L (1)",
        "skipped 4 rows with findings outside the label vocabulary: Pneumonia/Viral/SARS (2), "
        "Pneumonia/Viral/MERS-CoV (1), Tuberculosis (1)",
        "1 rows in metadata.csv point to missing files, skipped: images/gone.jpg",
        "no official split in this source",
    ]


def test_early_schema(early: Path) -> None:
    adapter = CohenAdapter()
    records = list(adapter.records(early))
    assert summary(records) == [
        ("images/a.jpg", "covid", "1", "PA"),
        ("images/b.jpg", "covid", "2", "AP"),
        ("images/c.jpg", "pneumonia_bacterial", "3", "PA"),
        ("images/d.jpg", "pneumonia_bacterial", "4", "PA"),
        ("images/g.jpg", "normal", "7", "PA"),
        ("images/h.jpg", "pneumonia_viral", "8", "AP Supine"),
    ]
    assert adapter.notes()[:2] == [
        "skipped 1 rows that are not X-rays: CT (1)",
        "skipped 3 rows with findings outside the label vocabulary: SARS (1), Pneumocystis (1), ARDS (1)",
    ]


def test_views_option(late: Path) -> None:
    only_pa = CohenAdapter(CohenAdapter.Options(views=("pa",)))
    assert [r.patient_id for r in only_pa.records(late)] == ["2", "19", "12"]
    every = CohenAdapter(CohenAdapter.Options(views=()))
    assert "11" in [r.patient_id for r in every.records(late)]


@pytest.mark.parametrize(
    ("finding", "label"),
    [
        ("Pneumonia/Viral/COVID-19", "covid"),
        ("COVID-19, ARDS", "covid"),
        ("Pneumonia/Bacterial/Staphylococcus/MRSA", "pneumonia_bacterial"),
        ("Streptococcus, ARDS", "pneumonia_bacterial"),
        ("E.Coli", "pneumonia_bacterial"),
        ("Klebsiella", "pneumonia_bacterial"),
        ("Legionella", "pneumonia_bacterial"),
        ("Chlamydophila", "pneumonia_bacterial"),
        ("Varicella", "pneumonia_viral"),
        ("Herpes pneumonia", "pneumonia_viral"),
        ("Pneumonia/Viral/Herpes ", "pneumonia_viral"),
        ("no finding", "normal"),
        ("Pneumonia", "pneumonia"),
        ("Pneumonia/Viral/SARS", None),
        ("MERS", None),
        ("Pneumonia/Fungal/Aspergillosis", None),
        ("Pneumonia/Lipoid", None),
        ("Streptococcus, Influenza", None),
        ("todo", None),
        ("", None),
    ],
)
def test_map_finding(finding: str, label: str | None) -> None:
    assert map_finding(finding) == label


def test_short_row_names_the_line_it_starts_on(late: Path) -> None:
    metadata = late / "metadata.csv"
    # Line 1 header, the first row spans lines 2-3, so the fifth row starts on line 7.
    rows = LATE_ROWS[:4] + ["5,,M,,No Finding,PA,X-ray,images,d.png\n"]
    metadata.write_text(LATE_HEADER + "".join(rows), encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(CohenAdapter().records(late))
    assert f"{metadata}:7: 9 fields, the header has 18" in str(err.value)


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
    assert f"{metadata}:1: missing column(s) view, modality" in str(err.value)


def test_options_and_registration() -> None:
    with pytest.raises(ValidationError):
        CohenAdapter.Options(view=("PA",))
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
