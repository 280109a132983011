"""``cxraug export``: safetensors / ONNX / TorchScript generators with a model card, read back."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxraug.cli import build_app
from cxraug.plugins import build_registry, get_plugin_manager
from cxraug.plugins.datasets.kermany import KermanyAdapter
from cxraug.plugins.datasets.phantom import PhantomAdapter
from cxraug.training.generator_file import FORMAT, read_header

TINY_SG2 = [
    *("--opt", "channel_base=256", "--opt", "channel_max=16", "--opt", "z_dim=16"),
    *("--opt", "w_dim=16", "--opt", "mapping_layers=2", "--opt", "r1_interval=2"),
]
TINY_DCGAN = ["--opt", "nz=16", "--opt", "ngf=8", "--opt", "ndf=8"]


class Cli:
    """The CLI in-process against one workspace shared by the module's tests (training is the slow
    part, so the runs are trained once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            "COLUMNS": "200",
            "CXRAUG_WORKSPACE": str(root),
            "CXRAUG_DISABLE_PLUGINS": "1",
            "CXRAUG_OFFLINE": "1",
        }

    def __call__(self, *args: str) -> Any:
        return CliRunner().invoke(build_app(get_plugin_manager()), list(args), env=self.env)


def _run_named(root: Path, arch: str) -> str:
    for opt in sorted((root / "runs" / "gan").glob("*/options.json")):
        if json.loads(opt.read_text())["arch"] == arch:
            return opt.parent.name
    raise AssertionError(f"no {arch} run")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cli, str, str]:
    """A workspace with a conditional StyleGAN2 run and a per-class DCGAN run (tiny, a few steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cli = Cli(tmp_path_factory.mktemp("export") / "ws")
    prep = cli(
        *("data", "prepare", "phantom", "--size", "32", "--name", "tiny"),
        *("--opt", "n_per_class=8", "--opt", "classes=covid,normal"),
    )
    assert prep.exit_code == 0, prep.output
    common = ["--data", "tiny", "--batch-size", "8", "--kimg", "0.016", "--snapshot-every", "2steps"]
    sg2 = cli("train-gan", "stylegan2", *common, *TINY_SG2)
    assert sg2.exit_code == 0, sg2.output
    dc = cli("train-gan", "dcgan", *common, "--size", "16", *TINY_DCGAN)
    assert dc.exit_code == 0, dc.output
    yield cli, _run_named(cli.root, "stylegan2"), _run_named(cli.root, "dcgan")
    torch.set_num_threads(threads)


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_safetensors_round_trip_is_bit_exact(trained, tmp_path):
    cli, sg2, dcgan = trained
    for run, expected in (
        (sg2, ["generator.safetensors"]),
        (dcgan, ["generator-covid.safetensors", "generator-normal.safetensors"]),
    ):
        out = tmp_path / run
        result = cli("export", run, "--format", "safetensors", "--out", str(out))
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.glob("*.safetensors")) == expected
        meta = read_header(out / expected[0])
        assert meta["format"] == FORMAT and meta["arch"] in ("stylegan2", "dcgan")
        assert meta["network"] == ("G_ema" if run == sg2 else "G")
        # the same seed gives the same PNGs from the run's checkpoints and from the exported files
        from_run = tmp_path / f"{run}-from-run"
        assert cli("generate", "--run", run, "--n", "6", "--seed", "5", "--out", str(from_run)).exit_code == 0
        images: dict[str, np.ndarray] = {}
        for file in expected:
            gen = tmp_path / f"{run}-{file}"
            result = cli(
                "generate",
                "--checkpoint",
                str(out / file),
                "--n",
                str(6 // len(expected)),
                "--seed",
                "5",
                "--out",
                str(gen),
            )
            assert result.exit_code == 0, result.output
            images.update(_pngs(gen))
        reference = _pngs(from_run)
        assert len(reference) == 6 and set(images) == set(reference)
        for name, image in reference.items():
            assert np.array_equal(image, images[name]), name


def test_model_card_states_what_a_user_needs(trained, tmp_path):
    cli, sg2, _ = trained
    out = tmp_path / "card"
    assert cli("export", sg2, "--out", str(out)).exit_code == 0
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    facts = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    yaml = pytest.importorskip("yaml")
    front = yaml.safe_load(card.split("---\n")[1])  # Hugging Face model-card metadata
    assert front["library_name"] == "cxraug" and "stylegan2" in front["tags"]
    assert front["license"] == "other"
    assert "synthetic" in card and "not for diagnosis" in card
    assert "labels: covid, normal" in card and "image size: 32 x 32" in card
    assert "FID/KID: not computed" in card and f"cxraug evaluate --gan {sg2} --fid --kid" in card
    assert f"licence: {PhantomAdapter.license}" in card
    assert facts["labels"] == ["covid", "normal"] and facts["image_size"] == 32
    assert facts["latent"]["shape"] == [16] and facts["architecture"] == "stylegan2"
    assert facts["training_data"]["sources"] == [{"adapter": "phantom", "license": PhantomAdapter.license}]
    assert facts["evaluation"] is None and facts["training"]["step"] == 2


def test_model_card_reports_fid_and_kid_of_the_run(trained, tmp_path):
    cli, sg2, _ = trained
    # an evaluation report of this run, as `cxraug evaluate` leaves it (metrics.json's keys)
    report = cli.root / "reports" / "eval-test"
    report.mkdir(parents=True)
    options = {
        "kind": "evaluation",
        "started": "2026-01-01T00:00:00+00:00",
        "status": "finished",
        "config": {},
    }
    (report / "options.json").write_text(json.dumps(options))
    doc = {
        "created": "2026-01-01T00:00:00+00:00",
        "sources": {
            "dataset": "tiny",
            "gan_run": str(cli.root / "runs" / "gan" / sg2),
            "real_split": "train",
        },
        "options": {"fid": {"mode": "clean"}, "kid": {"mode": "clean"}},
        "request": {"n": 64},
        "values": {"fid": {"fid": 123.456}, "kid": {"kid": 0.0123}},
    }
    (report / "metrics.json").write_text(json.dumps(doc))
    try:
        out = tmp_path / "card"
        assert cli("export", sg2, "--out", str(out)).exit_code == 0
        card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert "FID: fid = 123.5 (features: inception, clean-fid mode clean" in card
        assert "KID: kid = 0.0123" in card and "not computed" not in card
    finally:
        shutil.rmtree(report)


def test_model_card_reports_distances_on_xrv_features(trained, tmp_path):
    """`evaluate --features xrv` stores fid@xrv / kid@xrv; the card names them with their network."""
    cli, sg2, _ = trained
    report = cli.root / "reports" / "eval-xrv"
    report.mkdir(parents=True)
    (report / "options.json").write_text(
        json.dumps({"kind": "evaluation", "started": "2026-01-01T00:00:00+00:00", "status": "finished"})
    )
    doc = {
        "created": "2026-01-02T00:00:00+00:00",
        "sources": {
            "dataset": "tiny",
            "gan_run": str(cli.root / "runs" / "gan" / sg2),
            "real_split": "train",
        },
        "options": {"fid@xrv": {"mode": "clean", "features": "xrv"}, "kid@xrv": {"features": "xrv"}},
        "request": {"n": 64},
        "values": {"fid@xrv": {"fid": 45.6}, "kid@xrv": {"kid": 0.5}},
    }
    (report / "metrics.json").write_text(json.dumps(doc))
    try:
        out = tmp_path / "card"
        assert cli("export", sg2, "--out", str(out)).exit_code == 0
        card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
        assert "FID/KID: not computed" not in card
        assert "- FID: not computed" in card  # no Inception values in that report
        assert (
            "- FID@XRV: fid = 45.6 (features: xrv" in card and "- KID@XRV: kid = 0.5 (features: xrv" in card
        )
        facts = json.loads((out / "model_card.json").read_text())
        assert facts["evaluation"]["fid@xrv"]["values"] == {"fid": 45.6}
    finally:
        shutil.rmtree(report)


def test_onnx_matches_pytorch(trained, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    cli, sg2, dcgan = trained
    for run, names in ((sg2, ["generator.onnx"]), (dcgan, ["generator-covid.onnx", "generator-normal.onnx"])):
        out = tmp_path / run
        result = cli("export", run, "--format", "onnx", "--out", str(out))
        assert result.exit_code == 0, result.output
        facts = json.loads((out / "model_card.json").read_text())
        assert [f["file"] for f in facts["files"]] == names
        assert all(f["max_abs_diff_vs_pytorch"] <= 1e-4 for f in facts["files"])
        session = ort.InferenceSession(str(out / names[0]), providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        assert inputs == (["z", "label"] if run == sg2 else ["z"])
        assert [o.name for o in session.get_outputs()] == ["images"]
        if run == dcgan:  # one batch per call here: any batch size works
            assert facts["files"][0]["batch"] == "any"
            z = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
            assert session.run(None, {"z": z})[0].shape == (5, 1, 16, 16)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_reloads_and_matches(trained, tmp_path):
    cli, sg2, _ = trained
    out = tmp_path / "ts"
    result = cli("export", sg2, "--format", "torchscript", "--out", str(out), "--batch-size", "3")
    assert result.exit_code == 0, result.output
    module = torch.jit.load(str(out / "generator.torchscript.pt"))
    facts = json.loads((out / "model_card.json").read_text())
    batch = facts["files"][0]["batch"]
    n = 3 if batch == "any" else batch
    assert n == 3
    z = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0])[:n]
    images = module(z, labels)
    assert images.shape == (n, 1, 32, 32) and images.abs().max() <= 1.0
    assert facts["files"][0]["max_abs_diff_vs_pytorch"] <= 1e-4
    assert not torch.equal(images[0], images[1]), "the label must change the image"


def test_refuses_to_overwrite_without_force(trained, tmp_path):
    cli, _, dcgan = trained
    out = tmp_path / "again"
    assert cli("export", dcgan, "--out", str(out)).exit_code == 0
    first = (out / "generator-covid.safetensors").read_bytes()
    (out / "MODEL_CARD.md").write_text("my own notes")
    refused = cli("export", dcgan, "--out", str(out))
    assert refused.exit_code == 2 and "--force" in refused.output and "Traceback" not in refused.output
    assert (out / "MODEL_CARD.md").read_text() == "my own notes"
    assert cli("export", dcgan, "--out", str(out), "--force").exit_code == 0
    assert (out / "generator-covid.safetensors").read_bytes() == first
    assert "my own notes" not in (out / "MODEL_CARD.md").read_text()


def test_bad_inputs_are_one_line_errors(trained, tmp_path):
    cli, sg2, _ = trained
    cases = {
        "not found": ("export", "no-such-run"),
        "format": ("export", sg2, "--format", "pickle"),
    }
    for expected, args in cases.items():
        result = cli(*args)
        assert result.exit_code == 2 and expected in result.output, result.output
        assert "Traceback" not in result.output
    # a run folder without any checkpoint, and a folder that is not a run
    bare = cli.root / "runs" / "gan" / "bare"
    shutil.copytree(cli.root / "runs" / "gan" / sg2, bare)
    for ckpt in bare.rglob("ckpt-*.pt"):
        ckpt.unlink()
    result = cli("export", "bare")
    assert result.exit_code == 2 and "no checkpoint yet" in result.output, result.output
    shutil.rmtree(bare)
    (tmp_path / "folder").mkdir()
    result = cli("export", str(tmp_path / "folder"))
    assert result.exit_code == 2 and "not a cxraug run" in result.output, result.output
    # a safetensors file that is not a cxraug generator is refused by generate
    from safetensors.torch import save_file

    stranger = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(stranger))
    result = cli("generate", "--checkpoint", str(stranger), "--n", "1", "--out", str(tmp_path / "g"))
    assert result.exit_code == 2 and "not a generator written by `cxraug export`" in result.output
    # an export cut short (a copy interrupted) is named, not a traceback
    assert cli("export", sg2, "--out", str(tmp_path / "cut")).exit_code == 0
    cut = tmp_path / "cut" / "generator.safetensors"
    cut.write_bytes(cut.read_bytes()[:-64])
    result = cli("generate", "--checkpoint", str(cut), "--n", "1", "--out", str(tmp_path / "g"))
    assert result.exit_code == 2 and "unreadable safetensors file" in result.output, result.output


def test_builtin_adapters_declare_a_licence_or_none():
    registry = build_registry(get_plugin_manager())
    licences = {name: registry.dataset(name).license for name in registry.names("dataset")}
    assert all(isinstance(v, str) for v in licences.values())
    assert licences["kermany"] == KermanyAdapter.license == "CC BY 4.0"
    assert licences["medmnist"] == "CC BY 4.0" and "Apache-2.0" in licences["phantom"]
    assert licences["imagefolder"] == "", "a user's own tree has no known licence"


def test_onnx_without_the_extra_says_what_to_install(trained, tmp_path, monkeypatch):
    cli, _, dcgan = trained
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: import fails
    result = cli("export", dcgan, "--format", "onnx", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and 'pip install "cxraug[export]"' in result.output, result.output
    assert not (tmp_path / "x").exists(), "nothing is written when the export cannot run"


def test_exporter_info_logging_stays_off_the_terminal(caplog):
    """onnxscript's optimizer logs dozens of INFO lines per export; the CLI logs INFO to the terminal."""
    from cxraug.evaluation.export import _quiet

    with caplog.at_level(logging.INFO):
        with _quiet():
            logging.getLogger("onnxscript.optimizer._constant_folding").info("Skipping constant folding")
            logging.getLogger("onnx_ir.passes.common").info("Removed 67 unused nodes")
            logging.getLogger("onnxscript").warning("a real problem")
        logging.getLogger("onnxscript").info("after")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a real problem", "after"]


