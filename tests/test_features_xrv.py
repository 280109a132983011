"""TorchXRayVision DenseNet-121 features (--features xrv): loading, preprocessing, cache, errors,
progress, and `cxraug evaluate` reporting Inception and X-ray distances side by side.

The weights are made here (xrv's DenseNet with a seeded random init, saved the ways a user may have
them: a state dict, and the whole pickled model torchxrayvision publishes, in torch's zip and
legacy formats) and loaded through the real --xrv-weights path; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import cxraug.ui as ui
from cxraug.data.prepared import PreparedDataset
from cxraug.errors import CxrError
from cxraug.evaluation.engine import EvalRequest, read_image_folder, run_evaluation
from cxraug.evaluation.report import write_reports
from cxraug.metrics import features as F
from cxraug.metrics.generative import fid
from cxraug.options import resolve_options
from cxraug.plugins import build_registry, get_plugin_manager

xrv = pytest.importorskip("torchxrayvision")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("xrv-weights")
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None)
    with torch.no_grad():  # running statistics other than 0/1, so normalisation is exercised
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    paths = {"state": folder / "state.pt", "model": folder / "model.pt", "legacy": folder / "legacy.pt"}
    torch.save(model.state_dict(), paths["state"])
    torch.save(model, paths["model"])
    torch.save(model, paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.fixture
def small_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """The network at 32 px instead of 224: the same layers and pooling, 50x less work on a CPU."""
    monkeypatch.setattr(F, "XRV_RESOLUTION", 32)


def test_features_are_1024_pooled_densenet_features_at_224_px(weights: dict[str, Path]) -> None:
    ext = F.xrv_extractor(weights["state"])
    images = _images(1, size=40)
    images[:, :, :20], images[:, :, 30:] = 0, 255  # flat black and white regions survive resizing
    batch = ext.prepare(images, "clean")
    # single channel, 224 px, xrv's [-1024, 1024] scale (a 0 pixel is -1024, a 255 one 1024)
    assert batch.shape == (1, 1, 224, 224)
    assert batch.min() == pytest.approx(-1024) and batch.max() == pytest.approx(1024)
    feats = F.extract(images, ext)
    assert feats.shape == (1, F.XRV_DIM) and feats.dtype == np.float32 and np.isfinite(feats).all()


def test_features_equal_xrv_features2_and_are_deterministic(
    weights: dict[str, Path], small_input: None
) -> None:
    ext = F.xrv_extractor(weights["state"])
    images = _images(3)
    feats = F.extract(images, ext, batch_size=3)
    assert feats.shape == (3, F.XRV_DIM)
    assert np.array_equal(feats, F.extract(images, F.xrv_extractor(weights["state"]), batch_size=3))
    with torch.no_grad():
        expected = ext.model.features2(ext.prepare(images, "clean")).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-4)


def test_the_published_pickled_model_format_loads_the_same_tensors(weights: dict[str, Path]) -> None:
    """torchxrayvision publishes whole pickled models (torch.save(model)); zip and legacy format."""
    state = F.read_xrv_file(weights["state"])
    assert len(state) > 700 and "features.denseblock4.denselayer16.conv2.weight" in state
    for kind in ("model", "legacy"):
        other = F.read_xrv_file(weights[kind])
        assert other.keys() == state.keys()
        assert all(torch.equal(other[k], state[k]) for k in state)


def test_cache_hit_on_second_call_and_keys_differ_from_inception(
    weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_input: None
) -> None:
    calls: list[str] = []
    real_extract = F.extract

    def counting(images, extractor, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(extractor.name)
        return real_extract(images, extractor, *args, **kwargs)

    monkeypatch.setattr(F, "extract", counting)
    images = _images(4)
    cache = F.FeatureCache(tmp_path)
    first = F.FeatureService(cache=cache, xrv_weights=weights["state"])(images, "real", features="xrv")
    again = F.FeatureService(cache=cache, xrv_weights=weights["state"])(images, "real", features="xrv")
    assert calls == ["xrv-densenet121"], "the second service read the real split's features from disk"
    assert np.array_equal(first, again)
    xrv_ext = F.xrv_extractor(weights["state"])
    inception = F.CallableExtractor(lambda b: b.mean(dim=(2, 3)), "stand-in")
    assert F.cache_key(images, xrv_ext, "clean") != F.cache_key(images, inception, "clean")
    # xrv prepares images its own way, so the clean-fid mode does not split its cache
    assert F.cache_key(images, xrv_ext, "clean") == F.cache_key(images, xrv_ext, "legacy_tensorflow")
    meta = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert meta["extractor"].startswith("xrv-densenet121:sha256=")


def test_wrong_files_are_refused_in_one_line(weights: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, small)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    shapes = tmp_path / "shapes.pt"
    state = torch.load(weights["state"], weights_only=True)
    state["features.conv0.weight"] = torch.zeros(64, 3, 7, 7)  # an RGB first layer
    torch.save(state, shapes)
    for path, words in (
        (small, "tensors are missing"),
        (junk, "is not TorchXRayVision DenseNet weights"),
        (shapes, "features.conv0.weight has shape (64, 3, 7, 7)"),
        (tmp_path / "absent.pt", "does not exist"),
        (tmp_path, "is a folder, not a file"),
    ):
        with pytest.raises(CxrError) as info:
            F.xrv_extractor(path)
        message = str(info.value)
        assert words in message and "\n" not in message, message


def test_a_crafted_pickle_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"features.conv0.weight": Payload()}, path)
    with pytest.raises(CxrError, match="system, which is not a network layer"):
        F.xrv_extractor(path)
    assert not marker.exists()


def test_offline_without_weights_says_where_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(F.XRV_ENV, raising=False)
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(tmp_path / "xrv-cache"))
    # $CXRAUG_OFFLINE (set for every test) refuses before torchxrayvision tries
    with pytest.raises(CxrError) as info:
        F.xrv_extractor(None)
    assert F.XRV_URL in str(info.value) and "--xrv-weights" in str(info.value)

    # online, but the download itself fails the way urllib/requests fail without a network
    def no_network(url: str, filename: str) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("CXRAUG_OFFLINE")
    monkeypatch.setattr(xrv.utils, "download", no_network)
    with pytest.raises(CxrError) as info:
        F.xrv_extractor(None)
    message = str(info.value)
    assert "name resolution" in message and F.XRV_URL in message and "--xrv-weights FILE" in message
    assert "\n" not in message


def test_the_download_is_read_through_the_restricted_reader(
    weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online, torchxrayvision's own download fetches the published file into its cache; cxraug then
    reads it like a local file, so a tampered download cannot run code either."""
    cache = tmp_path / "xrv-cache"
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(cache))
    monkeypatch.delenv("CXRAUG_OFFLINE")
    asked: list[str] = []

    def served(url: str, filename: str) -> None:
        asked.append(url)
        Path(filename).write_bytes(weights["model"].read_bytes())

    monkeypatch.setattr(xrv.utils, "download", served)
    ext = F.xrv_extractor(None)
    assert asked == [F.XRV_URL] and (cache / Path(F.XRV_URL).name).is_file()
    local = F.xrv_extractor(weights["model"])
    assert ext.identity == local.identity  # same file, same sha256: same cache entries
    F.xrv_extractor(None)
    assert asked == [F.XRV_URL]  # the cached copy is used, not fetched again

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    (cache / Path(F.XRV_URL).name).unlink()

    def tampered(url: str, filename: str) -> None:
        torch.save({"features.conv0.weight": Payload()}, filename)

    monkeypatch.setattr(xrv.utils, "download", tampered)
    with pytest.raises(CxrError, match="delete it to download it again"):
        F.xrv_extractor(None)
    assert not marker.exists()


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # import now raises ImportError
    with pytest.raises(CxrError, match=r'pip install "cxraug\[xrv\]"'):
        F.import_xrv()


