"""Plugin manager: built-ins, entry points, broken-plugin isolation, hooks, registry."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pluggy
import pytest

from cxraug import hookimpl, hookspecs
from cxraug.errors import PluginError
from cxraug.interfaces import GAN, Augmenter, DatasetAdapter, GANSpec, NoOptions, PluginOptions, Record
from cxraug.plugins import (
    BUILTIN_PLUGINS,
    REGISTER_HOOKS,
    build_registry,
    get_plugin_manager,
)
from cxraug.registry import Registry


def _install_fake_distribution(site: Path, dist: str, module: str, source: str, ep_name: str) -> None:
    """A real installed distribution (dist-info + entry point) on a temporary sys.path entry."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[cxraug]\n{ep_name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("CXRAUG_DISABLE_PLUGINS", raising=False)
    yield site
    for name in list(sys.modules):
        if name.startswith("fake_cxr_"):
            del sys.modules[name]


GOOD_PLUGIN = """
from cxraug import hookimpl
from cxraug.interfaces import DatasetAdapter, Record
import numpy as np

class Tiny(DatasetAdapter):
    name = "tiny"
    description = "two black squares"
    needs_root = False
    def records(self, root):
        for i in range(2):
            yield Record(image=np.zeros((8, 8), np.uint8) + i, label="normal", source="tiny",
                         original=f"tiny:{i}")

class Clash(DatasetAdapter):
    name = "phantom"
    description = "takes a built-in's name"
    def records(self, root):
        return []

@hookimpl
def register_datasets(register):
    register(Tiny)
    register(Clash)
"""


def test_builtins_registered_like_third_party() -> None:
    pm = get_plugin_manager(load_entry_points=False)
    for module in BUILTIN_PLUGINS:
        assert pm.has_plugin(module)
    registry = build_registry(pm)
    datasets = registry.names("dataset")
    for name in ("covidx", "cohen", "radiography", "kermany", "medmnist", "imagefolder", "phantom"):
        assert name in datasets
        assert registry.dataset(name).name == name
    assert all(e.status == "ok" for e in registry.entries())


def test_entry_point_plugin_loads_and_conflict_is_reported(site: Path) -> None:
    _install_fake_distribution(site, "cxraug-tiny", "fake_cxr_good", GOOD_PLUGIN, "tiny")
    registry = build_registry(get_plugin_manager())
    assert registry.dataset("tiny").description == "two black squares"
    tiny = next(e for e in registry.entries("dataset") if e.name == "tiny")
    assert (tiny.package, tiny.version, tiny.status) == ("cxraug-tiny", "1.2.3", "ok")
    clash = [e for e in registry.entries("dataset") if e.status == "conflict"]
    assert len(clash) == 1 and clash[0].package == "cxraug-tiny"
    assert "already registered by cxraug" in clash[0].reason
    # the built-in keeps its name
    assert registry.dataset("phantom").__module__ == "cxraug.plugins.datasets.phantom"


