"""The built-in classifiers: shapes, trunk cuts, grayscale input, freezing, weight files, offline errors.

Every network here is built with random weights or from a file the test writes; a real download
would fail the test (see ``_offline``).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from urllib.error import URLError

import pluggy
import pytest
import torch
import torchvision
from pydantic import ValidationError
from torch import nn

from cxraug import hookspecs
from cxraug.errors import CxrError, OptionsError
from cxraug.interfaces import Classifier
from cxraug.options import resolve_options
from cxraug.plugins.classifiers import _common, alexnet, cnn, densenet121, inception_v3, resnet50, vgg16
from cxraug.plugins.classifiers._common import IMAGENET_MEAN, IMAGENET_STD, ImageNetInput, TransferNet

MODULES: dict[str, ModuleType] = {
    "alexnet": alexnet,
    "vgg16": vgg16,
    "resnet50": resnet50,
    "inception_v3": inception_v3,
    "cnn": cnn,
    "densenet121": densenet121,
}
IMAGENET = ["alexnet", "vgg16", "resnet50", "inception_v3", "densenet121"]
#: (channels, height, width) of each backbone's output at the classifier's input size.
TRUNK = {
    "alexnet": (256, 6, 6),
    "vgg16": (512, 7, 7),
    "resnet50": (2048, 7, 7),
    "inception_v3": (768, 17, 17),
    "densenet121": (1024, 7, 7),
}
FILES = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "inception_v3": "inception_v3_google-0cc3c7bd.pth",
    "densenet121": "densenet121-a639ec97.pth",
}
NUM_CLASSES = 3


def registered(module: ModuleType) -> type[Classifier]:
    pm = pluggy.PluginManager("cxraug")
    pm.add_hookspecs(hookspecs)
    pm.register(module)
    found: list[type[Classifier]] = []
    pm.hook.register_classifiers(register=found.append)
    assert len(found) == 1
    return found[0]


CLASSES: dict[str, type[Classifier]] = {name: registered(mod) for name, mod in MODULES.items()}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a small, busy CI machine more threads only contend (2x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache per test, and any attempt to download fails loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def built() -> dict[str, nn.Module]:
    """Each classifier with its default options and random weights, built once (the big ones are slow)."""
    torch.manual_seed(0)
    models = {}
    for name, cls in CLASSES.items():
        models[name] = cls().build(NUM_CLASSES, pretrained=False, weights=None).eval()
    return models


@pytest.fixture(scope="module")
def tv_densenet() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.densenet121(weights=None).state_dict()


def gray(name: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    size = CLASSES[name].input_size
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


# ------------------------------------------------------------------------------ registration


@pytest.mark.parametrize("name", list(MODULES))
def test_registered_with_the_contract(name: str) -> None:
    cls = CLASSES[name]
    assert issubclass(cls, Classifier) and cls.name == name
    assert cls.description and "\n" not in cls.description
    assert cls.__doc__ and MODULES[name].__doc__
    expected = {
        "alexnet": (224, 1e-4, True),
        "vgg16": (224, 1e-3, True),
        "resnet50": (224, 1e-4, True),
        "inception_v3": (299, 1e-5, True),
        "cnn": (128, 1e-3, False),
        "densenet121": (224, 1e-4, True),
    }[name]
    assert (cls.input_size, cls.default_lr, cls.pretrained_by_default) == expected


@pytest.mark.parametrize("name", IMAGENET)
def test_expected_weight_files(name: str) -> None:
    weights = CLASSES[name].imagenet_weights  # type: ignore[attr-defined]
    assert _common.weights_filename(weights) == FILES[name]


@pytest.mark.parametrize("name", list(MODULES))
def test_options_reject_unknown_keys(name: str) -> None:
    options = CLASSES[name].Options
    with pytest.raises(ValidationError):
        options(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(OptionsError, match="unknown key 'bogus'"):
        resolve_options(options, plugin=name, opts={"bogus": 1})


def test_freeze_defaults() -> None:
    frozen = {name: CLASSES[name]().options.freeze_backbone for name in IMAGENET}  # type: ignore[attr-defined]
    assert frozen == {
        "alexnet": False,
        "vgg16": True,
        "resnet50": True,
        "inception_v3": True,
        "densenet121": False,
    }
    with pytest.raises(OptionsError, match="dropout"):
        resolve_options(CLASSES["vgg16"].Options, plugin="vgg16", opts={"dropout": 1.5})


# ------------------------------------------------------------------- shapes and trunk cuts


@pytest.mark.parametrize("name", IMAGENET)
def test_trunk_cut_grayscale_input_and_logits(name: str, built: dict[str, nn.Module]) -> None:
    model = built[name]
    assert isinstance(model, TransferNet)
    x = gray(name)
    with torch.no_grad():
        feats = model.features(x)
        # The grey channel goes into the unchanged 3-channel ImageNet trunk, replicated and normalised.
        mean = torch.tensor(IMAGENET_MEAN if name != "inception_v3" else (0.5,) * 3).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD if name != "inception_v3" else (0.5,) * 3).view(1, 3, 1, 1)
        reference = model.backbone((x.repeat(1, 3, 1, 1) - mean) / std)
        logits = model.head(feats)
    assert tuple(feats.shape) == (1, *TRUNK[name])
    # Float rounding of the two normalisations grows through 50+ random layers: compare to scale.
    torch.testing.assert_close(feats, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    assert first_conv(model.backbone).in_channels == 3
    assert logits.shape == (1, NUM_CLASSES) and logits.dtype == torch.float32


def test_trunks_end_where_published(built: dict[str, nn.Module]) -> None:
    vgg = built["vgg16"].backbone
    assert isinstance(vgg[-1], nn.MaxPool2d)  # block5_pool
    assert sum(isinstance(m, nn.Conv2d) for m in vgg) == 13
    assert [n for n, _ in built["resnet50"].backbone.named_children()][-1] == "layer4"
    inception_names = [n for n, _ in built["inception_v3"].backbone.named_children()]
    assert inception_names[-1] == "Mixed_6e" and "Mixed_7a" not in inception_names
    heads = {name: [m for m in built[name].head.modules() if isinstance(m, nn.Linear)] for name in TRUNK}
    for name in ("vgg16", "resnet50", "inception_v3"):
        c, h, w = TRUNK[name]
        dims = [(m.in_features, m.out_features) for m in heads[name]]
        assert dims == [(c * h * w, 1024), (1024, 64), (64, NUM_CLASSES)]
    assert heads["alexnet"][-1].out_features == NUM_CLASSES
    assert [(m.in_features, m.out_features) for m in heads["densenet121"]] == [(1024, NUM_CLASSES)]


def test_inception_trunk_matches_torchvision_with_transform_input(built: dict[str, nn.Module]) -> None:
    """The mean = std = 0.5 input is what torchvision's transform_input gives the Google weights."""
    ours = built["inception_v3"]
    tv = torchvision.models.Inception3(aux_logits=False, transform_input=True, init_weights=False).eval()
    result = tv.load_state_dict(ours.backbone.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.split(".")[0] in {"Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"} for k in result.missing_keys)
    captured: list[torch.Tensor] = []
    tv.Mixed_6e.register_forward_hook(lambda module, args, out: captured.append(out))
    x = gray("inception_v3")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tv((x.expand(-1, 3, -1, -1) - mean) / std)
        feats = ours.features(x)
    # Random trunks reach ~1e8 here: compare relative to the scale.
    torch.testing.assert_close(feats, captured[0], rtol=1e-4, atol=1e-5 * feats.abs().max().item())


