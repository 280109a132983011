"""Pytest fixtures and contract checks for cxraug plugin authors (loaded as a pytest plugin).

Use the fixtures in your plugin's tests::

    def test_my_gan_trains(cxraug_cli):
        result = cxraug_cli("train-gan", "my-gan", "--kimg", "0.01")
        assert result.exit_code == 0, result.output
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxraug.data.paths import DatasetRoot
from cxraug.errors import DataError
from cxraug.interfaces import DatasetAdapter, Record
from cxraug.labels import VOCABULARY
from cxraug.workspace import Workspace


@pytest.fixture
def cxraug_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An empty workspace in a temporary folder, also set as CXRAUG_WORKSPACE."""
    root = tmp_path / "workspace"
    monkeypatch.setenv("CXRAUG_WORKSPACE", str(root))
    return Workspace(root)


@pytest.fixture
def cxraug_cli(cxraug_workspace: Workspace) -> Callable[..., Any]:
    """Run the cxraug CLI in-process: ``cxraug_cli("data", "list")`` -> click Result.

    Pass ``pm=`` to use a specific plugin manager (default: built-ins plus installed plugins).
    """
    from typer.testing import CliRunner

    from cxraug.cli import build_app

    def run(*args: str, pm: Any = None, input: str | None = None) -> Any:
        runner = CliRunner()
        env = {"COLUMNS": "200", "CXRAUG_WORKSPACE": str(cxraug_workspace.root)}
        return runner.invoke(build_app(pm), list(args), input=input, env=env)

    return run


def check_registration(kind: str, cls: type[Any]) -> None:
    """Assert that ``cls`` passes the checks ``cxraug plugins list`` applies when it is registered."""
    from cxraug.registry import registration_problem

    problem = registration_problem(kind, cls)
    assert problem is None, f"{getattr(cls, 'name', cls)}: would fail to register as a {kind}: {problem}"


def check_dataset_adapter(adapter: DatasetAdapter, root: Path | None) -> list[Record]:
    """Contract check: records are well formed, labels canonical, sources exist. Returns them."""
    check_registration("dataset", type(adapter))
    records = list(adapter.records(root))
    assert records, f"{adapter.name} yielded no records from {root}"
    for rec in records:
        assert isinstance(rec, Record), f"{adapter.name} yielded {type(rec).__name__}, not Record"
        assert rec.refused is not None or rec.label in set(VOCABULARY) | set(adapter.labels()), (
            f"{adapter.name}: label {rec.label!r} is neither canonical nor declared by labels()"
        )
        assert rec.split in (None, "train", "val", "test"), f"{adapter.name}: split {rec.split!r}"
        assert rec.patient_id is None or isinstance(rec.patient_id, str), (
            f"{adapter.name}: patient ids must be strings, got {type(rec.patient_id).__name__}"
        )
        assert rec.source == adapter.name, f"{adapter.name}: record source {rec.source!r}"
        if isinstance(rec.image, np.ndarray):
            assert rec.image.ndim in (2, 3), f"{adapter.name}: image array {rec.image.shape}"
        elif rec.refused is None:
            assert Path(rec.image).is_file(), f"{adapter.name}: {rec.image} does not exist"
            if root is not None:
                escape = DatasetRoot(root).escapes(Path(rec.image))
                assert escape is None, f"{adapter.name}: {escape}; yield it with refused= set instead"
    assert all(isinstance(n, str) for n in adapter.notes())
    assert not (adapter.demo and adapter.needs_root), f"{adapter.name}: a demo adapter must not need a root"
    if adapter.needs_root:
        missing = Path(os.devnull).parent / "cxraug-no-such-folder"
        with pytest.raises(DataError):
            list(adapter.records(missing))
    return records


