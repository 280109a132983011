"""NVlabs network pickles and rosinality checkpoints: read without running code, mapped onto StyleGAN2.

The miniature files follow the formats' public code (nothing is downloaded):

* NVlabs (stylegan2-ada-pytorch ``training/training_loop.py``, ``torch_utils/persistence.py``,
  ``training/networks.py``): a plain pickle of ``dict(training_set_kwargs, G, D, G_ema,
  augment_pipe)``, each network a persistence record ``_reconstruct_persistent_obj(meta)`` with
  ``meta = dict(type='class', version=6, module_src, class_name, state=<module __dict__>)``; the
  stand-in ``torch_utils.persistence`` / ``dnnlib.util`` modules exist only while pickling, so the
  stream has the same globals as a real file.
* rosinality (stylegan2-pytorch ``train.py``, ``model.py``): ``torch.save`` of the ``g``, ``d``,
  ``g_ema`` state dicts with the real key names, optimizer states, ``args`` (argparse.Namespace)
  and ``ada_aug_p``.

Channel counts are tiny (16 at 4x4 down to 4 at 32x32), which rosinality's fixed table would not
produce; names, layouts and nesting are the real ones.
"""

from __future__ import annotations

import argparse
import builtins
import json
import math
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxraug.errors import DataError
from cxraug.interfaces import GANSpec
from cxraug.plugins.gans.stylegan2 import StyleGAN2, StyleGAN2Options
from cxraug.plugins.gans.stylegan2_snapshots import LUMA
from cxraug.snapshotio import NVLABS_PKL, ROSINALITY_PT, read_snapshot