def test_imagenet_input_broadcasts_the_grey_channel() -> None:
    norm = ImageNetInput()
    x = torch.rand(2, 1, 8, 8)
    out = norm(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.repeat(1, 3, 1, 1) - mean) / std)
    assert out.shape == (2, 3, 8, 8) and out.is_contiguous()
    assert not list(norm.state_dict())  # constants, not checkpointed
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        norm(torch.rand(2, 2, 8, 8))


def test_full_forward_batch_of_two(built: dict[str, nn.Module]) -> None:
    for name in ("alexnet", "densenet121", "cnn"):
        with torch.no_grad():
            out = built[name](gray(name, batch=2))
        assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------ freezing


def test_frozen_backbone_is_excluded_and_stays_in_eval(built: dict[str, nn.Module]) -> None:
    for name in ("vgg16", "resnet50", "inception_v3"):
        model = built[name]
        assert not any(p.requires_grad for p in model.backbone.parameters())
        groups = CLASSES[name]().param_groups(model, 1e-3)
        ids = {id(p) for g in groups for p in g["params"]}
        assert ids == {id(p) for p in model.head.parameters()}
        assert all(g["lr"] == 1e-3 for g in groups)
    model = built["resnet50"].train()
    try:
        assert model.head.training and not model.backbone.training
        assert not any(m.training for m in model.backbone.modules())
    finally:
        model.eval()