def check_gan_plugin(
    cls: type[Any],
    *,
    image_size: int = 16,
    labels: tuple[str, ...] = ("covid", "normal"),
    options: Any = None,
    steps: int = 2,
) -> Any:
    """Contract check for a ``GAN`` class on the CPU; returns the trained instance.

    Builds it from a ``GANSpec`` (``options``: a dict or an instance of ``cls.Options``), runs
    ``steps`` train steps on random batches in [-1, 1], then checks latents, ``generate`` (shape,
    range, determinism, label dependence for conditional GANs) and that networks, optimizers,
    schedulers and ``extra_state`` saved with ``torch.save`` and loaded with ``weights_only=True``
    into a fresh instance reproduce its images and its next training step.
    """
    import io
    import math

    import torch
    from torch import nn

    from cxraug.interfaces import GAN, GANSpec, PluginOptions

    name = getattr(cls, "name", cls.__name__)
    assert isinstance(cls, type) and issubclass(cls, GAN), f"{name} is not a cxraug.interfaces.GAN subclass"
    assert isinstance(cls.name, str) and cls.name == cls.name.lower(), f"{name}: name must be lower-case"
    assert issubclass(cls.Options, PluginOptions), f"{name}: Options must subclass PluginOptions"
    check_registration("gan", cls)
    if options is None or isinstance(options, dict):
        options = cls.Options(**(options or {}))
    assert isinstance(options, cls.Options), f"{name}: options must be a dict or {cls.Options.__name__}"
    spec_labels = list(labels) if cls.conditional or len(labels) == 1 else ["all"]
    n_classes = len(spec_labels)
    if cls.conditional:
        assert n_classes >= 2, f"{name}: check a conditional GAN with at least two labels"

    def build(seed: int) -> GAN:
        torch.manual_seed(seed)
        spec = GANSpec(image_size=image_size, labels=list(spec_labels), device="cpu", seed=seed, batch_size=4)
        return cls(options, spec)

    def state_of(gan: GAN) -> dict[str, Any]:
        return {
            "networks": {k: v.state_dict() for k, v in gan.networks().items()},
            "optimizers": {k: v.state_dict() for k, v in gan.optimizers().items()},
            "schedulers": {k: v.state_dict() for k, v in gan.schedulers().items()},
            "extra": gan.extra_state(),
        }

    def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        real = torch.rand(4, 1, image_size, image_size, generator=gen) * 2 - 1
        if cls.conditional:
            y = torch.arange(4) % n_classes
        else:
            y = torch.zeros(4, dtype=torch.long)
        return real, y

    with torch.random.fork_rng(devices=[]):
        gan = build(0)
        nets, opts = gan.networks(), gan.optimizers()
        assert nets and all(isinstance(m, nn.Module) for m in nets.values()), (
            f"{name}.networks() must be a non-empty dict of nn.Module, got {nets!r}"
        )
        assert opts and all(isinstance(o, torch.optim.Optimizer) for o in opts.values()), (
            f"{name}.optimizers() must be a non-empty dict of torch.optim.Optimizer, got {opts!r}"
        )
        for key, sched in gan.schedulers().items():
            assert hasattr(sched, "state_dict") and hasattr(sched, "load_state_dict"), (
                f"{name}.schedulers()[{key!r}] has no state_dict/load_state_dict"
            )

        for i in range(steps):
            losses = gan.train_step(*batch(i))
            assert isinstance(losses, dict) and losses, f"{name}.train_step must return a non-empty dict"
            for key, value in losses.items():
                assert type(value) is float, f"{name}.train_step: {key!r} is {type(value).__name__}"
                assert math.isfinite(value), f"{name}.train_step step {i}: {key!r} = {value}"
        gan.end_epoch(0)

        z = gan.sample_latents(6, torch.Generator().manual_seed(5))
        assert isinstance(z, torch.Tensor) and z.device.type == "cpu" and z.shape[0] == 6, (
            f"{name}.sample_latents(6, ...) must be a CPU tensor with 6 rows, got {z!r}"
        )
        assert torch.equal(z, gan.sample_latents(6, torch.Generator().manual_seed(5))), (
            f"{name}.sample_latents differs for the same generator seed"
        )
        assert not torch.equal(z, gan.sample_latents(6, torch.Generator().manual_seed(6))), (
            f"{name}.sample_latents ignores the generator"
        )
        y = torch.arange(6) % n_classes
        images = gan.generate(z, y)
        shape = (6, 1, image_size, image_size)
        assert isinstance(images, torch.Tensor) and tuple(images.shape) == shape, (
            f"{name}.generate: expected {shape}, got {getattr(images, 'shape', images)}"
        )
        assert images.dtype == torch.float32 and not images.requires_grad, (
            f"{name}.generate must return float32 without gradients"
        )
        assert torch.isfinite(images).all(), f"{name}.generate returned non-finite values"
        assert images.min() >= -1 - 1e-5 and images.max() <= 1 + 1e-5, (
            f"{name}.generate: values in [{images.min():.3f}, {images.max():.3f}], not [-1, 1]"
        )
        assert torch.equal(images, gan.generate(z, y)), f"{name}.generate is not deterministic"
        truncated = gan.generate(z, y, truncation=0.5)
        assert tuple(truncated.shape) == shape, f"{name}.generate(truncation=0.5) changed the shape"
        if cls.conditional:
            same_z = z[:1].repeat(n_classes, 1)
            per_label = gan.generate(same_z, torch.arange(n_classes))
            assert not torch.equal(per_label[0], per_label[1]), (
                f"{name} is conditional but labels 0 and 1 give the same image for the same z"
            )

        buffer = io.BytesIO()
        torch.save(state_of(gan), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        fresh = build(1)
        for key, module in fresh.networks().items():
            module.load_state_dict(state["networks"][key])
        for key, opt in fresh.optimizers().items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in fresh.schedulers().items():
            sched.load_state_dict(state["schedulers"][key])
        fresh.load_extra_state(state["extra"])
        assert torch.equal(fresh.generate(z, y), images), (
            f"{name}: a fresh instance loaded from the saved state generates other images"
        )
        torch.manual_seed(123)
        continued = gan.train_step(*batch(steps))
        torch.manual_seed(123)
        resumed = fresh.train_step(*batch(steps))
        assert continued == resumed, (
            f"{name}: the step after a state round trip differs ({resumed} vs {continued}); "
            "is a counter missing from extra_state?"
        )
    return gan


def check_augmenter_plugin(
    cls: type[Any],
    *,
    options: Any = None,
    services: Any = None,
    size: int = 16,
    counts: dict[str, int] | None = None,
    images_per_label: int = 3,
) -> list[Any]:
    """Contract check for an Augmenter on the CPU; returns the images it made.

    Asks for ``counts`` (default: 4 covid, 1 normal, 0 pneumonia) from a small random real training
    set and checks the exact counts, (size, size) uint8 images, the origin, string provenance and
    determinism by seed. ``services`` (an AugmentServices) is what the augmenter gets; one with
    ``uses_gan_run`` needs a ``workspace`` or ``gan_run`` there. When ``online_transform()`` is not
    None, checks its tensor contract on a (B, 1, size, size) batch: same shape and dtype, values in
    [0, 1], input left unchanged.
    """
    from collections import Counter

    import torch

    from cxraug.interfaces import AugmentedImage, Augmenter, AugmentRequest, AugmentServices, PluginOptions

    name = getattr(cls, "name", cls.__name__)
    assert isinstance(cls, type) and issubclass(cls, Augmenter), f"{name} is not an Augmenter subclass"
    assert isinstance(cls.name, str) and cls.name == cls.name.lower(), f"{name}: name must be lower-case"
    assert issubclass(cls.Options, PluginOptions), f"{name}: Options must subclass PluginOptions"
    assert isinstance(cls.uses_gan_run, bool), f"{name}: uses_gan_run must be a bool"
    check_registration("augmenter", cls)
    if options is None or isinstance(options, dict):
        options = cls.Options(**(options or {}))
    wanted = dict(counts) if counts is not None else {"covid": 4, "normal": 1, "pneumonia": 0}
    labels = [label for label in wanted for _ in range(images_per_label)]
    images = np.random.default_rng(0).integers(0, 256, (len(labels), size, size), dtype=np.uint8)
    images.setflags(write=False)  # the core may hand over a read-only memory map

    def run(seed: int) -> list[AugmentedImage]:
        request = AugmentRequest(
            images=images,
            labels=labels,
            counts=dict(wanted),
            seed=seed,
            size=size,
            services=services if services is not None else AugmentServices(),
        )
        return list(cls(options).augment(request))

    made = run(0)
    got = Counter(item.label for item in made)
    assert got == Counter({k: v for k, v in wanted.items() if v > 0}), f"{name}: asked {wanted}, made {got}"
    for item in made:
        assert isinstance(item, AugmentedImage), f"{name} yielded {type(item).__name__}, not AugmentedImage"
        image = np.asarray(item.image)
        assert image.shape == (size, size) and image.dtype == np.uint8, (
            f"{name}: images must be ({size}, {size}) uint8, got {image.dtype} {image.shape}"
        )
        assert item.origin == cls.origin, f"{name}: origin {item.origin!r}, class says {cls.origin!r}"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in item.provenance.items()), (
            f"{name}: provenance must map str to str, got {item.provenance!r}"
        )
    again = run(0)
    assert len(again) == len(made) and all(
        a.label == b.label and np.array_equal(a.image, b.image) for a, b in zip(made, again, strict=True)
    ), f"{name}: the same request and seed gave other images"

    online = cls(options).online_transform()
    if online is not None:
        x = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(0))
        before = x.clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            y = online(x)
        assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype, (
            f"{name}.online_transform: (4, 1, {size}, {size}) float32 in, got {getattr(y, 'shape', y)} out"
        )
        assert float(y.min()) >= -1e-6 and float(y.max()) <= 1 + 1e-6, (
            f"{name}.online_transform: values in [{float(y.min()):.3f}, {float(y.max()):.3f}], not [0, 1]"
        )
        assert torch.equal(x, before), f"{name}.online_transform modified its input batch"
    return made


