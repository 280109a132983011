"""The COVID-19 image data collection (ieee8023/covid-chestxray-dataset): metadata.csv + images/."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from cxraug import hookimpl
from cxraug.data.csvrows import read_rows
from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.hookspecs import Register
from cxraug.interfaces import DatasetAdapter, PluginOptions, Record
from cxraug.labels import COVID, NORMAL, PNEUMONIA, PNEUMONIA_BACTERIAL, PNEUMONIA_VIRAL

MAX_LISTED = 10

#: Organisms of the early, flat ``finding`` values (and the leaves of the later hierarchical ones).
BACTERIAL: frozenset[str] = frozenset(
    {
        "bacterial",
        "streptococcus",
        "klebsiella",
        "legionella",
        "mycoplasma",
        "mycoplasma bacterial pneumonia",
        "e.coli",
        "staphylococcus",
        "staphylococcus aureus",
        "mrsa",
        "chlamydophila",
        "nocardia",
        "pseudomonas",
    }
)
VIRAL: frozenset[str] = frozenset(
    {
        "viral",
        "influenza",
        "h1n1",
        "varicella",
        "herpes",
        "herpes pneumonia",
        "adenovirus",
        "rsv",
    }
)
#: The later schema files these under ``Pneumonia/Fungal/`` (e.g. ``Pneumonia/Fungal/Pneumocystis``).
FUNGAL: frozenset[str] = frozenset({"fungal", "pneumocystis", "aspergillosis"})
#: SARS and MERS: filed ``Pneumonia/Viral/SARS`` and ``Pneumonia/Viral/MERS-CoV`` by the later schema.
OTHER_CORONAVIRUSES = re.compile(r"^(sars|mers)(-cov)?$")
COVID_NAMES: frozenset[str] = frozenset({"covid-19", "covid19", "covid", "sars-cov-2"})
#: A complication, not a cause: "Streptococcus, ARDS" is still a bacterial pneumonia.
COMPLICATIONS: frozenset[str] = frozenset({"ards"})

#: COVID-Net's ``create_COVIDx`` label map for this collection (lindawangg/COVID-Net,
#: ``create_COVIDx_v2.ipynb`` / ``create_COVIDx_v3.ipynb``, written for the flat 2020 schema):
#: exact, case-sensitive keys; anything else, ``No Finding`` included, is left out.
COVIDX_FLAT: dict[str, str] = {
    "COVID-19": COVID,
    "SARS": PNEUMONIA,
    "MERS": PNEUMONIA,
    "Streptococcus": PNEUMONIA,
    "Klebsiella": PNEUMONIA,
    "Chlamydophila": PNEUMONIA,
    "Legionella": PNEUMONIA,
    "Normal": NORMAL,
    "Lung Opacity": PNEUMONIA,
    "1": PNEUMONIA,
}
#: The same map in the current ``create_COVIDx.ipynb`` (written for the hierarchical schema),
#: which adds ``E.Coli``.
COVIDX_HIERARCHICAL: dict[str, str] = {**COVIDX_FLAT, "E.Coli": PNEUMONIA}
#: COVID-Net's view filter (``views = [...]`` in the same notebooks); matched case-insensitively here.
COVIDX_VIEWS: tuple[str, ...] = ("PA", "AP", "AP Supine", "AP semi erect", "AP erect")
DEFAULT_VIEWS: tuple[str, ...] = ("PA", "AP", "AP Supine")


def map_finding(finding: str, mapping: str = "source") -> tuple[str, ...]:
    """The labels of a ``finding`` value of either schema, in source order; empty to skip the row.

    One label for almost every row; several when the value names causes of different kinds
    (``Streptococcus, Influenza``), resolved by ``data prepare --multilabel``.
    """
    if mapping == "covidx":
        label = _map_covidx(finding)
        return (label,) if label else ()
    parts = [p.strip() for p in finding.split(",") if p.strip()]
    paths = [[c.strip().lower() for c in p.split("/") if c.strip()] for p in parts]
    paths = [p for p in paths if p]
    if any(p[-1] in COVID_NAMES for p in paths):
        return (COVID,)
    causes = [p for p in paths if p[-1] not in COMPLICATIONS] or paths
    labels = [_map_path(p) for p in causes]
    if not labels or any(label is None for label in labels):
        return ()
    return tuple(dict.fromkeys(label for label in labels if label))


def _map_path(path: list[str]) -> str | None:
    """The label of one ``A/B/C`` finding, following the later schema's hierarchy."""
    if path == ["no finding"]:
        return NORMAL
    if any(OTHER_CORONAVIRUSES.match(c) for c in path):
        return PNEUMONIA_VIRAL
    # "Pneumonia/Bacterial/Staphylococcus/MRSA": any component naming the kind decides.
    if any(c in BACTERIAL for c in path):
        return PNEUMONIA_BACTERIAL
    if any(c in VIRAL for c in path):
        return PNEUMONIA_VIRAL
    if any(c in FUNGAL for c in path) or path[0] == "pneumonia":
        # Fungal, lipoid, aspiration: filed under Pneumonia with no viral/bacterial kind.
        return PNEUMONIA
    return None


