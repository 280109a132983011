"""Plugin options from --opt and TOML config, validated with useful errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from cxraug.errors import OptionsError
from cxraug.interfaces import PluginOptions
from cxraug.options import load_config, parse_opts, parse_value, resolve_options


class Opts(PluginOptions):
    lr: float = Field(2e-4, gt=0)
    views: tuple[str, ...] = ("PA", "AP")
    name: str = "x"
    nested: dict[str, str] = Field(default_factory=dict)


def test_parse_value_types() -> None:
    assert parse_value("3") == 3
    assert parse_value("0.5") == 0.5
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("PA") == "PA"
    assert parse_value('"quoted"') == "quoted"


def test_parse_opts_nesting_and_errors() -> None:
    assert parse_opts(["a=1", "b.c=x"]) == {"a": 1, "b": {"c": "x"}}
    with pytest.raises(OptionsError, match="expected KEY=VALUE"):
        parse_opts(["novalue"])


def test_resolve_precedence_and_comma_lists() -> None:
    resolved = resolve_options(Opts, plugin="gan t", config={"lr": 0.1, "name": "cfg"}, opts={"lr": 0.2})
    assert resolved.lr == 0.2 and resolved.name == "cfg"
    assert resolve_options(Opts, plugin="t", opts={"views": "PA,L"}).views == ("PA", "L")


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(OptionsError) as err:
        resolve_options(Opts, plugin="gan t", opts={"lrr": 1})
    msg = str(err.value)
    assert "unknown key 'lrr'" in msg and "lr=0.0002" in msg and "views=" in msg


def test_bad_value_names_the_key() -> None:
    with pytest.raises(OptionsError, match="lr: Input should be greater than 0"):
        resolve_options(Opts, plugin="t", opts={"lr": -1})


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gan.stylegan2]\nlr = \n")
    with pytest.raises(OptionsError, match=r"bad\.toml: not valid TOML.*line 2"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[gans.stylegan2]\nlr = 1\n")
    with pytest.raises(OptionsError, match="unknown top-level key 'gans'"):
        load_config(wrong)
    with pytest.raises(OptionsError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    good = tmp_path / "good.toml"
    good.write_text('[dataset.cohen]\nviews = ["PA"]\n[prepare]\nsize = 32\n')
    assert load_config(good)["dataset"]["cohen"]["views"] == ["PA"]