def test_freeze_backbone_training_step_leaves_backbone_untouched() -> None:
    torch.manual_seed(0)
    cls = CLASSES["densenet121"]
    model = cls(cls.Options(freeze_backbone=True)).build(2, pretrained=False, weights=None)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = [p.detach().clone() for p in model.head.parameters()]
    opt = torch.optim.Adam(cls().param_groups(model, 1e-2)[0]["params"], lr=1e-2)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.rand(2, 1, 64, 64)), torch.tensor([0, 1]))
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    for key, value in model.backbone.state_dict().items():  # running stats included
        assert torch.equal(value, before[key]), key
    assert not all(torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))


def test_unfrozen_backbone_is_trained(built: dict[str, nn.Module]) -> None:
    for name in ("alexnet", "densenet121"):
        model = built[name]
        assert all(p.requires_grad for p in model.parameters())
        (group,) = CLASSES[name]().param_groups(model, 1e-4)
        assert len(group["params"]) == len(list(model.parameters()))
    cls = CLASSES["alexnet"]
    frozen = cls(cls.Options(freeze_backbone=True)).build(2, pretrained=False, weights=None)
    assert not any(p.requires_grad for p in frozen.backbone[0].parameters())  # features
    assert all(p.requires_grad for p in frozen.head.parameters())


# ------------------------------------------------------------------------- local weights files


def densenet_file(state: dict[str, torch.Tensor], tmp_path: Path, layout: str) -> Path:
    if layout == "published":  # torchvision's download: 'norm.1'-style keys, no batch counters
        renamed = {}
        for key, value in state.items():
            if key.endswith("num_batches_tracked"):
                continue
            if "denselayer" in key:
                for new in ("norm1", "norm2", "conv1", "conv2"):
                    key = key.replace(f".{new}.", f".{new[:-1]}.{new[-1]}.")
            renamed[key] = value
        state = renamed
        assert "features.denseblock1.denselayer1.norm.1.weight" in state
        return save(state, tmp_path / "published.pth")
    if layout == "wrapped":
        return save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    if layout == "ddp":
        return save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    return save(state, tmp_path / "plain.pth")


@pytest.mark.parametrize("layout", ["plain", "wrapped", "ddp", "published"])
def test_local_weights_file_is_loaded_into_the_backbone(
    layout: str, tv_densenet: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = densenet_file(tv_densenet, tmp_path, layout)
    model = CLASSES["densenet121"]().build(NUM_CLASSES, pretrained=True, weights=path)
    for key, value in model.backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, tv_densenet[f"features.{key}"]), key
    assert model.head[-1].out_features == NUM_CLASSES


def test_weights_file_of_a_fine_tuned_model_fits(tmp_path: Path) -> None:
    """A file saved with a different head (e.g. 14 CheXpert findings) loads; the head is replaced."""
    torch.manual_seed(2)
    tv = torchvision.models.densenet121(weights=None, num_classes=14)
    path = save(tv.state_dict(), tmp_path / "chexpert.pth")
    model = CLASSES["densenet121"]().build(NUM_CLASSES, pretrained=True, weights=path)
    assert torch.equal(
        model.backbone.denseblock4.denselayer16.conv2.weight,
        tv.features.denseblock4.denselayer16.conv2.weight,
    )
    assert model.head[-1].out_features == NUM_CLASSES


def test_inception_weights_file_without_aux_logits(tmp_path: Path) -> None:
    torch.manual_seed(3)
    tv = torchvision.models.Inception3(aux_logits=False, init_weights=False)
    path = save(tv.state_dict(), tmp_path / "inception.pth")
    model = CLASSES["inception_v3"]().build(NUM_CLASSES, pretrained=True, weights=path)
    assert torch.equal(
        model.backbone.Mixed_6e.branch7x7dbl_5.conv.weight, tv.Mixed_6e.branch7x7dbl_5.conv.weight
    )


