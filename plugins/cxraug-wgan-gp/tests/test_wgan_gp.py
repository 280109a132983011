"""The wgan-gp plugin: the GAN contract, the gradient penalty, installation and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cxraug.errors import OptionsError
from cxraug.interfaces import GANSpec
from cxraug.testing import check_gan_plugin
from PIL import Image

from cxraug_wgan_gp import WGANGP, WGANGPOptions, gradient_penalty

TINY = {"nz": 8, "embed_dim": 4, "ngf": 8, "ndf": 8, "n_critic": 2}
TINY_OPTS = [arg for key, value in TINY.items() for arg in ("--opt", f"{key}={value}")]


@pytest.fixture(autouse=True)
def _plugins_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load installed entry points even where a conftest disables them for the core's tests."""
    monkeypatch.delenv("CXRAUG_DISABLE_PLUGINS", raising=False)


def test_gan_contract():
    gan = check_gan_plugin(WGANGP, options=TINY, steps=3)
    # 3 steps, then the one check_gan_plugin runs after the round trip; n_critic=2: G updated twice
    assert gan.extra_state()["step"] == 4
    assert gan.last_loss_g is not None


def test_generator_updates_every_n_critic_steps():
    torch.manual_seed(0)
    gan = WGANGP(WGANGPOptions(**{**TINY, "n_critic": 3}), GANSpec(image_size=16, labels=["a", "b"]))
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1, 0, 1])
    g_before = [p.clone() for p in gan.G.parameters()]
    flags = []
    for _ in range(6):
        losses = gan.train_step(real, labels)
        flags.append(losses["g_updated"])
        if len(flags) == 2:
            assert all(torch.equal(a, b) for a, b in zip(g_before, gan.G.parameters(), strict=True))
    assert flags == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert set(losses) == {"loss_d", "loss_g", "gp", "wasserstein", "g_updated"}


def test_gradient_penalty_of_a_linear_critic():
    x = torch.randn(5, 1, 4, 4)
    fake = torch.randn(5, 1, 4, 4)
    labels = torch.zeros(5, dtype=torch.long)
    w = torch.randn(16)
    unit = w / w.norm()

    def critic(scale: float):
        return lambda images, _labels: images.flatten(1) @ (scale * unit)

    # A linear critic's gradient is its weight everywhere: norm 1 -> no penalty, norm 3 -> (3-1)^2.
    assert gradient_penalty(critic(1.0), x, fake, labels).item() == pytest.approx(0.0, abs=1e-10)
    assert gradient_penalty(critic(3.0), x, fake, labels).item() == pytest.approx(4.0, rel=1e-5)


def test_gradient_penalty_is_differentiable_and_per_sample():
    torch.manual_seed(0)
    gan = WGANGP(WGANGPOptions(**TINY), GANSpec(image_size=16, labels=["a", "b"]))
    real, fake = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    labels = torch.tensor([0, 1, 1])
    gp = gradient_penalty(gan.D, real, fake, labels, eps=torch.full((3,), 0.5))
    gp.backward()
    # a double backward reaches every weight; only the output bias cannot change a gradient in x
    assert [n for n, p in gan.D.named_parameters() if p.grad is None] == ["score.bias"]
    # no batch statistics in the critic: one sample's penalty does not depend on the others
    alone = gradient_penalty(gan.D, real[:1], fake[:1], labels[:1], eps=torch.full((1,), 0.5))
    per_sample = [
        gradient_penalty(
            gan.D, real[i : i + 1], fake[i : i + 1], labels[i : i + 1], eps=torch.full((1,), 0.5)
        )
        for i in range(3)
    ]
    assert alone.item() == pytest.approx(per_sample[0].item())
    assert gp.item() == pytest.approx(sum(p.item() for p in per_sample) / 3, rel=1e-5)


@pytest.mark.parametrize("size", [12, 24, 512])
def test_unsupported_size_is_an_options_error(size):
    with pytest.raises(OptionsError, match=str(size)):
        WGANGP(WGANGPOptions(**TINY), GANSpec(image_size=size, labels=["a", "b"]))


