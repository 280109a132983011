"""The findings the large multi-label collections name, mapped onto cxraug labels in one place.

NIH ChestX-ray14 writes ``Effusion`` and ``Pleural_Thickening``, CheXpert and MIMIC-CXR write
``Pleural Effusion``, PadChest writes ``pleural effusion`` and ``apical pleural thickening``: the
``nih``, ``chexpert``, ``mimic`` and ``padchest`` adapters all look their findings up in
``FINDINGS`` so that one finding has one label across sources (``--classes effusion,normal``
means the same images from each). Each adapter declares the labels it may yield (``*_LABELS``).

The CheXpert observations (CheXpert's ``train.csv``/``valid.csv`` and MIMIC-CXR-JPG's
``mimic-cxr-2.0.0-chexpert.csv.gz``/``-negbio.csv.gz`` share the fourteen columns) are read
here too, with the uncertain-label policy both adapters offer.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxraug.labels import LUNG_OPACITY, NORMAL, PNEUMONIA

ATELECTASIS = "atelectasis"
CARDIOMEGALY = "cardiomegaly"
CONSOLIDATION = "consolidation"
EDEMA = "edema"
EFFUSION = "effusion"
EMPHYSEMA = "emphysema"
ENLARGED_CARDIOMEDIASTINUM = "enlarged_cardiomediastinum"
FIBROSIS = "fibrosis"
FRACTURE = "fracture"
HERNIA = "hernia"
INFILTRATION = "infiltration"
LUNG_LESION = "lung_lesion"
MASS = "mass"
NODULE = "nodule"
PLEURAL_OTHER = "pleural_other"
PLEURAL_THICKENING = "pleural_thickening"
PNEUMOTHORAX = "pneumothorax"
TUBERCULOSIS = "tuberculosis"

#: Source finding (lower case, ``_`` read as a space, spaces collapsed: see ``finding_key``) ->
#: cxraug label. Sources: NIH ``Finding Labels`` values (Wang et al. 2017), the CheXpert /
#: MIMIC-CXR observation columns (Irvin et al. 2019), and PadChest's ``Labels`` list entries
#: (Bustos et al. 2020; the 193 label names of the 01.02.19 CSV). A PadChest subtype whose
#: meaning is the broader finding (``lobar atelectasis``, ``rib fracture``) maps to it; patterns
#: and signs that are not one of these findings (``alveolar pattern``, ``air bronchogram``) are
#: left unmapped rather than guessed.
FINDINGS: dict[str, str] = {
    # no finding
    "no finding": NORMAL,  # NIH, CheXpert, MIMIC-CXR
    "normal": NORMAL,  # PadChest
    # core pneumonia
    "pneumonia": PNEUMONIA,
    "atypical pneumonia": PNEUMONIA,  # PadChest
    "lung opacity": LUNG_OPACITY,  # CheXpert, MIMIC-CXR
    # the ChestX-ray14 findings and their CheXpert / PadChest names
    "atelectasis": ATELECTASIS,
    "laminar atelectasis": ATELECTASIS,
    "lobar atelectasis": ATELECTASIS,
    "segmental atelectasis": ATELECTASIS,
    "round atelectasis": ATELECTASIS,
    "total atelectasis": ATELECTASIS,
    "atelectasis basal": ATELECTASIS,
    "cardiomegaly": CARDIOMEGALY,
    "effusion": EFFUSION,  # NIH
    "pleural effusion": EFFUSION,  # CheXpert, MIMIC-CXR, PadChest
    "loculated pleural effusion": EFFUSION,
    "infiltration": INFILTRATION,  # NIH
    "infiltrates": INFILTRATION,  # PadChest
    "mass": MASS,
    "pulmonary mass": MASS,
    "nodule": NODULE,
    "multiple nodules": NODULE,
    "pneumothorax": PNEUMOTHORAX,
    "consolidation": CONSOLIDATION,
    "edema": EDEMA,  # NIH, CheXpert
    "pulmonary edema": EDEMA,  # PadChest
    "emphysema": EMPHYSEMA,
    "fibrosis": FIBROSIS,  # NIH
    "pulmonary fibrosis": FIBROSIS,  # PadChest
    "pleural thickening": PLEURAL_THICKENING,  # NIH "Pleural_Thickening", PadChest
    "apical pleural thickening": PLEURAL_THICKENING,
    "calcified pleural thickening": PLEURAL_THICKENING,
    "hernia": HERNIA,  # NIH
    "hiatal hernia": HERNIA,  # PadChest
    # CheXpert / MIMIC-CXR observations beyond ChestX-ray14
    "enlarged cardiomediastinum": ENLARGED_CARDIOMEDIASTINUM,
    "lung lesion": LUNG_LESION,
    "pleural other": PLEURAL_OTHER,
    "fracture": FRACTURE,
    "rib fracture": FRACTURE,  # PadChest
    "callus rib fracture": FRACTURE,
    "clavicle fracture": FRACTURE,
    "humeral fracture": FRACTURE,
    "vertebral fracture": FRACTURE,
    # common PadChest findings
    "tuberculosis": TUBERCULOSIS,
    "aortic elongation": "aortic_elongation",
    "scoliosis": "scoliosis",
    "kyphosis": "kyphosis",
    "copd signs": "copd_signs",
    "costophrenic angle blunting": "costophrenic_angle_blunting",
    "hilar enlargement": "hilar_enlargement",
    "interstitial pattern": "interstitial_pattern",
    "alveolar pattern": "alveolar_pattern",
    "granuloma": "granuloma",
    "calcified granuloma": "granuloma",
    "bronchiectasis": "bronchiectasis",
    "hemidiaphragm elevation": "hemidiaphragm_elevation",
    "air trapping": "air_trapping",
}

#: NIH ChestX-ray14's fourteen findings in the order its README lists them, then No Finding.
NIH_LABELS: tuple[str, ...] = (
    ATELECTASIS,
    CARDIOMEGALY,
    EFFUSION,
    INFILTRATION,
    MASS,
    NODULE,
    PNEUMONIA,
    PNEUMOTHORAX,
    CONSOLIDATION,
    EDEMA,
    EMPHYSEMA,
    FIBROSIS,
    PLEURAL_THICKENING,
    HERNIA,
    NORMAL,
)

#: The CheXpert observation columns, in CheXpert's ``train.csv`` order (MIMIC-CXR-JPG's label
#: files hold the same fourteen, alphabetically).
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: An observation that is not a finding: never a label. CheXpert's own "No Finding" disregards
#: it (Irvin et al. 2019), and using it would make most ICU images multi-finding.
NOT_A_FINDING: frozenset[str] = frozenset({"support devices"})
#: The observation columns as ``read_rows`` keys them (lower case).
OBSERVATION_KEYS: frozenset[str] = frozenset(c.lower() for c in CHEXPERT_OBSERVATIONS)

#: CheXpert / MIMIC-CXR labels, in CheXpert's column order.
CHEXPERT_LABELS: tuple[str, ...] = (
    NORMAL,
    ENLARGED_CARDIOMEDIASTINUM,
    CARDIOMEGALY,
    LUNG_OPACITY,
    LUNG_LESION,
    EDEMA,
    CONSOLIDATION,
    PNEUMONIA,
    ATELECTASIS,
    PNEUMOTHORAX,
    EFFUSION,
    PLEURAL_OTHER,
    FRACTURE,
)

#: The labels PadChest's mapped findings give: normal, pneumonia, the cross-source findings, then
#: common PadChest-only ones.
PADCHEST_LABELS: tuple[str, ...] = (
    NORMAL,
    PNEUMONIA,
    ATELECTASIS,
    CARDIOMEGALY,
    EFFUSION,
    INFILTRATION,
    MASS,
    NODULE,
    PNEUMOTHORAX,
    CONSOLIDATION,
    EDEMA,
    EMPHYSEMA,
    FIBROSIS,
    PLEURAL_THICKENING,
    HERNIA,
    FRACTURE,
    TUBERCULOSIS,
    "aortic_elongation",
    "scoliosis",
    "kyphosis",
    "copd_signs",
    "costophrenic_angle_blunting",
    "hilar_enlargement",
    "interstitial_pattern",
    "alveolar_pattern",
    "granuloma",
    "bronchiectasis",
    "hemidiaphragm_elevation",
    "air_trapping",
)


def finding_key(name: str) -> str:
    """The form ``FINDINGS`` is keyed by: lower case, ``_`` as a space, whitespace collapsed."""
    return " ".join(name.replace("_", " ").lower().split())


def finding_label(name: str) -> str | None:
    """The cxraug label of a source finding name, or None when it maps to none."""
    return FINDINGS.get(finding_key(name))


#: The label of a record refused before its label was known (a malformed label field): prepare
#: lists such a record under skipped, whatever --classes asks for.
UNKNOWN = "unknown"


# ------------------------------------------------------------------ CheXpert-style observations

#: What an uncertain (-1) observation becomes, after the uncertainty approaches of Irvin et al.
#: 2019: ``ignore`` (U-Ignore) uses no uncertain label, and since an image gets one label, which
#: an uncertain observation may change, the image is left out; ``zeros`` (U-Zeros) reads it as
#: absent; ``ones`` (U-Ones) as present. Blank (not mentioned) is absent under all three.
UNCERTAIN_POLICIES: tuple[str, ...] = ("ignore", "zeros", "ones")

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0


@dataclass(frozen=True)
class Observations:
    """One row's mapped, non-blank observations: (label, 1.0 / 0.0 / -1.0), in column order."""

    values: tuple[tuple[str, float], ...]

    @property
    def uncertain(self) -> tuple[str, ...]:
        return tuple(label for label, value in self.values if value == UNCERTAIN)

    def findings(self, policy: str) -> tuple[str, ...] | None:
        """The image's findings under ``policy``, in column order; None when ``ignore`` leaves it out."""
        if policy == "ignore" and self.uncertain:
            return None
        present = (POSITIVE, UNCERTAIN) if policy == "ones" else (POSITIVE,)
        return tuple(dict.fromkeys(label for label, value in self.values if value in present))


