"""The study's statistics: nested-bootstrap coverage on simulated studies with a known answer,
Holm over every reported p, p never 0, stratified resampling, and the memorization null."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxraug.experiment import stats
from cxraug.experiment.simulate import LABELS, Design, coverage, draw, true_effect
from cxraug.metrics.generative import memorization


def test_nested_interval_covers_a_known_effect_and_holds_its_false_positive_rate() -> None:
    effect = coverage(Design(delta=0.3, seeds=3), 30, n_boot=100, seed=7)
    assert effect["truth"] == pytest.approx(true_effect(Design(delta=0.3, seeds=3)))
    assert effect["truth"] > 0.03
    assert effect["coverage"] >= 0.8, effect
    null = coverage(Design(delta=0.0, seeds=3), 30, n_boot=100, seed=11)
    assert null["rejection_rate"] <= 0.2, null
    assert null["coverage"] >= 0.8, null


def test_generator_variation_is_in_the_interval() -> None:
    """With a large generator spread, resampling generators widens the interval: one trained GAN's
    luck is not reported as the architecture's effect."""
    design = Design(delta=0.2, seeds=3, tau_gen=0.6)
    y, arms = draw(design, np.random.default_rng(3))
    nested = stats.compare_arms(y, arms, LABELS, n_boot=150, seed=0)["vs_base"]["gan"]["auc_macro"]
    cases_only = stats.nested_bootstrap(y, arms, LABELS, n_boot=150, seed=0, levels=("cases",))
    diff = cases_only[:, 1, 0] - cases_only[:, 0, 0]
    assert nested["ci_high"] - nested["ci_low"] > 1.5 * (np.quantile(diff, 0.975) - np.quantile(diff, 0.025))
    comps = stats.variance_components(y, arms, LABELS, n_boot=100, seed=0)["gan"]
    assert comps["generators"] > comps["cases"]


def test_holm_is_applied_to_every_reported_p_and_p_is_never_zero() -> None:
    assert stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    y, arms = draw(Design(delta=3.0, seeds=2, generators=2, cases=100), np.random.default_rng(0))
    result = stats.compare_arms(y, arms, LABELS, n_boot=50, seed=0)
    rows = [r for c in result["vs_base"].values() for r in c.values()]
    assert len(rows) == result["family_size"] == len(stats.metric_names(LABELS))
    raw = {str(i): r["p"] for i, r in enumerate(rows)}
    expected = stats.holm(raw)
    for i, r in enumerate(rows):
        assert r["p_holm"] == pytest.approx(expected[str(i)]) and r["p_holm"] >= r["p"] > 0
    primary = result["vs_base"]["gan"]["auc_macro"]
    assert primary["p"] == pytest.approx(2 / 51), "a huge effect gets the smallest p, 2 / (B + 1), not 0"
    assert primary["ci_low"] > 0 and primary["mdd"] > 0


def test_binary_task_reports_one_test_per_endpoint_and_resamples_keep_every_class() -> None:
    assert stats.metric_names(["normal", "pneumonia"]) == [
        "auc_macro",
        "sens/pneumonia",
        "spec/pneumonia",
    ]
    assert len(stats.metric_names(["a", "b", "c"])) == 1 + 9
    y = np.repeat([0, 1, 2], [3, 50, 7])
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = stats.stratified_indices(y, rng)
        assert np.bincount(y[idx], minlength=3).tolist() == [3, 50, 7]


def test_memorization_null_is_percentile_not_zero() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 8))
    holdout = rng.normal(size=(400, 8))
    fresh = memorization(rng.normal(size=(400, 8)), train, holdout, percentile=5.0)
    values = fresh.values()
    assert values["expected_null_fraction"] == 0.05
    assert 0.0 < values["null_fraction"] < 0.15 and 0.0 < values["copied_fraction"] < 0.15
    assert values["excess_p"] > 0.01
    copier = memorization(train[:400] + 1e-3, train, holdout, percentile=5.0).values()
    assert copier["copied_fraction"] == 1.0 and 0 < copier["excess_p"] < 1e-6


