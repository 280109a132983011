"""Plugin manager: built-ins, entry points, broken-plugin isolation, hooks, registry."""

from __future__ import annotations

import json
import os
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


def _install_fake_distribution(
    site: Path, dist: str, module: str, source: str, ep_name: str, attr: str | None = None
) -> None:
    """A real installed distribution (dist-info + entry point) on a temporary sys.path entry.

    The entry point names ``module``, or ``module:attr`` when ``attr`` is given.
    """
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    target = f"{module}:{attr}" if attr else module
    (info / "entry_points.txt").write_text(f"[cxraug]\n{ep_name} = {target}\n")


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
    for name in (
        *("covidx", "cohen", "radiography", "kermany", "medmnist", "imagefolder", "phantom"),
        *("nih", "chexpert", "mimic", "padchest"),
    ):
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
    ("register_loggers", "logger"),
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
        "logger": {
            "start": lambda self, run: None,
            "log_params": lambda self, params: None,
            "log_scalars": lambda self, step, values: None,
            "close": lambda self, status: None,
        },
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
    # a multi-line class docstring is shown dedented (not with the class body's indent)
    show = cxraug_cli("plugins", "show", "logger", "mlflow")
    assert show.exit_code == 0 and "\nA resumed run continues" in show.output, show.output


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
    for kind in ("dataset", "gan", "augmenter", "classifier", "metric", "logger"):
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            bound = [a for b in cls.__orig_bases__ for a in get_args(b)]  # type: ignore[attr-defined]
            assert bound == [cls.Options], f"{kind} {name} binds {bound}, Options is {cls.Options}"


# ------------------------------------------------------------------ misbehaving plugins (issue 11)


def _rows(cxraug_cli, pm=None) -> list[dict[str, str]]:
    result = cxraug_cli("plugins", "list", "--json", pm=pm)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _from(rows: list[dict[str, str]], package: str) -> list[dict[str, str]]:
    return [r for r in rows if r["package"] == package]


def _assert_cli_still_works(cxraug_cli) -> None:
    """``--help`` lists the commands and ``cnn`` is still the built-in, through the default manager."""
    help_ = cxraug_cli("--help")
    assert help_.exit_code == 0, help_.output
    assert "plugins" in help_.output and "train-gan" in help_.output
    show = cxraug_cli("plugins", "show", "classifier", "cnn")
    assert show.exit_code == 0, show.output
    assert "blocks" in show.output  # an option of the built-in cnn
    cnn = [r for r in _rows(cxraug_cli) if r["kind"] == "classifier" and r["name"] == "cnn"]
    assert [(r["package"], r["status"]) for r in cnn if r["status"] == "ok"] == [("cxraug", "ok")]


IMPOSTOR_CNN = """
from cxraug import hookimpl
from cxraug.interfaces import Classifier

class Cnn(Classifier):
    name = "cnn"
    description = "an impostor"

    def build(self, num_classes, *, pretrained, weights):
        raise RuntimeError("the impostor was used")

"""

HOOK_ORDERINGS = {
    "trylast": "@hookimpl(trylast=True)\ndef register_classifiers(register):\n    register(Cnn)\n",
    "tryfirst": "@hookimpl(tryfirst=True)\ndef register_classifiers(register):\n    register(Cnn)\n",
    "specname-trylast": (
        "@hookimpl(specname='register_classifiers', trylast=True)\ndef late(register):\n    register(Cnn)\n"
    ),
    "hookwrapper": (
        "@hookimpl(hookwrapper=True)\ndef register_classifiers(register):\n    register(Cnn)\n    yield\n"
    ),
    "wrapper": (
        "@hookimpl(wrapper=True)\ndef register_classifiers(register):\n"
        "    register(Cnn)\n    return (yield)\n"
    ),
}


@pytest.mark.parametrize("ordering", list(HOOK_ORDERINGS))
def test_builtin_name_wins_whatever_hook_ordering_a_plugin_asks_for(
    site: Path, cxraug_cli, ordering: str
) -> None:
    """Item 5: a third-party ``cnn`` never replaces the built-in; it is listed as disabled, with why."""
    source = IMPOSTOR_CNN + HOOK_ORDERINGS[ordering]
    _install_fake_distribution(site, "cxraug-impostor", "fake_cxr_impostor", source, "impostor")
    registry = build_registry(get_plugin_manager())
    assert registry.classifier("cnn").__module__ == "cxraug.plugins.classifiers.cnn"
    rows = _from(_rows(cxraug_cli), "cxraug-impostor")
    assert rows, "the newcomer is listed, not silently dropped"
    assert all(r["status"] in ("conflict", "error") and r["reason"] for r in rows), rows
    if "wrapper" in ordering:
        assert "wrapper" in rows[0]["reason"]
    else:
        assert rows[0]["name"] == "cnn" and "already registered by cxraug" in rows[0]["reason"]
    _assert_cli_still_works(cxraug_cli)