def test_no_batch_norm_in_the_critic():
    for norm in ("layer", "none"):
        gan = WGANGP(WGANGPOptions(**TINY, critic_norm=norm), GANSpec(image_size=32, labels=["a", "b"]))
        kinds = {type(m).__name__ for m in gan.D.modules()}
        assert not {"BatchNorm2d", "BatchNorm1d"} & kinds
        assert ("GroupNorm" in kinds) == (norm == "layer")


def test_entry_point_is_listed(cxraug_cli):
    result = cxraug_cli("plugins", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["name"] == "wgan-gp"]
    assert len(rows) == 1, result.stdout
    assert rows[0]["kind"] == "gan"
    assert rows[0]["package"] == "cxraug-wgan-gp" and rows[0]["status"] == "ok"


def test_train_and_generate_through_the_cli(cxraug_cli, cxraug_workspace, tmp_path: Path):
    prepared = cxraug_cli(
        "data",
        "prepare",
        "phantom",
        "--size",
        "16",
        "--opt",
        "n_per_class=8",
        "--opt",
        "classes=covid,normal",
    )
    assert prepared.exit_code == 0, prepared.output
    trained = cxraug_cli(
        "train-gan", "wgan-gp", "--size", "16", "--batch-size", "8", "--kimg", "0.016", *TINY_OPTS
    )
    assert trained.exit_code == 0, trained.output
    run = sorted((cxraug_workspace.runs_dir / "gan").iterdir())[-1]
    options = json.loads((run / "options.json").read_text())
    assert options["status"] == "finished" and options["units"] == ["all"]
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss_d"]) and np.isfinite(r["gp"]) for r in rows)

    out = tmp_path / "gen"
    generated = cxraug_cli("generate", "--n", "4", "--out", str(out))
    assert generated.exit_code == 0, generated.output
    files = {label: sorted((out / label).glob("*.png")) for label in ("covid", "normal")}
    assert [len(f) for f in files.values()] == [2, 2]
    image = np.asarray(Image.open(files["covid"][0]))
    assert image.shape == (16, 16) and image.dtype == np.uint8


def test_bad_size_through_the_cli(cxraug_cli):
    prepared = cxraug_cli("data", "prepare", "phantom", "--size", "16", "--opt", "n_per_class=4")
    assert prepared.exit_code == 0, prepared.output
    result = cxraug_cli("train-gan", "wgan-gp", "--size", "48", "--kimg", "0.01", *TINY_OPTS)
    assert result.exit_code == 2 and "48" in result.output, result.output


def test_usable_in_augment_evaluate_and_experiment(cxraug_cli, cxraug_workspace, standin_inception):
    """An installed third-party GAN works in every command, exactly like a built-in one."""
    import json

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
    tiny = ["--opt", "gan.nz=8", "--opt", "gan.ngf=8", "--opt", "gan.ndf=8"]
    out = cxraug_workspace.root / "exp"
    result = cxraug_cli(
        "experiment",
        "--gan",
        "wgan-gp",
        "--classifier",
        "cnn",
        "--arms",
        "base,gan",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--synthetic",
        "6",
        "--gan-kimg",
        "0.016",
        *tiny,
        "--opt",
        "classifier.input_size=16",
        "--opt",
        "classifier.width=4",
        "--inception-weights",
        str(standin_inception),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    state = json.loads((out / "experiment.json").read_text())
    assert json.loads((Path(state["gan_run"]) / "options.json").read_text())["arch"] == "wgan-gp"
    assert "fid" in state["results"]["gan_quality"]
    aug = cxraug_cli("augment", "--synthetic", "4", "--gan", state["gan_run"], "--data", "d", "--name", "w")
    assert aug.exit_code == 0, aug.output
    rows = (cxraug_workspace.dataset_dir("w") / "manifest.csv").read_text().splitlines()
    assert sum(",synthetic," in r for r in rows) == 4
    ev = cxraug_cli(
        "evaluate",
        "--fid",
        "--gan",
        state["gan_run"],
        "--n",
        "6",
        "--inception-weights",
        str(standin_inception),
        "--json",
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["values"]["fid"]["fid"] > 0
