"""`cxraug augment`: exact counts and origins, balanced filling, val/test untouched, filter."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cxraug.data.augment import balanced_counts
from cxraug.data.prepared import PreparedDataset


@pytest.fixture
def gan_workspace(cxraug_cli, cxraug_workspace):
    """A 3-class phantom dataset (imbalanced) and a tiny conditional GAN trained on it."""
    result = cxraug_cli(
        "data",
        "prepare",
        "phantom",
        "--size",
        "16",
        "--name",
        "base",
        "--opt",
        "n_per_class=12",
        "--opt",
        "classes=covid,normal,pneumonia",
    )
    assert result.exit_code == 0, result.output
    # a second, newer dataset: augment must still default to the GAN run's dataset
    result = cxraug_cli(
        "train-gan",
        "acgan",
        "--data",
        "base",
        "--kimg",
        "0.016",
        "--batch-size",
        "8",
        "--opt",
        "latent_dim=8",
        "--opt",
        "ngf=8",
        "--opt",
        "ndf=8",
    )
    assert result.exit_code == 0, result.output
    assert (
        cxraug_cli(
            "data", "prepare", "phantom", "--size", "16", "--name", "other", "--opt", "n_per_class=3"
        ).exit_code
        == 0
    )
    return cxraug_workspace


def _rows(ds: PreparedDataset, split: str) -> list[dict]:
    return [r for r in ds.rows if r["split"] == split]


def test_synthetic_and_classic_counts_origins_and_untouched_splits(cxraug_cli, gan_workspace) -> None:
    result = cxraug_cli("augment", "--synthetic", "7", "--classic", "5", "--name", "aug")
    assert result.exit_code == 0, result.output
    assert "training images by" in result.output
    src = PreparedDataset(gan_workspace.dataset_dir("base"))
    aug = PreparedDataset(gan_workspace.dataset_dir("aug"))
    info = json.loads((aug.path / "info.json").read_text())
    assert info["augmented_from"]["name"] == "base"
    new = [r for r in aug.rows if r["origin"] != "real"]
    assert (
        sum(r["origin"] == "synthetic" for r in new) == 7 and sum(r["origin"] == "classic" for r in new) == 5
    )
    assert all(r["split"] == "train" for r in new)
    synth = [json.loads(r["provenance"]) for r in new if r["origin"] == "synthetic"]
    assert all("gan_run" in p and "checkpoint_sha256" in p and p["seed"] for p in synth)
    steps = {step["augmenter"]: step for step in info["augment"]["steps"]}
    assert steps["synthetic"]["gan_run"] == synth[0]["gan_run"] and "gan_run" not in steps["classic"]
    classic = [r for r in new if r["origin"] == "classic"]
    src_patients = {r["patient_id"] for r in _rows(src, "train")}
    assert all(r["patient_id"] in src_patients for r in classic), "classic images keep their patient"
    # val and test: identical manifest rows and identical image bytes
    for split in ("val", "test"):
        a, b = src.indices(split), aug.indices(split)
        assert [src.rows[i] for i in a] == [aug.rows[i] for i in b]
        assert np.asarray(src.images[a]).tobytes() == np.asarray(aug.images[b]).tobytes()
    # balanced filling: the training split becomes as even as the counts allow
    totals = {lb: sum(1 for r in _rows(aug, "train") if r["label"] == lb) for lb in aug.classes}
    assert max(totals.values()) - min(totals.values()) <= 1


def test_label_and_per_class(cxraug_cli, gan_workspace) -> None:
    assert cxraug_cli("augment", "--synthetic", "4", "--label", "covid", "--name", "c").exit_code == 0
    ds = PreparedDataset(gan_workspace.dataset_dir("c"))
    assert [r["label"] for r in ds.rows if r["origin"] == "synthetic"] == ["covid"] * 4
    assert cxraug_cli("augment", "--per-class", "normal=2,pneumonia=3", "--name", "pc").exit_code == 0
    ds = PreparedDataset(gan_workspace.dataset_dir("pc"))
    labels = sorted(r["label"] for r in ds.rows if r["origin"] == "synthetic")
    assert labels == ["normal"] * 2 + ["pneumonia"] * 3


def test_quality_filter_with_a_real_classifier(cxraug_cli, gan_workspace) -> None:
    assert (
        cxraug_cli(
            "train-classifier", "cnn", "--data", "base", "--epochs", "1", "--batch-size", "8"
        ).exit_code
        == 0
    )
    runs = sorted((gan_workspace.runs_dir / "classifier").iterdir())
    ok = cxraug_cli(
        "augment",
        "--synthetic",
        "3",
        "--filter",
        str(runs[-1]),
        "--min-confidence",
        "0.0",
        "--name",
        "filtered",
    )
    assert ok.exit_code == 0, ok.output
    ds = PreparedDataset(gan_workspace.dataset_dir("filtered"))
    prov = [json.loads(r["provenance"]) for r in ds.rows if r["origin"] == "synthetic"]
    assert len(prov) == 3 and all("confidence" in p for p in prov)
    impossible = cxraug_cli(
        "augment",
        "--synthetic",
        "3",
        "--filter",
        str(runs[-1]),
        "--min-confidence",
        "1.0",
        "--name",
        "never",
        "--opt",
        "synthetic.max_tries=1",
    )
    assert impossible.exit_code == 2 and "min_confidence" in impossible.output
    assert not gan_workspace.dataset_dir("never").exists()


def test_augment_errors_and_no_overwrite(cxraug_cli, gan_workspace) -> None:
    cases = [
        (["augment"], "nothing to add"),
        (["augment", "--synthetic", "2", "--label", "flu"], "--label 'flu'"),
        (["augment", "--synthetic", "2", "--per-class", "covid=x"], "expected LABEL=N"),
        (["augment", "--synthetic", "2", "--gan", "nope"], "not found"),
        (["augment", "--classic", "2", "--opt", "rotation=3"], "prefix augmenter options"),
        (["augment", "--synthetic", "2", "--name", "base"], "is the source dataset"),
    ]
    for args, message in cases:
        result = cxraug_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert cxraug_cli("augment", "--classic", "2", "--name", "once", "--data", "base").exit_code == 0
    manifest = (gan_workspace.dataset_dir("once") / "manifest.csv").read_bytes()
    again = cxraug_cli("augment", "--classic", "3", "--name", "once", "--data", "base")
    assert again.exit_code == 2 and "--force" in again.output
    assert (gan_workspace.dataset_dir("once") / "manifest.csv").read_bytes() == manifest
    rows = list(csv.DictReader((gan_workspace.dataset_dir("once") / "manifest.csv").open()))
    assert sum(r["origin"] == "classic" for r in rows) == 2


def test_balanced_counts() -> None:
    assert balanced_counts({"a": 5, "b": 1, "c": 3}, 6, ["a", "b", "c"]) == {"a": 0, "b": 4, "c": 2}
    assert sum(balanced_counts({"a": 0}, 3, ["a"]).values()) == 3