def observation_columns(row: dict[str, str]) -> tuple[str, ...]:
    """The observation columns of a row (keys lower-case), in the header's order."""
    return tuple(key for key in row if key in OBSERVATION_KEYS)


def read_observations(row: dict[str, str], columns: tuple[str, ...]) -> Observations:
    """The mapped observations of ``row`` over ``columns`` (lower-case keys, header order).

    Raises ValueError naming the column and value when a value is not 1, 0, -1 or blank.
    """
    values: list[tuple[str, float]] = []
    for column in columns:
        if column in NOT_A_FINDING:
            continue
        label = finding_label(column)
        if label is None:  # pragma: no cover - every observation column is in FINDINGS
            raise RuntimeError(f"observation {column!r} has no label in FINDINGS")
        text = row.get(column, "").strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if value not in (POSITIVE, NEGATIVE, UNCERTAIN):
            raise ValueError(f"column {column!r} holds {text!r}; expected 1.0, 0.0, -1.0 or blank")
        values.append((label, value))
    return Observations(tuple(values))


class UncertainTally:
    """Applies an uncertain policy row by row and counts what it did, for an adapter's notes."""

    def __init__(self, policy: str) -> None:
        if policy not in UNCERTAIN_POLICIES:  # pragma: no cover - the options model checks it
            raise ValueError(policy)
        self.policy = policy
        self.left_out = 0
        self.read = 0
        self.no_finding = 0

    def findings(self, observations: Observations) -> tuple[str, ...] | None:
        """The findings of one image under the policy; None (counted) when it gets no label."""
        found = observations.findings(self.policy)
        if found is None:
            self.left_out += 1
            return None
        self.read += len(observations.uncertain)
        if not found:
            self.no_finding += 1
            return None
        return found

    def notes(self) -> list[str]:
        notes = []
        if self.left_out:
            notes.append(
                f"left out {self.left_out} images with an uncertain (-1) observation "
                "(uncertain=ignore; zeros or ones keep them)"
            )
        if self.read:
            meaning = "absent" if self.policy == "zeros" else "present"
            notes.append(
                f"read {self.read} uncertain (-1) observations as {meaning} (uncertain={self.policy})"
            )
        if self.no_finding:
            notes.append(
                f"left out {self.no_finding} images with no positive observation and No Finding not "
                "set (nothing to label them with)"
            )
        return notes