def _map_covidx(finding: str) -> str | None:
    """COVID-Net's rule, each variant on the schema it was written for.

    Flat values: the first comma-separated finding (``f = row['finding'].split(',')[0]``, "for the
    case of COVID-19, ARDS"); hierarchical values: the last component (``split('/')[-1]``).
    """
    if "/" in finding:
        return COVIDX_HIERARCHICAL.get(finding.split("/")[-1].strip())
    return COVIDX_FLAT.get(finding.split(",")[0].strip())


class CohenOptions(PluginOptions):
    """Options of the ``cohen`` dataset adapter."""

    views: tuple[str, ...] = Field(
        default=DEFAULT_VIEWS,
        description="X-ray views to keep (case-insensitive); empty keeps every view; not given: "
        "PA, AP, AP Supine (with mapping=covidx: COVID-Net's PA, AP, AP Supine, AP semi erect, "
        "AP erect)",
    )
    metadata: str = Field(default="metadata.csv", description="metadata file, relative to the root")
    mapping: Literal["source", "covidx"] = Field(
        default="source",
        description="source: the collection's own hierarchy (SARS, MERS -> pneumonia_viral; fungal "
        "-> pneumonia); covidx: COVID-Net's create_COVIDx rule (covid / pneumonia; No Finding left out)",
    )