def test_names_are_per_kind(site: Path, cxraug_cli) -> None:
    """A dataset may be called ``cnn``: names only clash within one kind."""
    source = """
    from cxraug import hookimpl
    from cxraug.interfaces import DatasetAdapter

    class CnnData(DatasetAdapter):
        name = "cnn"
        needs_root = False
        def records(self, root):
            return []

    @hookimpl
    def register_datasets(register):
        register(CnnData)
    """
    _install_fake_distribution(site, "cxraug-cnn-data", "fake_cxr_cnn_data", source, "cnn-data")
    rows = _from(_rows(cxraug_cli), "cxraug-cnn-data")
    assert [(r["kind"], r["name"], r["status"]) for r in rows] == [("dataset", "cnn", "ok")]
    _assert_cli_still_works(cxraug_cli)


def test_two_packages_with_one_entry_point_name_are_both_listed(site: Path, cxraug_cli) -> None:
    """The second package's entry point of the same name is a listed conflict, not silently skipped."""
    for dist, module in (("cxraug-tiny-a", "fake_cxr_tiny_a"), ("cxraug-tiny-b", "fake_cxr_tiny_b")):
        _install_fake_distribution(site, dist, module, GOOD_PLUGIN.replace("tiny", dist), "tiny")
    rows = _rows(cxraug_cli)
    loaded = {r["package"] for r in rows if r["kind"] == "dataset" and r["status"] == "ok"}
    skipped = [r for r in rows if r["kind"] == "plugin" and r["name"] == "tiny"]
    assert len(skipped) == 1 and skipped[0]["status"] == "conflict", skipped
    (winner,) = loaded & {"cxraug-tiny-a", "cxraug-tiny-b"}
    assert skipped[0]["package"] != winner and winner in skipped[0]["reason"]


IMPORT_FAILURES = {
    "sys.exit(3)": ("import sys\nsys.exit(3)\n", "SystemExit"),
    "SystemExit('bye')": ("raise SystemExit('bye')\n", "bye"),
    "KeyboardInterrupt": ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    "BaseException": ("raise BaseException('odd')\n", "odd"),
    "missing import": ("import fake_cxr_not_installed\n", "fake_cxr_not_installed"),
}


@pytest.mark.parametrize("failure", list(IMPORT_FAILURES))
def test_whatever_a_plugin_raises_at_import_is_isolated(site: Path, cxraug_cli, failure: str) -> None:
    """Item 6: sys.exit(), KeyboardInterrupt or any BaseException at import fails only that plugin."""
    source, expected = IMPORT_FAILURES[failure]
    _install_fake_distribution(site, "cxraug-exits", "fake_cxr_exits", source, "exits")
    _assert_cli_still_works(cxraug_cli)
    (row,) = _from(_rows(cxraug_cli), "cxraug-exits")
    assert (row["kind"], row["name"], row["status"]) == ("plugin", "exits", "error")
    assert "fake_cxr_exits" in row["reason"] and expected in row["reason"], row
    table = cxraug_cli("plugins", "list")
    assert table.exit_code == 0 and expected in table.output