def check_classifier_plugin(
    cls: type[Any], *, options: Any = None, num_classes: int = 3, batch: int = 2, steps: int = 1
) -> Any:
    """Contract check for a Classifier: builds offline, maps (B, 1, S, S) in [0, 1] to logits, trains.

    Returns the built network. Uses ``pretrained=False`` so nothing is downloaded.
    """
    import torch

    from cxraug.interfaces import Classifier

    assert issubclass(cls, Classifier), f"{cls.__name__} is not a Classifier"
    check_registration("classifier", cls)
    plugin = cls(options if options is not None else cls.Options())
    size = int(plugin.input_size)
    assert size >= 16, f"{cls.name}: input_size {size} is too small"
    model = plugin.build(num_classes, pretrained=False, weights=None)
    assert isinstance(model, torch.nn.Module), f"{cls.name}.build must return an nn.Module"
    groups = plugin.param_groups(model, cls.default_lr)
    params = [p for g in groups for p in g["params"]]
    assert params and all(p.requires_grad for p in params), (
        f"{cls.name}: param_groups must list trainable params"
    )
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % num_classes
    opt = torch.optim.Adam(groups, lr=cls.default_lr)
    before = [p.detach().clone() for p in params]
    model.train()
    for _ in range(steps):
        logits = model(x)
        assert logits.shape == (batch, num_classes), f"{cls.name}: logits {tuple(logits.shape)}"
        opt.zero_grad()
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=True)), (
        f"{cls.name}: nothing trained"
    )
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all(), f"{cls.name}: non-finite logits"
    return model


