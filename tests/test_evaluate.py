"""`cxraug evaluate`: clean-fid agreement, cached real statistics, reports, helpful errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cxraug.data.prepared import PreparedDataset
from cxraug.evaluation.engine import EvalRequest, run_evaluation
from cxraug.metrics.features import CallableExtractor
from cxraug.options import resolve_options
from cxraug.plugins import build_registry, get_plugin_manager


@pytest.fixture
def trained(cxraug_cli, cxraug_workspace):
    assert (
        cxraug_cli(
            "data",
            "prepare",
            "phantom",
            "--size",
            "16",
            "--name",
            "d",
            "--opt",
            "n_per_class=10",
            "--opt",
            "classes=covid,normal",
        ).exit_code
        == 0
    )
    assert (
        cxraug_cli(
            "train-gan",
            "acgan",
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
        ).exit_code
        == 0
    )
    assert cxraug_cli("train-classifier", "cnn", "--epochs", "1", "--batch-size", "8").exit_code == 0
    return cxraug_workspace


def test_evaluate_everything_with_report(cxraug_cli, trained, standin_inception) -> None:
    out = trained.root / "rep"
    result = cxraug_cli(
        "evaluate",
        "--fid",
        "--kid",
        "--prdc",
        "--memorization",
        "--roc",
        "--n",
        "12",
        "--inception-weights",
        str(standin_inception),
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["values"]) == {"fid", "kid", "prdc", "memorization", "roc"}
    assert doc["values"]["fid"]["fid"] > 0 and "fid/covid" in doc["values"]["fid"]
    assert 0 <= doc["values"]["roc"]["auc_macro"] <= 1
    assert doc["sources"]["gan_run"].endswith("acgan-d") and doc["sources"]["classifier"] == "cnn"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # ROC, confusion, samples, pairs, GAN losses
    assert "auc_macro" in html and (out / "report.md").is_file()
    assert len(list((out / "generated").rglob("*.png"))) == 12
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["values"] == doc["values"]


def test_default_metrics_and_missing_inputs(cxraug_cli, cxraug_workspace, standin_inception) -> None:
    nothing = cxraug_cli("evaluate")
    assert nothing.exit_code == 2 and "nothing to evaluate yet" in nothing.output
    assert cxraug_cli("data", "prepare", "phantom", "--size", "16", "--opt", "n_per_class=6").exit_code == 0
    roc = cxraug_cli("evaluate", "--roc")
    assert roc.exit_code == 2 and "cxraug train-classifier" in roc.output
    fid = cxraug_cli("evaluate", "--fid", "--inception-weights", str(standin_inception))
    assert fid.exit_code == 2 and "cxraug train-gan" in fid.output
    missing = cxraug_cli(
        "evaluate",
        "--fid",
        "--inception-weights",
        str(cxraug_workspace.root / "none.pt"),
        "--generated",
        str(cxraug_workspace.root),
    )
    assert missing.exit_code == 2


def test_generated_folder_and_offline_message(cxraug_cli, cxraug_workspace, tmp_path, monkeypatch) -> None:
    assert cxraug_cli("data", "prepare", "phantom", "--size", "16", "--opt", "n_per_class=6").exit_code == 0
    gen = tmp_path / "gen" / "covid"
    gen.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(gen / f"{i}.png")
    monkeypatch.delenv("CXRAUG_INCEPTION_WEIGHTS", raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # no network
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = cxraug_cli("evaluate", "--fid", "--generated", str(tmp_path / "gen"))
    assert result.exit_code == 2
    assert "--inception-weights" in result.output and "Traceback" not in result.output


def _pooled_extractor(calls: list[int]):
    weight = torch.randn(3 * 16, 32, generator=torch.Generator().manual_seed(0))

    def fn(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        pooled = torch.nn.functional.adaptive_avg_pool2d(batch / 255.0, 4).flatten(1)
        return pooled @ weight

    return fn


def test_fid_agrees_with_cleanfid_and_real_stats_are_cached(trained, tmp_path) -> None:
    """Our FID equals clean-fid's compute_fid on the same folders with the same feature extractor."""
    from cleanfid import fid as cleanfid

    registry = build_registry(get_plugin_manager())
    ds = PreparedDataset(trained.dataset_dir("d"))
    calls: list[int] = []
    fn = _pooled_extractor(calls)
    cls = registry.metric("fid")
    req = EvalRequest(
        metrics={"fid": resolve_options(cls.Options, plugin="fid")},
        dataset=ds,
        out_dir=tmp_path / "r1",
        gan_run=sorted((trained.runs_dir / "gan").iterdir())[-1],
        n=10,
    )
    doc = run_evaluation(
        req, registry, trained, extractor_factory=lambda mode: CallableExtractor(fn, "pooled")
    )
    ours = doc["values"]["fid"]["fid"]
    first_calls = sum(calls)
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    for k, i in enumerate(ds.indices("train")):
        Image.fromarray(np.asarray(ds.images[i])).save(real_dir / f"{k:04d}.png")
    gen_dir = tmp_path / "gen"
    gen_dir.mkdir()
    for k, p in enumerate(sorted((tmp_path / "r1" / "generated").rglob("*.png"))):
        Image.open(p).save(gen_dir / f"{k:04d}.png")

    def cleanfid_extractor(x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    theirs = cleanfid.compute_fid(
        str(real_dir),
        str(gen_dir),
        mode="clean",
        num_workers=0,
        batch_size=8,
        custom_feat_extractor=cleanfid_extractor,
        verbose=False,
        device=torch.device("cpu"),
    )
    assert abs(ours - theirs) < 1e-3
    # a second evaluation only featurises the generated images: the real split's come from the cache
    calls.clear()
    req.out_dir = tmp_path / "r2"
    run_evaluation(req, registry, trained, extractor_factory=lambda mode: CallableExtractor(fn, "pooled"))
    assert sum(calls) == 10 < first_calls