def test_extraction_logs_progress_when_output_is_not_a_terminal(
    weights: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    small_input: None,
) -> None:
    monkeypatch.setattr(ui, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(ui, "console", Console(file=io.StringIO(), force_terminal=False))
    caplog.set_level(logging.INFO, logger="cxraug.progress")
    images = _images(5)
    F.extract(images, F.xrv_extractor(weights["state"]), batch_size=2)
    F.extract(images, F.CallableExtractor(lambda b: b.mean(dim=(2, 3)), "inception-stand-in"), batch_size=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "cxraug.progress"]
    xrv_lines = [line for line in lines if line.startswith("xrv-densenet121 features of 5 images: ")]
    assert [line.split(": ")[1].split(",")[0] for line in xrv_lines] == ["2/5", "4/5", "5/5"]
    assert xrv_lines[-1].endswith(", done") and "/s, ETA" in xrv_lines[1]
    assert any(line.startswith("inception-stand-in features of 5 images: 5/5") for line in lines)


def test_evaluate_reports_inception_and_xrv_side_by_side(
    cxraug_cli,
    cxraug_workspace,
    standin_inception,
    weights: dict[str, Path],
    tmp_path: Path,
    small_input: None,
) -> None:
    prepared = cxraug_cli(
        "data",
        "prepare",
        "phantom",
        "--size",
        "16",
        "--opt",
        "n_per_class=7",
        "--opt",
        "classes=covid,normal",
    )
    assert prepared.exit_code == 0, prepared.output
    gen = tmp_path / "gen"
    rng = np.random.default_rng(1)
    for label in ("covid", "normal"):
        (gen / label).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(gen / label / f"{i}.png")
    out = tmp_path / "report"
    # KID and PRDC through the command line (FID below: a 2048-d stand-in FID is slow on a busy CPU)
    common = ["evaluate", "--kid", "--prdc", "--generated", str(gen), "--opt", "kid.num_subsets=5"]
    common += ["--inception-weights", str(standin_inception)]
    result = cxraug_cli(
        *common,
        "--features",
        "inception,xrv",
        "--xrv-weights",
        str(weights["state"]),
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["values"]) == {"kid", "prdc", "kid@xrv", "prdc@xrv"}
    assert doc["feature_networks"] == {
        "kid": "inception",
        "kid@xrv": "xrv",
        "prdc": "inception",
        "prdc@xrv": "xrv",
    }
    assert doc["values"]["kid@xrv"]["kid"] != doc["values"]["kid"]["kid"]
    assert "kid/covid" in doc["values"]["kid@xrv"] and "coverage" in doc["values"]["prdc@xrv"]
    assert doc["feature_extractors"]["xrv"].startswith("xrv-densenet121:sha256=")
    assert doc["feature_extractors"]["inception"].startswith("inception-torchscript:sha256=")
    assert doc["request"]["xrv_weights"] == str(weights["state"])
    report = (out / "report.md").read_text()
    assert "## By feature network" in report
    header = next(line for line in report.splitlines() if line.startswith("| metric | name | Inception"))
    assert "TorchXRayVision DenseNet-121" in header
    assert "| kid | kid/covid | " in report and "| prdc | coverage | " in report

    # FID on both networks, the xrv one equal to FID of the network's features computed directly
    registry = build_registry(get_plugin_manager())
    ds = PreparedDataset(cxraug_workspace.dataset_dir(json.loads(result.stdout)["sources"]["dataset"]))
    req = EvalRequest(
        metrics={"fid": resolve_options(registry.metric("fid").Options, plugin="fid")},
        dataset=ds,
        out_dir=tmp_path / "fid",
        generated_dir=gen,
        features=["inception", "xrv"],
        xrv_weights=weights["state"],
    )
    pooled = F.CallableExtractor(lambda b: torch.nn.functional.adaptive_avg_pool2d(b, 4).flatten(1), "pooled")
    fid_doc = run_evaluation(req, registry, cxraug_workspace, extractor_factory=lambda mode: pooled)
    ext = F.xrv_extractor(weights["state"])
    real = F.extract(np.asarray(ds.images[ds.indices("train")]), ext)
    generated = F.extract(read_image_folder(gen, ds.size)[0], ext)
    assert fid_doc["values"]["fid@xrv"]["fid"] == pytest.approx(fid(real, generated), rel=1e-6)
    assert fid_doc["values"]["fid"]["fid"] != fid_doc["values"]["fid@xrv"]["fid"]
    write_reports(fid_doc, tmp_path / "fid")
    side = (tmp_path / "fid" / "report.md").read_text().split("## By feature network")[1]
    row = next(line for line in side.splitlines() if line.startswith("| fid | fid | "))
    assert row.count("|") == 5 and f"{fid_doc['values']['fid@xrv']['fid']:.4f}" in row

    # offline without xrv weights: one line, exit 2, before any report folder is made
    offline = cxraug_cli(*common, "--features", "xrv", "--out", str(tmp_path / "r2"))
    assert offline.exit_code == 2 and "Traceback" not in offline.output
    assert "--xrv-weights" in offline.output and F.XRV_URL in offline.output.replace("\n", "")
    assert not (tmp_path / "r2").exists()
    not_weights = cxraug_cli(
        *common, "--features", "xrv", "--xrv-weights", "/etc/passwd", "--out", str(tmp_path / "r3")
    )
    assert not_weights.exit_code == 2 and "--xrv-weights /etc/passwd: not a file written by torch.save" in (
        not_weights.output
    )
    unknown = cxraug_cli(*common, "--features", "inception,resnet")
    assert unknown.exit_code == 2 and "--features" in unknown.output and "'xrv'" in unknown.output


def test_experiment_gan_quality_asks_for_both_networks_and_labels_xrv_values(
    cxraug_workspace, weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study hands --features/--xrv-weights to the evaluation engine and keeps X-ray values
    apart (fid@xrv); the engine itself is exercised above, so it is stubbed here."""
    import cxraug.evaluation.engine as engine
    from cxraug.experiment.runner import Experiment, ExperimentSettings

    seen: list[EvalRequest] = []

    def fake_run(req: EvalRequest, registry, workspace):  # type: ignore[no-untyped-def]
        seen.append(req)
        return {
            "values": {
                "fid": {"fid": 10.0},
                "kid": {"kid": 0.1, "kid_std": 0.01},
                "fid@xrv": {"fid": 3.0},
                "kid@xrv": {"kid": 0.03, "kid_std": 0.003},
            }
        }

    monkeypatch.setattr(engine, "run_evaluation", fake_run)
    monkeypatch.setattr(F, "inception_extractor", lambda *a, **k: None)
    settings = ExperimentSettings(
        features=["inception", "xrv"], xrv_weights=str(weights["state"]), device="cpu"
    )
    exp = Experiment(cxraug_workspace, build_registry(get_plugin_manager()), tmp_path / "study", settings)
    exp.commit(lambda s: s.update(gan_run=str(tmp_path / "gan-run")))
    quality = exp.gan_quality(source=None)  # type: ignore[arg-type]
    assert quality == {
        "fid": 10.0,
        "kid": 0.1,
        "kid_std": 0.01,
        "fid@xrv": 3.0,
        "kid@xrv": 0.03,
        "kid_std@xrv": 0.003,
    }
    assert seen[0].features == ["inception", "xrv"] and seen[0].xrv_weights == weights["state"]


def test_wrong_xrv_weights_are_refused_before_images_are_generated(tmp_path: Path) -> None:
    """evaluate checks --xrv-weights up front (check_xrv); a torch file of other tensors is caught there."""
    from cxraug.evaluation.command import check_xrv

    small = tmp_path / "small.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, small)
    with pytest.raises(CxrError, match="tensors are missing"):
        check_xrv(["inception", "xrv"], {}, str(small))
    check_xrv(["inception"], {}, str(small))  # not asked for: not read


def test_xrv_weights_without_xrv_features_are_said_to_be_unused(
    weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cxraug.evaluation.command import check_xrv

    monkeypatch.delenv(F.XRV_ENV, raising=False)
    caplog.set_level(logging.WARNING)
    check_xrv(["inception"], {"fid": {}}, str(weights["state"]))
    assert "is not used: no metric asks for xrv features" in caplog.text
    caplog.clear()
    monkeypatch.setenv(F.XRV_ENV, str(weights["state"]))  # set for good in the environment: quiet
    check_xrv(["inception"], {"fid": {}}, str(weights["state"]))
    assert caplog.text == ""


def test_offline_inception_error_names_its_url_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRAUG_OFFLINE", "1")
    try:
        F.fileio.check_online(F.INCEPTION_URL)
    except OSError as exc:
        message = str(F._download_error("clean", exc))
    assert message.count(F.INCEPTION_URL) == 1 and "--inception-weights" in message


def test_experiment_measures_xrv_when_inception_cannot_be_had(
    cxraug_workspace, weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline without Inception weights, the study still reports the X-ray FID/KID it can compute,
    and says why the Inception ones are missing."""
    import cxraug.evaluation.engine as engine
    from cxraug.experiment.runner import Experiment, ExperimentSettings

    seen: list[EvalRequest] = []

    def fake_run(req: EvalRequest, registry, workspace):  # type: ignore[no-untyped-def]
        seen.append(req)
        return {"values": {"fid@xrv": {"fid": 3.0}, "kid@xrv": {"kid": 0.03, "kid_std": 0.003}}}

    def no_inception(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise CxrError("download of inception-2015-12-05.pt failed: offline")

    monkeypatch.setattr(engine, "run_evaluation", fake_run)
    monkeypatch.setattr(F, "inception_extractor", no_inception)
    settings = ExperimentSettings(
        features=["inception", "xrv"], xrv_weights=str(weights["state"]), device="cpu"
    )
    exp = Experiment(cxraug_workspace, build_registry(get_plugin_manager()), tmp_path / "study", settings)
    exp.commit(lambda s: s.update(gan_run=str(tmp_path / "gan-run")))
    quality = exp.gan_quality(source=None)  # type: ignore[arg-type]
    assert seen[0].features == ["xrv"]
    assert quality["fid@xrv"] == 3.0 and "fid" not in quality
    assert quality["skipped_features"] == {"inception": "download of inception-2015-12-05.pt failed: offline"}
