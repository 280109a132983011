"""`cxraug data ...` as a user types it: prepare, dry-run, config, errors, list, show, demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cxraug.data.resolve import open_dataset
from cxraug.plugins import build_registry, get_plugin_manager


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("covid", "normal"):
        (root / label).mkdir(parents=True)
        for i in range(12):
            small = rng.integers(0, 255, (6, 6)).astype(np.uint8)
            Image.fromarray(small).resize((40, 30)).save(root / label / f"{i}.png")
    return root


def test_prepare_list_show(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = _folder(tmp_path / "tree")
    result = cxraug_cli(
        "data",
        "prepare",
        "imagefolder",
        "--root",
        str(root),
        "--size",
        "16",
        "--name",
        "tree",
        "--split",
        "0.5,0.25,0.25",
    )
    assert result.exit_code == 0, result.output
    assert "prepared tree: 24 images" in result.output
    info = json.loads((cxraug_workspace.data_dir / "tree" / "info.json").read_text())
    assert info["size"] == 16 and info["classes"] == ["covid", "normal"]
    assert info["settings"]["split"] == [0.5, 0.25, 0.25]
    listed = cxraug_cli("data", "list", "--json")
    assert [d["name"] for d in json.loads(listed.stdout)] == ["tree"]
    shown = cxraug_cli("data", "show", "tree")
    assert shown.exit_code == 0 and "sample grid" in shown.output
    grid = Image.open(cxraug_workspace.data_dir / "tree" / "samples.png")
    assert grid.size == (16 * 8, 16 * 2)


def test_dry_run_prints_resolved_options_and_writes_nothing(cxraug_cli, cxraug_workspace, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[prepare]\nsize = 24\n[dataset.phantom]\nn_per_class = 3\n")
    result = cxraug_cli("data", "prepare", "phantom", "--config", str(config), "--opt", "seed=5", "--dry-run")
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.stdout)
    assert resolved["settings"]["size"] == 24
    assert resolved["sources"][0]["options"]["n_per_class"] == 3
    assert resolved["sources"][0]["options"]["seed"] == 5
    assert not cxraug_workspace.data_dir.exists()
    # a flag given on the command line wins over the config file
    result = cxraug_cli("data", "prepare", "phantom", "--config", str(config), "--size", "32", "--dry-run")
    assert json.loads(result.stdout)["settings"]["size"] == 32


def test_user_errors_are_clean(cxraug_cli, tmp_path: Path) -> None:
    cases = [
        (["data", "prepare", "phantm"], "Did you mean 'phantom'"),
        (["data", "prepare", "phantom", "--opt", "n_per_klass=3"], "unknown key 'n_per_klass'"),
        (["data", "prepare", "imagefolder"], "needs --root"),
        (["data", "prepare", "imagefolder", "--root", str(tmp_path / "nope")], "no such file"),
        (["data", "prepare", "phantom", "--split", "0.5,0.5"], "three non-negative fractions"),
        (["data", "prepare", "phantom", "--classes", "covid,flu"], "unknown label 'flu'"),
        (["data", "prepare", "phantom", "--name", "../evil"], "letters, digits"),
        (["data", "show"], "no prepared datasets in"),
        (["data", "show", "nothing"], "no prepared dataset 'nothing'"),
    ]
    for args, message in cases:
        result = cxraug_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_several_sources_merge(cxraug_cli, tmp_path: Path) -> None:
    root = _folder(tmp_path / "tree")
    result = cxraug_cli(
        "data",
        "prepare",
        f"imagefolder={root}",
        "phantom",
        "--size",
        "16",
        "--opt",
        "phantom.n_per_class=5",
        "--opt",
        "phantom.classes=covid,normal",
    )
    assert result.exit_code == 0, result.output
    assert "prepared imagefolder-phantom: 34 images" in result.output
    stray = cxraug_cli("data", "prepare", f"imagefolder={root}", "phantom", "--opt", "seed=1")
    assert stray.exit_code == 2 and "prefix options with the adapter" in stray.output


def test_medmnist_real_file_through_cli(cxraug_cli, cxraug_workspace, shared_data: Path) -> None:
    npz = shared_data / "pneumoniamnist.npz"
    result = cxraug_cli("data", "prepare", "medmnist", "--root", str(npz), "--size", "28")
    assert result.exit_code == 0, result.output
    report = json.loads((cxraug_workspace.data_dir / "medmnist" / "report.json").read_text())
    kept = report["images"]
    assert kept + len(report["dropped"]) == 4708 + 524 + 624
    assert report["exact_duplicates"] > 0  # the public file has identical images
    ds_counts = report["counts"]
    assert ds_counts["test"]["normal"] == 234 and ds_counts["test"]["pneumonia"] == 390


def test_default_dataset_is_latest_then_demo(cxraug_workspace) -> None:
    registry = build_registry(get_plugin_manager())
    demo = open_dataset(cxraug_workspace, registry, None)
    assert demo.name == "demo" and demo.synthetic
    again = open_dataset(cxraug_workspace, registry, None)
    assert again.name == "demo"
    assert cxraug_workspace.dataset_names() == ["demo"]


def _conflicting_tree(root: Path) -> Path:
    """Two classes of distinct pictures, plus one picture in both, saved with other compression."""
    _folder(root)
    picture = np.asarray(Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6) * 7).resize((40, 30)))
    Image.fromarray(picture).save(root / "covid" / "same.png", compress_level=9)
    Image.fromarray(picture).save(root / "normal" / "same.png", compress_level=1)
    return root


def test_conflicts_policy_as_flag_option_or_config(cxraug_cli, cxraug_workspace, tmp_path: Path) -> None:
    root = str(_conflicting_tree(tmp_path / "tree"))
    base = ["data", "prepare", "imagefolder", "--root", root, "--size", "16", "--force"]
    result = cxraug_cli(*base)
    assert result.exit_code == 0, result.output
    assert "1 group(s) of duplicate images with conflicting labels" in result.output
    report = json.loads((cxraug_workspace.data_dir / "imagefolder" / "report.json").read_text())
    assert [m["original"] for m in report["conflicts"][0]["members"]] == ["covid/same.png", "normal/same.png"]

    result = cxraug_cli(*base, "--opt", "conflicts=keep-first")
    assert result.exit_code == 0, result.output
    rows = open_dataset(cxraug_workspace, build_registry(get_plugin_manager()), "imagefolder").rows
    assert {"covid/same.png"} == {r["original"] for r in rows} & {"covid/same.png", "normal/same.png"}
    info = json.loads((cxraug_workspace.data_dir / "imagefolder" / "info.json").read_text())
    assert info["settings"]["conflicts"] == "keep-first"
    assert "conflicts" not in info["sources"][0]["options"], "a prepare setting, not an adapter option"

    config = tmp_path / "c.toml"
    config.write_text('[prepare]\nconflicts = "error"\n')
    cases = [
        (["--conflicts", "error"], "--conflicts error: 1 group(s) of identical or near-identical images"),
        (["--config", str(config)], "carry conflicting labels, e.g. covid/same.png (covid), normal/same.png"),
        (
            ["--opt", "conflicts=first"],
            "--opt conflicts=first: Input should be 'drop', 'keep-first' or 'error'",
        ),
        (
            ["--conflicts", "drop", "--opt", "conflicts=error"],
            "--opt conflicts=error and --conflicts drop disagree",
        ),
        (["--opt", "max_pixels=100"], "none of the 26 images could be used"),
        (["--max-pixels", "0"], "--max-pixels 0: Input should be greater than or equal to 1"),
    ]
    for args, message in cases:
        result = cxraug_cli(*base, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output