def test_experiment_results_carry_the_design(cxraug_cli, cxraug_workspace) -> None:
    """A tiny study end to end: design, Holm family, variance components and the report's sections."""
    args = [
        "data",
        "prepare",
        "phantom",
        "--size",
        "16",
        "--opt",
        "n_per_class=12",
        "--opt",
        "classes=covid,normal",
    ]
    assert cxraug_cli(*args).exit_code == 0
    out = cxraug_workspace.root / "exp"
    study = ["experiment", "--gan", "acgan", "--gan-seeds", "2", "--classifier", "cnn", "--seeds", "2"]
    study += ["--epochs", "1", "--gan-kimg", "0.016", "--arms", "base,gan", "--synthetic", "8"]
    study += ["--opt", "gan.latent_dim=8", "--opt", "gan.ngf=8", "--opt", "gan.ndf=8"]
    study += ["--opt", "classifier.input_size=16", "--opt", "classifier.width=4", "--out", str(out)]
    result = cxraug_cli(*study)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "experiment.json").read_text())["results"]
    assert results["design"]["generators"] == 2 and results["design"]["seeds"] == 2
    assert results["design"]["family_size"] == 3 and set(results["variance"]["gan"]) == {
        "generators",
        "seeds",
        "cases",
    }
    assert all(r["p"] > 0 for r in results["delong_per_run"])
    report = (out / "report.md").read_text()
    for section in ("**Design.**", "Holm", "## Conclusion", "Where the uncertainty comes from", "MDD"):
        assert section in report
    (out / "report.md").unlink()
    again = cxraug_cli("experiment", "--out", str(out), "--reanalyse")
    assert again.exit_code == 0, again.output
    assert (out / "report.md").read_text() == report, "the same predictions give the same analysis"


def test_a_reused_gan_that_saw_the_test_images_is_refused(cxraug_cli, cxraug_workspace) -> None:
    for name, split_seed in (("a", "0"), ("b", "1")):
        args = ["data", "prepare", "phantom", "--size", "16", "--name", name, "--seed", split_seed]
        assert cxraug_cli(*args, "--opt", "n_per_class=12", "--opt", "classes=covid,normal").exit_code == 0
    gan = ["train-gan", "acgan", "--data", "a", "--kimg", "0.016", "--batch-size", "8"]
    assert cxraug_cli(*gan, "--opt", "latent_dim=8", "--opt", "ngf=8", "--opt", "ndf=8").exit_code == 0
    run = sorted((cxraug_workspace.runs_dir / "gan").iterdir())[-1]
    study = ["experiment", "--data", "b", "--gan", str(run), "--classifier", "cnn", "--seeds", "1"]
    study += ["--epochs", "1", "--arms", "base,gan", "--synthetic", "4"]
    study += ["--opt", "classifier.input_size=16", "--opt", "classifier.width=4"]
    refused = cxraug_cli(*study, "--out", str(cxraug_workspace.root / "refused"))
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "are in the study's val/test splits" in text, text
    assert "--allow-gan-overlap" in text and "Traceback" not in text
    out = cxraug_workspace.root / "overridden"
    allowed = cxraug_cli(*study, "--allow-gan-overlap", "--out", str(out))
    assert allowed.exit_code == 0, allowed.output
    assert "Provenance check overridden" in (out / "report.md").read_text()
    clean = [
        "experiment",
        "--data",
        "a",
        "--gan",
        str(run),
        *study[5:],
        "--out",
        str(cxraug_workspace.root / "ok"),
    ]
    assert cxraug_cli(*clean).exit_code == 0, "a GAN trained on the study's own training split is accepted"


def test_r1_gamma_uses_the_batch_really_trained_with(cxraug_cli, cxraug_workspace) -> None:
    from cxraug.data.prepared import PreparedDataset
    from cxraug.plugins import build_registry, get_plugin_manager
    from cxraug.training.gan_run import GanSettings
    from cxraug.training.gan_trainer import GANTrainer

    args = ["data", "prepare", "phantom", "--size", "32", "--name", "few", "--opt", "n_per_class=6"]
    assert cxraug_cli(*args, "--opt", "classes=covid").exit_code == 0
    dataset = PreparedDataset(cxraug_workspace.dataset_dir("few"))
    cls = build_registry(get_plugin_manager()).gan("stylegan2")
    small = {"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16, "mapping_layers": 2}
    settings = GanSettings(arch="stylegan2", data="few", classes=["covid"], size=32, batch_size=64, kimg=1)
    trainer = GANTrainer(cls, cls.Options(**small), settings, dataset, cxraug_workspace.root / "r1")
    unit = trainer.units[0]
    batch = trainer._budget(len(unit.images))[0]
    assert batch == len(unit.images) < 64
    gan = trainer.build_gan(unit, 0, batch)
    assert gan.r1_gamma == pytest.approx(2e-4 * 32**2 / batch)