def test_wrong_weights_file_names_the_file_and_keys(
    tv_densenet: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    build = CLASSES["densenet121"]().build
    other = save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(OptionsError, match=r"other\.pth") as info:
        build(NUM_CLASSES, pretrained=True, weights=other)
    assert "unexpected: foo.weight" in str(info.value) and "missing: features.conv0.weight" in str(info.value)

    bad_shape = dict(tv_densenet, **{"features.conv0.weight": torch.zeros(64, 1, 7, 7)})
    path = save(bad_shape, tmp_path / "shape.pth")
    with pytest.raises(OptionsError, match=r"shape\.pth.*wrong shape: features\.conv0\.weight"):
        build(NUM_CLASSES, pretrained=True, weights=path)

    pickled = save(nn.Linear(1, 1), tmp_path / "pickled.pth")
    with pytest.raises(OptionsError, match=r"pickled\.pth: not a PyTorch weights file of tensors only"):
        build(NUM_CLASSES, pretrained=True, weights=pickled)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(OptionsError, match=r"junk\.pth: not a PyTorch weights file"):
        build(NUM_CLASSES, pretrained=True, weights=junk)
    with pytest.raises(OptionsError, match=r"missing\.pth: no such file.*densenet121-a639ec97\.pth"):
        build(NUM_CLASSES, pretrained=True, weights=tmp_path / "missing.pth")
    with pytest.raises(OptionsError, match="not a state_dict"):
        build(NUM_CLASSES, pretrained=True, weights=save([1, 2], tmp_path / "list.pth"))
    with pytest.raises(OptionsError, match="--no-pretrained"):
        build(NUM_CLASSES, pretrained=False, weights=other)


# --------------------------------------------------------------------- hub cache and offline


@pytest.mark.parametrize("name", IMAGENET)
def test_offline_error_names_file_cache_and_weights_flag(
    name: str, _offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(self: object, *args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", unreachable)
    with pytest.raises(CxrError) as info:
        CLASSES[name]().build(NUM_CLASSES, pretrained=True, weights=None)
    message = str(info.value)
    assert FILES[name] in message and str(_offline / FILES[name]) in message
    assert "--weights PATH" in message and "--no-pretrained" in message
    assert not isinstance(info.value, OptionsError)


def test_weights_already_in_the_hub_cache_are_used(
    _offline: Path, tv_densenet: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    _offline.mkdir(parents=True)
    published = densenet_file(tv_densenet, tmp_path, "published")
    published.rename(_offline / FILES["densenet121"])
    model = CLASSES["densenet121"]().build(NUM_CLASSES, pretrained=True, weights=None)
    assert torch.equal(model.backbone.conv0.weight, tv_densenet["features.conv0.weight"])


def test_corrupt_cached_file_says_to_delete_it(_offline: Path) -> None:
    _offline.mkdir(parents=True)
    (_offline / FILES["alexnet"]).write_bytes(b"truncated")
    with pytest.raises(CxrError, match=r"alexnet-owt-7be5be79\.pth exists but could not be read.*delete it"):
        CLASSES["alexnet"]().build(NUM_CLASSES, pretrained=True, weights=None)


# ----------------------------------------------------------------------------------- cnn


def test_cnn_trains_from_scratch() -> None:
    torch.manual_seed(0)
    cls = CLASSES["cnn"]
    model = cls(cls.Options(width=8, blocks=3, dense=16)).build(NUM_CLASSES, pretrained=False, weights=None)
    assert first_conv(model).in_channels == 1
    opt = torch.optim.Adam(cls().param_groups(model, cls.default_lr)[0]["params"], lr=cls.default_lr)
    x, y = torch.rand(4, 1, 128, 128), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.eval()(torch.rand(1, 1, 96, 96)).shape == (1, NUM_CLASSES)  # other sizes work too


def test_cnn_has_no_pretrained_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build = CLASSES["cnn"]().build
    with pytest.raises(OptionsError, match=r"from scratch.*--weights"):
        build(NUM_CLASSES, pretrained=True, weights=tmp_path / "w.pth")
    model = build(NUM_CLASSES, pretrained=True, weights=None)  # nothing to load: a warning, no error
    assert isinstance(model, nn.Module) and "from scratch" in caplog.text