CHANNELS = {4: 16, 8: 16, 16: 8, 32: 4}  # channel_base=128, channel_max=16
Z, W, LAYERS = 8, 8, 2
OPTS = {"z_dim": Z, "w_dim": W, "mapping_layers": LAYERS, "channel_base": 128, "channel_max": 16}
CLI_OPTS = [x for k, v in OPTS.items() for x in ("--opt", f"{k}={v}")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------ NVlabs network pickle


class _Persistent:
    """Pickles exactly as a ``@persistent_class`` module does (persistence.py ``__reduce__``)."""

    reconstruct: Any = None  # set to the stand-in torch_utils.persistence._reconstruct_persistent_obj
    module_src = "# stand-in for training/networks.py\n"

    def __init__(self, class_name: str, params=None, buffers=None, modules=None, **attrs: Any) -> None:
        self.class_name = class_name
        self.state = {
            "training": False,
            "_parameters": OrderedDict(
                (k, torch.nn.Parameter(v, requires_grad=False)) for k, v in (params or {}).items()
            ),
            "_buffers": OrderedDict(buffers or {}),
            "_modules": OrderedDict(modules or {}),
            **attrs,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        meta = dict(
            type="class",
            version=6,
            module_src=self.module_src,
            class_name=self.class_name,
            state=self.state,
        )
        return (_Persistent.reconstruct, (meta,), None)

    def param(self, dotted: str) -> torch.Tensor:
        *path, leaf = dotted.split(".")
        node = self
        for part in path:
            node = node.state["_modules"][part]
        return (node.state["_parameters"] | node.state["_buffers"])[leaf].detach()


@pytest.fixture
def nvlabs_globals(monkeypatch: pytest.MonkeyPatch) -> type:
    """Stand-in ``torch_utils.persistence`` and ``dnnlib.util`` modules, only while the test runs."""
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta: Any) -> Any:
        raise AssertionError("reading a snapshot must never call the file's reconstruct function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    torch_utils.persistence = persistence  # type: ignore[attr-defined]

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict  # type: ignore[attr-defined]
    dnnlib.util = util  # type: ignore[attr-defined]
    for name, mod in [
        ("torch_utils", torch_utils),
        ("torch_utils.persistence", persistence),
        ("dnnlib", dnnlib),
        ("dnnlib.util", util),
    ]:
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(_Persistent, "reconstruct", _reconstruct_persistent_obj)
    return EasyDict


def _fc(n_in: int, n_out: int, lr: float = 1.0, bias_init: float = 0.0, act: str = "linear") -> _Persistent:
    return _Persistent(
        "FullyConnectedLayer",
        params={
            "weight": torch.randn(n_out, n_in) / lr,
            "bias": torch.full((n_out,), bias_init) + torch.randn(n_out),
        },
        activation=act,
        weight_gain=lr / math.sqrt(n_in),
        bias_gain=lr,
    )


def _filter() -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(f, f) / 64


def _synthesis_layer(n_in: int, n_out: int, res: int, up: int) -> _Persistent:
    return _Persistent(
        "SynthesisLayer",
        params={
            "weight": torch.randn(n_out, n_in, 3, 3),
            "noise_strength": torch.rand(()),
            "bias": torch.randn(n_out),
        },
        buffers={"resample_filter": _filter(), "noise_const": torch.randn(res, res)},
        modules={"affine": _fc(W, n_in, bias_init=1.0)},
        resolution=res,
        up=up,
        use_noise=True,
        activation="lrelu",
    )


def _generator(easydict: type, img_channels: int = 3, c_dim: int = 0) -> _Persistent:
    blocks = {}
    for res, ch in CHANNELS.items():
        modules: dict[str, Any] = {}
        params = {}
        if res == 4:
            params["const"] = torch.randn(ch, 4, 4)
        else:
            modules["conv0"] = _synthesis_layer(CHANNELS[res // 2], ch, res, up=2)
        modules["conv1"] = _synthesis_layer(ch, ch, res, up=1)
        modules["torgb"] = _Persistent(
            "ToRGBLayer",
            params={"weight": torch.randn(img_channels, ch, 1, 1), "bias": torch.randn(img_channels)},
            modules={"affine": _fc(W, ch, bias_init=1.0)},
            weight_gain=1 / math.sqrt(ch),
        )
        blocks[f"b{res}"] = _Persistent(
            "SynthesisBlock",
            params=params,
            buffers={"resample_filter": _filter()},
            modules=modules,
            resolution=res,
            in_channels=0 if res == 4 else CHANNELS[res // 2],
            architecture="skip",
        )
    mapping: dict[str, Any] = {}
    if c_dim:
        mapping["embed"] = _fc(c_dim, W)
    for i in range(LAYERS):
        mapping[f"fc{i}"] = _fc((Z + (W if c_dim else 0)) if i == 0 else W, W, lr=0.01, act="lrelu")
    num_ws = 2 * len(CHANNELS)
    return _Persistent(
        "Generator",
        modules={
            "synthesis": _Persistent("SynthesisNetwork", modules=blocks, img_resolution=32, num_ws=num_ws),
            "mapping": _Persistent(
                "MappingNetwork",
                modules=mapping,
                buffers={"w_avg": torch.randn(W)},
                z_dim=Z,
                c_dim=c_dim,
                w_dim=W,
                num_ws=num_ws,
                num_layers=LAYERS,
            ),
        },
        z_dim=Z,
        c_dim=c_dim,
        w_dim=W,
        img_resolution=32,
        img_channels=img_channels,
        _init_args=(),
        _init_kwargs=easydict(
            z_dim=Z,
            c_dim=c_dim,
            w_dim=W,
            img_resolution=32,
            img_channels=img_channels,
            mapping_kwargs=easydict(num_layers=LAYERS),
            synthesis_kwargs=easydict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None),
        ),
    )


def _conv(n_in: int, n_out: int, k: int, bias: bool = True) -> _Persistent:
    params = {"weight": torch.randn(n_out, n_in, k, k)}
    if bias:
        params["bias"] = torch.randn(n_out)
    # NVlabs' Conv2dLayer(bias=False) sets ``self.bias = None``: a plain attribute, not a parameter
    attrs = {} if bias else {"bias": None}
    return _Persistent("Conv2dLayer", params=params, buffers={"resample_filter": _filter()}, **attrs)


def _discriminator(img_channels: int = 3) -> _Persistent:
    blocks: dict[str, Any] = {}
    for res in (32, 16, 8):
        ch, out = CHANNELS[res], CHANNELS[res // 2]
        modules = {}
        if res == 32:
            modules["fromrgb"] = _conv(img_channels, ch, 1)
        modules |= {
            "conv0": _conv(ch, ch, 3),
            "conv1": _conv(ch, out, 3),
            "skip": _conv(ch, out, 1, bias=False),
        }
        blocks[f"b{res}"] = _Persistent(
            "DiscriminatorBlock", modules=modules, buffers={"resample_filter": _filter()}
        )
    c4 = CHANNELS[4]
    blocks["b4"] = _Persistent(
        "DiscriminatorEpilogue",
        modules={
            "mbstd": _Persistent("MinibatchStdLayer", group_size=4, num_channels=1),
            "conv": _conv(c4 + 1, c4, 3),
            "fc": _fc(c4 * 16, c4, act="lrelu"),
            "out": _fc(c4, 1),
        },
        cmap_dim=0,
    )
    return _Persistent("Discriminator", modules=blocks, c_dim=0, img_resolution=32, img_channels=img_channels)


def write_nvlabs_pkl(path: Path, easydict: type, **kw: Any) -> dict[str, _Persistent]:
    torch.manual_seed(1)
    nets = {"G": _generator(easydict, **kw), "D": _discriminator(kw.get("img_channels", 3))}
    nets["G_ema"] = _generator(easydict, **kw)
    data = {
        "training_set_kwargs": dict(
            class_name="training.dataset.ImageFolderDataset",
            path="~/datasets/cxr.zip",
            use_labels=False,
            max_size=16,
            xflip=False,
            resolution=32,
        ),
        "G": nets["G"],
        "D": nets["D"],
        "G_ema": nets["G_ema"],
        "augment_pipe": None,
    }
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return nets


# -------------------------------------------------------------------------- rosinality checkpoint


def _ros_generator(seed: int) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i in range(1, LAYERS + 1):  # style.0 is PixelNorm, without parameters
        sd[f"style.{i}.weight"] = r(W, Z if i == 1 else W) / 0.01
        sd[f"style.{i}.bias"] = r(W)
    c4 = CHANNELS[4]
    sd["input.input"] = r(1, c4, 4, 4)

    def styled(prefix: str, n_in: int, n_out: int, up: bool) -> None:
        sd[f"{prefix}.conv.weight"] = r(1, n_out, n_in, 3, 3)
        sd[f"{prefix}.conv.modulation.weight"] = r(n_in, W)
        sd[f"{prefix}.conv.modulation.bias"] = torch.ones(n_in) + r(n_in) * 0.1
        if up:
            sd[f"{prefix}.conv.blur.kernel"] = _filter() * 16
        sd[f"{prefix}.noise.weight"] = r(1)
        sd[f"{prefix}.activate.bias"] = r(n_out)

    def to_rgb(prefix: str, n_in: int, up: bool) -> None:
        if up:
            sd[f"{prefix}.upsample.kernel"] = _filter() * 16
        sd[f"{prefix}.bias"] = r(1, 3, 1, 1)
        sd[f"{prefix}.conv.weight"] = r(1, 3, n_in, 1, 1)
        sd[f"{prefix}.conv.modulation.weight"] = r(n_in, W)
        sd[f"{prefix}.conv.modulation.bias"] = torch.ones(n_in)

    styled("conv1", c4, c4, False)
    to_rgb("to_rgb1", c4, False)
    resolutions = sorted(CHANNELS)[1:]
    for k, res in enumerate(resolutions):
        styled(f"convs.{2 * k}", CHANNELS[res // 2], CHANNELS[res], True)
        styled(f"convs.{2 * k + 1}", CHANNELS[res], CHANNELS[res], False)
        to_rgb(f"to_rgbs.{k}", CHANNELS[res], True)
    for layer in range(2 * len(resolutions) + 1):
        res = 2 ** ((layer + 5) // 2)
        sd[f"noises.noise_{layer}"] = r(1, 1, res, res)
    return sd


def _ros_discriminator() -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["convs.0.0.weight"] = torch.randn(CHANNELS[32], 3, 1, 1, generator=g)
    sd["convs.0.1.bias"] = torch.randn(CHANNELS[32], generator=g)
    for i, res in enumerate((32, 16, 8), start=1):
        ch, out = CHANNELS[res], CHANNELS[res // 2]
        sd[f"convs.{i}.conv1.0.weight"] = torch.randn(ch, ch, 3, 3, generator=g)
        sd[f"convs.{i}.conv1.1.bias"] = torch.randn(ch, generator=g)
        sd[f"convs.{i}.conv2.0.kernel"] = _filter() * 16
        sd[f"convs.{i}.conv2.1.weight"] = torch.randn(out, ch, 3, 3, generator=g)
        sd[f"convs.{i}.conv2.2.bias"] = torch.randn(out, generator=g)
        sd[f"convs.{i}.skip.0.kernel"] = _filter() * 16
        sd[f"convs.{i}.skip.1.weight"] = torch.randn(out, ch, 1, 1, generator=g)
    c4 = CHANNELS[4]
    sd["final_conv.0.weight"] = torch.randn(c4, c4 + 1, 3, 3, generator=g)
    sd["final_conv.1.bias"] = torch.randn(c4, generator=g)
    sd["final_linear.0.weight"] = torch.randn(c4, c4 * 16, generator=g)
    sd["final_linear.0.bias"] = torch.randn(c4, generator=g)
    sd["final_linear.1.weight"] = torch.randn(1, c4, generator=g)
    sd["final_linear.1.bias"] = torch.randn(1, generator=g)
    return sd


def write_rosinality_pt(path: Path) -> dict[str, Any]:
    ckpt = {
        "g": _ros_generator(1),
        "d": _ros_discriminator(),
        "g_ema": _ros_generator(2),
        "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0, 0.99), "params": [0, 1]}]},
        "d_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0, 0.99), "params": [0]}]},
        "args": argparse.Namespace(path="lmdb", iter=800000, batch=16, size=32, r1=10, channel_multiplier=2),
        "ada_aug_p": 0.12,
    }
    torch.save(ckpt, path)
    return ckpt


# ----------------------------------------------------------------------------------- helpers


def make_gan(labels: list[str] | None = None, size: int = 32, **options: Any) -> StyleGAN2:
    torch.manual_seed(0)
    spec = GANSpec(image_size=size, labels=labels or ["all"], batch_size=2)
    return StyleGAN2(StyleGAN2Options(**{**OPTS, **options}), spec)


def luma(t: torch.Tensor) -> torch.Tensor:
    return sum(c * t[i : i + 1] for i, c in enumerate(LUMA))  # type: ignore[return-value]


# -------------------------------------------------------------------------------------- tests


def test_nvlabs_pkl_values_land_in_the_right_tensors(tmp_path, nvlabs_globals, monkeypatch):
    nets = write_nvlabs_pkl(tmp_path / "network-snapshot-000100.pkl", nvlabs_globals)
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        monkeypatch.delitem(sys.modules, name)  # a user has no NVlabs code installed
    snap = read_snapshot(tmp_path / "network-snapshot-000100.pkl")
    assert snap.format == NVLABS_PKL and set(snap.networks) == {"G", "D", "G_ema"}
    assert snap.extra["training_set_kwargs"]["resolution"] == 32
    gan = make_gan()
    report = gan.load_snapshot(snap)
    ema, g_src = nets["G_ema"], nets["G"]
    G_ema = gan.G_ema.state_dict()
    assert torch.equal(G_ema["mapping.layers.1.weight"], ema.param("mapping.fc1.weight"))
    assert torch.equal(G_ema["mapping.layers.0.bias"], ema.param("mapping.fc0.bias"))
    assert torch.equal(G_ema["mapping.w_avg"], ema.param("mapping.w_avg"))
    assert torch.equal(G_ema["synthesis.blocks.0.const"], ema.param("synthesis.b4.const"))
    assert torch.equal(G_ema["synthesis.blocks.2.conv1.weight"], ema.param("synthesis.b16.conv1.weight"))
    assert torch.equal(
        G_ema["synthesis.blocks.3.conv1.noise_const"], ema.param("synthesis.b32.conv1.noise_const")
    )
    assert torch.equal(
        G_ema["synthesis.blocks.1.conv0.affine.bias"], ema.param("synthesis.b8.conv0.affine.bias")
    )
    # the upsampling convolution is a true convolution in NVlabs' code: flipped for cxraug
    assert torch.equal(
        G_ema["synthesis.blocks.1.conv0.weight"], ema.param("synthesis.b8.conv0.weight").flip(2, 3)
    )
    # G comes from the pickle's G, not from G_ema
    assert torch.equal(gan.G.state_dict()["mapping.layers.1.weight"], g_src.param("mapping.fc1.weight"))
    D = gan.D.state_dict()
    assert torch.equal(D["blocks.1.conv1.weight"], nets["D"].param("b16.conv1.weight"))
    assert torch.equal(D["blocks.2.skip.weight"], nets["D"].param("b8.skip.weight"))
    assert torch.equal(D["fc.weight"], nets["D"].param("b4.fc.weight"))
    assert torch.equal(D["out.bias"], nets["D"].param("b4.out.bias"))
    # every cxraug tensor was provided; filters have no cxraug counterpart
    assert report["initial"] == []
    assert "G_ema.synthesis.b32.torgb.weight" not in report["unused"]
    assert "G_ema.synthesis.b32.resample_filter" in report["unused"]
    assert report["adapted"]["G_ema.synthesis.blocks.3.torgb.weight"].startswith("RGB->grey")
    assert report["adapted"]["D.blocks.0.fromrgb.weight"].startswith("RGB->grey")
    images = gan.generate(torch.randn(2, Z), torch.zeros(2, dtype=torch.long))
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()


def test_grayscale_rule_is_the_luma_of_the_rgb_output(tmp_path, nvlabs_globals):
    nets = write_nvlabs_pkl(tmp_path / "n.pkl", nvlabs_globals)
    gan = make_gan()
    gan.load_snapshot(read_snapshot(tmp_path / "n.pkl"))
    x = torch.randn(2, CHANNELS[32], 5, 5)
    # toRGB: the grey layer's output is 0.299 R + 0.587 G + 0.114 B of the RGB layer's output
    w_rgb, b_rgb = (
        nets["G_ema"].param("synthesis.b32.torgb.weight"),
        nets["G_ema"].param("synthesis.b32.torgb.bias"),
    )
    rgb = F.conv2d(x, w_rgb, b_rgb)
    grey_layer = gan.G_ema.synthesis.blocks[3].torgb
    grey = F.conv2d(x, grey_layer.weight, grey_layer.bias)
    expected = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(grey[:, 0], expected, rtol=1e-5, atol=1e-5)
    # fromRGB: a grey image through the summed kernel == its RGB copy through the RGB kernel
    y = torch.randn(2, 1, 6, 6)
    w_rgb = nets["D"].param("b32.fromrgb.weight")
    fromrgb = gan.D.blocks[0].fromrgb
    torch.testing.assert_close(
        F.conv2d(y, fromrgb.weight), F.conv2d(y.repeat(1, 3, 1, 1), w_rgb), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(fromrgb.bias, nets["D"].param("b32.fromrgb.bias"))


def test_conditional_cxraug_run_from_an_unconditional_snapshot(tmp_path, nvlabs_globals):
    nets = write_nvlabs_pkl(tmp_path / "n.pkl", nvlabs_globals)
    gan = make_gan(labels=["covid", "normal"])
    before = gan.G_ema.state_dict()["mapping.layers.0.weight"].clone()
    report = gan.load_snapshot(read_snapshot(tmp_path / "n.pkl"))
    fc0 = gan.G_ema.state_dict()["mapping.layers.0.weight"]
    assert torch.equal(fc0[:, :Z], nets["G_ema"].param("mapping.fc0.weight"))
    assert torch.equal(fc0[:, Z:], before[:, Z:]), "label-embedding columns stay at their initial values"
    assert "label-embedding columns" in report["adapted"]["G_ema.mapping.layers.0.weight"]
    assert {"G_ema.mapping.embed.weight", "D.embed.weight", "D.out.weight"} <= set(report["initial"])


def test_rosinality_checkpoint_values_land(tmp_path):
    ckpt = write_rosinality_pt(tmp_path / "050000.pt")
    snap = read_snapshot(tmp_path / "050000.pt")
    assert snap.format == ROSINALITY_PT
    assert snap.extra["args"]["channel_multiplier"] == 2 and snap.extra["ada_aug_p"] == pytest.approx(0.12)
    gan = make_gan()
    report = gan.load_snapshot(snap)
    ema, G = ckpt["g_ema"], gan.G_ema.state_dict()
    assert torch.equal(G["mapping.layers.0.weight"], ema["style.1.weight"])
    assert torch.equal(G["mapping.layers.1.bias"], ema["style.2.bias"])
    assert torch.equal(G["synthesis.blocks.0.const"], ema["input.input"][0])
    assert torch.equal(G["synthesis.blocks.0.conv1.weight"], ema["conv1.conv.weight"][0])
    assert torch.equal(G["synthesis.blocks.0.conv1.bias"], ema["conv1.activate.bias"])
    assert G["synthesis.blocks.0.conv1.noise_strength"] == ema["conv1.noise.weight"][0]
    assert torch.equal(G["synthesis.blocks.2.conv0.weight"], ema["convs.2.conv.weight"][0].flip(2, 3))
    assert torch.equal(G["synthesis.blocks.2.conv1.affine.weight"], ema["convs.3.conv.modulation.weight"])
    assert torch.equal(G["synthesis.blocks.2.conv0.noise_const"], ema["noises.noise_3"][0, 0])
    assert torch.equal(G["synthesis.blocks.3.conv1.noise_const"], ema["noises.noise_6"][0, 0])
    torch.testing.assert_close(G["synthesis.blocks.1.torgb.weight"], luma(ema["to_rgbs.0.conv.weight"][0]))
    torch.testing.assert_close(G["synthesis.blocks.1.torgb.bias"], luma(ema["to_rgbs.0.bias"].reshape(3)))
    assert torch.equal(gan.G.state_dict()["mapping.layers.0.weight"], ckpt["g"]["style.1.weight"])
    D, d = gan.D.state_dict(), ckpt["d"]
    assert torch.equal(D["blocks.0.fromrgb.weight"], d["convs.0.0.weight"].sum(1, keepdim=True))
    assert torch.equal(D["blocks.1.conv0.weight"], d["convs.2.conv1.0.weight"])
    assert torch.equal(D["blocks.1.conv1.bias"], d["convs.2.conv2.2.bias"])
    assert torch.equal(D["blocks.2.skip.weight"], d["convs.3.skip.1.weight"])
    assert torch.equal(D["conv.weight"], d["final_conv.0.weight"])
    assert torch.equal(D["out.weight"], d["final_linear.1.weight"])
    # rosinality keeps no running mean of w: estimated (its mean_latent) for truncation
    assert "estimated" in report["adapted"]["G_ema.mapping.w_avg"] and G["mapping.w_avg"].abs().sum() > 0
    assert report["initial"] == []
    assert "d.convs.1.conv2.0.kernel" in report["unused"]


def test_resolution_and_architecture_mismatches_say_what_to_change(tmp_path, nvlabs_globals):
    write_nvlabs_pkl(tmp_path / "n.pkl", nvlabs_globals)
    snap = read_snapshot(tmp_path / "n.pkl")
    with pytest.raises(DataError, match=r"holds a 32x32 generator, this run trains at 64x64; pass --size 32"):
        make_gan(size=64).load_snapshot(snap)
    with pytest.raises(DataError, match=r"--opt w_dim=8"):
        make_gan(w_dim=16).load_snapshot(snap)
    with pytest.raises(DataError, match=r"--opt mapping_layers=2"):
        make_gan(mapping_layers=3).load_snapshot(snap)
    with pytest.raises(DataError, match=r"--opt channel_base=128 --opt channel_max=16"):
        make_gan(channel_base=256).load_snapshot(snap)


def test_stylegan3_generator_is_refused_clearly(tmp_path, nvlabs_globals):
    g = _Persistent(
        "Generator",
        modules={
            "synthesis": _Persistent(
                "SynthesisNetwork",
                modules={
                    "input": _Persistent(
                        "SynthesisInput", params={"freqs": torch.randn(4, 2)}, size=np.array([36, 36])
                    )
                },
            )
        },
    )
    with open(tmp_path / "sg3.pkl", "wb") as fh:
        pickle.dump({"G": g, "D": None, "G_ema": g}, fh)
    snap = read_snapshot(tmp_path / "sg3.pkl")  # numpy attributes read as data
    with pytest.raises(DataError, match="StyleGAN3"):
        make_gan().load_snapshot(snap)


class _Evil:
    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "module_src", "storage bytes"])
def test_crafted_pickle_runs_no_code(tmp_path, nvlabs_globals, kind, monkeypatch):
    monkeypatch.chdir(tmp_path)
    side = tmp_path / "pwned"
    code = f"open({str(side)!r}, 'w').write('x')"
    if kind == "os.system":
        payload: Any = {"G_ema": _Evil(os.system, f"touch {side}")}
    elif kind == "builtins.eval":
        payload = {"G_ema": _Evil(builtins.eval, code)}
    elif kind == "module_src":
        rec = _Persistent("Generator", params={"w": torch.zeros(2)})
        rec.module_src = code
        payload = {"G": rec, "G_ema": rec, "D": rec}
    else:
        import io

        buffer = io.BytesIO()
        torch.save(_Evil(builtins.eval, code), buffer, _use_new_zipfile_serialization=False)
        payload = {"G_ema": _Evil(torch.storage._load_from_bytes, buffer.getvalue())}
    path = tmp_path / "network-snapshot-evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)
    with pytest.raises(DataError) as info:
        make_gan().load_snapshot(read_snapshot(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    expected = {
        "os.system": "(it names posix.system:" if os.name == "posix" else "refused",
        "builtins.eval": "(it names builtins.eval:",
        "module_src": "not a StyleGAN2 generator",
        # torch's weights-only unpickler names it "eval"
        "storage bytes": "(it names a storage whose bytes name ",
    }[kind]
    assert expected in message and ("eval" in message or kind != "storage bytes")
    assert not side.exists(), "nothing from the file may run"


class _Bomb:
    """An array record whose shape asks for terabytes (numpy itself always pickles shape (0,))."""

    def __init__(self, state: Any = None) -> None:
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy(._core).multiarray._reconstruct
        return (reconstruct, (np.ndarray, (10**13,), b"b"), self.state)


@pytest.mark.parametrize(
    "state", [None, (1, (10**13,), np.dtype("b"), False, b"ab"), (1, (10**13,), np.dtype("O"), False, [1])]
)
def test_crafted_array_shape_allocates_nothing(tmp_path, state):
    path = tmp_path / "network-snapshot-bomb.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"G_ema": _Bomb(state)}, fh)
    with pytest.raises(DataError) as info:  # not MemoryError: a one-line error, nothing allocated
        read_snapshot(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_cli_refuses_a_crafted_pickle_without_running_it(tmp_path, cxraug_cli):
    side = tmp_path / "pwned"
    path = tmp_path / "network-snapshot-000000.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"G_ema": _Evil(os.system, f"touch {side}")}, fh)
    result = cxraug_cli("generate", "--checkpoint", str(path), "--n", "1", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert "refused" in result.output and "Traceback" not in result.output
    assert not side.exists()


@pytest.fixture
def tiny_data(cxraug_cli) -> str:
    result = cxraug_cli(
        "data",
        "prepare",
        "phantom",
        "--size",
        "32",
        "--name",
        "tiny",
        "--opt",
        "n_per_class=8",
        "--opt",
        "classes=covid,normal",
    )
    assert result.exit_code == 0, result.output
    return "tiny"


def test_train_gan_transfer_from_nvlabs_pkl_and_generate(
    tmp_path, cxraug_cli, cxraug_workspace, tiny_data, nvlabs_globals
):
    pkl = tmp_path / "network-snapshot-000100.pkl"
    write_nvlabs_pkl(pkl, nvlabs_globals)
    args = [
        "--data",
        tiny_data,
        "--size",
        "32",
        "--batch-size",
        "4",
        "--kimg",
        "0.008",
        *CLI_OPTS,
        "--opt",
        "r1_interval=2",
    ]
    result = cxraug_cli("train-gan", "stylegan2", *args, "--transfer", str(pkl))
    assert result.exit_code == 0, result.output
    assert "transfer: started from" in result.output and "adapted" in result.output
    run = sorted((cxraug_workspace.runs_dir / "gan").iterdir())[-1]
    report = json.loads((run / "transfer.json").read_text())
    assert report["format"] == NVLABS_PKL and report["counts"]["loaded"] > 50
    assert "G_ema.mapping.embed.weight" in report["initial"]  # the run is conditional, the pkl is not

    out = tmp_path / "gen"
    result = cxraug_cli(
        "generate", "--checkpoint", str(pkl), "--n", "3", "--out", str(out), "--truncation", "0.7"
    )
    assert result.exit_code == 0, result.output
    files = sorted((out / "all").glob("*.png"))
    assert len(files) == 3
    image = np.asarray(Image.open(files[0]))
    assert image.shape == (32, 32) and image.dtype == np.uint8


def test_train_gan_transfer_resolution_mismatch_is_one_line(tmp_path, cxraug_cli, tiny_data, nvlabs_globals):
    pkl = tmp_path / "n.pkl"
    write_nvlabs_pkl(pkl, nvlabs_globals)
    result = cxraug_cli(
        "train-gan",
        "stylegan2",
        "--data",
        tiny_data,
        "--size",
        "64",
        "--batch-size",
        "4",
        "--kimg",
        "0.004",
        *CLI_OPTS,
        "--transfer",
        str(pkl),
    )
    assert result.exit_code == 2, result.output
    assert "holds a 32x32 generator" in result.output and "Traceback" not in result.output


def test_generate_from_rosinality_checkpoint(tmp_path, cxraug_cli):
    pt = tmp_path / "050000.pt"
    write_rosinality_pt(pt)
    out = tmp_path / "gen"
    result = cxraug_cli("generate", "--checkpoint", str(pt), "--n", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(list((out / "all").glob("*.png"))) == 2
    manifest = (out / "manifest.csv").read_text()
    assert "stylegan2" in manifest and str(pt) in manifest


def test_conditional_nvlabs_pkl_generates_its_labels(tmp_path, nvlabs_globals):
    nets = write_nvlabs_pkl(tmp_path / "cond.pkl", nvlabs_globals, c_dim=2)
    gan = StyleGAN2.from_snapshot(read_snapshot(tmp_path / "cond.pkl"), "cpu")
    assert gan.spec.labels == ["class_0", "class_1"] and gan.spec.image_size == 32
    G = gan.G_ema.state_dict()
    assert torch.equal(G["mapping.embed.weight"], nets["G_ema"].param("mapping.embed.weight"))
    assert torch.equal(G["mapping.layers.0.weight"], nets["G_ema"].param("mapping.fc0.weight"))
    z = torch.randn(2, Z, generator=torch.Generator().manual_seed(0))
    a = gan.generate(z, torch.tensor([0, 0]))
    b = gan.generate(z, torch.tensor([1, 1]))
    assert not torch.equal(a, b), "the label changes the image"