def test_disable_env_skips_entry_points(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_distribution(site, "cxraug-tiny", "fake_cxr_good2", GOOD_PLUGIN, "tiny")
    monkeypatch.setenv("CXRAUG_DISABLE_PLUGINS", "1")
    assert "tiny" not in build_registry(get_plugin_manager()).names("dataset")


def test_broken_plugins_do_not_break_the_cli(site: Path, cxraug_cli) -> None:
    _install_fake_distribution(
        site, "cxraug-broken", "fake_cxr_broken", "raise ImportError('needs libfoo')\n", "broken"
    )
    _install_fake_distribution(
        site,
        "cxraug-typo",
        "fake_cxr_typo",
        """
        from cxraug import hookimpl
        @hookimpl
        def register_gan(register):
            pass
        """,
        "typo",
    )
    _install_fake_distribution(
        site,
        "cxraug-raises",
        "fake_cxr_raises",
        """
        from cxraug import hookimpl
        @hookimpl
        def register_metrics(register):
            raise RuntimeError("boom")
        """,
        "raises",
    )
    pm = get_plugin_manager()
    result = cxraug_cli("plugins", "list", "--json", pm=pm)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["broken"]["status"] == "error" and "needs libfoo" in rows["broken"]["reason"]
    assert rows["broken"]["package"] == "cxraug-broken"
    assert rows["typo"]["status"] == "error" and "register_gans" in rows["typo"]["reason"]
    assert rows["raises"]["status"] == "error" and "boom" in rows["raises"]["reason"]
    assert rows["phantom"]["status"] == "ok"
    # every other command still works
    result = cxraug_cli("data", "prepare", "phantom", "--opt", "n_per_class=4", "--size", "16", pm=pm)
    assert result.exit_code == 0, result.output
    table = cxraug_cli("plugins", "list", pm=pm)
    assert table.exit_code == 0 and "needs libfoo" in table.output


def test_misspelled_builtin_style_hook_fails_loudly() -> None:
    pm = get_plugin_manager(load_entry_points=False)

    class Bad:
        @hookimpl
        def register_datasetz(self, register):  # noqa: ARG002
            pass

    pm.register(Bad())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


HOOK_KINDS = [
    ("register_datasets", "dataset"),
    ("register_gans", "gan"),
    ("register_augmenters", "augmenter"),
    ("register_classifiers", "classifier"),
    ("register_metrics", "metric"),
]


@pytest.mark.parametrize(("hook_name", "kind"), HOOK_KINDS)
def test_register_hook_reaches_the_registry(hook_name: str, kind: str) -> None:
    """Each register_* hook: a plugin's class lands in that kind's registry with its provider."""
    import cxraug.interfaces as itf

    bodies = {
        "dataset": {"records": lambda self, root: iter([])},
        "gan": {
            "networks": lambda self: {},
            "optimizers": lambda self: {},
            "train_step": lambda self, real, labels: {},
            "sample_latents": lambda self, n, generator: None,
            "generate": lambda self, z, labels, truncation=1.0: None,
        },
        "augmenter": {"augment": lambda self, request: iter([])},
        "classifier": {"build": lambda self, num_classes, pretrained, weights: None},
        "metric": {"compute": lambda self, inputs: {"x": 1.0}},
    }
    made = type(
        f"My{kind.title()}",
        (itf.INTERFACES[kind],),
        {
            "name": f"my-{kind}",
            "description": f"a {kind}",
            **bodies[kind],
        },
    )

    def impl(register):
        register(made)

    impl.__name__ = hook_name
    provider = type("Provider", (), {hook_name: staticmethod(hookimpl(impl))})
    assert REGISTER_HOOKS[kind] == hook_name
    pm = get_plugin_manager(load_entry_points=False, extra=(("provider", provider),))
    registry = build_registry(pm)
    assert registry.get(kind, f"my-{kind}") is made
    entry = next(e for e in registry.entries(kind) if e.name == f"my-{kind}")
    assert (entry.package, entry.description) == ("provider", f"a {kind}")


def test_register_commands_hook_adds_a_command(cxraug_cli) -> None:
    class Cmd:
        @staticmethod
        @hookimpl
        def register_commands(app):
            @app.command("hello")
            def hello() -> None:
                """Say hello."""
                print("hello from a plugin")

    pm = get_plugin_manager(load_entry_points=False, extra=(("cmd", Cmd),))
    result = cxraug_cli("hello", pm=pm)
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_registry_rejects_non_plugins_and_suggests_names() -> None:
    pm = get_plugin_manager(load_entry_points=False)
    registry = build_registry(pm)
    entry = registry.add("dataset", object, package="x", version="1")
    assert entry.status == "error"

    class NoName(DatasetAdapter):
        name = "Bad Name"

        def records(self, root):
            return []

    assert registry.add("dataset", NoName, package="x", version="1").status == "error"
    with pytest.raises(PluginError, match="Did you mean 'phantom'"):
        registry.dataset("phantm")


def test_plugins_list_table_and_kind_filter(cxraug_cli) -> None:
    result = cxraug_cli("plugins", "list", "--kind", "dataset", "--json")
    assert result.exit_code == 0
    names = {r["name"] for r in json.loads(result.stdout)}
    assert {"covidx", "phantom", "medmnist"} <= names
    assert all(r["kind"] == "dataset" for r in json.loads(result.stdout))
    bad = cxraug_cli("plugins", "list", "--kind", "gans")
    assert bad.exit_code == 2 and "choose one of" in bad.output
    show = cxraug_cli("plugins", "show", "dataset", "phantom")
    assert show.exit_code == 0 and "n_per_class" in show.output


def test_hookspecs_are_documented_and_tested() -> None:
    """Every hook has a docstring, a docs entry and a test naming it."""
    names = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert set(REGISTER_HOOKS.values()) | {"register_commands"} == set(names)
    docs = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name in names:
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"
        assert f"`{name}" in docs, f"{name} is not documented in docs/plugins.md"
        assert name in tests, f"{name} has no test"


def test_tiny_adapter_contract() -> None:
    from cxraug.testing import check_dataset_adapter

    class Tiny(DatasetAdapter):
        name = "tiny"
        needs_root = False
        Options = NoOptions

        def records(self, root):
            import numpy as np

            yield Record(np.zeros((4, 4), np.uint8), "normal", "tiny", "t:0")

    assert len(check_dataset_adapter(Tiny(), None)) == 1


def test_typed_getters_return_the_interface_and_fail_like_get() -> None:
    from cxraug.plugins.augmenters.classic import ClassicAugmenter
    from cxraug.plugins.gans.dcgan import DCGAN

    registry = build_registry(get_plugin_manager(load_entry_points=False))
    assert registry.gan("dcgan") is DCGAN and registry.augmenter("classic") is ClassicAugmenter
    assert registry.dataset("phantom").name == "phantom" and registry.classifier("cnn").name == "cnn"
    assert registry.metric("fid").requires == {"real", "generated"}
    getters = {"gan": registry.gan, "metric": registry.metric, "classifier": registry.classifier}
    for kind, getter in getters.items():
        with pytest.raises(PluginError) as typed:
            getter("phantom")
        with pytest.raises(PluginError) as generic:
            registry.get(kind, "phantom")
        assert str(typed.value) == str(generic.value) and f"unknown {kind} 'phantom'" in str(typed.value)


class _Demo(DatasetAdapter):
    name = "zz-demo"
    needs_root = False
    demo = True

    def records(self, root):
        yield Record(image=np.zeros((8, 8), np.uint8), label="normal", source="zz-demo", original="d:0")


def test_demo_dataset_found_by_its_flag_builtin_first() -> None:
    registry = build_registry(get_plugin_manager(load_entry_points=False))
    assert registry.demo_dataset().name == "phantom"
    registry.add("dataset", _Demo, package="cxraug-zz", version="1")
    assert registry.demo_dataset().name == "phantom", "an installed demo does not replace the built-in"
    only_installed = Registry()
    only_installed.add("dataset", _Demo, package="cxraug-zz", version="1")
    assert only_installed.demo_dataset() is _Demo
    with pytest.raises(PluginError, match="no demo dataset adapter is installed"):
        Registry().demo_dataset()

    class NeedsRoot(_Demo):
        name = "rooted-demo"
        needs_root = True

    entry = only_installed.add("dataset", NeedsRoot, package="x", version="1")
    assert entry.status == "error" and "needs_root = False" in entry.reason


def test_prepare_demo_uses_the_registry_demo_adapter(tmp_path: Path) -> None:
    from cxraug.data.resolve import prepare_demo
    from cxraug.workspace import Workspace

    registry = Registry()
    registry.add("dataset", _Demo, package="cxraug-zz", version="1")
    ds = prepare_demo(Workspace(tmp_path / "ws"), registry)
    assert [r["source"] for r in ds.rows] == ["zz-demo"]
    with pytest.raises(PluginError, match="no demo dataset"):
        prepare_demo(Workspace(tmp_path / "ws2"), Registry())


class _SizeOptions(PluginOptions):
    size: int = 3


def test_plugins_are_generic_over_their_options() -> None:
    class Typed(Augmenter[_SizeOptions]):
        name = "typed"

        def augment(self, request):
            return iter([])

    assert Typed.Options is _SizeOptions, "the bound options model becomes Options"
    assert Typed().options.size == 3 and Typed(_SizeOptions(size=5)).options.size == 5
    with pytest.raises(TypeError, match="expects _SizeOptions options, got NoOptions"):
        Typed(NoOptions())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="declared with options _SizeOptions but sets Options"):

        class Mismatch(Augmenter[_SizeOptions]):
            name = "mismatch"
            Options = NoOptions

            def augment(self, request):
                return iter([])


def test_plain_interface_subclass_still_works() -> None:
    """A third-party plugin written before the interfaces were generic: bare ``GAN``, own Options."""

    class Bare(GAN):
        name = "bare"
        Options = _SizeOptions

        def networks(self):
            return {}

        def optimizers(self):
            return {}

        def train_step(self, real, labels):
            return {}

        def sample_latents(self, n, generator):
            return None

        def generate(self, z, labels, truncation=1.0):
            return None

    gan = Bare(None, GANSpec(image_size=16, labels=["all"]))
    assert isinstance(gan.options, _SizeOptions) and gan.options.size == 3
    registry = Registry()
    assert registry.add("gan", Bare, package="x", version="1").status == "ok"
    assert registry.gan("bare") is Bare


def test_builtins_bind_their_options_model() -> None:
    from typing import get_args

    registry = build_registry(get_plugin_manager(load_entry_points=False))
    for kind in ("dataset", "gan", "augmenter", "classifier", "metric"):
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            bound = [a for b in cls.__orig_bases__ for a in get_args(b)]  # type: ignore[attr-defined]
            assert bound == [cls.Options], f"{kind} {name} binds {bound}, Options is {cls.Options}"
