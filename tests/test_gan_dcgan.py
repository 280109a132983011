"""The built-in ``dcgan`` GAN: shapes, training steps, determinism, checkpoints, options."""

from __future__ import annotations

import io
import math

import pluggy
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from cxraug import hookspecs
from cxraug.errors import OptionsError
from cxraug.interfaces import GANSpec
from cxraug.plugins.gans import dcgan
from cxraug.plugins.gans.dcgan import DCGAN, DCGANOptions

TINY = {"nz": 8, "ngf": 8, "ndf": 8}


def make(size: int = 16, seed: int = 0, **opts) -> DCGAN:
    torch.manual_seed(seed)
    return DCGAN(DCGANOptions(**{**TINY, **opts}), GANSpec(image_size=size, labels=["normal"]))


def batch(size: int = 16, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1, torch.zeros(n, dtype=torch.long)


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_registered_through_the_hook():
    pm = pluggy.PluginManager("cxraug")
    pm.add_hookspecs(hookspecs)
    pm.register(dcgan)
    found: list[type] = []
    pm.hook.register_gans(register=found.append)
    assert found == [DCGAN]
    assert DCGAN.name == "dcgan" and not DCGAN.conditional and DCGAN.Options is DCGANOptions


@pytest.mark.parametrize("size", [16, 32])
def test_generate_shape_range_and_mode(size):
    gan = make(size)
    z = gan.sample_latents(5, torch.Generator().manual_seed(1))
    assert z.shape == (5, 8) and z.device.type == "cpu"
    out = gan.generate(z, torch.zeros(5, dtype=torch.long))
    assert out.shape == (5, 1, size, size)
    assert out.min() >= -1 and out.max() <= 1
    assert not out.requires_grad
    assert gan.G.training  # restored after generating


def test_sample_latents_follow_the_generator():
    gan = make()
    a = gan.sample_latents(4, torch.Generator().manual_seed(7))
    b = gan.sample_latents(4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_truncation_scales_latents():
    gan = make()
    z = gan.sample_latents(3, torch.Generator().manual_seed(2))
    labels = torch.zeros(3, dtype=torch.long)
    assert torch.allclose(gan.generate(z, labels, truncation=0.5), gan.generate(z * 0.5, labels))
    with pytest.raises(OptionsError, match="truncation"):
        gan.generate(z, labels, truncation=0.0)


def test_train_steps_return_finite_floats_and_update_both_networks():
    gan = make(label_smoothing=0.1)
    g0, d0 = params(gan.G), params(gan.D)
    real, labels = batch()
    for _ in range(3):
        out = gan.train_step(real, labels)
        assert set(out) == {"loss_d", "loss_g", "d_real", "d_fake"}
        assert all(type(v) is float and math.isfinite(v) for v in out.values())
    assert not same(g0, params(gan.G))
    assert not same(d0, params(gan.D))


def test_train_step_rejects_wrong_shapes():
    gan = make()
    real, labels = batch()
    with pytest.raises(ValueError, match="real"):
        gan.train_step(real[:, :, :8], labels)
    with pytest.raises(ValueError, match="labels"):
        gan.train_step(real, labels[:3])


def test_same_seed_same_losses_and_samples():
    real, labels = batch()
    runs = []
    for _ in range(2):
        gan = make(seed=3)
        losses = [gan.train_step(real, labels) for _ in range(3)]
        z = gan.sample_latents(4, torch.Generator().manual_seed(0))
        runs.append((losses, gan.generate(z, torch.zeros(4, dtype=torch.long))))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_64x64_is_the_classic_dcgan():
    gan = DCGAN(None, GANSpec(image_size=64, labels=["covid"]))
    g_convs = [m for m in gan.G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [tuple(m.weight.shape) for m in g_convs] == [
        (100, 512, 4, 4),
        (512, 256, 4, 4),
        (256, 128, 4, 4),
        (128, 64, 4, 4),
        (64, 1, 4, 4),
    ]
    shapes = []
    x = torch.zeros(2, 100)
    with torch.no_grad():
        h = x.view(2, 100, 1, 1)
        for layer in gan.G.main:
            h = layer(h)
            if isinstance(layer, nn.ConvTranspose2d):
                shapes.append(tuple(h.shape[1:]))
    assert shapes == [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), (1, 64, 64)]
    d_convs = [m for m in gan.D.modules() if isinstance(m, nn.Conv2d)]
    assert [tuple(m.weight.shape) for m in d_convs] == [
        (64, 1, 4, 4),
        (128, 64, 4, 4),
        (256, 128, 4, 4),
        (512, 256, 4, 4),
        (1, 512, 4, 4),
    ]
    # Batch norm everywhere in G but the output, and in D everywhere but the first block.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gan.G.modules()) == 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gan.D.modules()) == 3
    assert gan.D(torch.zeros(2, 1, 64, 64)).shape == (2,)
    # DCGAN initialisation.
    assert abs(g_convs[1].weight.std().item() - 0.02) < 0.002
    opt = gan.optimizers()["G"].param_groups[0]
    assert opt["lr"] == 2e-4 and opt["betas"] == (0.5, 0.999)


def test_checkpoint_round_trip_gives_identical_next_steps():
    real, labels = batch()
    a = make(seed=1)
    for _ in range(2):
        a.train_step(real, labels)
    buf = io.BytesIO()
    torch.save(
        {
            "networks": {k: m.state_dict() for k, m in a.networks().items()},
            "optimizers": {k: o.state_dict() for k, o in a.optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in a.schedulers().items()},
            "extra": a.extra_state(),
        },
        buf,
    )
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = make(seed=2)
    for k, m in b.networks().items():
        m.load_state_dict(state["networks"][k])
    for k, o in b.optimizers().items():
        o.load_state_dict(state["optimizers"][k])
    b.load_extra_state(state["extra"])
    for step in range(2):
        torch.manual_seed(10 + step)
        out_a = a.train_step(real, labels)
        torch.manual_seed(10 + step)
        assert b.train_step(real, labels) == out_a


def test_options_validate():
    assert DCGANOptions().nz == 100
    with pytest.raises(ValidationError, match="extra"):
        DCGANOptions(nzz=100)
    with pytest.raises(ValidationError):
        DCGANOptions(label_smoothing=0.7)
    with pytest.raises(ValidationError):
        DCGANOptions(lr_g=0)
    for field in DCGANOptions.model_fields.values():
        assert field.description


@pytest.mark.parametrize("size", [8, 48, 512])
def test_unsupported_image_size_is_a_user_error(size):
    with pytest.raises(OptionsError, match="power of two"):
        make(size)