def test_a_crafted_generator_header_is_a_one_line_error(tmp_path):
    """A header that claims the cxraug format but whose options are not a JSON object."""
    from safetensors.torch import save_file

    from cxraug.errors import DataError
    from cxraug.training.generator_file import FORMAT_VERSION, load_generator_file

    spec = json.dumps({"image_size": 16, "labels": ["covid"], "channels": 1})
    registry = build_registry(get_plugin_manager())
    for options in ("[1, 2]", '"nz=16"', "null"):
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": "dcgan", "network": "G"}
        path = tmp_path / "crafted.safetensors"
        save_file({"w": torch.zeros(2)}, str(path), metadata={**meta, "options": options, "spec": spec})
        with pytest.raises(DataError, match="header options/spec unreadable"):
            load_generator_file(path, registry, torch.device("cpu"))
    # weights of another shape: the error says which tensor, not only the network's name
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": "dcgan", "network": "G"}
    options = json.dumps({"nz": 16, "ngf": 8})
    save_file({"w": torch.zeros(2)}, str(path), metadata={**meta, "options": options, "spec": spec})
    with pytest.raises(DataError, match="weights do not match .*(Missing|Unexpected) key"):
        load_generator_file(path, registry, torch.device("cpu"))


def test_generate_checkpoint_names_the_other_export_formats(tmp_path, recwarn):
    """ONNX / TorchScript exports given to generate --checkpoint: what they are, what it reads."""
    from cxraug.errors import DataError
    from cxraug.training.generate import load_generator

    registry = build_registry(get_plugin_manager())
    scripted = tmp_path / "generator.torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    onnx_file = tmp_path / "generator.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")  # a protobuf start, as torch.onnx writes
    for path, what in ((scripted, "a TorchScript export"), (onnx_file, "an ONNX export")):
        with pytest.raises(DataError) as info:
            load_generator(path, registry, torch.device("cpu"))
        assert what in str(info.value) and "safetensors export" in str(info.value)
    assert not [w for w in recwarn if "TorchScript" in str(w.message)]