@pytest.mark.parametrize(
    "source",
    [
        "import signal\nsignal.raise_signal(signal.SIGINT)\n",
        # a plugin that swallows the interrupt does not get to cancel it
        "import signal\ntry:\n    signal.raise_signal(signal.SIGINT)\nexcept KeyboardInterrupt:\n    pass\n",
    ],
    ids=["propagated", "swallowed"],
)
def test_real_ctrl_c_while_loading_plugins_still_stops(site: Path, source: str) -> None:
    import signal

    _install_fake_distribution(site, "cxraug-slow", "fake_cxr_slow", source, "slow")
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        get_plugin_manager()
    assert signal.getsignal(signal.SIGINT) is before, "the SIGINT handler is restored"
    # The console script stops there too, in one line and with Ctrl-C's exit code.
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    env.pop("CXRAUG_DISABLE_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cxraug", "plugins", "list"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "interrupted" in proc.stdout + proc.stderr


HALFWAY_METRIC = """
from cxraug import hookimpl
from cxraug.interfaces import Metric, MetricResult

class Half(Metric):
    name = "half"
    def compute(self, inputs):
        return MetricResult({{"x": 1.0}})

@hookimpl
def register_metrics(register):
    register(Half)
    {raise_}
"""


@pytest.mark.parametrize(
    "raise_", ["raise SystemExit(4)", "raise KeyboardInterrupt", "raise RuntimeError('boom')"]
)
def test_register_hook_that_raises_registers_nothing(site: Path, cxraug_cli, raise_: str) -> None:
    """Item 6: a register hook raising (SystemExit included) fails that plugin, none of its classes land."""
    source = HALFWAY_METRIC.format(raise_=raise_)
    _install_fake_distribution(site, "cxraug-halfway", "fake_cxr_halfway", source, "halfway")
    (row,) = _from(_rows(cxraug_cli), "cxraug-halfway")
    assert (row["kind"], row["name"], row["status"]) == ("plugin", "halfway", "error")
    assert "register_metrics raised" in row["reason"], row
    assert raise_.split()[1].split("(")[0] in row["reason"]
    assert "half" not in build_registry(get_plugin_manager()).names("metric")
    _assert_cli_still_works(cxraug_cli)


@pytest.mark.parametrize("raise_", ["raise SystemExit(5)", "raise RuntimeError('no commands today')"])
def test_register_commands_that_raises_is_listed_and_rolled_back(site: Path, cxraug_cli, raise_: str) -> None:
    """Item 6: a failing ``register_commands`` shows in ``plugins list``; its half-added commands go."""
    source = f"""
    from cxraug import hookimpl

    @hookimpl
    def register_commands(app):
        @app.command("half-cmd")
        def half_cmd() -> None:
            '''Half a command.'''

        {raise_}
    """
    _install_fake_distribution(site, "cxraug-cmds", "fake_cxr_cmds", source, "cmds")
    _assert_cli_still_works(cxraug_cli)
    assert "half-cmd" not in cxraug_cli("--help").output
    (row,) = _from(_rows(cxraug_cli), "cxraug-cmds")
    assert (row["name"], row["status"]) == ("cmds", "error") and "register_commands raised" in row["reason"]


def test_plugin_command_click_cannot_build_is_listed(site: Path, cxraug_cli) -> None:
    """A command Typer refuses to build would otherwise fail every invocation, ``--help`` included."""
    source = """
    from typing import Annotated
    import typer
    from cxraug import hookimpl

    @hookimpl
    def register_commands(app):
        @app.command("twice")
        def twice(x: Annotated[int, typer.Option("--x"), typer.Option("--y")] = 1) -> None:
            pass
    """
    _install_fake_distribution(site, "cxraug-twice", "fake_cxr_twice", source, "twice")
    _assert_cli_still_works(cxraug_cli)
    (row,) = _from(_rows(cxraug_cli), "cxraug-twice")
    assert row["status"] == "error" and "MultipleTyperAnnotationsError" in row["reason"], row


def test_plugin_command_cannot_replace_a_builtin_command(site: Path, cxraug_cli) -> None:
    source = """
    from cxraug import hookimpl
    import typer

    @hookimpl
    def register_commands(app):
        @app.command("plugins")
        def plugins() -> None:
            '''Hijacked.'''
            print("hijacked")

        @app.command("hello-there")
        def hello() -> None:
            '''A fine command.'''
    """
    _install_fake_distribution(site, "cxraug-hijack", "fake_cxr_hijack", source, "hijack")
    (row,) = _from(_rows(cxraug_cli), "cxraug-hijack")
    assert row["status"] == "conflict" and "'plugins'" in row["reason"], row
    help_ = cxraug_cli("--help")
    assert "hello-there" not in help_.output, "the whole plugin's commands are disabled"
    _assert_cli_still_works(cxraug_cli)


ENTRY_POINT_TARGETS = {
    "missing attribute": ("from cxraug import hookimpl\n", "nothing_here", "nothing_here"),
    "not a module": ("VALUE = 3\n", "VALUE", "no cxraug hook"),
    "a class without hooks": (
        "from cxraug.interfaces import Metric\nclass M(Metric):\n    name = 'm'\n",
        "M",
        "no cxraug hook",
    ),
    "a module without hooks": ("def register_datasets(register):\n    pass\n", None, "no cxraug hook"),
    "None": ("PLUGIN = None\n", "PLUGIN", "no cxraug hook"),
}


@pytest.mark.parametrize("target", list(ENTRY_POINT_TARGETS))
def test_entry_points_that_name_no_plugin_are_listed(site: Path, cxraug_cli, target: str) -> None:
    """Item 6: an entry point naming a missing attribute or an object with no hooks fails visibly."""
    source, attr, expected = ENTRY_POINT_TARGETS[target]
    _install_fake_distribution(site, "cxraug-target", "fake_cxr_target", source, "target", attr)
    (row,) = _from(_rows(cxraug_cli), "cxraug-target")
    assert (row["kind"], row["name"], row["status"]) == ("plugin", "target", "error")
    assert expected in row["reason"], row
    _assert_cli_still_works(cxraug_cli)


def test_plugin_object_with_a_raising_property_loads(site: Path, cxraug_cli) -> None:
    """Looking for hooks runs no plugin code: a property that raises is not evaluated."""
    source = GOOD_PLUGIN + textwrap.dedent(
        """
        class Provider:
            @property
            def boom(self):
                raise RuntimeError("evaluated")

            @hookimpl
            def register_datasets(self, register):
                register(Tiny)

        PROVIDER = Provider()
        """
    )
    _install_fake_distribution(site, "cxraug-prop", "fake_cxr_prop", source, "prop", "PROVIDER")
    rows = _from(_rows(cxraug_cli), "cxraug-prop")
    assert [(r["name"], r["status"]) for r in rows] == [("tiny", "ok")]


REGISTER_MISUSE = """
from cxraug import hookimpl
from cxraug.interfaces import DatasetAdapter, GAN

class Base(DatasetAdapter):
    needs_root = False
    def records(self, root):
        return []

class NumberName(Base):
    name = 42

class NoneName(Base):
    name = None

class Dup1(Base):
    name = "dup"

class Dup2(Base):
    name = "dup"

class Once(Base):
    name = "once"

class Fine(Base):
    name = "fine"

@hookimpl
def register_datasets(register):
    register(NumberName)
    register(NoneName)
    register("fine")
    register(Dup1)
    register(Dup2)
    register(Once)
    register(Once)
    register(Fine)
"""


def test_register_callback_misuse_is_listed_per_class(site: Path, cxraug_cli) -> None:
    """Item 6: non-string names, non-classes and duplicates inside one plugin are errors, with why."""
    _install_fake_distribution(site, "cxraug-misuse", "fake_cxr_misuse", REGISTER_MISUSE, "misuse")
    rows = _from(_rows(cxraug_cli), "cxraug-misuse")
    by_status: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    assert sorted(r["name"] for r in by_status["ok"]) == ["dup", "fine", "once"]
    errors = {r["name"]: r["reason"] for r in by_status["error"]}
    assert "lower-case `name`" in errors["NumberName"] and "lower-case `name`" in errors["NoneName"]
    assert "not a DatasetAdapter class" in errors["'fine'"]
    dups = [r for r in by_status["error"] if r["name"] in ("dup", "once")]
    assert len(dups) == 2 and all("registered twice by plugin 'misuse'" in r["reason"] for r in dups)
    assert "conflict" not in by_status
    assert build_registry(get_plugin_manager()).dataset("dup").__qualname__ == "Dup1"
    _assert_cli_still_works(cxraug_cli)


def test_register_callback_takes_only_the_class(site: Path, cxraug_cli) -> None:
    """``register(cls, "gan")`` in a dataset hook must not register a GAN through a hidden parameter."""
    source = """
    from cxraug import hookimpl
    from cxraug.interfaces import GAN

    class Sneaky(GAN):
        name = "sneaky"
        def networks(self): return {}
        def optimizers(self): return {}
        def train_step(self, real, labels): return {}
        def sample_latents(self, n, generator): return None
        def generate(self, z, labels, truncation=1.0): return None

    @hookimpl
    def register_datasets(register):
        register(Sneaky, "gan")
    """
    _install_fake_distribution(site, "cxraug-sneaky", "fake_cxr_sneaky", source, "sneaky")
    (row,) = _from(_rows(cxraug_cli), "cxraug-sneaky")
    assert row["status"] == "error" and "register_datasets raised TypeError" in row["reason"], row
    assert "sneaky" not in build_registry(get_plugin_manager()).names("gan")


BROKEN_CONTRACTS = """
from pydantic import BaseModel
from cxraug import hookimpl
from cxraug.interfaces import GAN, Classifier, DatasetAdapter, PluginOptions

class NoGenerate(GAN):
    name = "no-generate"
    def networks(self): return {}
    def optimizers(self): return {}
    def train_step(self, real, labels): return {}
    def sample_latents(self, n, generator): return None

class NoTruncation(GAN):
    name = "no-truncation"
    def networks(self): return {}
    def optimizers(self): return {}
    def train_step(self, real, labels): return {}
    def sample_latents(self, n, generator): return None
    def generate(self, z, labels): return None

class GoodGan(GAN):
    name = "good-gan"
    def networks(self): return {}
    def optimizers(self): return {}
    def train_step(self, real, labels): return {}
    def sample_latents(self, n, generator): return None
    def generate(self, latents, classes, trunc=1.0, *, extra=None): return None

class _Build:
    def build(self, num_classes, *, pretrained, weights): return None

class DictOptions(_Build, Classifier):
    name = "dict-options"
    Options = dict

class Loose(BaseModel):
    size: int = 3

class LooseOptions(_Build, Classifier):
    name = "loose-options"
    Options = Loose

class NoKeywords(Classifier):
    name = "no-keywords"
    def build(self, num_classes): return None

class BadInit(_Build, Classifier):
    name = "bad-init"
    def __init__(self):
        super().__init__(None)

class NumberDescription(_Build, Classifier):
    name = "number-description"
    description = 3

class NotCallable(Classifier):
    name = "not-callable"
    build = None

class Flexible(Classifier):
    name = "flexible"
    @staticmethod
    def build(*args, **kwargs): return None

class NoRoot(DatasetAdapter):
    name = "no-root"
    def records(self): return []

class Meta(type(DatasetAdapter)):
    @property
    def demo(cls):
        raise SystemExit(7)

class Hostile(DatasetAdapter, metaclass=Meta):
    name = "hostile"
    def records(self, root): return []

@hookimpl
def register_gans(register):
    register(NoGenerate)
    register(NoTruncation)
    register(GoodGan)

@hookimpl
def register_classifiers(register):
    for cls in (DictOptions, LooseOptions, NoKeywords, BadInit, NumberDescription, NotCallable,
                Flexible, GoodGan):
        register(cls)

@hookimpl
def register_datasets(register):
    register(NoRoot)
    register(Hostile)
"""


def test_plugin_classes_breaking_their_contract_fail_at_registration(site: Path, cxraug_cli) -> None:
    """Item 7: a class that would fail when used is listed as an error with why, at registration."""
    _install_fake_distribution(site, "cxraug-contracts", "fake_cxr_contracts", BROKEN_CONTRACTS, "contracts")
    rows = _from(_rows(cxraug_cli), "cxraug-contracts")
    status = {(r["kind"], r["name"]): (r["status"], r["reason"]) for r in rows}
    expected_errors = {
        ("gan", "no-generate"): "does not implement generate",
        ("gan", "no-truncation"): "generate(z, labels, truncation=1.0)",
        ("classifier", "dict-options"): "not a pydantic model",
        ("classifier", "loose-options"): "extra='forbid'",
        ("classifier", "no-keywords"): "build(num_classes, *, pretrained, weights)",
        ("classifier", "bad-init"): "__init__",
        ("classifier", "number-description"): "description",
        ("classifier", "not-callable"): "build is not a method",
        ("classifier", "good-gan"): "is a GAN; register it with register_gans",
        ("dataset", "no-root"): "records(root)",
    }
    for key, words in expected_errors.items():
        assert status[key][0] == "error" and words in status[key][1], (key, status[key])
    (hostile,) = [r for r in rows if "Hostile" in r["name"]]
    assert hostile["status"] == "error" and "SystemExit(7)" in hostile["reason"], hostile
    assert status[("gan", "good-gan")] == ("ok", "")
    assert status[("classifier", "flexible")] == ("ok", "")
    show = cxraug_cli("plugins", "show", "gan", "no-generate")
    assert show.exit_code == 2 and "Traceback" not in show.output, show.output
    assert "cxraug-contracts" in show.output and "does not implement generate" in show.output
    _assert_cli_still_works(cxraug_cli)
