"""The built-in ``cgan`` GAN: conditioning, the K-step discriminator, optimizers, checkpoints."""

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
from cxraug.plugins.gans import cgan
from cxraug.plugins.gans.cgan import CGAN, CGANOptions

TINY = {"nz": 8, "embed_dim": 4, "ngf": 8, "ndf": 4}
LABELS = ["covid", "normal"]


def make(size: int = 16, seed: int = 0, **opts) -> CGAN:
    torch.manual_seed(seed)
    return CGAN(CGANOptions(**{**TINY, **opts}), GANSpec(image_size=size, labels=LABELS))


def batch(size: int = 16, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    real = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return real, torch.arange(n) % len(LABELS)


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_registered_through_the_hook():
    pm = pluggy.PluginManager("cxraug")
    pm.add_hookspecs(hookspecs)
    pm.register(cgan)
    found: list[type] = []
    pm.hook.register_gans(register=found.append)
    assert found == [CGAN]
    assert CGAN.name == "cgan" and CGAN.conditional and CGAN.Options is CGANOptions


@pytest.mark.parametrize("size", [16, 32])
def test_generate_shape_range_and_label_dependence(size):
    gan = make(size)
    z = gan.sample_latents(4, torch.Generator().manual_seed(1))
    assert z.shape == (4, 8)
    covid = gan.generate(z, torch.zeros(4, dtype=torch.long))
    normal = gan.generate(z, torch.ones(4, dtype=torch.long))
    assert covid.shape == (4, 1, size, size)
    assert covid.min() >= -1 and covid.max() <= 1
    assert not torch.allclose(covid, normal)
    assert gan.G.training


def test_train_steps_return_finite_floats_and_change_parameters():
    gan = make(d_every=1)
    g0, d0 = params(gan.G), params(gan.D)
    real, labels = batch()
    for _ in range(2):
        out = gan.train_step(real, labels)
        assert set(out) == {"loss_d", "loss_g", "d_real", "d_fake", "d_updated"}
        assert all(type(v) is float and math.isfinite(v) for v in out.values())
    assert not same(g0, params(gan.G))
    assert not same(d0, params(gan.D))


def test_discriminator_trains_once_every_k_steps():
    gan = make(d_every=3)
    real, labels = batch()
    d_before, g_before = params(gan.D), params(gan.G)
    updated = []
    last_d = float("nan")
    for step in range(4):
        out = gan.train_step(real, labels)
        updated.append(out["d_updated"])
        d_after, g_after = params(gan.D), params(gan.G)
        assert same(d_before, d_after) == (step % 3 != 0), f"step {step}"
        assert not same(g_before, g_after), f"step {step}"
        if step % 3 != 0:
            assert out["loss_d"] == last_d  # the last update's value, carried over
        last_d = out["loss_d"]
        d_before, g_before = d_after, g_after
    assert updated == [1.0, 0.0, 0.0, 1.0]
    assert gan.extra_state()["step"] == 4


def test_filters():
    def g_widths(gan: CGAN) -> list[tuple[int, int]]:
        return [(m.in_channels, m.out_channels) for m in gan.G.modules() if isinstance(m, nn.ConvTranspose2d)]

    constant = make(32, ngf=None)
    assert g_widths(constant) == [(65, 64), (64, 64), (64, 1)]  # +1: the label map
    halving = make(32, filters="halving", ngf=None)
    assert g_widths(halving) == [(257, 128), (128, 64), (64, 1)]
    assert g_widths(make(256, filters="halving", ngf=16)) == [
        (17, 8),
        (8, 8),
        (8, 8),
        (8, 8),
        (8, 8),
        (8, 1),
    ]


def test_discriminator_layout():
    gan = make(32)
    convs = [m for m in gan.D.main if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in convs] == [
        (2, 4, (2, 2)),  # image + label plane
        (4, 8, (2, 2)),
        (8, 16, (2, 2)),
        (16, 32, (2, 2)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gan.D.modules()) == 3
    assert isinstance(gan.D.dropout, nn.Dropout) and gan.D.dropout.p == 0.5
    assert gan.D(torch.zeros(2, 1, 32, 32), torch.tensor([0, 1])).shape == (2,)


def test_optimizers_and_scheduler():
    adam = make().optimizers()["D"]
    assert isinstance(adam, torch.optim.Adam)
    assert adam.param_groups[0]["lr"] == 2e-4 and adam.param_groups[0]["betas"] == (0.9, 0.999)
    gan = make(optimizer="sgd", lr_g=0.05, t0_epochs=2)
    opt_g, opt_d = gan.optimizers()["G"], gan.optimizers()["D"]
    assert isinstance(opt_d, torch.optim.SGD)
    assert opt_d.param_groups[0]["lr"] == 0.01 and opt_d.param_groups[0]["momentum"] == 0.9
    assert opt_g.param_groups[0]["lr"] == 0.05
    assert set(gan.schedulers()) == {"G", "D"}
    gan.end_epoch(0)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.005)  # halfway through a 2-epoch cycle
    gan.end_epoch(1)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.01)  # warm restart
    assert make(scheduler="none").schedulers() == {}


def test_same_seed_same_losses_and_samples():
    real, labels = batch()
    runs = []
    for _ in range(2):
        gan = make(seed=3, d_every=2)
        losses = [gan.train_step(real, labels) for _ in range(3)]
        z = gan.sample_latents(4, torch.Generator().manual_seed(0))
        runs.append((losses, gan.generate(z, torch.tensor([0, 1, 0, 1]))))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_checkpoint_round_trip_gives_identical_next_steps():
    real, labels = batch()
    a = make(seed=1, d_every=3, optimizer="sgd")
    for _ in range(2):
        a.train_step(real, labels)
    a.end_epoch(0)
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
    b = make(seed=2, d_every=3, optimizer="sgd")
    for k, m in b.networks().items():
        m.load_state_dict(state["networks"][k])
    for k, o in b.optimizers().items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in b.schedulers().items():
        s.load_state_dict(state["schedulers"][k])
    b.load_extra_state(state["extra"])
    for step in range(3):  # crosses a D update (the counter was restored)
        torch.manual_seed(10 + step)
        out_a = a.train_step(real, labels)
        torch.manual_seed(10 + step)
        assert b.train_step(real, labels) == out_a
    a.end_epoch(1)
    b.end_epoch(1)
    assert a.optimizers()["G"].param_groups[0]["lr"] == b.optimizers()["G"].param_groups[0]["lr"]


def test_options_validate():
    assert CGANOptions().d_every == 10
    with pytest.raises(ValidationError, match="extra"):
        CGANOptions(k=10)
    with pytest.raises(ValidationError):
        CGANOptions(filters="doubling")
    with pytest.raises(ValidationError):
        CGANOptions(d_every=0)
    for field in CGANOptions.model_fields.values():
        assert field.description


def test_needs_a_supported_size():
    with pytest.raises(OptionsError, match="power of two"):
        make(24)
