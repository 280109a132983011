"""Every built-in plugin passes the contract checks cxraug.testing gives to plugin authors."""

from __future__ import annotations

import numpy as np
import pytest

from cxraug.interfaces import MetricInputs, MetricServices
from cxraug.metrics.features import CallableExtractor, FeatureService
from cxraug.plugins import build_registry, get_plugin_manager
from cxraug.testing import (
    check_augmenter_plugin,
    check_classifier_plugin,
    check_dataset_adapter,
    check_gan_plugin,
    check_logger_plugin,
    check_metric_plugin,
)

REGISTRY = build_registry(get_plugin_manager(load_entry_points=False))

TINY_GAN = {
    "dcgan": {"nz": 8, "ngf": 8, "ndf": 8},
    "cgan": {"nz": 8, "ngf": 8, "ndf": 8},
    "acgan": {"latent_dim": 8, "ngf": 8, "ndf": 8},
    "stylegan2": {"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16, "mapping_layers": 2},
}


@pytest.mark.parametrize("name", sorted(TINY_GAN))
def test_builtin_gans_pass_the_contract(name: str) -> None:
    cls = REGISTRY.gan(name)
    check_gan_plugin(cls, image_size=32 if name == "stylegan2" else 16, options=cls.Options(**TINY_GAN[name]))


def test_builtin_classifier_passes_the_contract() -> None:
    # the ImageNet models are exercised end to end in test_train_classifier.py; this is the fast one
    cls = REGISTRY.classifier("cnn")
    check_classifier_plugin(cls, options=cls.Options(input_size=32, width=4))


def test_builtin_classic_augmenter_passes_the_contract() -> None:
    # synthetic needs a GAN run: test_augmenters.py checks it against a trained one
    made = check_augmenter_plugin(REGISTRY.augmenter("classic"), options={"rotation": 5})
    assert len(made) == 5


def test_builtin_datasets_pass_the_contract(shared_data) -> None:
    phantom = REGISTRY.dataset("phantom")
    check_dataset_adapter(phantom(phantom.Options(n_per_class=3, size=16)), None)
    medmnist = REGISTRY.dataset("medmnist")
    records = check_dataset_adapter(
        medmnist(medmnist.Options(download=False)), shared_data / "pneumoniamnist.npz"
    )
    assert len(records) == 4708 + 524 + 624


def test_builtin_metrics_pass_the_contract(tmp_path) -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (24, 16, 16), dtype=np.uint8)
    gen = rng.integers(0, 255, (24, 16, 16), dtype=np.uint8)
    labels = ["covid", "normal"] * 12

    def pooled(batch):
        import torch

        return torch.nn.functional.adaptive_avg_pool2d(batch / 255.0, 3).flatten(1)

    service = FeatureService(extractor_factory=lambda mode: CallableExtractor(pooled, "pooled"))
    y_true = np.array([0, 1] * 12)
    y_score = np.clip(np.eye(2)[y_true] * 0.6 + rng.random((24, 2)) * 0.4, 0, 1)
    y_score /= y_score.sum(1, keepdims=True)
    inputs = MetricInputs(
        real=real,
        real_labels=labels,
        train=real,
        generated=gen,
        generated_labels=labels,
        y_true=y_true,
        y_score=y_score,
        labels=["covid", "normal"],
        out_dir=tmp_path,
        services=MetricServices(features=service, holdout=gen),
    )
    for name in ("fid", "kid", "prdc", "memorization", "roc"):
        cls = REGISTRY.metric(name)
        options = cls.Options(k=3) if name == "prdc" else None
        check_metric_plugin(cls, inputs, options=options)


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_builtin_loggers_pass_the_contract(name: str, tmp_path, monkeypatch) -> None:
    pytest.importorskip(name)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    check_logger_plugin(REGISTRY.logger(name), tmp_path)


def test_logger_contract_catches_a_logger_that_cannot_resume(tmp_path) -> None:
    from cxraug.interfaces import Logger

    class OneShot(Logger):
        name = "one-shot"

        def start(self, run):
            marker = run.folder / "started"
            assert not marker.exists(), "started twice"
            marker.touch()

        def log_params(self, params):
            pass

        def log_scalars(self, step, values):
            pass

        def close(self, status):
            pass

    with pytest.raises(AssertionError, match="started twice"):
        check_logger_plugin(OneShot, tmp_path)
    check_logger_plugin(OneShot, tmp_path / "again", resume=False)


def test_contract_checks_apply_the_registration_check() -> None:
    """A plugin author's contract test catches what `cxraug plugins list` would refuse."""
    from cxraug.interfaces import Classifier
    from cxraug.plugins.classifiers.cnn import CNNClassifier, CNNOptions

    class Half(Classifier):  # build() and param_groups() left out
        name = "half"
        description = "incomplete"

    class LooseOptions(CNNClassifier):
        name = "loose"

        class Options(CNNOptions):
            model_config = {"extra": "ignore"}

    for broken, needle in ((Half, "does not implement"), (LooseOptions, "accepts unknown keys")):
        with pytest.raises(AssertionError, match=needle):
            check_classifier_plugin(broken)