def check_metric_plugin(cls: type[Any], inputs: Any, *, options: Any = None) -> Any:
    """Contract check for a Metric: needs only what it declares, returns finite named values.

    ``inputs`` is a cxraug.interfaces.MetricInputs holding at least the fields ``cls.requires`` names;
    its ``services`` lend what the core would (e.g. ``MetricServices(features=...)`` with a cheap
    feature function, so no Inception weights are needed).
    """
    import math

    from cxraug.interfaces import Metric, MetricResult

    assert issubclass(cls, Metric), f"{cls.__name__} is not a Metric"
    check_registration("metric", cls)
    unknown = set(cls.requires) - set(inputs.__dataclass_fields__)
    assert not unknown, f"{cls.name}.requires names unknown inputs {sorted(unknown)}"
    missing = [f for f in cls.requires if getattr(inputs, f) is None]
    assert not missing, f"the test inputs lack {missing}, which {cls.name} requires"
    result = cls(options if options is not None else cls.Options()).compute(inputs)
    assert isinstance(result, MetricResult), f"{cls.name}.compute must return a MetricResult"
    assert result.values, f"{cls.name} returned no values"
    for key, value in result.values.items():
        assert isinstance(key, str) and isinstance(value, float), f"{cls.name}: {key!r}={value!r}"
        assert not math.isnan(value), f"{cls.name}: {key} is NaN (leave undefined values out)"
    for path in result.artifacts.values():
        assert Path(path).is_file(), f"{cls.name}: artifact {path} was not written"
    return result


