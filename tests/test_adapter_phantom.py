"""The phantom adapter draws deterministic, chest-like demo images with learnable class patterns."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from cxraug.errors import OptionsError
from cxraug.interfaces import Record
from cxraug.labels import VOCABULARY
from cxraug.options import resolve_options
from cxraug.plugins.datasets import phantom
from cxraug.plugins.datasets.phantom import PhantomAdapter, render_phantom
from cxraug.testing import check_dataset_adapter


def draw(**options: object) -> list[Record]:
    return list(PhantomAdapter(PhantomAdapter.Options(**options)).records(None))


def stack(label: str, n: int = 24, size: int = 64) -> np.ndarray:
    images = [render_phantom(label, size, np.random.default_rng([99, i])) for i in range(n)]
    return np.stack(images).astype(np.float64)


def test_is_an_offline_synthetic_adapter_registered_by_its_hook() -> None:
    registered: list[type] = []
    phantom.register_datasets(registered.append)
    assert registered == [PhantomAdapter]
    assert PhantomAdapter.needs_root is False and PhantomAdapter.synthetic is True
    defaults = PhantomAdapter.Options()
    assert defaults.classes == ("covid", "normal", "pneumonia")
    assert (defaults.n_per_class, defaults.size, defaults.seed) == (200, 64, 0)
    assert defaults.followup_fraction == 0.25
    for name, field in PhantomAdapter.Options.model_fields.items():
        assert field.description, f"option {name} has no description"


def test_records_follow_the_contract() -> None:
    adapter = PhantomAdapter(PhantomAdapter.Options(n_per_class=10, size=32))
    records = check_dataset_adapter(adapter, None)
    assert Counter(r.label for r in records) == {"covid": 10, "normal": 10, "pneumonia": 10}
    for i, rec in enumerate(r for r in records if r.label == "normal"):
        assert isinstance(rec.image, np.ndarray)
        assert rec.image.shape == (32, 32) and rec.image.dtype == np.uint8
        assert rec.source == "phantom" and rec.view == "PA" and rec.split is None
        assert rec.original == f"phantom:normal:{i}"
        assert rec.patient_id is not None and rec.patient_id.startswith("phantom-normal-")
    assert len({r.original for r in records}) == len(records)


def test_notes_say_the_images_are_not_real_x_rays() -> None:
    notes = " ".join(PhantomAdapter().notes()).lower()
    assert "synthetic" in notes and "not real x-rays" in notes and "demos and tests" in notes


@pytest.mark.parametrize(("n", "fraction"), [(20, 0.25), (7, 1.0), (5, 0.0), (1, 0.5)])
def test_followup_fraction_of_patients_have_two_images(n: int, fraction: float) -> None:
    records = draw(classes=("covid",), n_per_class=n, size=16, followup_fraction=fraction)
    per_patient = Counter(r.patient_id for r in records)
    assert len(records) == n
    assert len(per_patient) == math.ceil(n / (1 + fraction))
    assert set(per_patient.values()) <= {1, 2}
    assert sum(c == 2 for c in per_patient.values()) == n - len(per_patient)


def test_same_options_same_images_and_other_seed_other_images() -> None:
    first = draw(n_per_class=4, size=32, seed=3)
    again = draw(n_per_class=4, size=32, seed=3)
    other = draw(n_per_class=4, size=32, seed=4)
    assert [r.patient_id for r in first] == [r.patient_id for r in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))


def test_a_class_draws_the_same_whatever_other_classes_are_asked_for() -> None:
    alone = draw(classes=("normal",), n_per_class=3, size=24)
    mixed = [r for r in draw(classes=("covid", "normal"), n_per_class=3, size=24) if r.label == "normal"]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(alone, mixed, strict=True))


@pytest.mark.parametrize("size", [16, 28, 64, 100])
def test_every_label_renders_at_any_size(size: int) -> None:
    for label in VOCABULARY:
        image = render_phantom(label, size, np.random.default_rng(0))
        assert image.shape == (size, size) and image.dtype == np.uint8
        assert image.min() < 60 and image.max() > 150, (label, size)


def test_looks_like_a_chest_film() -> None:
    images = stack("normal")
    corners = images[:, :4, :4].mean()
    mediastinum = images[:, 10:30, 29:35].mean()
    lungs = np.r_[images[:, 16:34, 10:22].ravel(), images[:, 16:34, 44:54].ravel()].mean()
    abdomen = images[:, 56:, 20:44].mean()
    assert corners < 40  # air outside the body
    assert lungs < mediastinum - 50  # dark lungs either side of a bright mediastinum
    assert lungs < abdomen - 50  # lungs end at the diaphragm


def test_class_patterns_differ_where_they_should() -> None:
    normal, covid, pneumonia = stack("normal"), stack("covid"), stack("pneumonia")

    def lower_lateral(images: np.ndarray) -> float:
        return float(np.r_[images[:, 36:46, 6:16].ravel(), images[:, 36:46, 48:58].ravel()].mean())

    def asymmetry(images: np.ndarray) -> float:
        right, left = (
            images[:, 14:44, 8:26].mean(axis=(1, 2)),
            images[:, 14:40, 40:56].mean(axis=(1, 2)),
        )
        return float(np.abs(right - left).mean())

    # covid: bilateral peripheral lower-zone ground glass; pneumonia: one lung consolidated
    assert lower_lateral(covid) > lower_lateral(normal) + 10
    assert asymmetry(pneumonia) > 2 * asymmetry(normal)
    assert asymmetry(covid) < 1.5 * asymmetry(normal)
    viral, opacity = stack("pneumonia_viral"), stack("lung_opacity")
    lungs = (slice(None), slice(14, 40), slice(8, 56))
    assert viral[lungs].mean() > normal[lungs].mean() + 5
    assert opacity[lungs].mean() > normal[lungs].mean() + 3


def test_follow_up_shares_the_anatomy_generator() -> None:
    body = np.random.default_rng(5)
    first = render_phantom("normal", 32, np.random.default_rng(1), anatomy=body)
    again = render_phantom("normal", 32, np.random.default_rng(1), anatomy=np.random.default_rng(5))
    assert np.array_equal(first, again)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"classes": ("covid", "flu")}, "unknown label 'flu'"),
        ({"classes": ()}, "at least one class"),
        ({"classes": ("covid", "covid")}, "repeat"),
        ({"n_per_class": 0}, "greater than or equal to 1"),
        ({"size": 8}, "greater than or equal to 16"),
        ({"size": 2048}, "less than or equal to 1024"),
        ({"followup_fraction": 1.5}, "less than or equal to 1"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_bad_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PhantomAdapter.Options(**options)


def test_classes_from_the_command_line() -> None:
    options = resolve_options(
        PhantomAdapter.Options, plugin="phantom", opts={"classes": "lung_opacity,normal"}
    )
    assert options.classes == ("lung_opacity", "normal")
    with pytest.raises(OptionsError, match="unknown label 'flu'"):
        resolve_options(PhantomAdapter.Options, plugin="phantom", opts={"classes": "flu"})
    with pytest.raises(OptionsError, match="unknown label"):
        render_phantom("flu", 16, np.random.default_rng(0))