class CohenAdapter(DatasetAdapter[CohenOptions]):
    """COVID-19 image data collection (Cohen et al.): chest X-rays and CTs with metadata.csv.

    Keeps X-ray rows whose ``view`` is among ``views``. With ``mapping=source`` (the default)
    findings follow the later schema's own hierarchy, for both schemas: COVID-19 (also with ARDS)
    -> covid; ``Pneumonia/Viral/...`` (influenza, SARS, MERS, ...) -> pneumonia_viral;
    ``Pneumonia/Bacterial/...`` -> pneumonia_bacterial; ``Pneumonia/Fungal/...`` (Pneumocystis),
    lipoid, aspiration and plain ``Pneumonia`` -> pneumonia; ``No Finding`` -> normal. ARDS alone,
    tuberculosis and the like are skipped and counted in the notes. ``mapping=covidx`` applies
    COVID-Net's ``create_COVIDx`` rule exactly (see ``COVIDX_FLAT``): COVID-19 -> covid; SARS,
    MERS, Streptococcus, Klebsiella, Chlamydophila, Legionella (and, on the hierarchical schema,
    E.Coli) -> pneumonia; everything else skipped, ``No Finding`` included, as COVID-Net did.
    Reads the early schema (``Patientid``, images in ``images/``) and the later one
    (``patientid``, hierarchical findings, a ``folder`` column). There is no official split.

    Citation: Cohen, J. P., Morrison, P., Dao, L., Roth, K., Duong, T. Q., Ghassemi, M. "COVID-19
    Image Data Collection: Prospective Predictions Are the Future." Machine Learning for Biomedical
    Imaging (2020). https://arxiv.org/abs/2006.11988

    Download: https://github.com/ieee8023/covid-chestxray-dataset (clone it; --root is the clone)
    """

    name: ClassVar[str] = "cohen"
    description: ClassVar[str] = "COVID-19 image data collection (ieee8023), metadata.csv + images"
    #: Source: ieee8023/covid-chestxray-dataset CONTRIBUTING.md, metadata field "license".
    license: ClassVar[str] = "per image: see the license column of metadata.csv (blank when unknown)"

    Options: ClassVar[type[CohenOptions]] = CohenOptions

    def __init__(self, options: CohenOptions | None = None) -> None:
        super().__init__(options)
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def records(self, root: Path | None) -> Iterator[Record]:
        options = self.options
        self._notes = []
        if root is None:
            raise DataError("cohen needs --root: a clone of ieee8023/covid-chestxray-dataset")
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset root does not exist; pass --root pointing at it")
        metadata = root / options.metadata
        escape = DatasetRoot(root).escapes(metadata)
        if escape:
            raise DataError(f"metadata={options.metadata}: {escape}; name a file inside the dataset folder")
        if not metadata.is_file():
            raise DataError(
                f"{metadata}: metadata file not found; pass --root pointing at the clone of "
                "ieee8023/covid-chestxray-dataset (it holds metadata.csv and images/)"
            )
        chosen = options.views
        if options.mapping == "covidx" and "views" not in options.model_fields_set:
            chosen = COVIDX_VIEWS
        views = {v.strip().lower() for v in chosen}
        not_xray: Counter[str] = Counter()
        other_view: Counter[str] = Counter()
        skipped: Counter[str] = Counter()
        missing: list[str] = []
        name = metadata.name
        dataset = DatasetRoot(root)
        for lineno, row in read_rows(metadata, REQUIRED, "the covid-chestxray-dataset metadata.csv"):
            modality = row["modality"]
            if _squash(modality) != "xray":
                not_xray[modality or "(empty)"] += 1
                continue
            view = row["view"]
            if views and view.lower() not in views:
                other_view[view or "(empty)"] += 1
                continue
            finding = row["finding"]
            labels = map_finding(finding, options.mapping)
            if not labels:
                skipped[finding or "(empty)"] += 1
                continue
            folder = row.get("folder") or "images"
            filename = row["filename"]
            if not filename:
                raise DataError(f"{metadata}:{lineno}: empty filename; fill it in or delete the row")
            path = root / folder / filename
            # Checked before is_file(): a name leaving the root is not even looked up.
            escape = dataset.escapes(path)
            if escape is None and not path.is_file():
                missing.append(f"{folder}/{filename}")
                continue
            yield Record(
                image=path,
                label=labels[0],
                source=self.name,
                original=dataset.original(path),
                patient_id=row["patientid"] or None,
                view=view or None,
                split=None,
                extra={"finding": finding},
                refused=f"{metadata}:{lineno}: {escape}" if escape else None,
                findings=labels if len(labels) > 1 else (),
            )
        if not_xray:
            self._notes.append(
                f"skipped {sum(not_xray.values())} rows that are not X-rays: {_counts(not_xray)}"
            )
        if other_view:
            self._notes.append(
                f"skipped {sum(other_view.values())} X-ray rows with views other than "
                f"{', '.join(chosen)}: {_counts(other_view)}"
            )
        if skipped:
            rule = "COVID-Net's create_COVIDx map" if options.mapping == "covidx" else "the label vocabulary"
            self._notes.append(
                f"skipped {sum(skipped.values())} rows with findings outside {rule}: {_counts(skipped)}"
            )
        if missing:
            listed = ", ".join(missing[:MAX_LISTED])
            more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            self._notes.append(
                f"{len(missing)} rows in {name} point to missing files, skipped: {listed}{more}"
            )
        self._notes.append("no official split in this source")


REQUIRED = ("patientid", "finding", "view", "modality", "filename")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} ({n})" for key, n in counter.most_common())


@hookimpl
def register_datasets(register: Register) -> None:
    register(CohenAdapter)
