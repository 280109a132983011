"""The built-in ``acgan`` GAN: conditioning, the auxiliary classifier, checkpoints, options."""

from __future__ import annotations

import io
import math

import pluggy
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from cxraug import hookspecs
from cxraug.interfaces import GANSpec
from cxraug.plugins.gans import acgan
from cxraug.plugins.gans.acgan import ACGAN, ACGANOptions

TINY = {"latent_dim": 8, "ngf": 8, "ndf": 8}
LABELS = ["covid", "normal", "pneumonia"]


def make(size: int = 16, seed: int = 0, **opts) -> ACGAN:
    torch.manual_seed(seed)
    return ACGAN(ACGANOptions(**{**TINY, **opts}), GANSpec(image_size=size, labels=LABELS))


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
    pm.register(acgan)
    found: list[type] = []
    pm.hook.register_gans(register=found.append)
    assert found == [ACGAN]
    assert ACGAN.name == "acgan" and ACGAN.conditional and ACGAN.Options is ACGANOptions


@pytest.mark.parametrize(("size", "label_input"), [(16, "multiply"), (32, "concat")])
def test_generate_shape_range_and_label_dependence(size, label_input):
    gan = make(size, label_input=label_input)
    z = gan.sample_latents(4, torch.Generator().manual_seed(1))
    assert z.shape == (4, 8)
    images = [gan.generate(z, torch.full((4,), c)) for c in range(len(LABELS))]
    for image in images:
        assert image.shape == (4, 1, size, size)
        assert image.min() >= -1 and image.max() <= 1
    assert not torch.allclose(images[0], images[1])
    assert not torch.allclose(images[1], images[2])
    assert gan.G.training


def test_discriminator_has_adversarial_and_class_heads():
    gan = make(32)
    adv, cls = gan.D(torch.zeros(2, 1, 32, 32))
    assert adv.shape == (2, 1) and cls.shape == (2, len(LABELS))
    opt = gan.optimizers()["D"].param_groups[0]
    assert opt["lr"] == 2e-4 and opt["betas"] == (0.5, 0.999)


@pytest.mark.parametrize("label_input", ["multiply", "concat"])
def test_train_steps_return_finite_floats_and_change_parameters(label_input):
    gan = make(label_input=label_input)
    g0, d0 = params(gan.G), params(gan.D)
    real, labels = batch()
    for _ in range(3):
        out = gan.train_step(real, labels)
        assert set(out) == {
            "loss_d",
            "loss_g",
            "d_real",
            "d_fake",
            "aux_real",
            "aux_fake",
            "acc_real",
        }
        assert all(type(v) is float and math.isfinite(v) for v in out.values())
        assert 0 <= out["acc_real"] <= 1
    assert not same(g0, params(gan.G))
    assert not same(d0, params(gan.D))


def test_auxiliary_classifier_learns_the_real_labels():
    # Three constant-intensity classes: D's class head should separate them within a few steps.
    torch.manual_seed(0)
    labels = torch.arange(12) % 3
    real = (labels.float() - 1).view(-1, 1, 1, 1).expand(-1, 1, 16, 16).contiguous()
    real = real + 0.05 * torch.randn_like(real)
    gan = make(lr_d=2e-3)
    first = gan.train_step(real, labels)["aux_real"]
    for _ in range(15):
        last = gan.train_step(real, labels)
    assert last["aux_real"] < first
    assert last["acc_real"] == 1.0


def test_same_seed_same_losses_and_samples():
    real, labels = batch()
    runs = []
    for _ in range(2):
        gan = make(seed=3)
        losses = [gan.train_step(real, labels) for _ in range(3)]
        z = gan.sample_latents(3, torch.Generator().manual_seed(0))
        runs.append((losses, gan.generate(z, torch.tensor([0, 1, 2]))))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


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
    assert ACGANOptions().latent_dim == 100
    with pytest.raises(ValidationError, match="extra"):
        ACGANOptions(nz=100)
    with pytest.raises(ValidationError):
        ACGANOptions(label_input="add")
    with pytest.raises(ValidationError):
        ACGANOptions(beta1=1.0)
    for field in ACGANOptions.model_fields.values():
        assert field.description
