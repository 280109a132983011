"""Tests of the ``stylegan2`` GAN: networks, training phases, augmentation, state, options."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from cxraug.errors import OptionsError
from cxraug.interfaces import GANSpec
from cxraug.plugins.gans import stylegan2 as sg2_module
from cxraug.plugins.gans.stylegan2 import StyleGAN2, StyleGAN2Options
from cxraug.plugins.gans.stylegan2_augment import (
    AdaptiveP,
    ada_augment,
    diff_augment,
    diffaug_translation,
)
from cxraug.plugins.gans.stylegan2_nets import (
    mbstd_group_size,
    minibatch_stddev,
    modulated_conv2d,
)

TINY: dict[str, Any] = {
    "channel_base": 256,
    "channel_max": 32,
    "z_dim": 32,
    "w_dim": 32,
    "mapping_layers": 2,
}
LABELS = ["normal", "pneumonia", "covid"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(
    seed: int = 0, labels: list[str] | None = None, size: int = 32, batch: int = 4, **options: Any
) -> StyleGAN2:
    torch.manual_seed(seed)
    spec = GANSpec(image_size=size, labels=labels or LABELS, batch_size=batch)
    return StyleGAN2(StyleGAN2Options(**{**TINY, **options}), spec)


def batch_of(n: int = 4, seed: int = 1, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, classes, (n,), generator=g)
    return real, labels


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_registers_through_the_hook() -> None:
    seen: list[type] = []
    sg2_module.register_gans(seen.append)
    assert seen == [StyleGAN2]
    assert StyleGAN2.name == "stylegan2" and StyleGAN2.conditional
    assert set(make().networks()) == {"G", "D", "G_ema"}


def test_generate_shape_range_and_determinism() -> None:
    gan = make()
    z = gan.sample_latents(5, torch.Generator().manual_seed(3))
    assert z.shape == (5, 32) and z.device.type == "cpu"
    assert torch.equal(z, gan.sample_latents(5, torch.Generator().manual_seed(3)))
    labels = torch.tensor([0, 1, 2, 0, 1])
    img = gan.generate(z, labels)
    assert img.shape == (5, 1, 32, 32) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1 and torch.isfinite(img).all()
    assert not img.requires_grad
    assert torch.equal(img, gan.generate(z, labels))


def test_samples_depend_on_the_label() -> None:
    gan = make()
    z = gan.sample_latents(2, torch.Generator().manual_seed(0))
    a = gan.generate(z, torch.tensor([0, 0]))
    b = gan.generate(z, torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-4


def test_truncation_zero_collapses_latents_of_a_label() -> None:
    gan = make()
    gan.train_step(*batch_of())  # a non-zero w_avg
    z = gan.sample_latents(3, torch.Generator().manual_seed(0))
    img = gan.generate(z, torch.tensor([1, 1, 1]), truncation=0.0)
    assert torch.allclose(img[0], img[1], atol=1e-6) and torch.allclose(img[0], img[2], atol=1e-6)
    free = gan.generate(z, torch.tensor([1, 1, 1]), truncation=1.0)
    assert (free[0] - free[1]).abs().max() > 1e-4
    with pytest.raises(OptionsError, match="truncation"):
        gan.generate(z, torch.tensor([1, 1, 1]), truncation=1.5)


def test_train_steps_with_both_regularisers_change_parameters() -> None:
    gan = make(r1_interval=1, pl_weight=2.0, pl_interval=1, augment="ada", ada_p_init=0.5)
    before = {name: flat(net) for name, net in gan.networks().items()}
    w_avg = gan.G.mapping.w_avg.clone()
    real, labels = batch_of()
    for _ in range(2):
        out = gan.train_step(real, labels)
    assert set(out) == {"loss_g", "loss_d", "r1", "pl", "ada_p", "d_real_sign"}
    assert all(isinstance(v, float) and v == v and abs(v) < float("inf") for v in out.values())
    assert out["r1"] > 0 and out["pl"] > 0
    for name, net in gan.networks().items():
        assert not torch.equal(before[name], flat(net)), name
    assert not torch.equal(w_avg, gan.G.mapping.w_avg)
    assert torch.equal(gan.G_ema.mapping.w_avg, gan.G.mapping.w_avg)
    assert gan.extra_state()["g_steps"] == 2 and gan.pl_mean.item() > 0


@pytest.mark.parametrize("augment", ["ada", "diffaug", "none"])
def test_augment_modes_train(augment: str) -> None:
    gan = make(augment=augment, ada_p_init=0.8, r1_interval=2)
    for _ in range(2):
        out = gan.train_step(*batch_of())
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert "pl" not in out


def test_unconditional_and_odd_batch() -> None:
    gan = make(labels=["all"], batch=6)
    assert gan.G.mapping.embed is None and gan.D.embed is None
    real, _ = batch_of(6)
    out = gan.train_step(real, torch.zeros(6, dtype=torch.long))
    assert torch.isfinite(torch.tensor(out["loss_d"]))
    assert mbstd_group_size(6, 4) == 3 and mbstd_group_size(5, 4) == 1


def test_grouped_and_scaled_modconv_agree() -> None:
    x = torch.randn(3, 8, 6, 6)
    weight = torch.randn(5, 8, 3, 3) / 8
    styles = torch.randn(3, 8)
    for demodulate in (True, False):
        a = modulated_conv2d(x, weight, styles, demodulate=demodulate, grouped=True)
        b = modulated_conv2d(x, weight, styles, demodulate=demodulate, grouped=False)
        assert torch.allclose(a, b, atol=1e-5), demodulate
    grouped, scaled = make(), make(modconv="scaled")  # same seed: same weights
    z = grouped.sample_latents(2, torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2])
    assert torch.allclose(grouped.generate(z, labels), scaled.generate(z, labels), atol=1e-5)
    assert torch.isfinite(torch.tensor(scaled.train_step(*batch_of())["loss_g"]))


def test_minibatch_stddev_groups_never_mix_halves() -> None:
    x = torch.cat([torch.zeros(4, 2, 4, 4), torch.randn(4, 2, 4, 4)])
    y = minibatch_stddev(x, 4)
    assert y.shape == (8, 3, 4, 4)
    assert torch.allclose(y[:4, 2], torch.full((4, 4, 4), 1e-4))  # constant half: no spread
    assert (y[4:, 2] > 0.1).all()


def test_adaptive_p_update_rule() -> None:
    ada = AdaptiveP(p_init=0.0, target=0.6, interval=4, kimg=1, device=torch.device("cpu"))
    confident = torch.full((10,), 3.0)
    for _ in range(3):
        ada.accumulate(confident)
    assert ada.p.item() == 0.0  # not yet at the interval
    ada.accumulate(confident)
    assert ada.p.item() == pytest.approx(40 / 1000)  # 4 steps x 10 images over 1 kimg
    for _ in range(8):
        ada.accumulate(-confident)
    assert ada.p.item() == 0.0  # lowered, clamped at zero
    for _ in range(4 * 30):
        ada.accumulate(confident)
    assert ada.p.item() == 1.0  # clamped at one


def test_ada_p_rises_when_d_is_overconfident_in_training() -> None:
    gan = make(labels=["all"], augment="ada", ada_interval=1, ada_kimg=1)
    with torch.no_grad():
        gan.D.out.bias.fill_(1e4)  # D says "real" to everything
    gan.train_step(*batch_of())
    assert gan.ada.p.item() == pytest.approx(4 / 1000)


def test_augmentations() -> None:
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    assert torch.allclose(ada_augment(x, torch.tensor(0.0)), x, atol=1e-5)
    assert not torch.allclose(ada_augment(x, torch.tensor(1.0)), x, atol=1e-3)
    torch.manual_seed(0)
    shifted = diffaug_translation(x)
    # Every row of the output is a shifted row of the input or zero padding.
    nonzero = shifted[shifted != 0]
    assert torch.isin(nonzero, x).all()
    out = diff_augment(x, ("color", "translation", "cutout"))
    assert out.shape == x.shape and (out == 0).any()
    grad_x = x.clone().requires_grad_(True)
    diff_augment(grad_x, ("color", "translation", "cutout")).sum().backward()
    assert grad_x.grad is not None


def test_extra_state_round_trip_gives_identical_next_steps() -> None:
    options = {
        "augment": "ada",
        "ada_p_init": 0.3,
        "ada_interval": 3,
        "r1_interval": 2,
        "pl_weight": 2.0,
        "pl_interval": 2,
    }
    first = make(seed=0, **options)
    real, labels = batch_of()
    for _ in range(3):
        first.train_step(real, labels)
    buffer = io.BytesIO()
    torch.save(
        {
            "networks": {k: v.state_dict() for k, v in first.networks().items()},
            "optimizers": {k: v.state_dict() for k, v in first.optimizers().items()},
            "extra": first.extra_state(),
        },
        buffer,
    )
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = make(seed=99, **options)
    for k, net in second.networks().items():
        net.load_state_dict(state["networks"][k])
    for k, opt in second.optimizers().items():
        opt.load_state_dict(state["optimizers"][k])
    second.load_extra_state(state["extra"])

    for step in range(3):
        torch.manual_seed(100 + step)
        a = first.train_step(real, labels)
        torch.manual_seed(100 + step)
        b = second.train_step(real, labels)
        assert a == b, step
    assert torch.equal(first.ada.p, second.ada.p)
    assert torch.equal(flat(first.G_ema), flat(second.G_ema))


def test_freeze_d_keeps_top_blocks_fixed() -> None:
    gan = make(freeze_d=2, r1_interval=1)
    frozen = [p for block in gan.D.blocks[:2] for p in block.parameters()]
    trained = [p for block in gan.D.blocks[2:] for p in block.parameters()]
    frozen_before = [p.detach().clone() for p in frozen]
    trained_before = [p.detach().clone() for p in trained]
    optimised = {id(p) for group in gan.opt_d.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in frozen}
    for _ in range(2):
        gan.train_step(*batch_of())
    assert all(torch.equal(a, b) for a, b in zip(frozen, frozen_before, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(trained, trained_before, strict=True))
    with pytest.raises(OptionsError, match="freeze_d"):
        make(freeze_d=4)


@pytest.mark.parametrize("size", [16, 48, 1024])
def test_invalid_size_is_an_options_error(size: int) -> None:
    with pytest.raises(OptionsError, match=rf"image size {size}.*32 to 512"):
        make(size=size)


def test_options_validation() -> None:
    with pytest.raises(ValidationError):
        StyleGAN2Options(no_such_option=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        StyleGAN2Options(augment="mixup")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown DiffAugment"):
        StyleGAN2Options(diffaug_policy="color,saturation")
    with pytest.raises(ValidationError):
        StyleGAN2Options(style_mixing=1.5)
    defaults = StyleGAN2Options()
    assert (defaults.z_dim, defaults.mapping_layers, defaults.r1_interval) == (512, 8, 16)
    assert all(f.description for f in StyleGAN2Options.model_fields.values())


def test_r1_gamma_heuristic_and_lazy_compensation() -> None:
    gan = make(batch=8)
    assert gan.r1_gamma == pytest.approx(2e-4 * 32**2 / 8)
    group = gan.opt_d.param_groups[0]
    c = 16 / 17
    assert group["lr"] == pytest.approx(0.0025 * c)
    assert group["betas"] == pytest.approx((0.0, 0.99**c))
    # Path length off by default: G's optimizer is not compensated.
    assert gan.opt_g.param_groups[0]["lr"] == pytest.approx(0.0025)