def check_logger_plugin(cls: type[Any], folder: Path, *, options: Any = None, resume: bool = True) -> Any:
    """Contract check for a Logger: the calls the core makes, in its order, on one stream in ``folder``.

    Starts a stream, logs params, two scalar rows and a sample grid, closes it; with ``resume``
    starts it again as a run resumed at step 1 would, and logs step 2 again. Returns the last
    instance, so a test can read back what it wrote (each logger's own reader knows its format).
    ``folder`` is also the workspace, so a logger with a workspace-wide store keeps it there.
    """
    from cxraug.interfaces import LOGGER_STATUSES, Logger, LoggerRun

    assert issubclass(cls, Logger), f"{cls.__name__} is not a Logger"
    check_registration("logger", cls)
    opts = cls.Options(**options) if isinstance(options, dict) else options or cls.Options()
    cls.check_available(opts)
    folder = Path(folder)
    run_dir = folder / "runs" / "run-1"
    run_dir.mkdir(parents=True, exist_ok=True)
    grid = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    logger = None
    for resume_step in (None, 1) if resume else (None,):
        logger = cls(opts)
        logger.start(LoggerRun(run_dir, "run-1", "gan", workspace=folder, resume_step=resume_step))
        logger.log_params({"config.arch": "dcgan", "config.batch_size": 8, "config.per_class": True})
        steps = (1, 2) if resume_step is None else (2,)
        for step in steps:
            logger.log_scalars(step, {"loss_g": 0.5 * step, "loss_d": 1.0 / step})
        logger.log_image(2, "samples", grid)
        logger.close(LOGGER_STATUSES[0])
    return logger


def check_executor_plugin(cls: type[Any], folder: Path, *, options: Any = None, sleep_s: float = 0.05) -> Any:
    """Contract check for an Executor: a study-shaped toy plan (cxraug.toyplan) run to the end.

    Checks that every job ran exactly once, each after its dependencies; that a second run starts
    nothing (finished jobs are never rerun); and that a failing job stops the run with an error
    naming it. Returns the executor instance. ``folder`` must be visible to wherever the executor
    runs its jobs (a shared filesystem for a cluster).
    """
    from cxraug.errors import CxrError
    from cxraug.interfaces import Executor
    from cxraug.toyplan import ToyPlan, diamond_jobs

    assert issubclass(cls, Executor), f"{cls.__name__} is not an Executor"
    check_registration("executor", cls)
    opts = cls.Options(**options) if isinstance(options, dict) else options or cls.Options()
    cls.check_available(opts)
    executor = cls(opts)
    assert isinstance(executor.describe(), str) and executor.describe()
    plan = ToyPlan.create(Path(folder) / "toy", sleep_s=sleep_s)
    executor.run(plan)
    ran = [row["id"] for row in plan.ran()]
    assert sorted(ran) == sorted(j.id for j in diamond_jobs()), f"{cls.name}: jobs ran {ran}"
    for job in plan.jobs:
        assert plan.done(job.id), f"{cls.name}: {job.id} not recorded as done"
        record = plan.job_record(job.id)
        assert record.get("executor") == cls.name, f"{cls.name}: {job.id} recorded {record.get('executor')!r}"
        assert record.get("host") and record.get("seconds") is not None, record
        for dep in job.deps:
            assert ran.index(dep) < ran.index(job.id), f"{cls.name}: {job.id} ran before its dependency {dep}"
    executor.run(plan)
    assert len(plan.ran()) == len(ran), f"{cls.name}: a second run started finished jobs again"
    failing = ToyPlan.create(Path(folder) / "toy-fail", sleep_s=sleep_s, fail=["data-g1"])
    try:
        executor.run(failing)
    except CxrError as exc:
        assert "data-g1" in str(exc) and "told to fail" in str(exc), f"{cls.name}: error was {exc}"
    else:
        raise AssertionError(f"{cls.name}: a failing job did not stop the run")
    assert not failing.done("analysis") and "clf-g1-0" not in {r["id"] for r in failing.ran()}
    return executor


def make_standin_inception(path: Path, seed: int = 0) -> Path:
    """Write a tiny TorchScript stand-in for clean-fid's Inception file (same ``layers`` interface).

    It maps a (B, 3, 299, 299) batch scaled like clean-fid's input to (B, 2048) features in a fraction
    of a second, so tests can run ``cxraug evaluate --inception-weights PATH`` offline and fast. Its
    numbers mean nothing about image quality.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 64, 2048), nn.ReLU())

    class StandIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = layers

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    torch.jit.script(StandIn().eval()).save(str(path))
    return path


@pytest.fixture
def standin_inception(tmp_path: Path) -> Path:
    """Path of a tiny stand-in Inception TorchScript file (see make_standin_inception)."""
    return make_standin_inception(tmp_path / "standin-inception.pt")
